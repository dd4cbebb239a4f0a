"""Face boxes for the expression encoder, from head poses and avatars.

The crop primitives (``FaceBoxes``, ``crop_faces``, ``boxes_from_xyxy``, ``center_boxes``) live
in :mod:`factorportrait.tracking.crop` (re-exported here): the encoder's training, its inference
on tracked real frames and the pipeline's portrait crop share them. A face box is a square in
pixel coordinates with an in-plane angle ``roll``, the image angle of the line from the
person's right pupil to their left pupil; a roll-normalised crop turns it horizontal
(FactorPortrait supp. §8.1: "a roll-normalized facial image crop").

Boxes come from face points projected through the camera:

- :func:`face_points_from_pose`: a generic face (pupils, nose tip, mouth, chin) moved rigidly
  by an annotated head pose ``[R(head_rotation) | head_translation]`` — works for any clip with
  head-pose annotations (approximate for the procedural avatar, whose neck takes part of the
  rotation about a lower pivot; the box margin absorbs it);
- :func:`avatar_face_points`: the exact landmarks of a posed procedural avatar;
- :func:`face_boxes` turns points seen by ``Cameras`` into boxes; tracked real frames get the
  same boxes from their landmarks (:meth:`factorportrait.tracking.FaceTrack.face_boxes`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from factorportrait.body import HeadAvatar, axis_angle_to_matrix
from factorportrait.geometry import Cameras
from factorportrait.tracking.crop import FaceBoxes, boxes_from_xyxy, center_boxes, crop_faces

__all__ = ["FACE_BOX_M", "FACE_POINT_NAMES", "GENERIC_FACE_POINTS", "FaceBoxes",
           "avatar_face_points", "boxes_from_xyxy", "center_boxes", "crop_faces",
           "crop_intrinsics", "face_boxes", "face_points_from_pose"]

FACE_POINT_NAMES = ("left_pupil", "right_pupil", "nose_tip", "mouth", "chin")
# A generic face in the head frame (metres; head centre at the origin, face towards -z, up -y):
# the landmarks of a typical procedural avatar (docs/rendering.md).
GENERIC_FACE_POINTS = torch.tensor([
    [0.0247, -0.0036, -0.0843], [-0.0247, -0.0036, -0.0843], [0.0, 0.0326, -0.1235],
    [0.0, 0.0539, -0.1066], [0.0, 0.0935, -0.0638]])
FACE_BOX_M = 0.15  # side of the face box in metres at the face (brows to chin: a tight crop)


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

