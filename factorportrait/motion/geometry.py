"""The motion trainer's geometry (DeX §3.2, Eq. 2): RTS poses from network outputs, and the
3D warp of the appearance volume from the source pose to the driving pose.

Poses follow :mod:`factorportrait.geometry.head_pose`: ``P = [sR | t]`` ``(B, 3, 4)`` maps
head-frame points to normalised coordinates ``[u, v, z]`` ∈ [−1, 1]³ (u along W, v along H,
z along the volume's depth; voxel centres at ``(2i + 1)/n − 1``), ``t = [t_u, t_v, 0]`` lies in
the image plane, so a pose has 3 + 2 + 1 degrees of freedom. The warp is
:func:`factorportrait.models.dex.warp_features` (the DiT's reference warp) applied to the
volume's channel-depth layout — one implementation of ``P_d P_s⁻¹`` for both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.geometry.head_pose import relative_pose
from factorportrait.geometry.rays import matrix_from_rts
from factorportrait.models.dex import warp_features


def rotation_6d_to_matrix(d6: Tensor) -> Tensor:
    """Zhou et al.'s continuous 6D rotation: ``(..., 6)`` -> ``(..., 3, 3)``.

    The two 3-vectors ``a1 = d6[..., :3]``, ``a2 = d6[..., 3:]`` are Gram–Schmidt
    orthonormalised into the first two *columns* ``b1, b2`` of R, the third is ``b1 × b2``, so
    ``Rᵀ R = I`` and ``det R = +1`` for any input with ``a1, a2`` not parallel.
    ``[1, 0, 0, 0, 1, 0]`` gives the identity.
    """
    a1, a2 = d6[..., :3], d6[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # columns


def rts_pose(rotation: Tensor, translation: Tensor, log_scale: Tensor) -> Tensor:
    """``P = [sR | t]`` (Eq. 2) ``(B, 3, 4)`` from ``rotation (B, 3, 3)``, image-plane
    ``translation (B, 2)`` as ``(t_u, t_v)`` and ``log_scale (B,)`` (``s = exp(log_scale)``);
    the z translation is 0 as in :func:`~factorportrait.geometry.head_pose.head_pose_matrices`
    (composed by :func:`~factorportrait.geometry.rays.matrix_from_rts`).
    """
    t = torch.cat([translation, torch.zeros_like(translation[:, :1])], dim=1)  # (B, 3)
    return matrix_from_rts(rotation, t, log_scale.exp())


def pose_scale_and_rotation(pose: Tensor) -> tuple[Tensor, Tensor]:
    """Split ``P = [sR | t]`` ``(B, 3, 4)`` into ``s (B,)`` (the cube root of ``det sR``) and
    ``R (B, 3, 3)`` — the inverse of :func:`rts_pose` for the linear part."""
    linear = pose[:, :, :3]
    scale = torch.linalg.det(linear).clamp_min(torch.finfo(pose.dtype).tiny) ** (1 / 3)
    return scale, linear / scale[:, None, None]


def warp_volume(volume: Tensor, pose_source: Tensor, pose_driving: Tensor) -> Tensor:
    """Warp a feature volume from the source pose to the driving pose (DeX §3.2).

    The feature at normalised position ``x`` moves to ``P_d P_s⁻¹ x`` (trilinear
    ``grid_sample``, zeros outside the source volume); ``P_s = P_d`` returns the volume
    unchanged (up to float rounding).

    Args:
        volume: ``(B, C, D, H, W)``.
        pose_source, pose_driving: ``(B, 3, 4)`` RTS poses (module docstring).
    Returns:
        ``(B, C, D, H, W)`` in ``volume``'s dtype, differentiable in all three inputs.
    """
    if volume.ndim != 5:
        raise ValueError(f"warp_volume: volume must be (B, C, D, H, W), got "
                         f"{tuple(volume.shape)}")
    batch, channels, depth, height, width = volume.shape
    for name, pose in (("pose_source", pose_source), ("pose_driving", pose_driving)):
        if tuple(pose.shape) != (batch, 3, 4):
            raise ValueError(f"warp_volume: {name} must be ({batch}, 3, 4), got "
                             f"{tuple(pose.shape)}")
    transform = relative_pose(pose_source.float(), pose_driving.float())  # P_d P_s⁻¹ (B, 3, 4)
    flat = volume.reshape(batch, channels * depth, height, width)  # channel c·D + z
    warped = warp_features(flat, transform, depth)
    return warped.view(batch, channels, depth, height, width)
