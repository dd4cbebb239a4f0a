"""Step 1 of the pipeline: check and normalise a render's inputs, before any heavy work.

Reads only what is cheap (the reference image, video headers, control-track files, camera
files) and raises a ``ValueError`` / ``FileNotFoundError`` naming the offending input: an
unreadable image or video, a frame count that is not ``4k + 1`` or exceeds the driving
sources, driving video / control tracks / trajectory of different lengths, sizes that are not
multiples of 16, an output path that cannot be written.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Union

import numpy as np
import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.formats import load_cameras
from factorportrait.geometry.rays import PIXEL_MULTIPLE
from factorportrait.geometry.trajectories import make_trajectory
from factorportrait.inference.control_track import ControlTrack, load_control_track
from factorportrait.inference.controls import (CONTROL_MODES, MODE_FACTORS,
                                               default_reference_camera)
from factorportrait.io.video import read_image, read_video, resize_frames, video_info

DEFAULT_FPS = 16.0  # Wan 2.1's frame rate (81 frames = 5 s)
DEFAULT_FRAMES = 49  # a render's length when nothing else fixes it (3 s at 16 fps)
MIN_IMAGE_SIDE = 32  # pixels: a smaller reference image is refused, not upscaled
REFERENCE_CROPS = ("auto", "face", "center")
PathLike = Union[str, os.PathLike]
ImageInput = Union[PathLike, Tensor, np.ndarray]
TrajectoryInput = Union[Cameras, str, PathLike, tuple, Mapping[str, Any], None]


@dataclass(eq=False)
class RenderRequest:
    """The validated inputs of one render (shapes for ``F = num_frames``, ``H × W``).

    Attributes:
        reference_image: ``(3, H, W)`` float32 in [-1, 1]: after step 1 the centre crop, after
            step 2 (faces) the portrait crop when ``reference_crop == "face"``.
        photo: ``uint8 (H0, W0, 3)``, the reference image as given.
        reference_crop: ``"face"`` (track the photo's face, crop a portrait around it, fit the
            avatar mesh to it) or ``"center"`` (the centre crop, resized).
        crop_box: where ``reference_image`` was cut from ``photo`` (1 box; set by step 2), for
            paste-back.
        reference: 1-frame track: the reference camera (K for H × W), pose, mesh expression and
            (optionally) expression code.
        driving: ``F`` frames of the driving performance (codes or pose may still be missing).
        driving_video: the driving video when step 2 must take codes or head pose from it,
            else None.
        mesh_source: the mesh of the pose condition chosen by step 2 (the fitted avatar of a
            face-cropped reference), or None for the pipeline's own.
        trajectory: ``F`` (or 1) world cameras with K for ``H × W``.
        pose_source, expression_source: ``F`` frames each (``mixed``).
        normal_maps: ``(F, 3, H, W)`` in [0, 1] or a normal-map video path.
    """

    mode: str
    num_frames: int
    height: int
    width: int
    fps: float
    reference_image: Tensor
    reference: ControlTrack
    photo: Tensor | None = None
    reference_crop: str = "center"
    crop_box: Any = None
    mesh_source: Any = None
    faces_done: bool = False
    driving: ControlTrack | None = None
    driving_video: PathLike | Tensor | None = None
    trajectory: Cameras | None = None
    pose_source: ControlTrack | None = None
    expression_source: ControlTrack | None = None
    normal_maps: PathLike | Tensor | None = None
    output_path: Path | None = None


def check_size(height: int, width: int) -> None:
    for name, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < PIXEL_MULTIPLE \
                or value % PIXEL_MULTIPLE:
            raise ValueError(f"{name} (--{name}) must be a positive multiple of "
                             f"{PIXEL_MULTIPLE}, got {value!r}")


def load_reference_image(image: ImageInput, height: int | None, width: int | None
                         ) -> tuple[Tensor, Tensor, int, int]:
    """A path, ``uint8 (H, W, 3)`` or float ``(3, H, W)`` in [-1, 1] -> the photo ``uint8
    (H, W, 3)`` and ``(3, H', W')`` float32 in [-1, 1] at the output size (centre-cropped to its
    aspect, then resized). The output size defaults to the image's own."""
    if isinstance(image, (str, os.PathLike)):
        pixels = read_image(image)  # FileNotFoundError / ValueError name the file
    elif isinstance(image, (Tensor, np.ndarray)):
        pixels = torch.as_tensor(image)
        if pixels.dtype != torch.uint8:
            if pixels.ndim != 3 or pixels.shape[0] != 3 or not pixels.is_floating_point():
                raise ValueError(f"reference_image: expected uint8 (H, W, 3) or float (3, H, W) "
                                 f"in [-1, 1], got {pixels.dtype} {tuple(pixels.shape)}")
            finite = torch.isfinite(pixels)
            if not bool(finite.all()):
                raise ValueError(f"reference_image: {int((~finite).sum())} of "
                                 f"{pixels.numel()} values are NaN/Inf; expected float "
                                 "(3, H, W) in [-1, 1]")
            pixels = ((pixels.permute(1, 2, 0).clamp(-1, 1) + 1) * 127.5).round().byte()
    else:
        raise ValueError(f"reference_image: expected a path or an image tensor, got "
                         f"{type(image).__name__}")
    if pixels.ndim != 3 or pixels.shape[-1] != 3:
        raise ValueError(f"reference_image: expected (H, W, 3) RGB, got {tuple(pixels.shape)}")
    if min(pixels.shape[:2]) < MIN_IMAGE_SIDE:
        raise ValueError(f"reference_image is {pixels.shape[1]}x{pixels.shape[0]} pixels: too "
                         f"small for a portrait (at least {MIN_IMAGE_SIDE} px on each side)")
    if height is None and width is None:
        try:
            check_size(pixels.shape[0], pixels.shape[1])
        except ValueError:
            raise ValueError(f"reference_image is {pixels.shape[1]}x{pixels.shape[0]} pixels "
                             f"(width x height), and without height/width (--height/--width) "
                             f"the render takes its size, which must be multiples of "
                             f"{PIXEL_MULTIPLE}: pass height and width") from None
    height = pixels.shape[0] if height is None else height
    width = pixels.shape[1] if width is None else width
    check_size(height, width)
    frames = _center_crop(pixels[None], height / width)
    frames = resize_frames(frames, (height, width))
    return pixels, frames[0].permute(2, 0, 1).float() / 127.5 - 1, height, width


