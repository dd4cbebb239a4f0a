"""Expression sets rendered on demand: one expression on several identities, head poses and
cameras — the positives of the encoder's invariance loss and the evaluation's ground truth.

A set ``s`` holds ``V`` views of one expression vector ``(8,)`` (weights of
``EXPRESSION_NAMES`` in [0, 1], sparse); every view draws its own avatar identity (from an
:class:`AvatarPool`), head pose (yaw / pitch / roll, a small shift) and camera (yaw, elevation,
distance on an orbit around the head). Each view is rendered directly as a face crop: the face
box of the posed avatar seen by the camera (:func:`~factorportrait.expression.crop.face_boxes`)
is enlarged by ``context`` and rendered through :func:`crop_intrinsics` at
``round(face_size · context)`` pixels — the same as cropping a sharp full-frame render, at a
fraction of the cost. The face box is the centred ``face_size`` square of every image.

Identities: :func:`identity_seeds` derives seeds per split (``"train"``, ``"heldout"``) from a
global seed with SHA-256 (the synthetic dataset's ``derive_seed``), so evaluation identities
never appear in training.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.body import EXPRESSION_NAMES, AvatarIdentity, HeadAvatar, axis_angle_to_matrix
from factorportrait.data.synthetic.config import derive_seed
from factorportrait.expression.crop import (
    FaceBoxes,
    avatar_face_points,
    crop_intrinsics,
    face_boxes,
)
from factorportrait.geometry import Cameras
from factorportrait.geometry.rotations import (
    matrix_to_quaternion,
    rotation_x,
    rotation_y,
    rotation_z,
)
from factorportrait.geometry.trajectories import orbit_cameras
from factorportrait.render import Meshes, render

NOMINAL_SIZE, NOMINAL_FOCAL = 512, 900.0  # pixels of the full frame the face box is found in
LOOK_AT = (0.0, 0.03, 0.0)  # metres: between the eyes and the chin
RENDER_CHUNK = 32


@dataclass(frozen=True)
class SetSampling:
    """Distributions of expressions and nuisance factors (uniform unless noted).

    Attributes:
        active_probability: each expression parameter is non-zero with this probability,
            at a weight in [0.15, 1].
        blink_together: probability that ``blink_right`` copies ``blink_left``.
        head_yaw_deg, head_pitch_deg, head_roll_deg: ± ranges of the head rotation.
        head_shift_m: ± range of the head translation per axis.
        camera_yaw_deg: ± range of the camera's orbit yaw; ``camera_elevation_deg`` and
            ``camera_distance_m``: (low, high).
        context: rendered region / face box side (room for crop augmentations), >= 1.
        supersample: renderer anti-aliasing factor.
    """

    active_probability: float = 0.5
    blink_together: float = 0.7
    head_yaw_deg: float = 30.0
    head_pitch_deg: float = 18.0
    head_roll_deg: float = 12.0
    head_shift_m: float = 0.02
    camera_yaw_deg: float = 40.0
    camera_elevation_deg: tuple[float, float] = (-10.0, 20.0)
    camera_distance_m: tuple[float, float] = (0.3, 1.1)
    context: float = 1.25
    supersample: int = 1

    def __post_init__(self) -> None:
        object.__setattr__(self, "camera_elevation_deg", tuple(self.camera_elevation_deg))
        object.__setattr__(self, "camera_distance_m", tuple(self.camera_distance_m))
        if not 0 <= self.active_probability <= 1 or not 0 <= self.blink_together <= 1:
            raise ValueError("SetSampling: probabilities must be in [0, 1]")
        if self.context < 1 or self.supersample < 1:
            raise ValueError(f"SetSampling: context must be >= 1 and supersample >= 1, got "
                             f"{self.context}, {self.supersample}")
        low, high = self.camera_distance_m
        if not 0 < low <= high:
            raise ValueError(f"SetSampling.camera_distance_m: expected 0 < low <= high, got "
                             f"{self.camera_distance_m}")


def identity_seeds(count: int, split: str, seed: int = 0) -> list[int]:
    """``count`` avatar seeds of ``split`` (``"train"`` or ``"heldout"``; disjoint)."""
    if split not in ("train", "heldout"):
        raise ValueError(f"identity_seeds: split must be 'train' or 'heldout', got {split!r}")
    return [derive_seed(seed, "expression-encoder", split, index) for index in range(count)]


class AvatarPool:
    """Avatars of a list of identity seeds, built on first use (≈ 0.1 s each) and kept."""

    def __init__(self, seeds: Sequence[int]) -> None:
        if not seeds:
            raise ValueError("AvatarPool: need at least one identity seed")
        self.seeds = list(seeds)
        self._avatars: dict[int, HeadAvatar] = {}

    def __len__(self) -> int:
        return len(self.seeds)

    def __getitem__(self, index: int) -> HeadAvatar:
        if index not in self._avatars:
            self._avatars[index] = HeadAvatar(AvatarIdentity.sample(self.seeds[index]))
        return self._avatars[index]


@dataclass(frozen=True, eq=False)
class ExpressionSets:
    """``S`` sets of ``V`` views.

    Attributes:
        images: ``(S, V, 3, R, R)`` RGB in [-1, 1]; the face box is the centred
            ``face_size`` square.
        expression: ``(S, E)`` parameters shared by the views of a set.
        identity: ``(S, V)`` long, index into the :class:`AvatarPool`.
        roll: ``(S, V)`` radians, image roll of the face (``FaceBoxes.roll``).
        factors: ``(S, V)`` degrees each: ``head_yaw``, ``head_pitch`` (world), ``camera_azimuth``
            (orbit yaw), ``view_yaw``, ``view_pitch`` (the face's direction seen by the camera;
            0 = facing it).
        face_size: side of the face box in pixels.
    """

    images: Tensor
    expression: Tensor
    identity: Tensor
    roll: Tensor
    factors: dict[str, Tensor]
    face_size: int

    @property
    def num_sets(self) -> int:
        return self.images.shape[0]

    @property
    def num_views(self) -> int:
        return self.images.shape[1]

    def face_boxes(self, set_index: Tensor, view_index: Tensor) -> FaceBoxes:
        """Boxes ``(N,)`` of the selected views (pixel coordinates of ``images``)."""
        size = self.images.shape[-1]
        count = len(set_index)
        center = torch.full((count, 2), size / 2)
        return FaceBoxes(center, torch.full((count,), float(self.face_size)),
                         self.roll[set_index, view_index].float())


def sample_expressions(count: int, sampling: SetSampling, generator: torch.Generator) -> Tensor:
    """``(count, 8)`` sparse expression weights in [0, 1] (``EXPRESSION_NAMES`` order)."""
    size = (count, len(EXPRESSION_NAMES))
    active = torch.rand(size, generator=generator) < sampling.active_probability
    weights = 0.15 + 0.85 * torch.rand(size, generator=generator)
    expression = torch.where(active, weights, torch.zeros(size))
    left, right = EXPRESSION_NAMES.index("blink_left"), EXPRESSION_NAMES.index("blink_right")
    together = torch.rand(count, generator=generator) < sampling.blink_together
    expression[together, right] = expression[together, left]
    return expression


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def _axis_angle(yaw: Tensor, pitch: Tensor, roll: Tensor) -> Tensor:
    """Radians ``(N,)`` each -> axis-angle ``(N, 3)`` of ``R_y(yaw) R_x(pitch) R_z(roll)``."""
    quat = matrix_to_quaternion(rotation_y(yaw) @ rotation_x(pitch) @ rotation_z(roll))
    vector, w = quat[:, 1:], quat[:, :1]
    norm = vector.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, w)
    return torch.where(norm > 0, vector * angle / norm.clamp_min(1e-30), torch.zeros_like(vector))


def face_angles(direction: Tensor) -> tuple[Tensor, Tensor]:
    """Yaw and pitch in degrees ``(N,)`` of face directions ``(N, 3)``: a face looking along
    ``-z`` has both 0; ``R_y(yaw) R_x(pitch)`` turns it to ``(yaw, pitch)`` (trajectories.py's
    angle conventions, applied to the head)."""
    yaw = torch.atan2(-direction[:, 0], -direction[:, 2])
    pitch = torch.atan2(direction[:, 1], direction[:, [0, 2]].norm(dim=1))
    return torch.rad2deg(yaw), torch.rad2deg(pitch)


def seen_face_angles(head_rotation: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """Apparent yaw and pitch in degrees ``(N,)`` of the face with world rotation
    ``(N, 3, 3)`` seen by ``N`` cameras: 0, 0 when it faces the camera; positive yaw when it
    turns towards the image's right, positive pitch when it looks up in the image."""
    forward = -head_rotation[:, :, 2].to(cameras.c2w)  # the face looks along its -z
    seen = torch.einsum("nji,nj->ni", cameras.rotations(), forward)  # camera coordinates
    return (torch.rad2deg(torch.atan2(seen[:, 0], -seen[:, 2])),
            torch.rad2deg(torch.atan2(-seen[:, 1], seen[:, [0, 2]].norm(dim=1))))


