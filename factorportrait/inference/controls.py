"""Control modes: each is one way of filling :class:`PortraitConditions` (FactorPortrait Fig. 1
and §5.3, DeX-Portrait Fig. 1). There is one model path; a mode only decides, per factor,
where the per-frame controls come from:

| mode                | camera                  | pose (normal maps) | expression (codes)    |
|---------------------|-------------------------|--------------------|-----------------------|
| driving             | reference camera        | driving            | driving               |
| driving_novel_view  | trajectory's 1st camera | driving            | driving               |
| camera_only         | trajectory              | reference          | reference             |
| driving_with_camera | trajectory              | driving            | driving               |
| expression_only     | reference camera        | reference          | driving               |
| pose_only           | reference camera        | driving            | reference             |
| mixed               | trajectory              | pose source (B)    | expression source (A) |

"reference" holds the reference image's value for every frame. The mesh's own expression
parameters (``ControlTrack.expression``: avatar blendshapes, SMPL-X expression) follow the
*expression* factor, so the normal maps never show another factor's face.

Steps: :func:`plan_controls` (cheap: per-frame cameras, mesh pose, codes) →
:func:`render_plan_normals` (mesh rendering) → :func:`assemble_conditions` (rays, codes and
the VAE latents into a ``PortraitConditions``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.head_pose import (normalised_landmarks,
                                               source_and_driving_poses)
from factorportrait.geometry.rays import dit_rays
from factorportrait.geometry.trajectories import static
from factorportrait.inference.control_track import ControlTrack
from factorportrait.inference.mesh_sources import MeshSource, render_normal_maps
from factorportrait.models.conditions import PortraitConditions

EXPRESSION_DIM = 128  # the expression controller's input (FactorPortrait §4.1)


@dataclass(frozen=True)
class ModeFactors:
    """Where each factor comes from: ``reference``, ``driving``, ``trajectory`` or
    ``novel_view`` (the trajectory's first camera, held)."""

    camera: str
    pose: str
    expression: str


MODE_FACTORS: dict[str, ModeFactors] = {
    "driving": ModeFactors("reference", "driving", "driving"),
    "driving_novel_view": ModeFactors("novel_view", "driving", "driving"),
    "camera_only": ModeFactors("trajectory", "reference", "reference"),
    "driving_with_camera": ModeFactors("trajectory", "driving", "driving"),
    "expression_only": ModeFactors("reference", "reference", "driving"),
    "pose_only": ModeFactors("reference", "driving", "reference"),
    "mixed": ModeFactors("trajectory", "driving", "driving"),  # driving = the two sources
}
CONTROL_MODES = tuple(MODE_FACTORS)


@dataclass(frozen=True, eq=False)
class ControlPlan:
    """The per-frame controls of one render (no model involved).

    Attributes:
        mode: one of :data:`CONTROL_MODES`.
        reference_camera: 1 world camera, the reference image's.
        cameras: ``F`` world cameras of the generated frames (K for ``H × W``).
        mesh_pose: ``F`` frames of pose + mesh expression parameters for the mesh source,
            or ``None`` when the pose factor has no parameters (driving video only).
        normal_maps: ``(F, 3, H, W)`` in [0, 1] given by the user instead of a mesh, or None.
        expression_codes: ``(F, 128)``.
        reference_pose: the reference's 1-frame head pose (rest pose when not given), the
            source of DeX's head-pose condition.
        landmarks: ``(F, N, 2)`` landmarks of the expression factor (its track's, or the
            reference's held), or ``None`` when that track has none.
    """

    mode: str
    reference_camera: Cameras
    cameras: Cameras
    mesh_pose: ControlTrack | None
    normal_maps: Tensor | None
    expression_codes: Tensor
    reference_pose: ControlTrack | None = None
    landmarks: Tensor | None = None

    @property
    def num_frames(self) -> int:
        return len(self.cameras)


def default_reference_camera(height: int, width: int) -> Cameras:
    """The reference camera when none is given: frontal, 0.6 m from the head centre, 40°
    horizontal field of view (``geometry.trajectories`` defaults), K for ``height × width``."""
    return static(1, width=width, height=height)


def pad_codes(codes: Tensor, name: str, dim: int = EXPRESSION_DIM) -> Tensor:
    """``(F, D)`` codes, ``D <= dim``, zero-padded to ``(F, dim)`` float32 (as in training:
    ``data.training_sample.expression_features``)."""
    if codes.ndim != 2 or codes.shape[1] > dim:
        raise ValueError(f"{name}: expression codes must be (F, D) with D <= {dim}, got "
                         f"{tuple(codes.shape)}")
    return torch.nn.functional.pad(codes.float(), (0, dim - codes.shape[1]))


def _cameras_for(factor: str, frames: int, reference: ControlTrack,
                 trajectory: Cameras | None, driving: ControlTrack | None, mode: str) -> Cameras:
    if factor == "reference":
        return reference.cameras.to(torch.float32)[torch.zeros(frames, dtype=torch.long)]
    if trajectory is None and driving is not None and driving.cameras is not None:
        trajectory = driving.cameras  # the performance's own cameras
    if trajectory is None:
        raise ValueError(f"mode {mode!r} needs camera_trajectory (a Cameras, a preset name or "
                         f"a camera file)")
    if factor == "novel_view" or len(trajectory) == 1:
        return trajectory[torch.zeros(frames, dtype=torch.long)]
    return trajectory


def _mesh_pose(pose_track: ControlTrack | None, expression_track: ControlTrack,
               reference: ControlTrack, frames: int) -> ControlTrack | None:
    """Pose fields of ``pose_track`` with the mesh expression of ``expression_track`` (or of
    the reference when that track has none)."""
    if pose_track is None or not pose_track.has_pose:
        return None
    face = expression_track if expression_track.expression is not None else reference.hold(
        frames)
    return ControlTrack(fps=pose_track.fps, head_rotation=pose_track.head_rotation,
                        head_translation=pose_track.head_translation,
                        body_pose=pose_track.body_pose, expression=face.expression,
                        expression_names=face.expression_names)


def _checked_reference(reference: ControlTrack) -> ControlTrack:
    """A 1-frame reference track with a camera; its pose defaults to the rest pose."""
    if reference.num_frames != 1 or reference.cameras is None:
        raise ValueError("reference must be a 1-frame ControlTrack with the reference camera "
                         "(default_reference_camera(H, W) for a frontal one)")
    if reference.has_pose:
        return reference
    return reference.replace(head_rotation=torch.zeros(1, 3), head_translation=torch.zeros(1, 3))


def _codes(track: ControlTrack, name: str) -> Tensor:
    if track.expression_codes is None:
        raise ValueError(f"{name} has no expression codes: give a control track with "
                         "expression_codes, expression_codes=(T,128), or an expression_encoder "
                         "with the driving video")
    return pad_codes(track.expression_codes, name)


def plan_controls(mode: str, num_frames: int, reference: ControlTrack, *,
                  driving: ControlTrack | None = None, trajectory: Cameras | None = None,
                  pose_source: ControlTrack | None = None,
                  expression_source: ControlTrack | None = None,
                  normal_maps: Tensor | None = None) -> ControlPlan:
    """Resolve a mode into per-frame controls (table in the module docstring).

    Args:
        reference: a 1-frame track with the reference ``cameras`` and ``expression_codes``
            (``(1, D)``), and its pose / mesh expression (missing = rest pose, neutral).
        driving: ``num_frames`` frames of the driving performance (codes, pose, cameras).
        trajectory: ``num_frames`` (or 1) world cameras with K for the output size.
        pose_source, expression_source: ``mixed`` only — clip B and clip A.
        normal_maps: ``(F, 3, H, W)`` in [0, 1] replacing the driving pose's rendering.
    """
    if mode not in MODE_FACTORS:
        raise ValueError(f"mode must be one of {CONTROL_MODES}, got {mode!r}")
    factors = MODE_FACTORS[mode]
    if mode == "mixed":
        pose_source = pose_source if pose_source is not None else driving
        expression_source = expression_source if expression_source is not None else driving
        if pose_source is None or expression_source is None:
            raise ValueError("mode 'mixed' needs pose_source (clip B) and expression_source "
                             "(clip A) control tracks")
    elif pose_source is not None or expression_source is not None:
        raise ValueError(f"pose_source / expression_source are for mode 'mixed', not {mode!r}")
    else:
        pose_source = expression_source = driving
    if "driving" in (factors.pose, factors.expression) and pose_source is None:
        raise ValueError(f"mode {mode!r} needs a driving_video or control_track")
    _check_lengths(num_frames, driving=driving, pose_source=pose_source,
                   expression_source=expression_source, normal_maps=normal_maps)
    if trajectory is not None and factors.camera == "reference":
        raise ValueError(f"mode {mode!r} keeps the reference camera; camera_trajectory is for "
                         "driving_novel_view, camera_only, driving_with_camera and mixed")
    if trajectory is not None and len(trajectory) not in (1, num_frames):
        raise ValueError(f"camera_trajectory has {len(trajectory)} cameras; expected "
                         f"num_frames = {num_frames} (or 1, a static camera)")
    reference = _checked_reference(reference)
    held = reference.hold(num_frames)
    pose_track = held if factors.pose == "reference" else pose_source
    expression_track = held if factors.expression == "reference" else expression_source
    if normal_maps is not None and factors.pose == "reference":
        raise ValueError(f"normal_maps are the driving pose, but mode {mode!r} holds the "
                         "reference pose: drop normal_maps (a mesh source renders the pose)")
    return ControlPlan(
        mode=mode, reference_camera=reference.cameras.to(torch.float32),
        cameras=_cameras_for(factors.camera, num_frames, reference, trajectory, pose_source,
                             mode).to(torch.float32),
        mesh_pose=_mesh_pose(pose_track, expression_track, reference, num_frames),
        normal_maps=normal_maps,
        expression_codes=_codes(expression_track, "expression source" if mode == "mixed"
                                else f"the {factors.expression} performance"),
        reference_pose=reference, landmarks=expression_track.landmarks)


def plan_track(plan: ControlPlan, fps: float = 25.0, source: str = "") -> ControlTrack:
    """The per-frame controls of ``plan`` as one control track (world ``"scene"``, the
    reference's): the frames' cameras, expression codes, landmarks and the mesh pose with its
    mesh expression. Saved with :func:`~factorportrait.inference.control_track.
    save_control_track`, it drives the same pose and expression again (``--control-track``)."""
    pose = plan.mesh_pose
    fields = {} if pose is None else dict(
        head_rotation=pose.head_rotation, head_translation=pose.head_translation,
        body_pose=pose.body_pose, expression=pose.expression,
        expression_names=pose.expression_names)
    return ControlTrack(fps=fps, expression_codes=plan.expression_codes, cameras=plan.cameras,
                        landmarks=plan.landmarks, source=source, **fields)


def _check_lengths(num_frames: int, **sources: ControlTrack | Tensor | None) -> None:
    for name, source in sources.items():
        if source is not None and len(source) != num_frames:
            raise ValueError(f"{name} has {len(source)} frames; expected num_frames = "
                             f"{num_frames}")


def render_plan_normals(plan: ControlPlan, mesh_source: MeshSource | None, height: int,
                        width: int, supersample: int = 1) -> Tensor | None:
    """``(F, 3, H, W)`` in [0, 1]: the given normal maps, else the mesh source rendered at the
    plan's pose from the plan's cameras; ``None`` when neither exists (pose dropped)."""
    if plan.normal_maps is not None:
        return plan.normal_maps
    if mesh_source is None or plan.mesh_pose is None:
        return None
    return render_normal_maps(mesh_source, plan.mesh_pose, plan.cameras, height, width,
                              supersample)


def mesh_landmarks(plan: ControlPlan, mesh_source: MeshSource | None) -> Tensor | None:
    """``(F, 478, 2)`` landmarks of an avatar mesh source at the plan's pose and mesh
    expression, seen by the plan's cameras (the vertices nearest to the canonical face's
    points, as the synthetic training data's: :mod:`factorportrait.data.landmarks`); ``None``
    for other sources or without a mesh pose."""
    avatar = getattr(mesh_source, "avatar", None)
    if avatar is None or plan.mesh_pose is None:
        return None
    from factorportrait.data.landmarks import nearest_landmark_vertices

    vertices = mesh_source.vertices(plan.mesh_pose)  # (F, V, 3) world
    return normalised_landmarks(vertices[:, nearest_landmark_vertices(avatar)], plan.cameras)


def plan_rays(plan: ControlPlan, height: int, width: int) -> Tensor:
    """``(24, 1 + F_lat, h, w)`` Plücker rays relative to the reference camera (frame 0 = the
    identity camera; :func:`~factorportrait.geometry.rays.dit_rays`)."""
    return dit_rays(plan.reference_camera, plan.cameras, height, width)


def plan_head_pose(plan: ControlPlan) -> Tensor | None:
    """``(1 + F, 3, 4)`` DeX head poses (:func:`~factorportrait.geometry.head_pose.
    head_pose_matrices`): the reference's seen by the reference camera, then the plan's pose
    seen by each frame's camera; ``None`` without a head pose for the frames."""
    pose, reference = plan.mesh_pose, plan.reference_pose
    if pose is None or reference is None or (pose.head_rotation is None
                                             and pose.head_translation is None):
        return None

    def field(track: ControlTrack, name: str) -> Tensor:  # a missing half: the rest pose
        value = getattr(track, name)
        return torch.zeros(track.num_frames, 3) if value is None else value.float()

    return source_and_driving_poses(
        field(reference, "head_rotation"), field(reference, "head_translation"),
        plan.reference_camera, field(pose, "head_rotation"), field(pose, "head_translation"),
        plan.cameras)


def assemble_conditions(plan: ControlPlan, reference_latent: Tensor,
                        normal_latents: Tensor | None, height: int, width: int,
                        context: Tensor | None = None, landmarks: Tensor | None = None
                        ) -> PortraitConditions:
    """The DiT's conditions for one video (B = 1).

    Args:
        reference_latent: ``(1, 16, 1, h, w)``.
        normal_latents: ``(1, 16, F_lat, h, w)`` VAE latents of the normal maps (in [-1, 1]),
            or ``None`` for the dropped pose condition (zeros, as in training without normals).
        context: ``(1, L, text_dim)`` or ``None`` (the model's null context).
        landmarks: ``(F, N, 2)`` overriding ``plan.landmarks`` (e.g. from the mesh source).
    """
    frames_lat = (plan.num_frames - 1) // 4 + 1
    if normal_latents is None:
        shape = (1, reference_latent.shape[1], frames_lat, *reference_latent.shape[-2:])
        normal_latents = reference_latent.new_zeros(shape)
    device, dtype = reference_latent.device, reference_latent.dtype
    head_pose = plan_head_pose(plan)
    landmarks = plan.landmarks if landmarks is None else landmarks
    return PortraitConditions(
        reference_latent=reference_latent, normal_latents=normal_latents.to(device, dtype),
        rays=plan_rays(plan, height, width)[None].to(device, dtype),
        expression=plan.expression_codes[None].to(device, dtype),
        context=None if context is None else context.to(device),
        head_pose=None if head_pose is None else head_pose[None].to(device, dtype),
        landmarks=None if landmarks is None else landmarks[None].to(device, dtype))
