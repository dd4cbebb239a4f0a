"""Training samples of the motion trainer rendered on demand from synthetic avatars (DeX §3.2),
with exact ground truth.

One sample is one identity seen at two instants by one camera — the **source** (expression
``e_s``, head pose ``h_s``) and the **driving** frame (``e_d``, ``h_d``), as two frames of a
video — and the driving instant seen by ``views − 1`` further cameras (a multi-view take), so
:func:`~factorportrait.motion.augment.cross_view_driving` can pick the expression input from
another viewpoint. Every frame carries its projected MediaPipe landmarks (for the eye / mouth
mask and the face box) and its ground-truth DeX head pose ``P = [sR | t]``
(:func:`~factorportrait.geometry.head_pose.head_pose_matrices`).

Frames are full portraits of ``image_size`` pixels: each camera sits on an orbit around the
head (yaw, elevation, distance drawn per camera) with a focal length that frames
``framing_m`` metres at the look-at distance, as the synthetic dataset's rigs do; the frames
of one identity in a batch are one renderer call.

Determinism: a batch is a function of its ``torch.Generator`` alone; the trainer seeds one per
step (:func:`step_generator`), so step ``n``'s batch never depends on earlier steps.
Identities: :func:`~factorportrait.expression.sets.identity_seeds` (``"train"`` /
``"heldout"``, disjoint; the expression encoder's split, so both see the same held-out people).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.body import HeadAvatar
from factorportrait.data.landmarks import LANDMARK_POINTS, nearest_landmark_vertices
from factorportrait.data.synthetic.config import derive_seed
from factorportrait.expression.sets import LOOK_AT, AvatarPool, SetSampling, sample_expressions
from factorportrait.geometry import Cameras
from factorportrait.geometry.head_pose import head_pose_matrices, normalised_landmarks
from factorportrait.geometry.rotations import (
    matrix_to_axis_angle,
    rotation_x,
    rotation_y,
    rotation_z,
)
from factorportrait.geometry.trajectories import orbit_cameras
from factorportrait.render import Meshes, render


@dataclass(frozen=True)
class MotionSampling:
    """Distributions of one sample (uniform, ± or (low, high)).

    Attributes:
        views: cameras seeing the driving instant (>= 2 for cross-view driving); the first
            also sees the source.
        active_probability, blink_together: expressions as in
            :class:`~factorportrait.expression.sets.SetSampling`.
        head_yaw_deg, head_pitch_deg, head_roll_deg, head_shift_m: head pose of each instant.
        camera_yaw_deg, camera_elevation_deg, camera_distance_m: each camera's orbit.
        framing_m: vertical extent framed at the look-at distance (sets the focal length).
        supersample: renderer anti-aliasing factor.
        other_identity_probability: chance that a sample's expression input shows the driving
            expression on *another* avatar, in its own head pose and camera (``other`` of the
            batch), so the expression code cannot carry the target's identity. 0 (DeX's
            setup) draws nothing for it, so batches are as before.
    """

    views: int = 2
    active_probability: float = 0.5
    blink_together: float = 0.7
    head_yaw_deg: float = 25.0
    head_pitch_deg: float = 15.0
    head_roll_deg: float = 10.0
    head_shift_m: float = 0.015
    camera_yaw_deg: float = 35.0
    camera_elevation_deg: tuple[float, float] = (-8.0, 15.0)
    camera_distance_m: tuple[float, float] = (0.5, 1.0)
    framing_m: tuple[float, float] = (0.30, 0.38)
    supersample: int = 1
    other_identity_probability: float = 0.0

    def __post_init__(self) -> None:
        for name in ("camera_elevation_deg", "camera_distance_m", "framing_m"):
            object.__setattr__(self, name, tuple(float(v) for v in getattr(self, name)))
            low, high = getattr(self, name)
            if low > high:
                raise ValueError(f"MotionSampling.{name}: expected (low, high), got "
                                 f"{getattr(self, name)}")
        if isinstance(self.views, bool) or not isinstance(self.views, int) or self.views < 1:
            raise ValueError(f"MotionSampling.views must be an integer >= 1, got {self.views!r}")
        if self.camera_distance_m[0] <= 0 or self.framing_m[0] <= 0 or self.supersample < 1:
            raise ValueError("MotionSampling: distances and framing must be > 0, supersample >= 1")
        if not 0 <= self.other_identity_probability <= 1:
            raise ValueError(f"MotionSampling.other_identity_probability must be in [0, 1], got "
                             f"{self.other_identity_probability}")

    def expression_sampling(self) -> SetSampling:
        return SetSampling(active_probability=self.active_probability,
                           blink_together=self.blink_together)


@dataclass(frozen=True, eq=False)
class MotionBatch:
    """``B`` samples; images ``(B, 3, S, S)`` in [-1, 1], landmarks ``(B, 478, 2)`` normalised
    (:mod:`factorportrait.motion.augment` "normalised"), poses ``(B, 3, 4)`` DeX RTS.

    Attributes:
        source, source_landmarks, source_pose: the source frame (camera 0, instant s).
        driving, driving_landmarks, driving_pose: the driving frame (camera 0, instant d), the
            reconstruction target.
        views, view_landmarks, view_poses: the driving instant from all ``V`` cameras
            ``(B, V, ...)``; view 0 is ``driving``.
        expression: ``(B, 2, 8)`` ground-truth expression weights of the source and driving.
        identity: ``(B,)`` long, index into the :class:`AvatarPool`.
        other, other_landmarks: ``(B, 3, S, S)``, ``(B, 478, 2)``: the driving expression on
            another avatar (``MotionSampling.other_identity_probability``), drawn where
            ``use_other`` ``(B,)`` is true; None when the probability is 0.
    """

    source: Tensor
    source_landmarks: Tensor
    source_pose: Tensor
    views: Tensor
    view_landmarks: Tensor
    view_poses: Tensor
    expression: Tensor
    identity: Tensor
    other: Tensor | None = None
    other_landmarks: Tensor | None = None
    use_other: Tensor | None = None

    @property
    def driving(self) -> Tensor:
        return self.views[:, 0]

    @property
    def driving_landmarks(self) -> Tensor:
        return self.view_landmarks[:, 0]

    @property
    def driving_pose(self) -> Tensor:
        return self.view_poses[:, 0]

    @property
    def batch_size(self) -> int:
        return self.source.shape[0]


class LandmarkPool(AvatarPool):
    """An :class:`AvatarPool` that also keeps each avatar's landmark vertices ``(478,)``."""

    def __init__(self, seeds: list[int]) -> None:
        super().__init__(seeds)
        self._landmarks: dict[int, Tensor] = {}

    def landmark_vertices(self, index: int) -> Tensor:
        if index not in self._landmarks:
            self._landmarks[index] = nearest_landmark_vertices(self[index])
        return self._landmarks[index]