def sample_views(count: int, sampling: SetSampling, generator: torch.Generator
                 ) -> tuple[Tensor, Tensor, Cameras, dict[str, Tensor]]:
    """Head poses and cameras of ``count`` views: ``head_rotation (N, 3)`` axis-angle,
    ``head_translation (N, 3)``, ``Cameras`` (N, nominal 512² frame) and the factors in
    degrees (``head_yaw``, ``head_pitch``, ``camera_azimuth``, ``view_yaw``, ``view_pitch``)."""
    degrees = [_uniform(count, -limit, limit, generator) for limit in
               (sampling.head_yaw_deg, sampling.head_pitch_deg, sampling.head_roll_deg)]
    rotation = _axis_angle(*(torch.deg2rad(d) for d in degrees))
    shift = _uniform(3 * count, -sampling.head_shift_m, sampling.head_shift_m, generator)
    azimuth = _uniform(count, -sampling.camera_yaw_deg, sampling.camera_yaw_deg, generator)
    elevation = _uniform(count, *sampling.camera_elevation_deg, generator)
    distance = _uniform(count, *sampling.camera_distance_m, generator)
    K = torch.tensor([[NOMINAL_FOCAL, 0, NOMINAL_SIZE / 2], [0, NOMINAL_FOCAL, NOMINAL_SIZE / 2],
                      [0, 0, 1]], dtype=torch.float64)
    cameras = orbit_cameras(azimuth, elevation, distance, torch.tensor(LOOK_AT, dtype=torch.float64),
                            K, NOMINAL_SIZE, NOMINAL_SIZE)
    view_yaw, view_pitch = seen_face_angles(axis_angle_to_matrix(rotation), cameras)
    factors = {"head_yaw": degrees[0], "head_pitch": degrees[1], "camera_azimuth": azimuth,
               "view_yaw": view_yaw, "view_pitch": view_pitch}
    return rotation.float(), shift.view(count, 3).float(), cameras.to(torch.float32), \
        {name: value.float() for name, value in factors.items()}