def _center_crop(frames: Tensor, aspect: float) -> Tensor:
    """Crop ``(N, H, W, 3)`` at the centre to ``height / width = aspect``."""
    height, width = frames.shape[1:3]
    if height / width > aspect:
        new = max(1, round(width * aspect))
        top = (height - new) // 2
        return frames[:, top:top + new]
    new = max(1, round(height / aspect))
    left = (width - new) // 2
    return frames[:, :, left:left + new]


def fit_cameras(cameras: Cameras, height: int, width: int) -> Cameras:
    """Cameras with K for ``height × width``: resized from their own image size, or taken as
    already for that size when they carry none."""
    if cameras.width is None:
        return Cameras(cameras.K, cameras.c2w, width, height)
    if (cameras.width, cameras.height) == (width, height):
        return cameras
    return cameras.resize(height, width)


def _track(value: ControlTrack | PathLike | None, name: str) -> ControlTrack | None:
    if value is None or isinstance(value, ControlTrack):
        return value
    if isinstance(value, (str, os.PathLike)):
        try:
            return load_control_track(value)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"{name}: {err}") from err
    raise ValueError(f"{name}: expected a ControlTrack or a .safetensors path, got "
                     f"{type(value).__name__}")


def _video_length(video: PathLike | Tensor | np.ndarray) -> tuple[int, float | None]:
    if isinstance(video, (str, os.PathLike)):
        try:
            count, fps, _, _ = video_info(video)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"driving_video: {err}") from err
        return count, fps
    frames = torch.as_tensor(video)
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"driving_video: expected a path or uint8 (F, H, W, 3) frames, got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    return frames.shape[0], None


