"""Held-out demo material: clips of identities the demo model never saw, re-rendered on demand.

The demo dataset is deterministic (``SyntheticConfig`` + seed), so ``make demo`` on a fresh
machine renders exactly the held-out clips ``make demo-train`` wrote — and more of them: any
clip index of a held-out identity is a new performance and camera path of that avatar.
Clips are rendered at the dataset's size (where the expression codes are computed, as in
training) and resized to the model's size like the training loader resizes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.data.landmarks import avatar_landmarks
from factorportrait.data.synthetic import ClipSpec, SyntheticConfig, make_avatar, render_clip
from factorportrait.data.synthetic.config import identity_name
from factorportrait.expression.codes import EncoderCodeSource
from factorportrait.expression.dataset_eval import annotation_face_boxes
from factorportrait.geometry.cameras import Cameras
from factorportrait.inference.control_track import ControlTrack
from factorportrait.io.video import resize_frames
from factorportrait.tracking.crop import FaceBoxes


@dataclass(frozen=True, eq=False)
class HeldoutClip:
    """One held-out clip at the model's size ``S``.

    Attributes:
        rgb, normals: ``uint8 (F, S, S, 3)``.
        cameras: ``F`` cameras with K for ``S × S``.
        track: the clip's controls (cameras at ``S``, head pose, mesh expression, and the
            encoder's ``expression_codes (F, 128)`` from the full-size frames).
        identity_index: the avatar's index in the dataset.
        boxes: the expression crop boxes (pixels at ``S``) from the annotated head pose.
    """

    id: str
    rgb: Tensor
    normals: Tensor
    cameras: Cameras
    track: ControlTrack
    identity_index: int
    boxes: FaceBoxes

    def __len__(self) -> int:
        return self.rgb.shape[0]

    def window(self, start: int, frames: int) -> HeldoutClip:
        index = torch.arange(start, start + frames)
        return HeldoutClip(self.id, self.rgb[index], self.normals[index], self.cameras[index],
                           self.track[index], self.identity_index, self.boxes[index])

    def frontal_frame(self) -> int:
        """The frame whose camera looks most directly at the face (the reference choice)."""
        from factorportrait.geometry.rotations import axis_angle_to_matrix

        face = -axis_angle_to_matrix(self.track.head_rotation.float())[:, :, 2]  # (F, 3)
        view = self.cameras.rotations()[:, :, 2]  # camera forward, (F, 3)
        return int((face * view).sum(-1).argmin())  # the face looks back along the view


def heldout_identities(config: SyntheticConfig) -> list[int]:
    return list(range(config.identities - config.heldout, config.identities))


def heldout_spec(config: SyntheticConfig, identity_index: int, kind: str, clip_index: int
                 ) -> ClipSpec:
    """A clip of a held-out identity; ``clip_index`` may exceed ``clips_per_kind`` (a clip
    the dataset does not hold, of the same avatar)."""
    if identity_index not in heldout_identities(config):
        raise ValueError(f"identity {identity_index} is not held out (held out: "
                         f"{heldout_identities(config)})")
    name = identity_name(identity_index)
    return ClipSpec(f"{name}_{kind}{clip_index:02d}", kind, name, identity_index, clip_index,
                    None, None, "heldout")


def render_heldout(config: SyntheticConfig, spec: ClipSpec, size: int,
                   encoder: EncoderCodeSource | None) -> HeldoutClip:
    """Render ``spec`` and bring it to the model's ``size`` (codes from the full size)."""
    clip = render_clip(spec, config, make_avatar(config, spec.identity_index))
    annotations = clip.annotations
    track = ControlTrack.from_annotations(annotations, source=spec.id)
    boxes = annotation_face_boxes(annotations, range(len(clip.rgb)))
    if encoder is not None:
        frames = clip.rgb.permute(0, 3, 1, 2).float() / 127.5 - 1
        with torch.no_grad():
            track = track.replace(expression_codes=encoder(frames, boxes))
    cameras = track.cameras.resize(size, size)
    if annotations.betas is not None and annotations.expression is not None:
        track = track.replace(landmarks=avatar_landmarks(  # the landmark condition (C3)
            annotations.betas, annotations.expression, annotations.head_rotation,
            annotations.head_translation, cameras))
    scale = torch.tensor([size / annotations.width, size / annotations.height])
    boxes = FaceBoxes(boxes.center * scale, boxes.side * scale[1], boxes.roll)  # side: height
    return HeldoutClip(spec.id, resize_frames(clip.rgb, (size, size)),
                       resize_frames(clip.normals, (size, size)), cameras,
                       track.replace(cameras=cameras), spec.identity_index, boxes)
