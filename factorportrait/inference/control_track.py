"""Control tracks: a reusable performance in one file — per-frame expression codes, head/body
pose and cameras, with fps — so a render can be repeated or edited without the driving video.

File format (``*.safetensors``; every tensor keeps its dtype, so a round trip is exact;
``F`` = frames, all per-frame tensors share it, every one is optional):

    expression_codes  (F, D)     latent expression codes, D <= 128 (the expression encoder's)
    expression        (F, E)     named mesh expression parameters (``expression_names``), e.g.
                                 ``HeadAvatar`` blendshape weights or SMPL-X expression
    head_rotation     (F, 3)     head (SMPL-X: root) rotation, axis-angle radians, world frame
    head_translation  (F, 3)     metres, world frame
    body_pose         (F, P)     body pose parameters (SMPL-X layout: docs/pipeline.md)
    landmarks         (F, N, 2)  2D facial landmarks in [−1, 1] image coordinates (the
                                 landmark expression condition, FactorPortrait C3)
    K                 (F, 3, 3)  camera intrinsics in pixels of a ``width × height`` image
    c2w               (F, 4, 4)  OpenCV camera-to-world, metres (docs/cameras.md)

Metadata, the safetensors header's ``"factorportrait"`` entry (a JSON string)::

    {"format": "factorportrait.control_track", "version": 1, "num_frames": F, "fps": 25.0,
     "width": 512, "height": 512, "expression_names": [...], "source": "free text",
     "world": "scene"}

``width``/``height`` are ``null`` without cameras. ``world`` says what the poses are relative
to: ``"scene"`` (the default; files without the key) — one world shared with the reference, as
in synthetic clips and hand-written tracks (docs/cameras.md); ``"camera"`` — the frame of the
camera that filmed the performance (a tracked video, docs/tracking.md), whose head motion the
pipeline transfers onto the reference's head relative to the track's first frame. No pickle
anywhere.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.io.atomic import PathLike
from factorportrait.io.tagged import read_tagged, write_tagged

TRACK_FORMAT = "factorportrait.control_track"
TRACK_VERSION = 1
PER_FRAME = {"expression_codes": (None,), "expression": (None,), "head_rotation": (3,),
             "head_translation": (3,), "body_pose": (None,), "landmarks": (None, 2)}
POSE_FIELDS = ("head_rotation", "head_translation", "body_pose")
WORLDS = ("scene", "camera")


@dataclass(frozen=True, eq=False)
class ControlTrack:
    """Per-frame controls of ``F`` frames (shapes: module docstring). Every field but ``fps``
    is optional; at least one per-frame field (or ``cameras``) must be given.

    Methods return new tracks: ``track[4:13]`` selects frames, ``track.hold(n)`` repeats
    frame 0 ``n`` times, ``track.replace(head_rotation=...)`` edits a field.
    """

    fps: float = 25.0
    expression_codes: Tensor | None = None
    expression: Tensor | None = None
    head_rotation: Tensor | None = None
    head_translation: Tensor | None = None
    body_pose: Tensor | None = None
    landmarks: Tensor | None = None
    cameras: Cameras | None = None
    expression_names: tuple[str, ...] = ()
    source: str = ""
    world: str = "scene"

    def __post_init__(self) -> None:
        object.__setattr__(self, "expression_names", tuple(self.expression_names))
        if self.world not in WORLDS:
            raise ValueError(f"ControlTrack: world must be one of {WORLDS}, got {self.world!r}")
        if isinstance(self.fps, bool) or not isinstance(self.fps, (int, float)) or not (
                math.isfinite(self.fps) and self.fps > 0):
            raise ValueError(f"ControlTrack: fps must be a positive number, got {self.fps!r}")
        object.__setattr__(self, "fps", float(self.fps))
        frames = self.num_frames
        for name, trailing in PER_FRAME.items():
            _check_field(name, getattr(self, name), frames, trailing)
        if self.cameras is not None and not isinstance(self.cameras, Cameras):
            raise ValueError(f"ControlTrack: cameras must be a Cameras, got "
                             f"{type(self.cameras).__name__}")
        if self.expression_names:
            columns = None if self.expression is None else self.expression.shape[1]
            if columns != len(self.expression_names):
                raise ValueError(f"ControlTrack: {len(self.expression_names)} expression_names "
                                 f"but expression has {columns} columns")

    # -- shape -----------------------------------------------------------------------------------
    @property
    def num_frames(self) -> int:
        """``F``: the frame count shared by every per-frame field."""
        counts = {name: value.shape[0] for name in PER_FRAME
                  if isinstance(value := getattr(self, name), Tensor) and value.ndim > 0}
        if self.cameras is not None and isinstance(self.cameras, Cameras):
            counts["cameras"] = len(self.cameras)
        if not counts:
            raise ValueError("ControlTrack: empty; give at least one of expression_codes, "
                             "expression, head_rotation, head_translation, body_pose, cameras")
        if len(set(counts.values())) > 1:
            raise ValueError(f"ControlTrack: per-frame fields disagree on the frame count: "
                             f"{counts}")
        return next(iter(counts.values()))

    def __len__(self) -> int:
        return self.num_frames

    @property
    def has_pose(self) -> bool:
        """True when any of head_rotation, head_translation, body_pose is present."""
        return any(getattr(self, name) is not None for name in POSE_FIELDS)

    # -- editing ---------------------------------------------------------------------------------
    def replace(self, **changes: Any) -> "ControlTrack":
        """A copy with fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def __getitem__(self, index: int | slice | Tensor) -> "ControlTrack":
        """Select frames (an int keeps the frame axis: a 1-frame track)."""
        if isinstance(index, int):
            count = self.num_frames
            if not -count <= index < count:
                raise IndexError(f"ControlTrack: frame {index} out of range for {count} frames")
            index = slice(index % count, index % count + 1)
        changes = {name: value[index] for name in PER_FRAME
                   if (value := getattr(self, name)) is not None}
        if self.cameras is not None:
            changes["cameras"] = self.cameras[index]
        return self.replace(**changes)

    def hold(self, frames: int) -> "ControlTrack":
        """Frame 0 repeated ``frames`` times (a still performance)."""
        if not isinstance(frames, int) or frames < 1:
            raise ValueError(f"ControlTrack.hold: frames must be an int >= 1, got {frames!r}")
        return self[torch.zeros(frames, dtype=torch.long)]

    def tensors(self) -> dict[str, Tensor]:
        """The present tensors under their file keys (``K`` and ``c2w`` for the cameras)."""
        out = {name: value for name in PER_FRAME if (value := getattr(self, name)) is not None}
        if self.cameras is not None:
            out.update(K=self.cameras.K, c2w=self.cameras.c2w)
        return out

    def metadata(self) -> dict[str, Any]:
        cameras = self.cameras
        return {"format": TRACK_FORMAT, "version": TRACK_VERSION, "num_frames": self.num_frames,
                "fps": self.fps, "width": None if cameras is None else cameras.width,
                "height": None if cameras is None else cameras.height,
                "expression_names": list(self.expression_names), "source": self.source,
                "world": self.world}

    # -- files -----------------------------------------------------------------------------------
    def save(self, path: PathLike) -> None:
        """Write the track to ``path`` (``.safetensors``) atomically."""
        save_control_track(self, path)

    @classmethod
    def load(cls, path: PathLike) -> "ControlTrack":
        return load_control_track(path)

    @classmethod
    def from_video(cls, video: PathLike | Tensor, expression_encoder: Any = None, *,
                   track_head: bool = True, tracker: Any = None, cameras: Cameras | None = None,
                   fps: float | None = None, device: str | torch.device = "cpu",
                   **fields: Any) -> "ControlTrack":
        """A driving video (a path or ``uint8 (F, H, W, 3)``) as a track.

        With ``track_head`` (default) the face is tracked (:func:`factorportrait.tracking.
        track_video`): head pose in the video camera's frame (``world="camera"``), the static
        camera, and codes from ``expression_encoder`` on the tracked face crops when given.
        Without it only codes are taken, from whole frames. fps from the file (else ``fps``,
        else 25); ``cameras`` and any other field (``head_rotation=...``) replace the track's.
        """
        from factorportrait.io.video import read_video, video_info

        if track_head:
            from factorportrait.tracking.video import track_video

            track, _, _ = track_video(video, tracker, encoder=expression_encoder, fps=fps)
            if cameras is not None:
                fields["cameras"] = cameras
            return track.replace(**fields) if fields else track
        if expression_encoder is None:
            raise ValueError("ControlTrack.from_video: track_head=False needs an "
                             "expression_encoder (there is nothing else to take)")
        from factorportrait.inference.encoders import encode_expressions

        if isinstance(video, (str, os.PathLike)):
            fps = fps or video_info(video)[1]
            video = read_video(video)
        codes = encode_expressions(expression_encoder, torch.as_tensor(video), device)
        return cls(fps=fps or 25.0, expression_codes=codes, cameras=cameras,
                   source=fields.pop("source", "video"), **fields)

    @classmethod
    def from_annotations(cls, annotations: Any, source: str = "") -> "ControlTrack":
        """The controls of a dataset clip (:class:`~factorportrait.data.annotations.
        ClipAnnotations`): codes, named expression parameters, head/body pose, cameras, fps."""
        cameras = Cameras(annotations.K, annotations.c2w, annotations.width, annotations.height)
        return cls(fps=annotations.fps, expression_codes=annotations.expression_codes,
                   expression=annotations.expression, head_rotation=annotations.head_rotation,
                   head_translation=annotations.head_translation,
                   body_pose=annotations.body_pose, cameras=cameras,
                   expression_names=annotations.expression_names, source=source)