def _file_trajectory(trajectory: TrajectoryInput, height: int, width: int) -> Cameras | None:
    """Cameras given as such or as a camera file; presets (need num_frames) are built later."""
    if isinstance(trajectory, Cameras):
        return trajectory
    if isinstance(trajectory, (str, os.PathLike)) and (
            isinstance(trajectory, os.PathLike) or Path(trajectory).suffix in (".json", ".txt")):
        try:
            return load_cameras(trajectory, width=width, height=height)
        except (FileNotFoundError, ValueError) as err:
            raise type(err)(f"camera_trajectory: {err}") from err
    return None


def preset_trajectory(trajectory: TrajectoryInput, frames: int, height: int,
                       width: int) -> Cameras:
    """``"orbit"``, ``("orbit", {"degrees": 90})`` or ``{"name": "orbit", ...}`` -> Cameras."""
    if isinstance(trajectory, str):
        name, params = trajectory, {}
    elif isinstance(trajectory, tuple) and len(trajectory) == 2:
        name, params = trajectory[0], dict(trajectory[1])
    elif isinstance(trajectory, Mapping):
        params = dict(trajectory)
        name = params.pop("name", None)
    else:
        raise ValueError(f"camera_trajectory: expected Cameras, a camera file, a preset name, "
                         f"(name, params) or {{'name': ...}}, got {type(trajectory).__name__}")
    params = {"frames": frames, "width": width, "height": height, **params}
    try:
        return make_trajectory(name, **params)
    except (TypeError, ValueError) as err:
        raise ValueError(f"camera_trajectory: {err}") from err


def resolve_num_frames(num_frames: int | None, lengths: Mapping[str, int],
                       default: int = DEFAULT_FRAMES) -> int:
    """The frame count: ``num_frames`` (``4k + 1``, at most the common length of the sources),
    or that common length, or ``default`` when no source fixes one (a camera preset alone).
    Sources of different lengths are an error."""
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{name} {count}" for name, count in lengths.items())
        raise ValueError(f"the control sources have different frame counts ({listed}); give "
                         "them the same length")
    available = next(iter(lengths.values()), None)
    if num_frames is None:
        if available is None:
            return default
        if (available - 1) % 4:
            raise ValueError(f"the sources have {available} frames, which is not 4k + 1: pass "
                             f"num_frames={available - (available - 1) % 4}")
        return available
    if isinstance(num_frames, bool) or not isinstance(num_frames, int) or num_frames < 1 \
            or (num_frames - 1) % 4:
        raise ValueError(f"num_frames must be 4k + 1 (1, 5, 9, …, 81), got {num_frames!r}")
    if available is not None and num_frames > available:
        source = next(iter(lengths))
        raise ValueError(f"num_frames={num_frames} exceeds the {available} frames of {source}")
    return num_frames


