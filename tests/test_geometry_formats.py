"""Camera file formats: conventions, exact round trips, hand-written files, bad files."""

import json
import math
from pathlib import Path

import pytest
import torch
from torch.testing import assert_close

from factorportrait.geometry import (
    Cameras,
    intrinsics_from_fov,
    load_cameras,
    load_cameras_json,
    load_nerf_transforms,
    load_realestate10k,
    opencv_to_opengl,
    opengl_to_opencv,
    save_cameras,
    save_cameras_json,
    save_nerf_transforms,
    save_realestate10k,
)
from factorportrait.geometry.rotations import axis_angle_to_matrix

F64 = torch.float64
SAVE_LOAD = {
    "json": (save_cameras_json, lambda p: load_cameras_json(p, dtype=F64), "cams.json"),
    "nerf": (save_nerf_transforms, lambda p: load_nerf_transforms(p, dtype=F64), "transforms.json"),
    "re10k": (save_realestate10k, lambda p: load_realestate10k(p, 64, 48, dtype=F64), "cams.txt"),
}


def random_cameras(num: int = 5, seed: int = 0, dtype: torch.dtype = F64) -> Cameras:
    g = torch.Generator().manual_seed(seed)
    c2w = torch.eye(4, dtype=F64).repeat(num, 1, 1)
    c2w[:, :3, :3] = axis_angle_to_matrix(torch.randn(num, 3, generator=g, dtype=F64))
    c2w[:, :3, 3] = torch.randn(num, 3, generator=g, dtype=F64)
    K = intrinsics_from_fov(55.0, 64, 48, F64).repeat(num, 1, 1)
    K[:, :2, :] *= 1 + 0.2 * torch.rand(num, 2, 1, generator=g, dtype=F64)  # varying fx, fy, cx, cy
    K[:, 2] = torch.tensor([0.0, 0.0, 1.0], dtype=F64)
    return Cameras(K.to(dtype), c2w.to(dtype), 64, 48)


def assert_same(a: Cameras, b: Cameras, atol: float = 1e-6) -> None:
    assert (a.width, a.height) == (b.width, b.height)
    assert_close(a.K, b.K, atol=atol, rtol=0)
    assert_close(a.c2w, b.c2w, atol=atol, rtol=0)


def test_opencv_opengl_conversion() -> None:
    cams = random_cameras()
    gl = opencv_to_opengl(cams.c2w)
    assert_close(opengl_to_opencv(gl), cams.c2w, atol=0, rtol=0)
    assert_close(gl[:, :3, 2], -cams.c2w[:, :3, 2])  # OpenGL cameras look along −z
    assert_close(gl[:, :3, 1], -cams.c2w[:, :3, 1])  # and have y up
    assert_close(gl[:, :, 3], cams.c2w[:, :, 3])  # same centre, same world
    identity_gl = opencv_to_opengl(torch.eye(4, dtype=F64))
    assert_close(identity_gl, torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64)))


@pytest.mark.parametrize("fmt", sorted(SAVE_LOAD))
def test_round_trip_is_exact(tmp_path: Path, fmt: str) -> None:
    save, load, name = SAVE_LOAD[fmt]
    cams = random_cameras()
    save(cams, tmp_path / name)
    assert_same(load(tmp_path / name), cams)
    assert_same(load_cameras(tmp_path / name, width=64, height=48, dtype=F64), cams)  # dispatch
    assert sorted(p.name for p in tmp_path.iterdir()) == [name]  # no temporary files left


@pytest.mark.parametrize("name", ["a.json", "a_transforms.json", "a.txt"])
def test_save_cameras_dispatch_keeps_float32(tmp_path: Path, name: str) -> None:
    cams = random_cameras(3, seed=1, dtype=torch.float32)
    save_cameras(cams, tmp_path / name)
    loaded = load_cameras(tmp_path / name, width=64, height=48, dtype=torch.float32)
    assert loaded.K.dtype == torch.float32
    assert_same(loaded, cams)


def test_own_json_layout_and_skew(tmp_path: Path) -> None:
    cams = random_cameras(2)
    K = cams.K.clone()
    K[1, 0, 1] = 0.25
    skewed = Cameras(K, cams.c2w, 64, 48)
    save_cameras_json(skewed, tmp_path / "c.json")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["convention"] == "opencv"
    assert set(data["frames"][0]) == {"fx", "fy", "cx", "cy", "width", "height", "c2w"}
    assert data["frames"][1]["skew"] == 0.25
    assert_same(load_cameras_json(tmp_path / "c.json", dtype=F64), skewed)
    with pytest.raises(ValueError, match="no skew term"):
        save_nerf_transforms(skewed, tmp_path / "transforms.json")


