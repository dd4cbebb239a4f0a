"""The motion trainer's input augmentations (DeX §3.2 "Pose & Expression Augmentation", Fig. 3).

- Pose input: "we cover the eye and mouth regions using MediaPipe landmarks to eliminate most
  expression information" — :func:`eye_mouth_mask` rasterises the eye-lid and outer-lip
  contours of MediaPipe's 478-point face mesh (each grown by ``expand`` about its centroid),
  :func:`mask_eyes_and_mouth` fills them.
- Expression input: "random rotation or select another viewpoint", then "crop the facial
  region and resize it to a fixed size via the MediaPipe bounding box" —
  :func:`expression_input` is :func:`factorportrait.expression.augment.augment_faces` (random
  in-plane rotation, crop jitter, colour jitter; :mod:`factorportrait.tracking.crop` crops)
  on the landmarks' bounding box (:func:`landmark_face_boxes`); :func:`cross_view_driving`
  picks the same instant seen by another camera of a multi-view take.

Landmarks are ``(N, 478, 2)`` (or ``(N, 478, 3)``, the third coordinate ignored) in one of two
``coordinates``:

- ``"normalised"``: [-1, 1] across width and height with pixel centres at ``(2i + 1)/W − 1``
  (:func:`factorportrait.data.landmarks.avatar_landmarks` on synthetic avatars);
- ``"pixels"``: frame pixels, pixel ``(u, v)`` covering ``[u, u+1) × [v, v+1)`` (tracked
  landmarks, :class:`factorportrait.tracking.FaceTrack`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.expression.augment import AugmentConfig, augment_faces
from factorportrait.tracking.canonical import LEFT_PUPIL, RIGHT_PUPIL
from factorportrait.tracking.crop import FaceBoxes

LANDMARK_POINTS = 478
COORDINATES = ("normalised", "pixels")
# MediaPipe face-mesh contours (FACEMESH_RIGHT_EYE, FACEMESH_LEFT_EYE, the outer ring of
# FACEMESH_LIPS) as closed rings: lower lid / lip from corner to corner, then back along the top.
RIGHT_EYE_RING = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE_RING = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
LIPS_RING = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39,
             40, 185)
MASK_RINGS = (RIGHT_EYE_RING, LEFT_EYE_RING, LIPS_RING)


def pixel_landmarks(landmarks: Tensor, height: int, width: int,
                    coordinates: str = "normalised") -> Tensor:
    """Landmarks ``(..., 478, 2 or 3)`` in ``coordinates`` (module docstring) -> frame pixels
    ``(..., 478, 2)`` (x, y)."""
    if coordinates not in COORDINATES:
        raise ValueError(f"coordinates must be one of {COORDINATES}, got {coordinates!r}")
    if landmarks.ndim < 2 or landmarks.shape[-2] != LANDMARK_POINTS or \
            landmarks.shape[-1] not in (2, 3):
        raise ValueError(f"landmarks must be (..., {LANDMARK_POINTS}, 2 or 3) MediaPipe face-mesh "
                         f"points, got {tuple(landmarks.shape)}")
    points = landmarks[..., :2].float()
    if coordinates == "pixels":
        return points
    size = torch.tensor([width, height], dtype=points.dtype, device=points.device)
    return (points + 1) / 2 * size  # centre (2i + 1)/W − 1 -> i + 0.5


def mask_polygons(pixels: Tensor, expand: float = 1.5) -> list[Tensor]:
    """The three masked regions of landmarks in pixels ``(N, 478, 2)``: right eye, left eye,
    mouth, each ``(N, V, 2)``, a ring scaled by ``expand`` about its vertices' mean."""
    if not expand > 0:
        raise ValueError(f"expand must be > 0, got {expand}")
    polygons = []
    for ring in MASK_RINGS:
        points = pixels[:, list(ring)]  # (N, V, 2)
        centre = points.mean(1, keepdim=True)
        polygons.append(centre + expand * (points - centre))
    return polygons


def polygon_mask(polygon: Tensor, height: int, width: int) -> Tensor:
    """``(N, H, W)`` bool: the pixels whose centres ``(u + 0.5, v + 0.5)`` lie inside closed
    polygons ``(N, V, 2)`` in pixels (even–odd rule, one pass per edge)."""
    ys = torch.arange(height, dtype=polygon.dtype, device=polygon.device)[:, None] + 0.5
    xs = torch.arange(width, dtype=polygon.dtype, device=polygon.device)[None, :] + 0.5
    inside = torch.zeros(polygon.shape[0], height, width, dtype=torch.bool,
                         device=polygon.device)
    following = polygon.roll(-1, dims=1)
    for edge in range(polygon.shape[1]):
        x0, y0 = polygon[:, edge, None, None].unbind(-1)  # (N, 1, 1) each: from ...
        x1, y1 = following[:, edge, None, None].unbind(-1)  # ... to
        spans = (y0 > ys) != (y1 > ys)  # (N, H, 1): the edge crosses this row
        slope = (x1 - x0) / torch.where(y1 == y0, torch.ones_like(y1), y1 - y0)
        crossing = x0 + (ys - y0) * slope  # (N, H, 1) x where the edge meets the row
        inside ^= spans & (xs < crossing)
    return inside


