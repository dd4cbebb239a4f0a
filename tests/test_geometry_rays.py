"""Plücker rays (analytic), the DiT ray packing, and the DeX head-pose ray map (Eq. 3)."""

import math

import pytest
import torch
from torch.testing import assert_close

from factorportrait.geometry import (
    Cameras,
    dit_rays,
    head_pose_ray_map,
    intrinsics_from_fov,
    matrix_from_rts,
    plucker_rays,
    rts_from_matrix,
)
from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_z

F64 = torch.float64


def camera(R: torch.Tensor, center: torch.Tensor, K: torch.Tensor) -> Cameras:
    c2w = torch.eye(4, dtype=F64)
    c2w[:3, :3], c2w[:3, 3] = R, center
    return Cameras(K[None], c2w[None])


def random_cameras(num: int, seed: int, width: int, height: int) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=F64).repeat(num, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_matrix(0.5 * torch.randn(num, 3, generator=g, dtype=F64))
    c2w[:, :3, 3] = torch.randn(num, 3, generator=g, dtype=F64)
    K = intrinsics_from_fov(60.0, width, height, F64).repeat(num, 1, 1)
    return Cameras(K, c2w, width, height)


# -- plucker_rays -----------------------------------------------------------------------------
def test_centre_pixel_of_identity_camera_looks_down_z() -> None:
    K = torch.tensor([[4.0, 0, 2.5], [0, 3.0, 2.5], [0, 0, 1]], dtype=F64)  # 5x5 image, centre 2.5
    rays = plucker_rays(camera(torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64), K), 5, 5)
    assert rays.shape == (1, 6, 5, 5)
    assert_close(rays[0, 3:, 2, 2], torch.tensor([0.0, 0.0, 1.0], dtype=F64))
    assert_close(rays[0, :3], torch.zeros(3, 5, 5, dtype=F64))  # o = 0 → moment 0
    # pixel (u=4, v=0): direction ∝ ((4.5 − 2.5)/4, (0.5 − 2.5)/3, 1)
    expected = torch.tensor([0.5, -2 / 3, 1.0], dtype=F64)
    assert_close(rays[0, 3:, 0, 4], expected / expected.norm())


def test_rays_of_a_moved_camera_are_moved_rays() -> None:
    K = intrinsics_from_fov(70.0, 12, 8, F64)
    R = axis_angle_to_matrix(torch.tensor([0.3, -0.7, 0.2], dtype=F64))
    center = torch.tensor([0.4, -0.1, -0.6], dtype=F64)
    base = plucker_rays(camera(torch.eye(3, dtype=F64), torch.zeros(3, dtype=F64), K), 8, 12)[0]
    moved = plucker_rays(camera(R, center, K), 8, 12)[0]
    d, m = moved[3:], moved[:3]
    assert_close(d, torch.einsum("ij,jhw->ihw", R, base[3:]))  # rotated directions
    assert_close(d.norm(dim=0), torch.ones(8, 12, dtype=F64))
    assert_close((m * d).sum(0), torch.zeros(8, 12, dtype=F64))  # o × d ⟂ d
    # the origin is the camera centre: c × d = m, and c lies on every ray
    c = center[:, None, None].expand_as(d)
    assert_close(torch.linalg.cross(c, d, dim=0), m)
    closest = torch.linalg.cross(d, m, dim=0)  # point of the line closest to the world origin
    assert_close(torch.linalg.cross(c - closest, d, dim=0), torch.zeros_like(d))


def test_plucker_rays_keep_dtype_and_check_size() -> None:
    cams = random_cameras(2, 0, 16, 8).to(torch.float32)
    assert plucker_rays(cams, 8, 16).dtype == torch.float32
    with pytest.raises(ValueError, match="resize the cameras first"):
        plucker_rays(cams, 16, 16)


# -- dit_rays ---------------------------------------------------------------------------------
def test_dit_rays_packing_and_reference_frame() -> None:
    height, width, num = 32, 48, 9  # F = 4·2 + 1 → F_lat = 3, latent 4 × 6
    cams = random_cameras(num, 1, width, height)
    ref = random_cameras(1, 2, width, height)
    packed = dit_rays(ref, cams, height, width)
    assert packed.shape == (24, 1 + 3, 4, 6)
    def latent(c: Cameras) -> Cameras:  # K for the 1/8 image, built by hand
        return Cameras(c.K / torch.tensor([8.0, 8.0, 1.0], dtype=F64)[:, None], c.c2w)

    identity = plucker_rays(latent(Cameras.identity(1, ref.K[0])), 4, 6)[0]
    video = plucker_rays(latent(cams.relative_to(ref)), 4, 6)  # (F, 6, 4, 6)
    for k in range(4):
        chunk = slice(6 * k, 6 * k + 6)
        assert_close(packed[chunk, 0], identity)  # reference = identity camera ×4
        assert_close(packed[chunk, 1], video[0])  # first video frame ×4
        for j in (1, 2):
            assert_close(packed[chunk, 1 + j], video[4 * j - 3 + k])
    assert float(identity[:3].abs().max()) == 0.0  # identity camera: origin 0 → zero moment