def test_nerf_camera_angle_x_file(tmp_path: Path) -> None:
    """The original NeRF synthetic layout: only camera_angle_x, no w/h, OpenGL matrices."""
    gl = [[1, 0, 0, 0.5], [0, -1, 0, 0], [0, 0, -1, -2.0], [0, 0, 0, 1]]  # OpenCV identity rotation
    path = tmp_path / "transforms_train.json"
    path.write_text(json.dumps({"camera_angle_x": 0.6911112070083618,
                                "frames": [{"file_path": "./train/r_0", "transform_matrix": gl}]}))
    with pytest.raises(ValueError, match="needs the image width"):
        load_nerf_transforms(path)
    cams = load_nerf_transforms(path, width=800, height=800, dtype=F64)
    focal = 400 / math.tan(0.6911112070083618 / 2)
    expected_K = torch.tensor([[focal, 0, 400], [0, focal, 400], [0, 0, 1]], dtype=F64)
    assert_close(cams.K[0], expected_K)
    assert_close(cams.rotations()[0], torch.eye(3, dtype=F64))
    assert_close(cams.centers()[0], torch.tensor([0.5, 0.0, -2.0], dtype=F64))
    data = json.loads(path.read_text())
    data["k1"] = 0.1
    path.write_text(json.dumps(data))
    with pytest.warns(UserWarning, match="distortion coefficients are ignored"):
        load_nerf_transforms(path, width=800, height=800)


def test_realestate10k_hand_written_row(tmp_path: Path) -> None:
    # world-to-camera: rotation 90° about y, translation (1, 2, 3)
    row = "33366 0.5 0.75 0.5 0.5 0 0 0 0 1 1 0 1 0 2 -1 0 0 3"
    path = tmp_path / "clip.txt"
    path.write_text(f"https://www.youtube.com/watch?v=abc\n{row}\n")
    cams = load_realestate10k(path, width=640, height=360, dtype=F64)
    assert_close(cams.K[0], torch.tensor([[320.0, 0, 320], [0, 270, 180], [0, 0, 1]], dtype=F64))
    w2c = torch.tensor([[0, 0, 1, 1], [0, 1, 0, 2], [-1, 0, 0, 3], [0, 0, 0, 1]], dtype=F64)
    assert_close(cams.world_to_camera()[0], w2c)
    assert_close(cams.c2w[0], torch.linalg.inv(w2c))


@pytest.mark.parametrize("name, content, message", [
    ("a.json", "{not json", "not valid JSON"),
    ("a.json", '{"convention": "opencv", "frames": []}', "non-empty 'frames'"),
    ("a.json", '{"convention": "opengl", "frames": [{}]}', '"convention": "opencv"'),
    ("a.json", '{"convention": "opencv", "frames": [{"fx": 1, "fy": 1, "cx": 0, "cy": 0, '
               '"c2w": [[1]]}]}',
     "frame 0: 'c2w' must be a 4x4"),
    ("a.json", '{"convention": "opencv", "frames": [{"fx": 1, "fy": 1, "cx": 0, "c2w": []}]}',
     "frame 0: 'cy' must be a number"),
    ("a.json", json.dumps({"convention": "opencv", "frames": [
        {"fx": 1, "fy": 1, "cx": 0, "cy": 0,
         "c2w": [[2, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]}]}),
     "frame 0: c2w rotation is not orthonormal"),
    ("transforms.json", '{"fl_x": 50, "w": 64, "h": 48, "frames": [{"transform_matrix": "eye"}]}',
     "frame 0: 'transform_matrix' must be a 4x4"),
    ("transforms.json", '{"w": 64, "h": 48, "frames": [{"transform_matrix": []}]}',
     "frame 0: expected a number for fl_x/camera_angle_x"),
    ("transforms.json", '{"fl_x": 50, "w": 64, "h": 48, "k1": "x", '
                        '"frames": [{"transform_matrix": []}]}', "'k1' must be a number"),
    ("a.txt", "1 2 3\n4 5 6\n", "line 2: expected 19 numbers"),
    ("a.txt", "https://youtube\n", "no RealEstate10K camera rows"),
    ("a.yaml", "", "unknown camera file type"),
])
def test_bad_files_name_the_file_and_the_problem(tmp_path: Path, name: str, content: str,
                                                 message: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_cameras(path, width=64, height=48)
    assert str(path) in str(error.value) or "unknown camera file type" in str(error.value)


def test_errors_for_missing_sizes_and_unknown_types(tmp_path: Path) -> None:
    cams = random_cameras(2)
    (tmp_path / "a.txt").write_text("x\n")
    with pytest.raises(ValueError, match="pass width and height"):
        load_cameras(tmp_path / "a.txt")
    with pytest.raises(ValueError, match="set Cameras.width/height"):
        save_realestate10k(Cameras(cams.K, cams.c2w), tmp_path / "b.txt")
    with pytest.raises(ValueError, match="unknown camera file type"):
        save_cameras(cams, tmp_path / "b.csv")