def eye_mouth_mask(landmarks: Tensor, height: int, width: int,
                   coordinates: str = "normalised", expand: float = 1.5) -> Tensor:
    """``(N, 1, H, W)`` bool: inside the eyes' or the mouth's contour, grown by ``expand``.

    Args:
        landmarks: ``(N, 478, 2 or 3)`` MediaPipe points in ``coordinates`` (module docstring).
        height, width: the frames' size.
        expand: each ring's scale about its centroid (1 = the lid and outer-lip contours;
            1.5 also covers the lids' surroundings and an open jaw's lip movement).
    """
    pixels = pixel_landmarks(landmarks, height, width, coordinates)
    masks = [polygon_mask(p, height, width) for p in mask_polygons(pixels, expand)]
    return torch.stack(masks).any(0)[:, None]


def mask_eyes_and_mouth(frames: Tensor, landmarks: Tensor, coordinates: str = "normalised",
                        expand: float = 1.5, fill: float = -1.0) -> Tensor:
    """The pose encoder's input: frames ``(N, 3, H, W)`` in [-1, 1] with the
    :func:`eye_mouth_mask` regions set to ``fill`` (-1: black)."""
    if frames.ndim != 4 or frames.shape[0] != landmarks.shape[0]:
        raise ValueError(f"mask_eyes_and_mouth: expected frames (N, 3, H, W) and N landmark "
                         f"sets, got {tuple(frames.shape)} and {tuple(landmarks.shape)}")
    mask = eye_mouth_mask(landmarks, frames.shape[2], frames.shape[3], coordinates, expand)
    return frames.masked_fill(mask.to(frames.device), fill)


def landmark_face_boxes(landmarks: Tensor, height: int, width: int,
                        coordinates: str = "normalised", scale: float = 1.0) -> FaceBoxes:
    """The "MediaPipe bounding box" of each landmark set ``(N, 478, 2 or 3)``: the square
    around the centre of all points' box with side ``scale · max(box width, box height)``,
    ``roll`` the image angle of the right-to-left pupil line (``FaceBoxes`` convention)."""
    pixels = pixel_landmarks(landmarks, height, width, coordinates)  # (N, 478, 2)
    low, high = pixels.amin(1), pixels.amax(1)  # (N, 2)
    side = (high - low).amax(1) * scale
    eye_line = pixels[:, LEFT_PUPIL] - pixels[:, RIGHT_PUPIL]
    roll = torch.atan2(eye_line[:, 1], eye_line[:, 0])
    return FaceBoxes((low + high) / 2, side.clamp_min(1e-3), roll)


def expression_input(frames: Tensor, landmarks: Tensor, size: int, config: AugmentConfig,
                     generator: torch.Generator, coordinates: str = "normalised",
                     scale: float = 1.0) -> Tensor:
    """The expression encoder's input: randomly rotated (and jittered) fixed face crops
    ``(N, 3, size, size)`` of frames ``(N, 3, H, W)`` in [-1, 1] around
    :func:`landmark_face_boxes`. ``AugmentConfig()`` is the library encoder's augmentation;
    all zero gives the plain fixed crop. With pose-derived boxes
    (:func:`factorportrait.expression.crop.face_boxes`) call ``augment_faces`` directly."""
    boxes = landmark_face_boxes(landmarks, frames.shape[2], frames.shape[3], coordinates, scale)
    crops, _ = augment_faces(frames, boxes, size, config, generator)
    return crops


@dataclass(frozen=True, eq=False)
class ViewGroup:
    """A multi-view clip group: the ``V`` clips of one take (``ClipRecord.take``, studio
    captures) decoded and time-aligned, so frame ``f`` of every view is the same instant.

    Attributes:
        frames: ``(V, F, 3, H, W)`` in [-1, 1].
        landmarks: ``(V, F, 478, 2)`` in ``coordinates`` (module docstring).
    """

    frames: Tensor
    landmarks: Tensor
    coordinates: str = "normalised"

    def __post_init__(self) -> None:
        if self.frames.ndim != 5 or self.frames.shape[2] != 3:
            raise ValueError(f"ViewGroup.frames must be (V, F, 3, H, W), got "
                             f"{tuple(self.frames.shape)}")
        views, count = self.frames.shape[:2]
        if self.landmarks.ndim != 4 or tuple(self.landmarks.shape[:3]) != (
                views, count, LANDMARK_POINTS):
            raise ValueError(f"ViewGroup.landmarks must be ({views}, {count}, "
                             f"{LANDMARK_POINTS}, 2), got {tuple(self.landmarks.shape)}")
        if self.coordinates not in COORDINATES:
            raise ValueError(f"ViewGroup.coordinates must be one of {COORDINATES}, got "
                             f"{self.coordinates!r}")

    @property
    def num_views(self) -> int:
        return self.frames.shape[0]


def cross_view_driving(group: ViewGroup, view: int, frame: int, generator: torch.Generator
                       ) -> tuple[Tensor, Tensor, int]:
    """Cross-view driving (§3.2): for the driving frame ``frame`` of view ``view``, the same
    instant seen by another view of the group, drawn uniformly (the view itself when the group
    has one view). Returns its frame ``(3, H, W)``, landmarks ``(478, 2)`` and view index;
    the expression input is made from it, the pose input and the target from ``view``."""
    views, count = group.frames.shape[:2]
    if not (0 <= view < views and 0 <= frame < count):
        raise ValueError(f"cross_view_driving: view {view} / frame {frame} outside the group's "
                         f"{views} views of {count} frames")
    other = view
    if views > 1:
        draw = int(torch.randint(views - 1, (1,), generator=generator))
        other = draw + (draw >= view)  # any view but ``view``
    return group.frames[other, frame], group.landmarks[other, frame], other
