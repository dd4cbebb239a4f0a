"""Driving videos from files: the boundary checks, then tracking into a control track.

:func:`load_video` reads a video for tracking and refuses, in one line naming the file, what
the tracker cannot use: an empty, corrupt or unreadable file, an alpha channel, grayscale
content. A variable-frame-rate video (phones record them) is resampled to a constant rate —
each tick shows the frame on screen then — and a phone's rotation tag is applied by the
decoder, so vertical videos arrive upright.

:func:`track_video` = load + :class:`~factorportrait.tracking.tracker.FaceTracker` + expression
codes of the tracked face crops -> a :class:`~factorportrait.inference.ControlTrack` in the
video camera's frame (``world="camera"``), with its :class:`FaceTrack`.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from factorportrait.io.video import probe_video, read_video
from factorportrait.tracking.crop import FaceBoxes
from factorportrait.tracking.tracker import FaceTrack, FaceTracker

LOGGER = logging.getLogger(__name__)
GRAYSCALE_SPREAD = 3  # max |R − G|, |G − B| (grey levels) of a grayscale video's pixels
CHECK_FRAMES = 3  # frames sampled for the colour check


@dataclass(frozen=True, eq=False)
class LoadedVideo:
    """Frames ``uint8 (F, H, W, 3)`` at a constant ``fps``, and what loading did."""

    frames: Tensor
    fps: float
    source_frames: int
    resampled: bool

    def note(self) -> str:
        if not self.resampled:
            return ""
        return (f"variable frame rate: resampled to {self.fps:.2f} fps ({len(self.frames)} "
                f"frames from {self.source_frames})")


def load_video(path: str | os.PathLike, max_frames: int | None = None,
               name: str = "video") -> LoadedVideo:
    """Read a video for tracking (module docstring); ``max_frames`` keeps the first ones.
    ``FileNotFoundError`` / ``ValueError`` start with ``name`` and the file."""
    path = Path(path)
    label = f"{name} {path}"
    try:
        probe = probe_video(path)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err
    if probe.has_alpha:
        raise ValueError(f"{label} has an alpha channel (pixel format {probe.pixel_format}): "
                         "expected an opaque colour video; flatten it first, e.g. ffmpeg -i "
                         f"{path.name} -pix_fmt yuv420p out.mp4")
    indices = list(range(probe.num_frames))
    if probe.variable_rate:
        indices = probe.constant_rate_indices()
    if max_frames is not None:
        indices = indices[:max_frames]
    try:
        frames = read_video(path, indices)
    except (FileNotFoundError, ValueError) as err:
        raise type(err)(f"{name}: {err}") from err
    picks = torch.linspace(0, len(frames) - 1, min(CHECK_FRAMES, len(frames))).long()
    sample = frames[picks].short()
    spread = max(int((sample[..., 0] - sample[..., 1]).abs().max()),
                 int((sample[..., 1] - sample[..., 2]).abs().max()))
    if spread <= GRAYSCALE_SPREAD:
        raise ValueError(f"{label} is grayscale (no colour in its frames): expected a colour "
                         "video")
    loaded = LoadedVideo(frames, probe.fps, probe.num_frames, probe.variable_rate)
    if loaded.resampled:
        LOGGER.warning("%s: %s", label, loaded.note())
    return loaded


def tracked_codes(encoder: Any, frames: Tensor, boxes: FaceBoxes | None, batch: int = 32,
                  landmarks: Tensor | None = None) -> Tensor:
    """Expression codes ``(F, D)`` of ``uint8 (F, H, W, 3)`` frames at tracked ``boxes``.

    An :class:`~factorportrait.expression.EncoderCodeSource` (what ``from_pretrained`` loads)
    gets the boxes and encodes roll-normalised face crops — the crop function its training
    used; a source that cuts its own crop from the landmarks (``needs_landmarks``, e.g.
    :class:`~factorportrait.motion.sources.MotionExpressionSource`) gets the tracked
    ``landmarks (F, 478, 3)`` pixels; any other encoder (the pipeline's frames-to-codes
    protocol, :func:`~factorportrait.inference.encoders.encode_expressions`) gets whole
    frames."""
    from factorportrait.expression.codes import EncoderCodeSource
    from factorportrait.inference.encoders import encode_expressions

    if needs_landmarks(encoder):
        if landmarks is None:
            raise ValueError(f"{type(encoder).__name__} reads tracked landmarks: track the "
                             "frames first (FaceTracker)")
        cues = landmarks
    elif isinstance(encoder, EncoderCodeSource) and boxes is not None:
        cues = boxes
    else:
        return encode_expressions(encoder, frames)
    codes = []
    for start in range(0, frames.shape[0], batch):
        chunk = frames[start:start + batch].permute(0, 3, 1, 2).float() / 127.5 - 1
        codes.append(encoder(chunk, cues[start:start + batch]))
    return torch.cat(codes)


def needs_landmarks(source: Any) -> bool:
    """Whether a code or pose source reads tracked landmarks (its ``needs_landmarks``)."""
    return bool(getattr(source, "needs_landmarks", False))


def track_video(video: str | os.PathLike | Tensor, tracker: FaceTracker | None = None, *,
                encoder: Any = None, max_frames: int | None = None, fps: float | None = None,
                name: str = "video", progress: bool = False):
    """Track a driving video (a path, or ``uint8 (F, H, W, 3)`` frames at ``fps``) ->
    ``(ControlTrack, FaceTrack, frames)``: head pose in the video camera's frame, the static
    camera, fps, and expression codes when ``encoder`` is given."""
    tracker = tracker if tracker is not None else FaceTracker()
    if isinstance(video, (str, os.PathLike)):
        loaded = load_video(video, max_frames, name)
        frames, rate, label = loaded.frames, fps or loaded.fps, f"{name} {Path(video).name}"
    else:
        frames = torch.as_tensor(video)[:max_frames]
        rate, label = fps or 25.0, name
    face = tracker.track(frames, rate, name=label, progress=progress)
    codes = None if encoder is None else tracked_codes(encoder, frames, face.boxes,
                                                       landmarks=face.landmarks)
    return face.to_control_track(codes, source=f"tracked: {label}"), face, frames


__all__ = ["FaceTrack", "LoadedVideo", "load_video", "track_video", "tracked_codes"]
