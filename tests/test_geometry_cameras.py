"""Cameras: validation, indexing, relative poses, intrinsics edits, interpolation, look_at."""

import math

import pytest
import torch
from torch.testing import assert_close

from factorportrait.geometry import Cameras, interpolate_cameras, intrinsics_from_fov, look_at
from factorportrait.geometry.rotations import (
    axis_angle_to_matrix,
    matrix_to_quaternion,
    quaternion_to_matrix,
    rotation_angle,
    rotation_y,
    slerp,
)

F64 = torch.float64


def random_cameras(num: int, seed: int = 0, dtype: torch.dtype = F64) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=F64).repeat(num, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_matrix(torch.randn(num, 3, generator=g, dtype=F64))
    c2w[:, :3, 3] = torch.randn(num, 3, generator=g, dtype=F64)
    K = intrinsics_from_fov(50.0, 64, 48, F64).repeat(num, 1, 1)
    K[:, :2] *= 1 + 0.1 * torch.rand(num, 2, 1, generator=g, dtype=F64)
    return Cameras(K.to(dtype), c2w.to(dtype), 64, 48)


# -- validation -------------------------------------------------------------------------------
def _broken(kind: str) -> tuple[torch.Tensor, torch.Tensor, dict]:
    cams = random_cameras(4)
    K, c2w, size = cams.K.clone(), cams.c2w.clone(), {"width": 64, "height": 48}
    if kind == "nan":
        c2w[2, 0, 3] = float("nan")
    elif kind == "not_orthonormal":
        c2w[2, :3, :3] *= 1.1
    elif kind == "reflection":
        c2w[2, :3, 0] *= -1
    elif kind == "focal":
        K[2, 1, 1] = -5.0
    elif kind == "bottom_row":
        c2w[2, 3, 0] = 0.5
    elif kind == "K_form":
        K[2, 2, 2] = 2.0
    elif kind == "mismatch":
        K = K[:3]
    elif kind == "shape":
        c2w = c2w[:, :3]
    elif kind == "size":
        size = {"width": 64}
    elif kind == "dtype":
        K = K.float()
    return K, c2w, size


@pytest.mark.parametrize("kind, message", [
    ("nan", "frame 2: c2w has non-finite"), ("not_orthonormal", "frame 2: .*not orthonormal"),
    ("reflection", "frame 2: .*det -1"), ("focal", "frame 2: focal lengths must be positive"),
    ("bottom_row", "frame 2: c2w bottom row"), ("K_form", "frame 2: K must be"),
    ("mismatch", "K has 3 frames but c2w has 4"),
    ("shape", r"c2w must be a tensor of shape \(F, 4, 4\)"),
    ("size", "both width and height"), ("dtype", "differ"),
])
def test_construction_rejects_bad_input(kind: str, message: str) -> None:
    K, c2w, size = _broken(kind)
    with pytest.raises(ValueError, match=message):
        Cameras(K, c2w, **size)


# -- indexing ---------------------------------------------------------------------------------
def test_indexing_and_concatenation() -> None:
    cams = random_cameras(6)
    assert len(cams) == 6 and len(cams[2]) == 1
    assert_close(cams[-1].c2w[0], cams.c2w[5])
    assert_close(cams[1:4].K, cams.K[1:4])
    assert_close(cams[torch.tensor([4, 0])].c2w, cams.c2w[[4, 0]])
    assert len(cams[torch.tensor(3)]) == 1  # a scalar tensor keeps the frame axis
    assert_close(cams[[True, False] * 3].c2w, cams.c2w[::2])
    joined = Cameras.cat([cams[:2], cams[2:]])
    assert (joined.width, joined.height) == (64, 48)
    assert_close(joined.c2w, cams.c2w, rtol=0, atol=0)
    with pytest.raises(IndexError, match="out of range"):
        cams[6]
    with pytest.raises(ValueError, match="item 1 has image size"):
        Cameras.cat([cams, cams.resize(96, 128)])
    with pytest.raises(ValueError, match="empty"):
        Cameras.cat([])


def test_identity_and_to() -> None:
    K = intrinsics_from_fov(60.0, 32, 32, F64)
    cams = Cameras.identity(3, K, 32, 32)
    assert_close(cams.c2w, torch.eye(4, dtype=F64).expand(3, 4, 4))
    assert cams.to(torch.float32).K.dtype == torch.float32
    assert math.isclose(float(K[0, 0]), 16 / math.tan(math.radians(30)), rel_tol=1e-12)


# -- extrinsics -------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_relative_to_makes_reference_identity(dtype: torch.dtype) -> None:
    cams = random_cameras(5, dtype=dtype)
    eye = torch.eye(4, dtype=dtype)
    atol = 1e-5 if dtype == torch.float32 else 1e-12
    for rel in (cams.relative_to(3), cams.relative_to(cams[3])):
        assert rel.c2w.dtype == dtype
        assert_close(rel.c2w[3], eye, atol=atol, rtol=0)
        # the pose between any two cameras is unchanged: inv(c2w_i) c2w_j
        before = torch.linalg.inv(cams.c2w[0]) @ cams.c2w[4]
        assert_close(torch.linalg.inv(rel.c2w[0]) @ rel.c2w[4], before, atol=atol * 10, rtol=0)
    with pytest.raises(ValueError, match="reference must have 1 frame"):
        cams.relative_to(cams[:2])


def test_world_to_camera_and_centers() -> None:
    cams = random_cameras(4)
    assert_close(cams.world_to_camera() @ cams.c2w, torch.eye(4, dtype=F64).expand(4, 4, 4))
    _, depth = cams.project(cams.centers()[:, None, :].expand(4, 1, 3).clone())
    assert_close(depth, torch.zeros(4, 1, dtype=F64))
    assert_close(cams.rotations(), cams.c2w[:, :3, :3])


# -- intrinsics follow the image ----------------------------------------------------------------
def test_resize_crop_scale_follow_the_image() -> None:
    cams = random_cameras(3)
    points = torch.tensor([[0.1, -0.2, 3.0], [0.5, 0.3, 1.0]], dtype=F64)
    points = points @ cams.rotations()[0].T + cams.centers()[0]  # in front of camera 0
    pix, _ = cams[0].project(points)
    resized, _ = cams[0].resize(96, 192).project(points)  # height ×2, width ×3
    assert_close(resized, pix * torch.tensor([3.0, 2.0], dtype=F64))
    cropped = cams[0].crop(top=5, left=7, height=30, width=40)
    assert (cropped.width, cropped.height) == (40, 30)
    assert_close(cropped.project(points)[0], pix - torch.tensor([7.0, 5.0], dtype=F64))
    half = cams.scale_intrinsics(0.5)
    assert (half.width, half.height) == (32, 24)
    assert_close(half.K[:, :2], cams.K[:, :2] / 2)
    with pytest.raises(ValueError, match="outside the 48x64 image"):
        cams.crop(40, 0, 20, 10)
    with pytest.raises(ValueError, match="not a whole pixel size"):
        cams.scale_intrinsics(0.3)
    with pytest.raises(ValueError, match="image size is unknown"):
        Cameras(cams.K, cams.c2w).resize(10, 10)


# -- interpolation ----------------------------------------------------------------------------
def test_interpolation_slerps_rotations_and_lerps_centres_and_focals() -> None:
    K = intrinsics_from_fov(60.0, 32, 32, F64).repeat(2, 1, 1)
    K[1, :2, :2] *= 2
    c2w = torch.eye(4, dtype=F64).repeat(2, 1, 1)
    c2w[1, :3, :3] = rotation_y(torch.tensor(math.pi / 2, dtype=F64))
    c2w[1, :3, 3] = torch.tensor([1.0, 2.0, 3.0], dtype=F64)
    keys = Cameras(K, c2w, 32, 32)
    times = torch.tensor([10.0, 12.5, 15.0, 20.0])
    out = interpolate_cameras(keys, torch.tensor([10.0, 20.0]), times)
    assert_close(out[[0, 3]].c2w, keys.c2w, atol=1e-12, rtol=0)
    assert_close(out[[0, 3]].K, keys.K, atol=1e-12, rtol=0)
    expected = rotation_y(torch.tensor([math.pi / 8, math.pi / 4], dtype=F64))
    assert_close(out.rotations()[1:3], expected, atol=1e-12, rtol=0)
    assert_close(out.centers()[2], torch.tensor([0.5, 1.0, 1.5], dtype=F64))
    assert_close(out.focal_lengths()[1], K[0, 0, 0] * 1.25 * torch.ones(2, dtype=F64))
    assert_close(keys.interpolate(torch.tensor([0.5])).c2w, out[2].c2w)
    with pytest.raises(ValueError, match="within"):
        keys.interpolate(torch.tensor([1.5]))
    with pytest.raises(ValueError, match="strictly increasing"):
        interpolate_cameras(keys, torch.tensor([1.0, 1.0]), torch.tensor([1.0]))


def test_quaternions_and_slerp() -> None:
    g = torch.Generator().manual_seed(1)
    R = axis_angle_to_matrix(torch.randn(64, 3, generator=g, dtype=F64))
    R = torch.cat([R, torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))[None]])  # 180°
    assert_close(quaternion_to_matrix(matrix_to_quaternion(R)), R, atol=1e-12, rtol=0)
    q = matrix_to_quaternion(R)
    half = quaternion_to_matrix(slerp(q[:-1], q[1:], torch.full((64,), 0.5, dtype=F64)))
    # the midpoint is equally far from both ends, each at half the total angle
    d0 = rotation_angle(R[:-1].transpose(1, 2) @ half)
    d1 = rotation_angle(half.transpose(1, 2) @ R[1:])
    total = rotation_angle(R[:-1].transpose(1, 2) @ R[1:])
    assert_close(d0, d1, atol=1e-9, rtol=0)
    assert_close(d0, total / 2, atol=1e-9, rtol=0)


# -- look_at ----------------------------------------------------------------------------------
def test_look_at() -> None:
    eye = torch.tensor([[0.0, 0.0, -0.6], [-0.6, 0.0, 0.0]], dtype=F64)
    c2w = look_at(eye, (0.0, 0.0, 0.0))
    assert_close(c2w[0, :3, :3], torch.eye(3, dtype=F64))
    assert_close(c2w[1, :3, :3], rotation_y(torch.tensor(math.pi / 2, dtype=F64)))
    assert_close(c2w[:, :3, 3], eye)
    with pytest.raises(ValueError, match="frame 1: viewing direction is parallel to up"):
        look_at(torch.tensor([[0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]), torch.zeros(3))
    with pytest.raises(ValueError, match="frame 0: eye equals target"):
        look_at(torch.zeros(1, 3), torch.zeros(3))
