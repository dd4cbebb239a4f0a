"""Procedural animatable head avatar (stylised stand-in for FactorPortrait §3.2's fitted
avatars): identity-dependent shape and colours, expression blendshapes and a small skeleton
(root, neck, head, jaw, two eyelids) posed with linear blend skinning.

World frame (docs/rendering.md): OpenCV world, metres, head centre at the origin, the face
looking along -z (towards a frontal camera at ``z = -distance``), up is -y.

>>> avatar = HeadAvatar(AvatarIdentity.sample(seed=3))
>>> verts = avatar.pose(expression, head_rotation, head_translation)  # (F, V, 3)
"""

from __future__ import annotations

import torch

from factorportrait.body.avatar_blendshapes import EXPRESSION_NAMES, JOINT_EXPRESSIONS, \
    blendshape_offsets
from factorportrait.body.avatar_identity import AvatarIdentity
from factorportrait.body.avatar_mesh import JOINT_PARENTS, JOINTS, PARTS, build_template, \
    face_landmarks

__all__ = ["EXPRESSION_NAMES", "HeadAvatar", "axis_angle_to_matrix"]

NECK_SHARE = 0.35  # fraction of the head rotation taken by the neck joint


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: ``(..., 3)`` axis-angle (radians) -> ``(..., 3, 3)`` rotations.
    A zero vector gives the identity exactly."""
    angle = axis_angle.norm(dim=-1, keepdim=True)  # (..., 1)
    axis = axis_angle / angle.clamp_min(1e-12)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).view(*x.shape, 3, 3)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    sin, cos = angle.sin()[..., None], angle.cos()[..., None]
    return eye + sin * cross + (1.0 - cos) * (cross @ cross)


class HeadAvatar:
    """A posable avatar mesh of one identity.

    Attributes:
        identity: the :class:`AvatarIdentity` it was built from.
        neutral_vertices: ``(V, 3)`` world-space neutral mesh.
        faces: ``(M, 3)`` long, outward winding.
        vertex_colors: ``(V, 3)`` albedo in [0, 1].
        part: ``(V,)`` long index into :data:`PARTS`.
        skin_weights: ``(V, J)`` linear-blend-skinning weights over :data:`JOINTS`.
        joints: ``(J, 3)`` rest joint positions.
        blendshapes: ``(E, V, 3)`` expression offsets (zero for joint-driven expressions).
        landmarks: neutral world positions ``(3,)`` of ``left_pupil``, ``right_pupil``,
            ``nose_tip``, ``mouth``, ``chin`` and ``crown`` (e.g. to aim cameras).
    """

    EXPRESSION_NAMES = EXPRESSION_NAMES
    JOINTS = JOINTS
    PARTS = PARTS

    def __init__(self, identity: AvatarIdentity | None = None,
                 device: torch.device | str | None = None) -> None:
        self.identity = identity if identity is not None else AvatarIdentity()
        template = build_template(self.identity)
        blendshapes = blendshape_offsets(self.identity, template)
        self.neutral_vertices = template.verts.to(device)
        self.faces = template.faces.to(device)
        self.vertex_colors = template.colors.to(device)
        self.part = template.part.to(device)
        self.side = template.side.to(device)
        self.skin_weights = template.weights.to(device)
        self.joints = template.joints.to(device)
        self.blendshapes = blendshapes.to(device)
        self.landmarks = {name: point.to(device) for name, point in
                          face_landmarks(self.identity, template).items()}

    @property
    def num_expressions(self) -> int:
        return len(EXPRESSION_NAMES)

    def expression_region(self, name: str) -> torch.Tensor:
        """``(V,)`` bool: the vertices expression ``name`` may move."""
        if name not in EXPRESSION_NAMES:
            raise ValueError(f"name: expected one of {EXPRESSION_NAMES}, got {name!r}")
        if name in JOINT_EXPRESSIONS:
            return self.skin_weights[:, JOINTS.index(JOINT_EXPRESSIONS[name][0])] > 0
        return self.blendshapes[EXPRESSION_NAMES.index(name)].abs().sum(-1) > 0

    def pose(self, expression: torch.Tensor, head_rotation: torch.Tensor,
             head_translation: torch.Tensor) -> torch.Tensor:
        """Posed vertices for ``F`` frames.

        Args:
            expression: ``(F, E)`` weights of :data:`EXPRESSION_NAMES` (typically in [0, 1]).
            head_rotation: ``(F, 3)`` axis-angle (radians, world axes) of the head relative to
                the torso; the neck joint takes :data:`NECK_SHARE` of it, the head the rest.
            head_translation: ``(F, 3)`` world translation of the whole avatar (metres).

        Returns:
            ``(F, V, 3)`` world-space vertices; all-zero inputs give ``neutral_vertices``
            exactly.
        """
        self._check(expression, head_rotation, head_translation)
        dtype = self.neutral_vertices.dtype
        expression = expression.to(self.neutral_vertices.device, dtype)
        shaped = self.neutral_vertices + torch.einsum("fe,evc->fvc", expression,
                                                      self.blendshapes)  # (F, V, 3)
        rotation, translation = self._joint_transforms(
            expression, head_rotation.to(expression))  # (F, J, 3, 3), (F, J, 3)
        # Offset form of LBS, v + sum_j w_j ((R_j - I) v + t_j): exact at the rest pose even
        # where the weights do not sum to 1 in floating point.
        eye = torch.eye(3, dtype=dtype, device=rotation.device)
        blended_r = torch.einsum("vj,fjab->fvab", self.skin_weights, rotation - eye)
        blended_t = torch.einsum("vj,fja->fva", self.skin_weights, translation)
        moved = torch.einsum("fvab,fvb->fva", blended_r, shaped) + blended_t
        return shaped + moved + head_translation.to(expression)[:, None, :]

    def head_transform(self, head_rotation: torch.Tensor, head_translation: torch.Tensor
                       ) -> tuple[torch.Tensor, torch.Tensor]:
        """The rigid motion of the head under a pose: ``R (F, 3, 3)``, ``t (F, 3)`` with
        ``x_world = R x_rest + t`` for points that move with the head alone (the face, not the
        jaw or the neck). ``R`` is the rotation of ``head_rotation``; ``t`` is where the head
        centre (the rest origin) goes — not ``head_translation`` itself, since the neck takes
        :data:`NECK_SHARE` of the turn about a lower pivot."""
        frames = head_rotation.shape[0]
        zeros = torch.zeros(frames, self.num_expressions, dtype=self.neutral_vertices.dtype,
                            device=self.neutral_vertices.device)
        rotation, translation = self._joint_transforms(zeros, head_rotation.to(zeros))
        head = JOINTS.index("head")
        return rotation[:, head], translation[:, head] + head_translation.to(zeros)

    def _check(self, expression: torch.Tensor, head_rotation: torch.Tensor,
               head_translation: torch.Tensor) -> None:
        if expression.ndim != 2 or expression.shape[1] != self.num_expressions:
            raise ValueError(f"expression: expected (F, {self.num_expressions}) weights of "
                             f"{EXPRESSION_NAMES}, got {tuple(expression.shape)}")
        frames = expression.shape[0]
        for name, value in (("head_rotation", head_rotation),
                            ("head_translation", head_translation)):
            if value.shape != (frames, 3):
                raise ValueError(f"{name}: expected ({frames}, 3), got {tuple(value.shape)}")

    def _joint_transforms(self, expression: torch.Tensor, head_rotation: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """World transforms ``x -> R x + t`` of every joint: ``(F, J, 3, 3)``, ``(F, J, 3)``."""
        frames = expression.shape[0]
        local = torch.zeros(frames, len(JOINTS), 3, dtype=expression.dtype,
                            device=expression.device)
        local[:, JOINTS.index("neck")] = NECK_SHARE * head_rotation
        local[:, JOINTS.index("head")] = (1.0 - NECK_SHARE) * head_rotation
        for name, (joint, angle) in JOINT_EXPRESSIONS.items():
            weight = expression[:, EXPRESSION_NAMES.index(name)]
            local[:, JOINTS.index(joint), 0] = angle * weight  # about +x: opens / closes
        rotation = axis_angle_to_matrix(local)  # (F, J, 3, 3)
        pivot = self.joints.to(expression)  # (J, 3)
        # Rotation about the joint: x -> R (x - c) + c = R x + (c - R c).
        translation = pivot - torch.einsum("fjab,jb->fja", rotation, pivot)
        world_r, world_t = [], []
        for joint, parent in enumerate(JOINT_PARENTS):
            r, t = rotation[:, joint], translation[:, joint]
            if parent >= 0:
                r, t = world_r[parent] @ r, \
                    torch.einsum("fab,fb->fa", world_r[parent], t) + world_t[parent]
            world_r.append(r)
            world_t.append(t)
        return torch.stack(world_r, 1), torch.stack(world_t, 1)
