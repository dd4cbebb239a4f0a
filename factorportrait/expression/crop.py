"""Face boxes and face crops for the expression encoder.

A face box is a square in pixel coordinates (pixel ``(u, v)`` covers ``[u, u+1) × [v, v+1)``,
docs/cameras.md) with an in-plane angle: ``FaceBoxes(center (N, 2), side (N,), roll (N,))``.
``roll`` (radians) is the image angle of the line from the person's right pupil to their left
pupil (0 for an upright face); a roll-normalised crop turns it horizontal (FactorPortrait supp.
§8.1: "a roll-normalized facial image crop").

Boxes come from face points projected through the camera:

- :func:`face_points_from_pose`: a generic face (pupils, nose tip, mouth, chin) moved rigidly
  by an annotated head pose ``[R(head_rotation) | head_translation]`` — works for any clip with
  head-pose annotations (approximate for the procedural avatar, whose neck takes part of the
  rotation about a lower pivot; the box margin absorbs it);
- :func:`avatar_face_points`: the exact landmarks of a posed procedural avatar;
- :func:`face_boxes` turns points seen by ``Cameras`` into boxes; :func:`boxes_from_xyxy` takes
  boxes from a detector.

:func:`crop_faces` resamples ``(N, 3, H, W)`` frames into ``(N, 3, S, S)`` crops with one affine
warp per frame (optionally roll-normalised; frames are area-downsampled first when the box is
much larger than the crop, against aliasing).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.body import HeadAvatar, axis_angle_to_matrix
from factorportrait.geometry import Cameras

FACE_POINT_NAMES = ("left_pupil", "right_pupil", "nose_tip", "mouth", "chin")
# A generic face in the head frame (metres; head centre at the origin, face towards -z, up -y):
# the landmarks of a typical procedural avatar (docs/rendering.md).
GENERIC_FACE_POINTS = torch.tensor([
    [0.0247, -0.0036, -0.0843], [-0.0247, -0.0036, -0.0843], [0.0, 0.0326, -0.1235],
    [0.0, 0.0539, -0.1066], [0.0, 0.0935, -0.0638]])
FACE_BOX_M = 0.15  # side of the face box in metres at the face (brows to chin: a tight crop)


@dataclass(frozen=True, eq=False)
class FaceBoxes:
    """``N`` square boxes: ``center (N, 2)`` pixels (x, y), ``side (N,)`` pixels, ``roll (N,)``
    radians (see the module docstring)."""

    center: Tensor
    side: Tensor
    roll: Tensor

    def __post_init__(self) -> None:
        count = self.center.shape[0] if self.center.ndim == 2 else -1
        if self.center.shape != (count, 2) or self.side.shape != (count,) or \
                self.roll.shape != (count,):
            raise ValueError(f"FaceBoxes: expected center (N, 2), side (N,), roll (N,), got "
                             f"{tuple(self.center.shape)}, {tuple(self.side.shape)}, "
                             f"{tuple(self.roll.shape)}")
        values = torch.cat([self.center.flatten(), self.side, self.roll])
        if not bool(torch.isfinite(values).all()) or not bool((self.side > 0).all()):
            raise ValueError("FaceBoxes: centres, sides and rolls must be finite and sides > 0")

    def __len__(self) -> int:
        return self.center.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> FaceBoxes:
        index = [index] if isinstance(index, int) else index
        return FaceBoxes(self.center[index], self.side[index], self.roll[index])

    def xyxy(self) -> Tensor:
        """Axis-aligned ``(N, 4)`` as ``(x0, y0, x1, y1)`` (ignores ``roll``)."""
        half = self.side[:, None] / 2
        return torch.cat([self.center - half, self.center + half], 1)


def boxes_from_xyxy(xyxy: Tensor) -> FaceBoxes:
    """Boxes ``(N, 4)`` ``(x0, y0, x1, y1)`` (e.g. from a face detector) -> squares around their
    centres with side ``max(width, height)``, roll 0."""
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32)
    if xyxy.ndim != 2 or xyxy.shape[1] != 4:
        raise ValueError(f"boxes: expected (N, 4) as (x0, y0, x1, y1), got {tuple(xyxy.shape)}")
    size = xyxy[:, 2:] - xyxy[:, :2]
    if not bool((size > 0).all()):
        raise ValueError("boxes: every box needs x1 > x0 and y1 > y0")
    return FaceBoxes((xyxy[:, :2] + xyxy[:, 2:]) / 2, size.amax(1), torch.zeros(len(xyxy)))


def center_boxes(height: int, width: int, count: int, fraction: float = 1.0) -> FaceBoxes:
    """``count`` copies of the centred square covering ``fraction`` of the shorter side — for
    frames that are already face crops or portrait-framed."""
    side = torch.full((count,), fraction * min(height, width), dtype=torch.float32)
    center = torch.tensor([width / 2, height / 2]).expand(count, 2).clone()
    return FaceBoxes(center, side, torch.zeros(count))


def face_points_from_pose(head_rotation: Tensor, head_translation: Tensor,
                          points: Tensor = GENERIC_FACE_POINTS) -> Tensor:
    """World positions ``(N, P, 3)`` of head-frame ``points (P, 3)`` (default: the generic face,
    ordered as :data:`FACE_POINT_NAMES`) under head poses ``(N, 3)`` axis-angle, ``(N, 3)``
    metres (docs/dataset.md: ``[R(head_rotation) | head_translation]``)."""
    rotation = axis_angle_to_matrix(head_rotation.double())  # (N, 3, 3)
    moved = torch.einsum("nij,pj->npi", rotation, points.double())
    return (moved + head_translation.double()[:, None]).float()


def avatar_face_points(avatar: HeadAvatar, head_rotation: Tensor, head_translation: Tensor
                       ) -> Tensor:
    """Exact world positions ``(N, 5, 3)`` of the avatar's face points (:data:`FACE_POINT_NAMES`)
    under head poses ``(N, 3)``, ``(N, 3)``: the posed vertices nearest to its neutral
    landmarks, with a neutral expression (so the box does not move with the jaw)."""
    count = head_rotation.shape[0]
    neutral = avatar.neutral_vertices
    targets = torch.stack([avatar.landmarks[name] for name in FACE_POINT_NAMES])  # (5, 3)
    nearest = torch.cdist(targets, neutral).argmin(1)  # (5,)
    zeros = torch.zeros(count, avatar.num_expressions)
    verts = avatar.pose(zeros, head_rotation.float(), head_translation.float())  # (N, V, 3)
    offset = targets - neutral[nearest]  # exact at the neutral pose; rotated with the head
    head_r = axis_angle_to_matrix(head_rotation.float())  # (N, 3, 3)
    return verts[:, nearest] + torch.einsum("nij,pj->npi", head_r, offset)


def face_boxes(cameras: Cameras, points: Tensor, size_m: float = FACE_BOX_M) -> FaceBoxes:
    """Square face boxes of world face points ``(N, 5, 3)`` (:data:`FACE_POINT_NAMES` order)
    seen by ``N`` cameras: centred on the projection of the midpoint between the pupils' centre
    and the mouth, side = ``size_m`` metres at that point's depth (``focal · size_m / z``, so
    the crop scale does not change with head rotation), roll from the pupils."""
    eyes = (points[:, 0] + points[:, 1]) / 2
    anchor = (eyes + points[:, 3]) / 2  # (N, 3) between the eyes and the mouth
    stacked = torch.cat([points, anchor[:, None]], 1).to(cameras.K)  # (N, 6, 3)
    pixels, depth = cameras.project(stacked)  # (N, 6, 2), (N, 6)
    if not bool((depth > 0).all()):
        raise ValueError("face_boxes: face points behind the camera")
    eye_line = pixels[:, 0] - pixels[:, 1]  # right pupil -> left pupil
    roll = torch.atan2(eye_line[:, 1], eye_line[:, 0])  # (N,)
    focal = cameras.focal_lengths().mean(1)  # (N,)
    side = focal * size_m / depth[:, 5]
    return FaceBoxes(pixels[:, 5].float(), side.float(), roll.float())


def crop_transform(boxes: FaceBoxes, height: int, width: int, roll_normalise: bool = False
                   ) -> Tensor:
    """``affine_grid`` matrices ``(N, 2, 3)`` mapping crop coordinates in [-1, 1] to frame
    coordinates in [-1, 1] (``align_corners=False``) for frames of ``height × width``."""
    roll = boxes.roll if roll_normalise else torch.zeros_like(boxes.roll)
    cos, sin = roll.cos(), roll.sin()
    half = boxes.side / 2
    theta = torch.stack([
        torch.stack([half * cos * 2 / width, -half * sin * 2 / width,
                     2 * boxes.center[:, 0] / width - 1], 1),
        torch.stack([half * sin * 2 / height, half * cos * 2 / height,
                     2 * boxes.center[:, 1] / height - 1], 1)], 1)
    return theta  # (N, 2, 3)


def crop_faces(frames: Tensor, boxes: FaceBoxes, size: int, roll_normalise: bool = False
               ) -> Tensor:
    """Face crops ``(N, 3, size, size)`` of frames ``(N, 3, H, W)`` (any range; outside the
    frame the border pixels repeat). Bilinear, after area-downsampling the frame by
    ``floor(side / size)`` where the box is at least twice the crop."""
    if frames.ndim != 4 or frames.shape[1] != 3 or len(boxes) != frames.shape[0]:
        raise ValueError(f"crop_faces: expected frames (N, 3, H, W) and N boxes, got "
                         f"{tuple(frames.shape)} and {len(boxes)} boxes")
    factors = (boxes.side / size).floor().clamp_min(1).long().tolist()
    crops = frames.new_empty(frames.shape[0], 3, size, size)
    for factor in sorted(set(factors)):
        index = torch.tensor([i for i, f in enumerate(factors) if f == factor])
        source = frames[index]
        if factor > 1:
            source = F.avg_pool2d(source, factor, ceil_mode=True)
        scaled = FaceBoxes(boxes.center[index] / factor, boxes.side[index] / factor,
                           boxes.roll[index])
        _, _, height, width = source.shape
        theta = crop_transform(scaled, height, width, roll_normalise).to(frames)
        grid = F.affine_grid(theta, [len(index), 3, size, size], align_corners=False)
        crops[index] = F.grid_sample(source, grid, mode="bilinear", padding_mode="border",
                                     align_corners=False)
    return crops


def crop_intrinsics(K: Tensor, boxes: FaceBoxes, size: int) -> Tensor:
    """Intrinsics ``(N, 3, 3)`` of an image whose ``size × size`` pixels cover exactly the
    axis-aligned ``boxes`` of the image of ``K (N, 3, 3)``: rendering with them equals cropping
    and resizing an infinitely sharp render (used to render face crops directly)."""
    scale = size / boxes.side.to(K)  # (N,)
    corner = (boxes.center - boxes.side[:, None] / 2).to(K)  # (N, 2)
    out = K.clone()
    out[:, :2, :2] = K[:, :2, :2] * scale[:, None, None]
    out[:, :2, 2] = (K[:, :2, 2] - corner) * scale[:, None]
    return out