def _check_field(name: str, value: object, frames: int,
                 trailing: tuple[int | None, ...]) -> None:
    if value is None:
        return
    if not isinstance(value, Tensor) or not value.is_floating_point():
        got = value.dtype if isinstance(value, Tensor) else type(value).__name__
        raise ValueError(f"ControlTrack: {name} must be a floating-point tensor, got {got}")
    rest = tuple(value.shape[1:])
    ok = value.ndim == 1 + len(trailing) and all(t is None or t == r
                                                 for t, r in zip(trailing, rest))
    if not ok or value.shape[0] != frames:
        want = "(F, " + ", ".join("D" if t is None else str(t) for t in trailing) + ")"
        raise ValueError(f"ControlTrack: {name} must have shape {want} with F = {frames}, "
                         f"got {tuple(value.shape)}")
    if not torch.isfinite(value).all():
        raise ValueError(f"ControlTrack: {name} has NaN or Inf values")


def save_control_track(track: ControlTrack, path: PathLike) -> None:
    """Write ``track`` to a ``.safetensors`` file atomically (format: module docstring)."""
    path = Path(path)
    if not isinstance(track, ControlTrack):
        raise ValueError(f"save_control_track {path}: expected a ControlTrack, got "
                         f"{type(track).__name__}")
    if path.suffix != ".safetensors":
        raise ValueError(f"save_control_track: {path} must end in .safetensors")
    write_tagged(path, track.tensors(), track.metadata())