def test_dit_rays_depend_only_on_poses_relative_to_the_reference() -> None:
    cams, ref = random_cameras(5, 3, 16, 16), random_cameras(1, 4, 16, 16)
    world = torch.eye(4, dtype=F64)
    world[:3, :3] = axis_angle_to_matrix(torch.tensor([1.0, 2.0, -0.5], dtype=F64))
    world[:3, 3] = torch.tensor([3.0, -1.0, 2.0], dtype=F64)
    moved = lambda c: Cameras(c.K, world @ c.c2w, c.width, c.height)  # noqa: E731
    assert_close(dit_rays(moved(ref), moved(cams), 16, 16), dit_rays(ref, cams, 16, 16))


@pytest.mark.parametrize("num, height, width, ref_frames, message", [
    (8, 16, 16, 1, r"F = 4k \+ 1"), (5, 40, 16, 1, "height must be a positive int multiple of 16"),
    (5, 16, 24, 1, "width must be"), (5, 16, 16, 2, "reference must be 1 camera"),
])
def test_dit_rays_rejects_bad_input(num: int, height: int, width: int, ref_frames: int,
                                    message: str) -> None:
    cams = random_cameras(num, 0, width, height)
    with pytest.raises(ValueError, match=message):
        dit_rays(cams[:ref_frames], cams, height, width)


# -- DeX head-pose ray map (Eq. 3) ------------------------------------------------------------
def test_head_pose_ray_map_identity_is_zero() -> None:
    P = torch.eye(3, 4, dtype=F64)[None]
    assert head_pose_ray_map(P, 6, 10).abs().max() == 0


def test_head_pose_ray_map_matches_hand_computation() -> None:
    R = rotation_z(torch.tensor(math.pi / 2, dtype=F64))[None]  # (x, y) → (−y, x)
    t, s = torch.tensor([[0.1, -0.2, 0.3]], dtype=F64), torch.tensor([2.0], dtype=F64)
    P = matrix_from_rts(R, t, s)
    ray_map = head_pose_ray_map(P, 2, 4)  # u = ±0.25, ±0.75 (width); v = ±0.5 (height)
    assert ray_map.shape == (1, 3, 2, 4)
    # pixel (row 0, col 3): u = 0.75, v = −0.5 → 2·(0.5, 0.75, 0) + t − (0.75, −0.5, 0)
    assert_close(ray_map[0, :, 0, 3], torch.tensor([0.35, 1.8, 0.3], dtype=F64))
    # pixel (row 1, col 0): u = −0.75, v = 0.5 → 2·(−0.5, −0.75, 0) + t − (−0.75, 0.5, 0)
    assert_close(ray_map[0, :, 1, 0], torch.tensor([-0.15, -2.2, 0.3], dtype=F64))


def test_rts_round_trip_and_errors() -> None:
    g = torch.Generator().manual_seed(0)
    R = axis_angle_to_matrix(torch.randn(4, 3, generator=g, dtype=F64))
    t, s = torch.randn(4, 3, generator=g, dtype=F64), torch.rand(4, generator=g, dtype=F64) + 0.5
    R2, t2, s2 = rts_from_matrix(matrix_from_rts(R, t, s))
    for a, b in ((R2, R), (t2, t), (s2, s)):
        assert_close(a, b, atol=1e-12, rtol=0)
    bad = matrix_from_rts(R, t, s)
    bad[2, :, 0] *= -1  # reflection
    with pytest.raises(ValueError, match=r"frame 2: det\(sR\)"):
        rts_from_matrix(bad)
    sheared = matrix_from_rts(R, t, s)
    sheared[1, 0, 1] += 0.5
    with pytest.raises(ValueError, match="frame 1: .*not a scaled rotation"):
        rts_from_matrix(sheared)
    with pytest.raises(ValueError, match="frame 3: scale must be > 0"):
        matrix_from_rts(R, t, torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64))
    with pytest.raises(ValueError, match=r"shape \(F, 3, 4\)"):
        head_pose_ray_map(torch.eye(4)[None], 4, 4)
    nan = torch.eye(3, 4).repeat(2, 1, 1)
    nan[1, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="frame 1: P has non-finite"):
        head_pose_ray_map(nan, 4, 4)
