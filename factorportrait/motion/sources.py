"""The motion trainer's encoders as control sources for the pipeline (DeX-Portrait §3.2-3.3):
head poses from the pose encoder and expression codes from its expression encoder, read from
tracked frames (the tracker supplies the landmarks both inputs are cut by).

- :class:`MotionPoseSource`: frames + landmarks -> a portrait crop framed like the training
  frames (the landmark box is :data:`POSE_FACE_FRACTION` of the crop's side, centred) with the
  eyes and mouth masked -> the pose encoder's RTS, mapped back to the whole frame's
  normalised coordinates (:mod:`factorportrait.geometry.head_pose`). The pipeline turns the
  RTS into 3D head poses with :func:`~factorportrait.geometry.head_pose.
  head_poses_from_matrices` and transfers the motion onto the reference as it does a tracked
  pose.
- :class:`MotionExpressionSource`: frames + landmarks -> the training's fixed face crop
  (:func:`~factorportrait.motion.augment.landmark_face_boxes` times ``face_scale``, upright
  unless the encoder was trained roll-normalised) -> codes ``(N, K)``.

Both are loaded from a folder written by :meth:`MotionTrainer.save_pretrained`
(:func:`load_motion_sources`); the crop settings come from the recipe recorded there.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from factorportrait.models.expression_encoder import ExpressionEncoder
from factorportrait.motion.augment import landmark_face_boxes, mask_eyes_and_mouth, pixel_landmarks
from factorportrait.motion.encoders import PoseEncoder
from factorportrait.tracking.crop import FaceBoxes, crop_faces

# Side of the landmark box / side of the frame in the motion trainer's synthetic portraits
# (MotionSampling defaults; mean 0.479, s.d. 0.045 over 128 frames), its centre at the frame's.
POSE_FACE_FRACTION = 0.48
BATCH = 32


def _check(frames: Tensor, landmarks: Tensor, name: str) -> None:
    if frames.ndim != 4 or frames.shape[1] != 3 or not frames.is_floating_point():
        raise ValueError(f"{name}: frames must be float (N, 3, H, W) in [-1, 1], got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    if landmarks.ndim != 3 or landmarks.shape[0] != frames.shape[0] or \
            landmarks.shape[1:2] != (478,):
        raise ValueError(f"{name}: landmarks must be ({frames.shape[0]}, 478, 2 or 3) frame "
                         f"pixels (a FaceTrack's), got {tuple(landmarks.shape)}")


def portrait_boxes(landmarks: Tensor, fraction: float = POSE_FACE_FRACTION) -> FaceBoxes:
    """Upright square boxes ``(N,)`` around pixel landmarks ``(N, 478, 2+)`` whose landmark box
    is ``fraction`` of their side (the pose encoder's training framing)."""
    low, high = landmarks[..., :2].amin(1), landmarks[..., :2].amax(1)
    side = (high - low).amax(1) / fraction
    return FaceBoxes((low + high) / 2, side.clamp_min(1.0), torch.zeros_like(side))


class MotionPoseSource:
    """The pose encoder on tracked frames: ``(frames, landmarks) -> RTS (N, 3, 4)`` in the
    frames' normalised coordinates (module docstring).

    Args:
        encoder: a trained :class:`~factorportrait.motion.encoders.PoseEncoder`.
        image_size: its input side (``MotionTrainerConfig.image_size``).
        mask_expand: the eye / mouth mask growth it was trained with.
    """

    needs_landmarks = True

    def __init__(self, encoder: PoseEncoder, image_size: int, mask_expand: float = 1.5):
        self.encoder, self.image_size, self.mask_expand = encoder.eval(), image_size, mask_expand

    @torch.no_grad()
    def __call__(self, frames: Tensor, landmarks: Tensor) -> Tensor:
        """``frames (N, 3, H, W)`` in [-1, 1], ``landmarks (N, 478, 2+)`` frame pixels ->
        ``(N, 3, 4)`` float32 ``[sR | t]``."""
        _check(frames, landmarks, "MotionPoseSource")
        height, width = frames.shape[2:]
        device = next(self.encoder.parameters()).device
        size, poses = self.image_size, []
        for start in range(0, len(frames), BATCH):
            part = slice(start, start + BATCH)
            points = pixel_landmarks(landmarks[part].float(), height, width, "pixels")
            boxes = portrait_boxes(points)
            crops = crop_faces(frames[part].float(), boxes, size)
            corner = boxes.center - boxes.side[:, None] / 2  # (n, 2) crop origin, frame pixels
            local = (points - corner[:, None]) * (size / boxes.side)[:, None, None]
            masked = mask_eyes_and_mouth(crops, local, "pixels", self.mask_expand)
            rts = self.encoder(masked.to(device)).float().cpu()  # crop-normalised
            poses.append(_to_frame(rts, boxes, height, width))
        return torch.cat(poses)


def _to_frame(rts: Tensor, boxes: FaceBoxes, height: int, width: int) -> Tensor:
    """RTS in a square crop's normalised coordinates -> the whole frame's: the crop point
    ``c`` is frame pixel ``corner + (c + 1) side / 2``, and ``s`` (in units of the image
    height, :func:`~factorportrait.geometry.head_pose.head_pose_matrices`) scales by
    ``side / H``."""
    side = boxes.side.float()  # (N,)
    size = torch.tensor([width, height], dtype=torch.float32)
    out = rts.clone()
    out[:, :, :3] = rts[:, :, :3] * (side / height)[:, None, None]
    corner = boxes.center.float() - side[:, None] / 2
    out[:, :2, 3] = 2 * (corner + (rts[:, :2, 3] + 1) * side[:, None] / 2) / size - 1
    return out


class MotionExpressionSource:
    """The motion trainer's expression encoder on tracked frames: ``(frames, landmarks) ->
    codes (N, K)`` from the training's fixed face crop (module docstring)."""

    needs_landmarks = True

    def __init__(self, encoder: ExpressionEncoder, face_scale: float = 1.2,
                 roll_normalise: bool = False):
        self.encoder, self.face_scale = encoder.eval(), face_scale
        self.roll_normalise = roll_normalise

    @torch.no_grad()
    def __call__(self, frames: Tensor, landmarks: Tensor) -> Tensor:
        _check(frames, landmarks, "MotionExpressionSource")
        height, width = frames.shape[2:]
        device = next(self.encoder.parameters()).device
        size, codes = self.encoder.config.crop_size, []
        for start in range(0, len(frames), BATCH):
            part = slice(start, start + BATCH)
            boxes = landmark_face_boxes(landmarks[part].float(), height, width, "pixels",
                                        self.face_scale)
            if not self.roll_normalise:
                boxes = FaceBoxes(boxes.center, boxes.side, torch.zeros_like(boxes.roll))
            crops = crop_faces(frames[part].float(), boxes, size, roll_normalise=True)
            codes.append(self.encoder(crops.to(device)).float().cpu())
        return torch.cat(codes)


def load_motion_sources(directory: str | os.PathLike, device: str | torch.device = "cpu"
                        ) -> tuple[MotionPoseSource, MotionExpressionSource]:
    """Both sources of a :meth:`MotionTrainer.save_pretrained` folder, with the crop and mask
    settings of the recipe it records (defaults where it records none)."""
    from factorportrait.motion.model import CONFIG_FILE, MotionTrainer

    model = MotionTrainer.from_pretrained(directory, map_location=device)
    recipe = json.loads((Path(directory) / CONFIG_FILE).read_text()).get("trained", {}).get(
        "recipe", {}) or {}
    augment = recipe.get("augment", {}) or {}
    pose = MotionPoseSource(model.pose, model.config.image_size, recipe.get("mask_expand", 1.5))
    expression = MotionExpressionSource(model.expression, recipe.get("face_scale", 1.2),
                                        bool(augment.get("roll_normalise", False)))
    return pose, expression
