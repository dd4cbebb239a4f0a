"""Camera files: OpenGL/Blender conversion, NeRF ``transforms.json``, RealEstate10K, our JSON.

All writers are atomic (temporary file in the same folder, then ``os.replace``) and write
floats with ``repr`` precision, so every round trip is exact to float precision. Readers raise
``ValueError`` naming the file, the frame and what was expected. The pixel-centre convention
(image centre at ``(W/2, H/2)``) is shared with COLMAP, nerfstudio and RealEstate10K, so
intrinsics are copied without a half-pixel shift. See docs/cameras.md.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras, invert_rigid
from factorportrait.io.atomic import atomic_write_bytes

PathLike = str | os.PathLike
_FLIP_YZ = (1.0, -1.0, -1.0, 1.0)  # OpenCV camera (x right, y down, z fwd) ↔ OpenGL (y up, z back)
_DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "p1", "p2")
REALESTATE10K_HEADER = "# FactorPortrait cameras (RealEstate10K format)"


# -- conventions ------------------------------------------------------------------------------
def opencv_to_opengl(c2w: Tensor) -> Tensor:
    """OpenCV camera-to-world ``(..., 4, 4)`` → OpenGL/Blender (camera y up, z backwards).

    Flips the camera's y and z axes (columns 1, 2); the world frame is unchanged.
    """
    return c2w * c2w.new_tensor(_FLIP_YZ)


def opengl_to_opencv(c2w: Tensor) -> Tensor:
    """OpenGL/Blender camera-to-world ``(..., 4, 4)`` → OpenCV: the same flip (an involution)."""
    return c2w * c2w.new_tensor(_FLIP_YZ)


# -- helpers ----------------------------------------------------------------------------------
def _write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _read_json(path: PathLike) -> Any:
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def _pinhole(cameras: Cameras, fmt: str) -> tuple[list[float], ...]:
    """(fx, fy, cx, cy) lists; formats without skew reject cameras that have one."""
    if bool((cameras.K[:, 0, 1] != 0).any()):
        raise ValueError(f"{fmt}: the format has no skew term but K[0, 1] is non-zero")
    fx, fy = cameras.focal_lengths().T.tolist()
    cx, cy = cameras.principal_points().T.tolist()
    return fx, fy, cx, cy


def _require_size(cameras: Cameras, fmt: str) -> tuple[int, int]:
    if cameras.width is None or cameras.height is None:
        raise ValueError(f"{fmt}: the format stores the image size; set Cameras.width/height")
    return cameras.width, cameras.height


def _intrinsics(fx: Sequence[float], fy: Sequence[float], cx: Sequence[float],
                cy: Sequence[float], dtype: torch.dtype) -> Tensor:
    K = torch.zeros(len(fx), 3, 3, dtype=torch.float64)
    for (row, col), values in (((0, 0), fx), ((1, 1), fy), ((0, 2), cx), ((1, 2), cy)):
        K[:, row, col] = torch.tensor(values, dtype=torch.float64)
    K[:, 2, 2] = 1
    return K.to(dtype)


def _matrix(value: Any, path: PathLike, where: str) -> list[list[float]]:
    """A 4×4 (or 3×4, completed with [0, 0, 0, 1]) nested list of numbers."""
    def is_number(x: Any) -> bool:
        return isinstance(x, (int, float)) and not isinstance(x, bool)

    ok = isinstance(value, list) and len(value) in (3, 4) and all(
        isinstance(row, list) and len(row) == 4 and all(map(is_number, row)) for row in value
    )
    if not ok:
        raise ValueError(f"{path}: {where} must be a 4x4 (or 3x4) list of numbers")
    bottom = [[0.0, 0.0, 0.0, 1.0]] if len(value) == 3 else []
    return [list(map(float, row)) for row in value] + bottom


def _build(path: PathLike, K: Tensor, c2w: Tensor, width: Any, height: Any) -> Cameras:
    """Construct Cameras, prefixing validation errors with the file name."""
    try:
        return Cameras(K, c2w, width, height)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error


def _frames(data: Any, path: PathLike, expected: str) -> list[dict]:
    frames = data.get("frames") if isinstance(data, dict) else None
    if not isinstance(frames, list) or not frames or not all(isinstance(f, dict) for f in frames):
        raise ValueError(f"{path}: expected {expected} with a non-empty 'frames' list of objects")
    return frames


# -- our JSON ---------------------------------------------------------------------------------
def save_cameras_json(cameras: Cameras, path: PathLike) -> None:
    """Write ``{"convention": "opencv", "frames": [{fx, fy, cx, cy, width, height, c2w}]}``.

    Units: pixels and metres; ``c2w`` is the OpenCV 4×4 camera-to-world; a non-zero skew is
    stored as an extra ``"skew"`` key.
    """
    frames = []
    for i in range(len(cameras)):
        K = cameras.K[i].tolist()
        frame = {"fx": K[0][0], "fy": K[1][1], "cx": K[0][2], "cy": K[1][2],
                 "width": cameras.width, "height": cameras.height, "c2w": cameras.c2w[i].tolist()}
        if K[0][1] != 0:
            frame["skew"] = K[0][1]
        frames.append(frame)
    _write_text(path, json.dumps({"convention": "opencv", "frames": frames}, indent=1) + "\n")


def _cameras_from_json(data: Any, path: PathLike, dtype: torch.dtype) -> Cameras:
    frames = _frames(data, path, 'a camera JSON {"convention": "opencv", "frames": [...]}')
    if data.get("convention") != "opencv":
        raise ValueError(f"{path}: expected \"convention\": \"opencv\", "
                         f"got {data.get('convention')!r}")
    K, c2w, sizes = [], [], set()
    for i, frame in enumerate(frames):
        values = {}
        for key in ("fx", "fy", "cx", "cy", "skew"):
            value = frame.get(key, 0.0 if key == "skew" else None)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{path}: frame {i}: '{key}' must be a number, got {value!r}")
            values[key] = float(value)
        K.append([[values["fx"], values["skew"], values["cx"]], [0.0, values["fy"], values["cy"]],
                  [0.0, 0.0, 1.0]])
        c2w.append(_matrix(frame.get("c2w"), path, f"frame {i}: 'c2w'"))
        sizes.add((frame.get("width"), frame.get("height")))
    if len(sizes) != 1:
        raise ValueError(f"{path}: all frames must share one width/height, "
                         f"got {sorted(sizes, key=str)}")
    width, height = sizes.pop()
    return _build(path, torch.tensor(K, dtype=dtype), torch.tensor(c2w, dtype=dtype), width, height)


def load_cameras_json(path: PathLike, dtype: torch.dtype | None = None) -> Cameras:
    """Read a file written by :func:`save_cameras_json`."""
    return _cameras_from_json(_read_json(path), path, dtype or torch.get_default_dtype())


# -- NeRF transforms.json ---------------------------------------------------------------------
def save_nerf_transforms(cameras: Cameras, path: PathLike,
                         file_paths: Sequence[str] | None = None) -> None:
    """Write a NeRF/nerfstudio ``transforms.json``: per-frame ``fl_x, fl_y, cx, cy, w, h`` and an
    OpenGL ``transform_matrix``; frame 0's intrinsics (and ``camera_angle_x``) also at the top
    level for loaders that read only those. ``file_paths`` default to ``images/frame_00001.png``…
    """
    width, height = _require_size(cameras, "save_nerf_transforms")
    fx, fy, cx, cy = _pinhole(cameras, "save_nerf_transforms")
    if file_paths is None:
        file_paths = [f"images/frame_{i + 1:05d}.png" for i in range(len(cameras))]
    if len(file_paths) != len(cameras):
        raise ValueError(f"save_nerf_transforms: {len(file_paths)} file_paths for "
                         f"{len(cameras)} cameras")
    gl = opencv_to_opengl(cameras.c2w).tolist()
    frames = [{"file_path": file_paths[i], "transform_matrix": gl[i], "fl_x": fx[i], "fl_y": fy[i],
               "cx": cx[i], "cy": cy[i], "w": width, "h": height} for i in range(len(cameras))]
    data = {"camera_model": "OPENCV", "camera_angle_x": 2 * math.atan(0.5 * width / fx[0]),
            "fl_x": fx[0], "fl_y": fy[0], "cx": cx[0], "cy": cy[0], "w": width, "h": height,
            "frames": frames}
    _write_text(path, json.dumps(data, indent=1) + "\n")


def _nerf_frame_intrinsics(data: dict, frame: dict, path: PathLike, i: int, width: int | None,
                           height: int | None) -> tuple[list[float], Any, Any]:
    """(fx, fy, cx, cy), w, h of one frame: per-frame keys override top-level ones."""
    def get(key: str, default: Any = None) -> Any:
        value = frame.get(key, data.get(key, default))
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(f"{path}: frame {i}: '{key}' must be a number, got {value!r}")
        return value

    w, h = (int(v) if isinstance(v, float) and v.is_integer() else v
            for v in (get("w", width), get("h", height)))
    fx, fy = get("fl_x"), get("fl_y")
    if fx is None and get("camera_angle_x") is not None:
        if w is None:
            raise ValueError(f"{path}: frame {i}: camera_angle_x needs the image width; "
                             "the file has no 'w', pass width=/height=")
        fx = 0.5 * w / math.tan(0.5 * get("camera_angle_x"))
    if fy is None and get("camera_angle_y") is not None and h is not None:
        fy = 0.5 * h / math.tan(0.5 * get("camera_angle_y"))
    fy = fx if fy is None else fy
    cx = get("cx", None if w is None else w / 2)
    cy = get("cy", None if h is None else h / 2)
    for key, value in (("fl_x/camera_angle_x", fx), ("cx (or w)", cx), ("cy (or h)", cy)):
        if value is None:
            raise ValueError(f"{path}: frame {i}: expected a number for {key}, got None")
    if any(get(key, 0.0) != 0.0 for key in _DISTORTION_KEYS):
        warnings.warn(f"{path}: lens distortion coefficients are ignored (pinhole cameras only)",
                      stacklevel=4)
    return [float(fx), float(fy), float(cx), float(cy)], w, h


def load_nerf_transforms(path: PathLike, width: int | None = None, height: int | None = None,
                         dtype: torch.dtype | None = None) -> Cameras:
    """Read a NeRF ``transforms.json`` (OpenGL ``transform_matrix``) into OpenCV Cameras.

    Intrinsics from per-frame or top-level ``fl_x, fl_y, cx, cy, w, h`` or ``camera_angle_x``
    (``cx, cy`` default to the image centre); ``width/height`` fill in a missing ``w/h``.
    """
    data = _read_json(path)
    return _cameras_from_nerf(data, path, width, height, dtype or torch.get_default_dtype())


def _cameras_from_nerf(data: Any, path: PathLike, width: int | None, height: int | None,
                       dtype: torch.dtype) -> Cameras:
    frames = _frames(data, path, "a NeRF transforms.json")
    intrinsics, c2w, sizes = [], [], set()
    for i, frame in enumerate(frames):
        values, w, h = _nerf_frame_intrinsics(data, frame, path, i, width, height)
        intrinsics.append(values)
        c2w.append(_matrix(frame.get("transform_matrix"), path, f"frame {i}: 'transform_matrix'"))
        sizes.add((w, h))
    if len(sizes) != 1:
        raise ValueError(f"{path}: all frames must share one image size w/h, "
                         f"got {sorted(sizes, key=str)}")
    w, h = sizes.pop()
    K = _intrinsics(*zip(*intrinsics), dtype=dtype)
    c2w_cv = opengl_to_opencv(torch.tensor(c2w, dtype=torch.float64)).to(dtype)
    return _build(path, K, c2w_cv, w, h)


# -- RealEstate10K ----------------------------------------------------------------------------
def save_realestate10k(cameras: Cameras, path: PathLike, timestamps: Sequence[int] | None = None,
                       url: str | None = None) -> None:
    """Write RealEstate10K rows ``timestamp fx/W fy/H cx/W cy/H 0 0 <3×4 world-to-camera>``.

    The first line is ``url`` (RealEstate10K puts the video URL there) or a comment header.
    ``timestamps`` (integers, microseconds) default to 30 fps.
    """
    width, height = _require_size(cameras, "save_realestate10k")
    fx, fy, cx, cy = _pinhole(cameras, "save_realestate10k")
    if timestamps is None:
        timestamps = [round(i * 1e6 / 30) for i in range(len(cameras))]
    if len(timestamps) != len(cameras):
        raise ValueError(f"save_realestate10k: {len(timestamps)} timestamps for "
                         f"{len(cameras)} cameras")
    w2c = cameras.world_to_camera()[:, :3, :].reshape(len(cameras), 12).tolist()
    lines = [url or REALESTATE10K_HEADER]
    for i in range(len(cameras)):
        numbers = [fx[i] / width, fy[i] / height, cx[i] / width, cy[i] / height, 0.0, 0.0, *w2c[i]]
        lines.append(" ".join([str(int(timestamps[i]))] + [repr(x) for x in numbers]))
    _write_text(path, "\n".join(lines) + "\n")


def _parse_row(line: str) -> list[float] | None:
    try:
        numbers = [float(x) for x in line.split()]
    except ValueError:
        return None
    return numbers if len(numbers) == 19 else None


def load_realestate10k(path: PathLike, width: int, height: int,
                       dtype: torch.dtype | None = None) -> Cameras:
    """Read RealEstate10K rows (see :func:`save_realestate10k`) for images of ``width × height``.

    A first line that is not a camera row (the video URL) is skipped.
    """
    lines = [line for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = []
    for n, line in enumerate(lines):
        row = _parse_row(line)
        if row is None and n == 0:
            continue  # header: the YouTube URL
        if row is None:
            raise ValueError(f"{path}: line {n + 1}: expected 19 numbers (timestamp fx fy cx cy "
                             f"0 0 and a 3x4 world-to-camera), got {line[:80]!r}")
        rows.append(row)
    if not rows:
        raise ValueError(f"{path}: no RealEstate10K camera rows found")
    data = torch.tensor(rows, dtype=torch.float64)  # (F, 19)
    scale = torch.tensor([width, height, width, height], dtype=torch.float64)
    fx, fy, cx, cy = (data[:, 1:5] * scale).T
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(rows), 1, 1)
    w2c[:, :3, :] = data[:, 7:].reshape(-1, 3, 4)
    dtype = dtype or torch.get_default_dtype()
    K = _intrinsics(fx.tolist(), fy.tolist(), cx.tolist(), cy.tolist(), dtype)
    return _build(path, K, invert_rigid(w2c).to(K.dtype), width, height)


# -- dispatch ---------------------------------------------------------------------------------
CAMERA_FILE_TYPES = ("*.json (ours, OpenCV)", "*transforms.json (NeRF)", "*.txt (RealEstate10K)")


def save_cameras(cameras: Cameras, path: PathLike) -> None:
    """Write by file name: ``*transforms.json`` NeRF, ``*.json`` ours, ``*.txt`` RealEstate10K."""
    name = Path(path).name.lower()
    if name.endswith("transforms.json"):
        save_nerf_transforms(cameras, path)
    elif name.endswith(".json"):
        save_cameras_json(cameras, path)
    elif name.endswith(".txt"):
        save_realestate10k(cameras, path)
    else:
        raise ValueError(f"save_cameras: unknown camera file type {path}; "
                         f"expected one of {CAMERA_FILE_TYPES}")


def load_cameras(path: PathLike, width: int | None = None, height: int | None = None,
                 dtype: torch.dtype | None = None) -> Cameras:
    """Read any supported camera file; JSON kind is detected from the content.

    ``width/height`` are required for RealEstate10K (normalised intrinsics) and fill in a NeRF
    file's missing ``w/h``.
    """
    dtype = dtype or torch.get_default_dtype()
    name = Path(path).name.lower()
    if name.endswith(".txt"):
        if width is None or height is None:
            raise ValueError(f"{path}: RealEstate10K intrinsics are normalised; "
                             "pass width and height")
        return load_realestate10k(path, width, height, dtype)
    if not name.endswith(".json"):
        raise ValueError(f"load_cameras: unknown camera file type {path}; "
                         f"expected one of {CAMERA_FILE_TYPES}")
    data = _read_json(path)
    frames = data.get("frames") if isinstance(data, dict) else None
    if isinstance(frames, list) and frames and isinstance(frames[0], dict) \
            and "transform_matrix" in frames[0]:
        return _cameras_from_nerf(data, path, width, height, dtype)
    return _cameras_from_json(data, path, dtype)