def load_control_track(path: PathLike) -> ControlTrack:
    """Read a control track. ``FileNotFoundError`` for a missing file, ``ValueError`` naming the
    file for anything else wrong (not safetensors, other format or version, bad shapes)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control track {path} does not exist")
    meta, tensors = read_tagged(path, "control track", TRACK_FORMAT, TRACK_VERSION)
    known = {*PER_FRAME, "K", "c2w"}
    unknown = sorted(set(tensors) - known)
    if unknown:
        raise ValueError(f"control track {path}: unknown tensor key(s) {unknown}; known: "
                         f"{', '.join(sorted(known))}")
    try:
        cameras = None
        if "K" in tensors or "c2w" in tensors:
            cameras = Cameras(tensors.pop("K", None), tensors.pop("c2w", None),
                              meta.get("width"), meta.get("height"))
        track = ControlTrack(fps=meta.get("fps"), cameras=cameras,
                             expression_names=tuple(meta.get("expression_names") or ()),
                             source=meta.get("source") or "",
                             world=meta.get("world") or "scene", **tensors)
    except (TypeError, ValueError) as err:
        raise ValueError(f"control track {path}: {err}") from err
    if meta.get("num_frames") != track.num_frames:
        raise ValueError(f"control track {path}: metadata says {meta.get('num_frames')} frames, "
                         f"the tensors have {track.num_frames}")
    return track
