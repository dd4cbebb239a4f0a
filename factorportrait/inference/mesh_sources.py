"""Mesh sources: per-frame pose parameters -> posed meshes -> the normal-map video of the pose
condition (FactorPortrait §4.1 "Pose Condition").

A mesh source is anything with ``faces (M, 3)`` and ``vertices(frames: ControlTrack) -> (F, V, 3)``
(world-space metres, the OpenCV world of docs/cameras.md). It reads the pose fields
(``head_rotation``, ``head_translation``, ``body_pose``) and the mesh expression parameters
(``expression``) of the track; missing fields are zero (the rest pose, a neutral face).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.inference.control_track import ControlTrack

SMPLX_BODY_JOINTS = 63  # 21 body joints x 3 (axis-angle)
SMPLX_JAW = 3


@runtime_checkable
class MeshSource(Protocol):
    """Posed meshes of one subject: ``faces (M, 3)`` long and ``vertices(track) -> (F, V, 3)``."""

    faces: Tensor

    def vertices(self, frames: ControlTrack) -> Tensor:
        ...


def _pose_or_zero(track: ControlTrack, name: str, dim: int) -> Tensor:
    value = getattr(track, name)
    return torch.zeros(track.num_frames, dim) if value is None else value.float()


def _columns(track: ControlTrack, names: tuple[str, ...]) -> Tensor:
    """``(F, len(names))`` mesh expression parameters in the order of ``names``: matched by
    ``track.expression_names`` when the track has names, else by position (zero-padded)."""
    frames, out = track.num_frames, torch.zeros(track.num_frames, len(names))
    if track.expression is None:
        return out
    values = track.expression.float()
    if track.expression_names:
        unknown = sorted(set(track.expression_names) - set(names))
        if unknown:
            raise ValueError(f"control track expression_names {unknown} are not parameters of "
                             f"this mesh source ({', '.join(names)})")
        for column, name in enumerate(track.expression_names):
            out[:, names.index(name)] = values[:, column]
        return out
    if values.shape[1] > len(names):
        raise ValueError(f"control track expression has {values.shape[1]} columns; this mesh "
                         f"source takes at most {len(names)} ({', '.join(names)})")
    out[:frames, :values.shape[1]] = values
    return out


class AvatarMeshSource:
    """A :class:`~factorportrait.body.HeadAvatar` (the procedural head of the synthetic data and
    the demo). Reads ``expression (F, 8)`` (by ``EXPRESSION_NAMES``), ``head_rotation``,
    ``head_translation``; ``body_pose`` is ignored."""

    def __init__(self, avatar) -> None:
        self.avatar = avatar
        self.faces = avatar.faces

    def vertices(self, frames: ControlTrack) -> Tensor:
        expression = _columns(frames, tuple(self.avatar.EXPRESSION_NAMES))
        return self.avatar.pose(expression, _pose_or_zero(frames, "head_rotation", 3),
                                _pose_or_zero(frames, "head_translation", 3))


class HeadMeshSource:
    """A :class:`~factorportrait.body.HeadAvatar` posed in tracking's convention
    (docs/tracking.md): ``head_rotation`` turns the head, ``head_translation`` is where the
    head centre goes (not the avatar's own translation, which the neck pivot offsets), and the
    mesh is scaled by ``scale`` about the head centre — the avatar fitted to a photographed
    face (:func:`~factorportrait.inference.faces.fit_avatar`). Reads ``expression (F, 8)`` by
    ``EXPRESSION_NAMES`` like :class:`AvatarMeshSource`."""

    def __init__(self, avatar, scale: float = 1.0) -> None:
        if not scale > 0:
            raise ValueError(f"HeadMeshSource: scale must be > 0, got {scale}")
        self.avatar, self.scale = avatar, float(scale)
        self.faces = avatar.faces

    def vertices(self, frames: ControlTrack) -> Tensor:
        rotation = _pose_or_zero(frames, "head_rotation", 3)
        zero = torch.zeros_like(rotation)
        expression = _columns(frames, tuple(self.avatar.EXPRESSION_NAMES))
        verts = self.avatar.pose(expression, rotation, zero)  # (F, V, 3)
        _, centre = self.avatar.head_transform(rotation, zero)  # (F, 3)
        centre = centre.to(verts)
        translation = _pose_or_zero(frames, "head_translation", 3).to(verts)
        return self.scale * (verts - centre[:, None]) + translation[:, None]


class SMPLXMeshSource:
    """An SMPL-X body (:class:`~factorportrait.body.SMPLXBody`, OpenCV world frame).

    Layout: ``head_rotation`` -> ``global_orient`` (the root), ``head_translation`` ->
    ``transl``, ``body_pose[:, :63]`` -> ``body_pose`` (21 joints), ``body_pose[:, 63:66]`` ->
    ``jaw_pose`` when present, ``expression[:, :num_expression]`` -> ``expression``.
    ``betas``: ``(num_betas,)`` body shape, constant over the video.
    """

    def __init__(self, body, betas: Tensor | None = None) -> None:
        self.body = body
        self.faces = body.faces
        self.betas = betas

    def vertices(self, frames: ControlTrack) -> Tensor:
        count = frames.num_frames
        pose = _pose_or_zero(frames, "body_pose", SMPLX_BODY_JOINTS)
        if pose.shape[1] not in (SMPLX_BODY_JOINTS, SMPLX_BODY_JOINTS + SMPLX_JAW):
            raise ValueError(f"control track body_pose has {pose.shape[1]} columns; SMPL-X takes "
                             f"{SMPLX_BODY_JOINTS} (body) or {SMPLX_BODY_JOINTS + SMPLX_JAW} "
                             "(body + jaw)")
        jaw = pose[:, SMPLX_BODY_JOINTS:] if pose.shape[1] > SMPLX_BODY_JOINTS else None
        expression = None
        if frames.expression is not None:
            expression = torch.zeros(count, self.body.num_expression)
            width = min(frames.expression.shape[1], self.body.num_expression)
            expression[:, :width] = frames.expression[:, :width].float()
        betas = None if self.betas is None else self.betas.float().reshape(1, -1)
        out = self.body(global_orient=_pose_or_zero(frames, "head_rotation", 3),
                        body_pose=pose[:, :SMPLX_BODY_JOINTS], jaw_pose=jaw, betas=betas,
                        expression=expression,
                        transl=_pose_or_zero(frames, "head_translation", 3))
        return out.vertices


def render_normal_maps(mesh_source: MeshSource, frames: ControlTrack, cameras: Cameras,
                       height: int, width: int, supersample: int = 1) -> Tensor:
    """The pose condition's pixels: camera-space normal maps of the posed mesh.

    Args:
        mesh_source: see :class:`MeshSource`.
        frames: ``F`` frames of pose (and mesh expression) parameters.
        cameras: ``F`` world cameras with K for ``height × width``: the frame cameras of the
            generated video, so the normals are what that camera sees.
    Returns:
        ``(F, 3, H, W)`` in [0, 1] (docs/rendering.md encoding; background 0).
    """
    from factorportrait.render import Meshes, render

    if len(cameras) != frames.num_frames:
        raise ValueError(f"render_normal_maps: {frames.num_frames} pose frames but "
                         f"{len(cameras)} cameras")
    verts = mesh_source.vertices(frames)  # (F, V, 3)
    return render(Meshes(verts, mesh_source.faces), cameras, height, width,
                  outputs=("normals",), supersample=supersample)["normals"]