def step_generator(seed: int, step: int, stream: str = "train") -> torch.Generator:
    """The generator of step ``step``'s batch and augmentations (SHA-256 derived seed)."""
    return torch.Generator().manual_seed(derive_seed(seed, "motion", stream, step))


def _uniform(count: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(count, generator=generator, dtype=torch.float64)


def sample_head_poses(count: int, sampling: MotionSampling, generator: torch.Generator
                      ) -> tuple[Tensor, Tensor]:
    """``count`` head poses: axis-angle ``(N, 3)`` of ``R_y(yaw) R_x(pitch) R_z(roll)`` and a
    translation ``(N, 3)`` in metres (world frame), float32."""
    yaw, pitch, roll = (torch.deg2rad(_uniform(count, -limit, limit, generator)) for limit in
                        (sampling.head_yaw_deg, sampling.head_pitch_deg, sampling.head_roll_deg))
    rotation = matrix_to_axis_angle(rotation_y(yaw) @ rotation_x(pitch) @ rotation_z(roll))
    shift = _uniform(3 * count, -sampling.head_shift_m, sampling.head_shift_m, generator)
    return rotation.float(), shift.view(count, 3).float()


def sample_cameras(count: int, size: int, sampling: MotionSampling, generator: torch.Generator
                   ) -> Cameras:
    """``count`` cameras of ``size``² pixels on orbits around the head (float32)."""
    yaw = _uniform(count, -sampling.camera_yaw_deg, sampling.camera_yaw_deg, generator)
    elevation = _uniform(count, *sampling.camera_elevation_deg, generator)
    distance = _uniform(count, *sampling.camera_distance_m, generator)
    framing = _uniform(count, *sampling.framing_m, generator)
    focal = size * distance / framing  # (N,) pixels
    K = torch.zeros(count, 3, 3, dtype=torch.float64)
    K[:, 0, 0], K[:, 1, 1], K[:, :2, 2], K[:, 2, 2] = focal, focal, size / 2, 1.0
    return orbit_cameras(yaw, elevation, distance, torch.tensor(LOOK_AT, dtype=torch.float64),
                         K, size, size).to(torch.float32)


def render_avatar(avatar: HeadAvatar, landmark_vertices: Tensor, expression: Tensor,
                  head_rotation: Tensor, head_translation: Tensor, cameras: Cameras, size: int,
                  supersample: int = 1, rasterize: Tensor | None = None
                  ) -> tuple[Tensor, Tensor, Tensor]:
    """Render ``N`` frames of one avatar in one renderer call.

    Args:
        avatar, landmark_vertices: the avatar and its landmark vertex indices ``(478,)``.
        expression: ``(N, 8)``; head_rotation, head_translation: ``(N, 3)``; ``N`` cameras.
        rasterize: ``(N,)`` bool, the frames to draw (None: all); the others' images are
            zero, their landmarks and poses computed all the same. A frame's pixels do not
            depend on the other frames of the call (bit for bit).
    Returns:
        images ``(N, 3, S, S)`` in [-1, 1], landmarks ``(N, 478, 2)`` normalised, DeX poses
        ``(N, 3, 4)``.
    """
    verts = avatar.pose(expression, head_rotation, head_translation)  # (N, V, 3) world
    landmarks = normalised_landmarks(verts[:, landmark_vertices], cameras)  # (N, 478, 2)
    poses = head_pose_matrices(head_rotation, head_translation, cameras)  # (N, 3, 4)
    if rasterize is None:
        images = render(Meshes(verts, avatar.faces, avatar.vertex_colors),
                        (cameras.K, cameras.c2w), size, size, outputs=("rgb",),
                        supersample=supersample)["rgb"] * 2 - 1
        return images, landmarks, poses
    images = torch.zeros(len(verts), 3, size, size)
    if rasterize.any():
        drawn = render(Meshes(verts[rasterize], avatar.faces, avatar.vertex_colors),
                       (cameras.K[rasterize], cameras.c2w[rasterize]), size, size,
                       outputs=("rgb",), supersample=supersample)["rgb"]
        images[rasterize] = drawn * 2 - 1
    return images, landmarks, poses


def render_motion_batch(pool: LandmarkPool, batch_size: int, size: int,
                        sampling: MotionSampling, generator: torch.Generator,
                        samples: range | None = None) -> MotionBatch:
    """Draw and render ``batch_size`` samples (module docstring); deterministic given
    ``generator``. Renders ``batch_size · (1 + views)`` frames. ``samples``: draw only these
    samples' frames (a data-parallel process's share); every draw, landmark and pose is still
    made for the whole batch, so the drawn frames equal the whole batch's bit for bit and
    the other images are zero."""
    views = sampling.views
    identity = torch.randint(len(pool), (batch_size,), generator=generator)  # (B,)
    expression = sample_expressions(2 * batch_size, sampling.expression_sampling(), generator)
    expression = expression.view(batch_size, 2, -1)  # (B, 2, E): source, driving
    rotation, translation = sample_head_poses(2 * batch_size, sampling, generator)
    rotation, translation = rotation.view(batch_size, 2, 3), translation.view(batch_size, 2, 3)
    cameras = sample_cameras(batch_size * views, size, sampling, generator)  # (B·V,)
    # Frames: per sample, the source by camera 0, then the driving instant by cameras 0..V-1.
    frame_sample = torch.arange(batch_size).repeat_interleave(1 + views)  # (B (1+V),)
    frame_instant = torch.tensor([0] + [1] * views).repeat(batch_size)
    frame_camera = frame_sample * views + torch.tensor([0, *range(views)]).repeat(batch_size)
    frames = len(frame_sample)
    images = torch.empty(frames, 3, size, size)
    landmarks = torch.empty(frames, LANDMARK_POINTS, 2)
    poses = torch.empty(frames, 3, 4)
    person_of_frame = identity[frame_sample]
    drawn = None if samples is None else torch.isin(
        frame_sample, torch.as_tensor(list(samples), dtype=torch.long))
    for person in person_of_frame.unique().tolist():  # avatars differ in topology
        index = (person_of_frame == person).nonzero()[:, 0]
        sample, instant = frame_sample[index], frame_instant[index]
        images[index], landmarks[index], poses[index] = render_avatar(
            pool[person], pool.landmark_vertices(person), expression[sample, instant],
            rotation[sample, instant], translation[sample, instant], cameras[frame_camera[index]],
            size, sampling.supersample, None if drawn is None else drawn[index])
    images = images.view(batch_size, 1 + views, *images.shape[1:])
    landmarks = landmarks.view(batch_size, 1 + views, *landmarks.shape[1:])
    poses = poses.view(batch_size, 1 + views, 3, 4)
    other = {}
    if sampling.other_identity_probability > 0:
        other = _other_identity(pool, identity, expression[:, 1], size, sampling, generator,
                                None if samples is None else list(samples))
    return MotionBatch(images[:, 0], landmarks[:, 0], poses[:, 0], images[:, 1:],
                       landmarks[:, 1:], poses[:, 1:], expression, identity, **other)


def _other_identity(pool: LandmarkPool, identity: Tensor, expression: Tensor, size: int,
                    sampling: MotionSampling, generator: torch.Generator,
                    samples: list[int] | None) -> dict[str, Tensor]:
    """The driving expression ``(B, 8)`` on another avatar of ``pool`` per sample, in a head
    pose and camera of its own: ``other``, ``other_landmarks``, ``use_other``. Drawn from a
    generator seeded by one draw of ``generator``; only ``samples`` (None: all) where
    ``use_other`` are rasterised."""
    if len(pool) < 2:
        raise ValueError("other_identity_probability needs at least 2 training avatars")
    batch_size = len(identity)
    sub = torch.Generator().manual_seed(int(torch.randint(2**62, (1,), generator=generator)))
    use = torch.rand(batch_size, generator=sub) < sampling.other_identity_probability
    person = (identity + torch.randint(1, len(pool), (batch_size,), generator=sub)) % len(pool)
    rotation, translation = sample_head_poses(batch_size, sampling, sub)
    cameras = sample_cameras(batch_size, size, sampling, sub)
    drawn = use.clone()
    if samples is not None:
        drawn &= torch.isin(torch.arange(batch_size), torch.as_tensor(samples))
    images = torch.zeros(batch_size, 3, size, size)
    landmarks = torch.empty(batch_size, LANDMARK_POINTS, 2)
    for who in person.unique().tolist():
        index = (person == who).nonzero()[:, 0]
        images[index], landmarks[index], _ = render_avatar(
            pool[who], pool.landmark_vertices(who), expression[index], rotation[index],
            translation[index], cameras[index], size, sampling.supersample, drawn[index])
    return {"other": images, "other_landmarks": landmarks, "use_other": use}
