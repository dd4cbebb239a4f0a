"""DeX-Portrait's head pose ``P = [sR | t]`` (RTS, DeX §3.2 Eq. 2) from 3D head poses, packed for
the DiT: head-pose ray maps per latent frame and the per-latent-frame warps of the reference.

Convention (docs/conditioning.md): ``P`` maps head-frame points, in units of
:data:`HEAD_RADIUS_M`, to normalised image coordinates ``[u, v, z]`` with ``u, v ∈ [−1, 1]``
across the width and height (pixel centres at ``(2i + 1)/W − 1``, as in
:func:`~factorportrait.geometry.rays.head_pose_ray_map`) under weak perspective:

    R = R_w2c · R_head                 head rotation seen from the camera (identity: frontal)
    t = [u_c, v_c, 0]                  the projected head centre, normalised
    s = 2 · f_y · HEAD_RADIUS_M / (H · z_c)   apparent head radius in normalised height units

so 6 degrees of freedom (3 + 2 + 1), as in the paper. ``P_d P_s⁻¹`` (:func:`relative_pose`)
carries the reference's features to a driving frame (:mod:`factorportrait.models.dex`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.rays import (LATENT_STRIDE, TEMPORAL_STRIDE, _check_pose_matrix,
                                          head_pose_ray_map)
from factorportrait.geometry.rotations import axis_angle_to_matrix, matrix_to_axis_angle

HEAD_RADIUS_M = 0.1  # the head-frame unit of P: a head of radius ~0.1 m spans ~2 units


def _check_cameras(name: str, cameras: Cameras, frames: int, what: str, why: str = "") -> None:
    """One camera or one per frame, with the image size set (``name`` heads the message)."""
    if len(cameras) not in (1, frames):
        raise ValueError(f"{name}: {len(cameras)} cameras for {frames} {what}; give one camera "
                         "or one per frame")
    if cameras.width is None:
        raise ValueError(f"{name}: cameras need width and height{why}")


def head_pose_matrices(head_rotation: Tensor, head_translation: Tensor, cameras: Cameras
                       ) -> Tensor:
    """RTS poses ``P (F, 3, 4)`` of 3D head poses seen by ``cameras``.

    Args:
        head_rotation: ``(F, 3)`` axis-angle, world frame (the dataset's convention).
        head_translation: ``(F, 3)`` head centre in metres, world frame.
        cameras: ``F`` cameras (or 1, shared) with ``width``/``height`` set (K in pixels).
    Returns:
        ``(F, 3, 4)`` float32 ``[sR | t]`` (module docstring); raises ``ValueError`` for a head
        behind a camera.
    """
    if head_rotation.ndim != 2 or head_rotation.shape[1] != 3:
        raise ValueError(f"head_pose_matrices: head_rotation must be (F, 3), got "
                         f"{tuple(head_rotation.shape)}")
    if tuple(head_translation.shape) != tuple(head_rotation.shape):
        raise ValueError(f"head_pose_matrices: head_translation must be "
                         f"{tuple(head_rotation.shape)} like head_rotation, got "
                         f"{tuple(head_translation.shape)}")
    frames = head_rotation.shape[0]
    _check_cameras("head_pose_matrices", cameras, frames, "head poses",
                   " (the image K is for)")
    w2c = cameras.world_to_camera().double().expand(frames, -1, -1)  # (F, 4, 4)
    K = cameras.K.double().expand(frames, -1, -1)
    rotation = w2c[:, :3, :3] @ axis_angle_to_matrix(head_rotation.double())  # (F, 3, 3)
    centre = torch.einsum("fij,fj->fi", w2c[:, :3, :3], head_translation.double()) + w2c[:, :3, 3]
    depth = centre[:, 2]
    if (bad := (depth <= 1e-6).nonzero()).numel():
        raise ValueError(f"head_pose_matrices: frame {int(bad[0, 0])}: the head centre is behind "
                         f"the camera (depth {float(depth[bad[0, 0]]):.3g} m)")
    pixels = torch.einsum("fij,fj->fi", K, centre)[:, :2] / depth[:, None]  # (F, 2)
    size = torch.tensor([cameras.width, cameras.height], dtype=torch.float64)
    uv = 2 * pixels / size - 1
    scale = 2 * K[:, 1, 1] * HEAD_RADIUS_M / (cameras.height * depth)  # (F,)
    translation = torch.cat([uv, torch.zeros_like(uv[:, :1])], dim=1)
    return torch.cat([scale[:, None, None] * rotation, translation[:, :, None]], dim=2).float()


def head_poses_from_matrices(poses: Tensor, cameras: Cameras) -> tuple[Tensor, Tensor]:
    """The inverse of :func:`head_pose_matrices`: 3D head poses whose RTS, seen by ``cameras``,
    are ``poses`` (e.g. a pose encoder's predictions).

    ``sR`` splits into ``s`` (the cube root of its determinant) and ``R``; the head centre lies
    on the ray through the pixel of ``(t_u, t_v)`` at the depth ``z = 2 f_y r / (H s)``
    (``r`` = :data:`HEAD_RADIUS_M`), so the pose encoder's scale becomes distance.

    Args:
        poses: ``(F, 3, 4)`` RTS ``[sR | t]`` with ``det(sR) > 0``.
        cameras: ``F`` cameras (or 1, shared) with ``width``/``height`` set.
    Returns:
        ``head_rotation (F, 3)`` axis-angle and ``head_translation (F, 3)`` metres, world
        frame, float32.
    """
    _check_pose_matrix("head_poses_from_matrices", poses)
    frames = poses.shape[0]
    _check_cameras("head_poses_from_matrices", cameras, frames, "poses")
    linear = poses[:, :, :3].double()
    determinant = torch.linalg.det(linear)
    if (bad := (determinant <= 0).nonzero()).numel():
        raise ValueError(f"head_poses_from_matrices: pose {int(bad[0, 0])} has det(sR) <= 0 "
                         "(not a scaled rotation)")
    scale = determinant ** (1 / 3)  # (F,)
    rotation = linear / scale[:, None, None]
    c2w = cameras.c2w.double().expand(frames, -1, -1)
    K = cameras.K.double().expand(frames, -1, -1)
    depth = 2 * K[:, 1, 1] * HEAD_RADIUS_M / (cameras.height * scale)  # (F,)
    size = torch.tensor([cameras.width, cameras.height], dtype=torch.float64)
    pixels = (poses[:, :2, 3].double() + 1) * size / 2  # (F, 2)
    homogeneous = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=1)
    centre = torch.linalg.solve(K, homogeneous[:, :, None])[:, :, 0] * depth[:, None]
    world_rotation = c2w[:, :3, :3] @ rotation
    world_centre = torch.einsum("fij,fj->fi", c2w[:, :3, :3], centre) + c2w[:, :3, 3]
    return matrix_to_axis_angle(world_rotation).float(), world_centre.float()


def source_and_driving_poses(source_rotation: Tensor, source_translation: Tensor,
                             source_camera: Cameras, rotation: Tensor, translation: Tensor,
                             cameras: Cameras) -> Tensor:
    """``head_pose (1 + F, 3, 4)`` as the DiT takes it: the source's ``(1, 3)`` pose seen by
    its 1 camera, then ``F`` driving poses ``(F, 3)`` seen by their cameras
    (:func:`head_pose_matrices` of both, concatenated)."""
    return head_pose_matrices(torch.cat([source_rotation.reshape(1, 3).float(), rotation.float()]),
                              torch.cat([source_translation.reshape(1, 3).float(),
                                         translation.float()]),
                              Cameras.cat([source_camera, cameras]))


def to_homogeneous(P: Tensor) -> Tensor:
    """``(..., 3, 4)`` -> ``(..., 4, 4)`` with the last row ``[0, 0, 0, 1]``."""
    bottom = torch.zeros(*P.shape[:-2], 1, 4, dtype=P.dtype, device=P.device)
    bottom[..., 0, 3] = 1
    return torch.cat([P, bottom], dim=-2)


def relative_pose(source: Tensor, driving: Tensor) -> Tensor:
    """``P_d P_s⁻¹`` ``(..., 3, 4)``: the similarity taking the source pose to the driving one.

    ``source`` broadcasts against ``driving`` (both ``(..., 3, 4)``).
    """
    relative = to_homogeneous(driving) @ torch.linalg.inv(to_homogeneous(source))
    return relative[..., :3, :]


def _check_poses(head_pose: Tensor) -> None:
    if head_pose.ndim != 4 or tuple(head_pose.shape[2:]) != (3, 4):
        raise ValueError(f"head_pose must be (B, 1+T, 3, 4), got {tuple(head_pose.shape)}")
    if (head_pose.shape[1] - 1) % TEMPORAL_STRIDE != 1:
        raise ValueError(f"head_pose must hold the source and T = 4k+1 driving poses "
                         f"(1+T = 2, 6, 10, …), got 1+T = {head_pose.shape[1]}")


def latent_frame_poses(head_pose: Tensor) -> Tensor:
    """One pose per DiT frame: ``(B, 1+T, 3, 4)`` -> ``(B, 1+F_lat, 3, 4)``.

    Index 0 of the input is the source (reference) pose, 1…T the driving frames. DiT frame 0
    is the source, frame 1 video frame 0 and frame 1+j (j ≥ 1) the last video frame of its
    chunk, ``4j`` (the latest frame the causal VAE folded into that latent).
    """
    _check_poses(head_pose)
    driving = head_pose[:, 1:]
    return torch.cat([head_pose[:, :1], driving[:, ::TEMPORAL_STRIDE]], dim=1)


def dit_head_rays(head_pose: Tensor, height: int, width: int) -> Tensor:
    """Head-pose ray maps packed for the DiT like the Plücker rays: ``(B, 1+T, 3, 4)`` ->
    ``(B, 24, 1+F_lat, h, w)`` at latent resolution (``h, w = height/8, width/8``).

    Each video frame gives 6 channels, the source ray map then the driving one (DeX §3.3
    concatenates both); channel ``6k + c`` holds video frame ``k`` of the latent frame's chunk,
    as in :func:`~factorportrait.geometry.rays.dit_rays`: DiT frame 0 is the source (its own
    pose in both halves) ×4, frame 1 video frame 0 ×4, frame 1+j video frames 4j−3 … 4j.
    """
    _check_poses(head_pose)
    batch, count = head_pose.shape[:2]
    h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
    if h < 1 or w < 1 or height % LATENT_STRIDE or width % LATENT_STRIDE:
        raise ValueError(f"dit_head_rays: height and width must be positive multiples of "
                         f"{LATENT_STRIDE}, got {height}x{width}")
    _check_pose_matrix("dit_head_rays", head_pose.reshape(-1, 3, 4))
    maps = head_pose_ray_map(head_pose.reshape(-1, 3, 4), h, w).view(batch, count, 3, h, w)
    source, driving = maps[:, :1], maps[:, 1:]  # (B, 1, 3, h, w), (B, T, 3, h, w)
    frames = torch.cat([
        source.expand(-1, TEMPORAL_STRIDE, -1, -1, -1),  # DiT frame 0: the source x4
        driving[:, :1].expand(-1, TEMPORAL_STRIDE, -1, -1, -1),  # DiT frame 1: video frame 0
        driving[:, 1:],  # DiT frames 2..: 4 video frames each
    ], dim=1)  # (B, 4 (1 + F_lat), 3, h, w)
    sources = torch.cat([source.expand(-1, TEMPORAL_STRIDE, -1, -1, -1), source.expand_as(
        frames[:, TEMPORAL_STRIDE:])], dim=1)  # the source map beside every frame
    paired = torch.cat([sources, frames], dim=2)  # (B, 4 (1 + F_lat), 6, h, w)
    packed = paired.reshape(batch, -1, TEMPORAL_STRIDE * 6, h, w)  # ch = 6k + c
    return packed.permute(0, 2, 1, 3, 4).contiguous()  # (B, 24, 1 + F_lat, h, w)


def normalised_landmarks(points: Tensor, cameras: Cameras) -> Tensor:
    """World points ``(F, N, 3)`` seen by ``cameras`` (F, or 1) -> ``(F, N, 2)`` in [−1, 1]
    image coordinates (the landmark condition's input; pixel centres as in the ray map)."""
    if cameras.width is None:
        raise ValueError("normalised_landmarks: cameras need width and height")
    pixels, _ = cameras.project(points.to(cameras.K.dtype))
    size = torch.tensor([cameras.width, cameras.height], dtype=pixels.dtype)
    return (2 * pixels / size - 1).float()
