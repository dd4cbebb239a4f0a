"""Rotation helpers: axis rotations, axis-angle, quaternions and slerp.

Plain torch, any floating dtype; the dtype and device of the inputs are kept.
Quaternions are ``(w, x, y, z)`` with ``w >= 0``. Angles are in radians.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rotation_x(angle: Tensor) -> Tensor:
    """Right-handed rotation about the x axis.

    angle: ``(...)`` radians. Returns ``(..., 3, 3)``. In the OpenCV frame (y down, z forward)
    a positive angle turns +z towards -y, i.e. the camera looks *up*.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rows = [one, zero, zero, zero, c, -s, zero, s, c]
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def rotation_y(angle: Tensor) -> Tensor:
    """Right-handed rotation about the y axis.

    angle: ``(...)`` radians. Returns ``(..., 3, 3)``. In the OpenCV frame a positive angle turns
    +z towards +x, i.e. the camera looks to its *right*.
    """
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rows = [c, zero, s, zero, one, zero, -s, zero, c]
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def rotation_z(angle: Tensor) -> Tensor:
    """Right-handed rotation about the z axis. angle ``(...)`` radians → ``(..., 3, 3)``."""
    c, s = torch.cos(angle), torch.sin(angle)
    one, zero = torch.ones_like(angle), torch.zeros_like(angle)
    rows = [c, -s, zero, s, c, zero, zero, zero, one]
    return torch.stack(rows, dim=-1).reshape(*angle.shape, 3, 3)


def axis_angle_to_matrix(axis_angle: Tensor) -> Tensor:
    """Rodrigues' formula: axis_angle ``(..., 3)`` (axis × angle) → ``(..., 3, 3)``."""
    angle = axis_angle.norm(dim=-1, keepdim=True)  # (..., 1)
    axis = axis_angle / angle.clamp_min(torch.finfo(axis_angle.dtype).tiny)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    cross = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], -1).reshape(*x.shape, 3, 3)
    s, c = torch.sin(angle)[..., None], torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device)
    # R = I + sin(θ) [k]× + (1 − cos θ) [k]×²
    return eye + s * cross + (1 - c) * (cross @ cross)


def matrix_to_quaternion(rotation: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` → unit quaternions ``(..., 4)`` as (w, x, y, z), w ≥ 0.

    Numerically stable branch selection (Shepperd's method): the largest of |w|, |x|, |y|, |z|
    is computed from the diagonal and the rest from off-diagonal sums/differences.
    """
    m = rotation
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q_abs = torch.stack(  # (..., 4) = 2|w|, 2|x|, 2|y|, 2|z|
        [1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1
    ).clamp_min(0).sqrt()
    d21, s21 = m[..., 2, 1] - m[..., 1, 2], m[..., 2, 1] + m[..., 1, 2]
    d02, s02 = m[..., 0, 2] - m[..., 2, 0], m[..., 0, 2] + m[..., 2, 0]
    d10, s10 = m[..., 1, 0] - m[..., 0, 1], m[..., 1, 0] + m[..., 0, 1]
    sq = q_abs**2
    candidates = torch.stack(  # (..., 4 cases, 4 components), each case scaled by 2 * q_abs[case]
        [
            torch.stack([sq[..., 0], d21, d02, d10], -1),
            torch.stack([d21, sq[..., 1], s10, s02], -1),
            torch.stack([d02, s10, sq[..., 2], s21], -1),
            torch.stack([d10, s02, s21, sq[..., 3]], -1),
        ],
        -2,
    )
    candidates = candidates / (2 * q_abs[..., None]).clamp_min(0.1)
    best = q_abs.argmax(-1)[..., None, None].expand(*q_abs.shape[:-1], 1, 4)
    quat = candidates.gather(-2, best).squeeze(-2)
    quat = quat / quat.norm(dim=-1, keepdim=True)
    return torch.where(quat[..., :1] < 0, -quat, quat)


def quaternion_to_matrix(quat: Tensor) -> Tensor:
    """Quaternions ``(..., 4)`` as (w, x, y, z), normalised here → rotations ``(..., 3, 3)``."""
    w, x, y, z = (quat / quat.norm(dim=-1, keepdim=True)).unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return torch.stack(rows, -1).reshape(*w.shape, 3, 3)


def slerp(q0: Tensor, q1: Tensor, t: Tensor) -> Tensor:
    """Spherical linear interpolation along the shorter arc.

    q0, q1: ``(..., 4)`` unit quaternions; t: ``(...)`` in [0, 1]. Returns ``(..., 4)``.
    slerp(q0, q1, t) = sin((1−t)θ)/sin θ · q0 + sin(tθ)/sin θ · q1 with cos θ = |q0·q1|.
    """
    dot = (q0 * q1).sum(-1, keepdim=True)
    q1 = torch.where(dot < 0, -q1, q1)  # q and −q are the same rotation: take the short way
    dot = dot.abs().clamp(max=1.0)
    theta = torch.acos(dot)
    sin_theta = torch.sin(theta)
    t = t[..., None]
    near = sin_theta < 1e-6  # (almost) equal rotations: normalised lerp is exact enough
    safe = torch.where(near, torch.ones_like(sin_theta), sin_theta)
    w0 = torch.where(near, 1 - t, torch.sin((1 - t) * theta) / safe)
    w1 = torch.where(near, t, torch.sin(t * theta) / safe)
    out = w0 * q0 + w1 * q1
    return out / out.norm(dim=-1, keepdim=True)


def rotation_angle(rotation: Tensor) -> Tensor:
    """Geodesic angle (radians) of rotation matrices ``(..., 3, 3)`` → ``(...)``."""
    quat = matrix_to_quaternion(rotation)
    return 2 * torch.atan2(quat[..., 1:].norm(dim=-1), quat[..., 0].abs())


def quaternion_to_axis_angle(quat: Tensor) -> Tensor:
    """Quaternions ``(..., 4)`` as (w, x, y, z) → axis-angle ``(..., 3)``, angle in [0, π]."""
    quat = torch.where(quat[..., :1] < 0, -quat, quat)
    vector = quat[..., 1:]
    norm = vector.norm(dim=-1, keepdim=True)
    angle = 2 * torch.atan2(norm, quat[..., :1])
    # angle / sin(angle / 2), with its limit 2 near the identity
    factor = torch.where(norm > 1e-8, angle / norm.clamp_min(1e-12), 2.0 / quat[..., :1])
    return vector * factor


def matrix_to_axis_angle(rotation: Tensor) -> Tensor:
    """Rotation matrices ``(..., 3, 3)`` → axis-angle ``(..., 3)`` (the inverse of
    :func:`axis_angle_to_matrix` for angles below π)."""
    return quaternion_to_axis_angle(matrix_to_quaternion(rotation))