def output_path_or_none(output_path: PathLike | None) -> Path | None:
    """The output path, checked before any work: an ``.mp4`` name that is not a folder, in
    a folder that exists and can be written to."""
    if output_path is None:
        return None
    path = Path(output_path)
    if path.is_dir():
        raise ValueError(f"output_path {path} is a folder; name an .mp4 file")
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"output_path {path} must end in .mp4")
    if not path.parent.is_dir():
        raise ValueError(f"output_path {path}: folder {path.parent} does not exist")
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise ValueError(f"output_path {path}: folder {path.parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"output_path {path} exists and is not writable")
    return path


def check_fps(fps: float | None) -> float | None:
    if fps is None:
        return None
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (
            math.isfinite(fps) and 0 < fps <= 240):
        raise ValueError(f"fps (--fps) must be a number in (0, 240], got {fps!r}")
    return float(fps)


def check_render_inputs(reference_image: ImageInput, *, mode: str = "driving",
                        height: int | None = None, width: int | None = None,
                        num_frames: int | None = None,
                        camera_trajectory: TrajectoryInput = None,
                        driving_video: PathLike | Tensor | None = None,
                        control_track: ControlTrack | PathLike | None = None,
                        expression_codes: Tensor | None = None,
                        pose_source: ControlTrack | PathLike | None = None,
                        expression_source: ControlTrack | PathLike | None = None,
                        normal_maps: PathLike | Tensor | None = None,
                        reference: ControlTrack | None = None, fps: float | None = None,
                        output_path: PathLike | None = None, reference_crop: str = "auto",
                        default_frames: int = DEFAULT_FRAMES) -> RenderRequest:
    """Validate everything cheap about a render -> :class:`RenderRequest` (module docstring).

    ``reference_crop``: ``"face"``, ``"center"`` or ``"auto"`` — ``"center"`` when a
    ``reference`` track is given (its camera belongs to the image as it is), else ``"face"``
    (step 2 falls back to the centre crop when it finds no face and the mode does not need
    one). ``default_frames``: the length when no source fixes one (a preset trajectory
    alone)."""
    if mode not in CONTROL_MODES:
        raise ValueError(f"mode must be one of {CONTROL_MODES}, got {mode!r}")
    if reference_crop not in REFERENCE_CROPS:
        raise ValueError(f"reference_crop must be one of {REFERENCE_CROPS}, got "
                         f"{reference_crop!r}")
    if reference_crop == "auto":
        reference_crop = "center" if reference is not None else "face"
    photo, image, height, width = load_reference_image(reference_image, height, width)
    output = output_path_or_none(output_path)
    fps = check_fps(fps)
    driving = _track(control_track, "control_track")
    if expression_codes is not None:
        codes = torch.as_tensor(expression_codes)
        driving = (ControlTrack(expression_codes=codes) if driving is None
                   else driving.replace(expression_codes=codes))
    sources = {"pose_source": _track(pose_source, "pose_source"),
               "expression_source": _track(expression_source, "expression_source")}
    trajectory = _file_trajectory(camera_trajectory, height, width)
    lengths, video_fps = _lengths(driving, driving_video, sources, trajectory, normal_maps,
                                  "control_track" if control_track is not None
                                  else "expression_codes")
    frames = resolve_num_frames(num_frames, lengths, default_frames)
    if camera_trajectory is not None and trajectory is None:
        trajectory = preset_trajectory(camera_trajectory, frames, height, width)
    if trajectory is not None and len(trajectory) not in (1, frames):
        raise ValueError(f"camera_trajectory has {len(trajectory)} cameras, expected "
                         f"{frames} (or 1)")
    if trajectory is not None and len(trajectory) > 1:
        trajectory = trajectory[:frames]
    driving = _fit_track(driving, frames, height, width)
    sources = {name: _fit_track(track, frames, height, width) for name, track in sources.items()}
    needs_video = driving_video is not None and _video_needed(mode, driving, sources)
    track_fps = driving.fps if control_track is not None else None
    return RenderRequest(
        mode=mode, num_frames=frames, height=height, width=width,
        fps=float(fps or track_fps or video_fps or DEFAULT_FPS), reference_image=image,
        reference=_reference(reference, height, width), photo=photo,
        reference_crop=reference_crop, driving=driving,
        driving_video=driving_video if needs_video else None,
        trajectory=None if trajectory is None else fit_cameras(trajectory, height, width),
        normal_maps=normal_maps, output_path=output, **sources)


def _video_needed(mode: str, driving: ControlTrack | None, sources: dict) -> bool:
    """Whether step 2 must take something from the driving video: the expression codes or the
    head pose that the mode takes from the driving performance and the track lacks.
    ``ValueError`` when the video would be unused."""
    factors = MODE_FACTORS[mode]
    if mode == "mixed" and all(track is not None for track in sources.values()):
        raise ValueError("driving_video is unused in mode 'mixed' with both pose_source and "
                         "expression_source: drop one of them")
    wants_codes = factors.expression == "driving" and (
        driving is None or driving.expression_codes is None) and not (
        mode == "mixed" and sources["expression_source"] is not None)
    wants_pose = factors.pose == "driving" and (driving is None or not driving.has_pose) \
        and not (mode == "mixed" and sources["pose_source"] is not None)
    if "driving" not in (factors.pose, factors.expression):
        raise ValueError(f"driving_video is unused: mode {mode!r} keeps the reference's pose "
                         "and expression; drop driving_video (or choose a driving mode)")
    if not (wants_codes or wants_pose):
        taken = [name for name, factor in (("head pose", factors.pose),
                                           ("expression codes", factors.expression))
                 if factor == "driving"]
        raise ValueError(f"driving_video is unused: mode {mode!r} takes the driving "
                         f"{' and '.join(taken)}, and the control track already has them; "
                         "drop one of the two")
    return True


def _lengths(driving: ControlTrack | None, driving_video: Any, sources: dict,
             trajectory: Cameras | None, normal_maps: Any, driving_name: str
             ) -> tuple[dict[str, int], float | None]:
    """Frame counts of every sequence input (camera files of 1 camera are static: no length)."""
    lengths, video_fps = {}, None
    if driving_video is not None:
        lengths["driving_video"], video_fps = _video_length(driving_video)
    if driving is not None:
        lengths[driving_name] = driving.num_frames
    lengths.update({name: track.num_frames for name, track in sources.items()
                    if track is not None})
    if trajectory is not None and len(trajectory) > 1:
        lengths["camera_trajectory"] = len(trajectory)
    if isinstance(normal_maps, (str, os.PathLike)):
        lengths["normal_maps"] = _video_length(normal_maps)[0]
    elif normal_maps is not None:
        if not isinstance(normal_maps, Tensor) or normal_maps.ndim != 4 \
                or normal_maps.shape[1] != 3 or not normal_maps.is_floating_point():
            got = (f"{normal_maps.dtype} {tuple(normal_maps.shape)}"
                   if isinstance(normal_maps, Tensor) else type(normal_maps).__name__)
            raise ValueError(f"normal_maps: expected a video path or float (F, 3, H, W) in "
                             f"[0, 1], got {got}")
        if not bool(torch.isfinite(normal_maps).all()):
            raise ValueError("normal_maps: NaN/Inf values; expected (F, 3, H, W) in [0, 1]")
        lengths["normal_maps"] = normal_maps.shape[0]
    return lengths, video_fps


def _fit_track(track: ControlTrack | None, frames: int, height: int, width: int
               ) -> ControlTrack | None:
    """The first ``frames`` frames, cameras (if any) with K for ``height × width``."""
    if track is None:
        return None
    track = track[:frames]
    if track.cameras is None:
        return track
    return track.replace(cameras=fit_cameras(track.cameras, height, width))


def _reference(reference: ControlTrack | None, height: int, width: int) -> ControlTrack:
    """The 1-frame reference track with a camera for ``height × width`` (default: frontal)."""
    if reference is None:
        return ControlTrack(cameras=default_reference_camera(height, width))
    if not isinstance(reference, ControlTrack) or reference.num_frames != 1:
        raise ValueError("reference: expected a 1-frame ControlTrack (its camera, pose, mesh "
                         "expression and expression code), e.g. track[0]")
    if reference.cameras is None:
        return reference.replace(cameras=default_reference_camera(height, width))
    return reference.replace(cameras=fit_cameras(reference.cameras, height, width))


def load_normal_maps(request: RenderRequest) -> Tensor | None:
    """The user's normal maps -> ``(F, 3, H, W)`` float32 in [0, 1] at the output size."""
    maps, size = request.normal_maps, (request.height, request.width)
    if maps is None:
        return None
    if isinstance(maps, (str, os.PathLike)):
        frames = read_video(maps, range(request.num_frames), size)  # (F, H, W, 3) uint8
        return frames.permute(0, 3, 1, 2).float() / 255.0
    maps = maps[:request.num_frames].float()
    finite = torch.isfinite(maps).flatten(1).all(1)
    if not bool(finite.all()):
        raise ValueError(f"normal_maps: NaN/Inf values, first at frame "
                         f"{int((~finite).nonzero()[0, 0])}; expected (F, 3, H, W) in [0, 1]")
    if tuple(maps.shape[-2:]) != size:
        maps = torch.nn.functional.interpolate(maps, size=size, mode="bilinear",
                                               antialias=True, align_corners=False)
    return maps