def render_size(face_size: int, context: float) -> int:
    """Rendered side: ``face_size · context`` rounded so the face box sits on whole pixels."""
    return face_size + 2 * round(face_size * (context - 1) / 2)


def render_views(avatar: HeadAvatar, expression: Tensor, head_rotation: Tensor,
                 head_translation: Tensor, cameras: Cameras, face_size: int,
                 sampling: SetSampling) -> tuple[Tensor, Tensor]:
    """Render ``N`` views of one avatar as face-centred images: expression ``(N, 8)``, head pose
    ``(N, 3)`` ×2, N cameras -> images ``(N, 3, R, R)`` in [-1, 1] and roll ``(N,)``."""
    size = render_size(face_size, sampling.context)
    points = avatar_face_points(avatar, head_rotation, head_translation)  # (N, 5, 3)
    boxes = face_boxes(cameras, points)
    region = FaceBoxes(boxes.center, boxes.side * size / face_size, boxes.roll)
    K = crop_intrinsics(cameras.K, region, size)
    verts = avatar.pose(expression, head_rotation, head_translation)  # (N, V, 3)
    images = render(Meshes(verts, avatar.faces, avatar.vertex_colors), (K, cameras.c2w), size,
                    size, outputs=("rgb",), supersample=sampling.supersample)["rgb"]
    return images * 2 - 1, boxes.roll


def render_sets(pool: AvatarPool, num_sets: int, views: int, face_size: int,
                sampling: SetSampling, generator: torch.Generator) -> ExpressionSets:
    """Draw and render ``num_sets`` sets of ``views`` views (deterministic given
    ``generator``); see the module docstring."""
    count = num_sets * views
    expression = sample_expressions(num_sets, sampling, generator)  # (S, E)
    identity = torch.randint(len(pool), (count,), generator=generator)  # (S·V,)
    rotation, translation, cameras, factors = sample_views(count, sampling, generator)
    per_view = expression.repeat_interleave(views, 0)  # (S·V, E)
    size = render_size(face_size, sampling.context)
    images, roll = torch.empty(count, 3, size, size), torch.empty(count)
    for person in identity.unique().tolist():
        index_all = (identity == person).nonzero()[:, 0]
        for start in range(0, len(index_all), RENDER_CHUNK):
            index = index_all[start:start + RENDER_CHUNK]
            images[index], roll[index] = render_views(
                pool[person], per_view[index], rotation[index], translation[index],
                cameras[index], face_size, sampling)
    return ExpressionSets(images.view(num_sets, views, 3, size, size), expression,
                          identity.view(num_sets, views), roll.view(num_sets, views),
                          {k: v.view(num_sets, views) for k, v in factors.items()}, face_size)

