"""Ray maps: Plücker camera rays (CameraCtrl convention) and the DeX-Portrait head-pose ray map.

Pixel-centre convention everywhere: pixel ``(u, v)`` (u along width, v along height) is sampled
at ``(u + 0.5, v + 0.5)`` in pixel coordinates.
"""

from __future__ import annotations

import torch
from torch import Tensor

from factorportrait.geometry.cameras import ROTATION_TOLERANCE, Cameras

LATENT_STRIDE = 8  # Wan VAE spatial downsampling
TEMPORAL_STRIDE = 4  # Wan VAE temporal downsampling: F = 4k + 1 frames → k + 1 latent frames
PIXEL_MULTIPLE = 16  # pixel height/width must be multiples of this (DESIGN.md "Tensor conventions")


def _check_image_size(name: str, height: int, width: int, multiple: int = 1) -> None:
    for label, value in (("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1 or value % multiple:
            need = "a positive int" + (f" multiple of {multiple}" if multiple > 1 else "")
            raise ValueError(f"{name}: {label} must be {need}, got {value!r}")


def plucker_rays(cameras: Cameras, height: int, width: int) -> Tensor:
    """Plücker ray map of each camera at every pixel centre.

    cameras: F cameras whose K is for an image of ``height × width`` (scale K first otherwise).
    Returns ``(F, 6, H, W)``: channels 0–2 the moment ``o × d``, channels 3–5 the unit
    direction ``d = normalize(R K⁻¹ [u+0.5, v+0.5, 1]ᵀ)``; ``o`` is the camera centre (world).
    """
    _check_image_size("plucker_rays", height, width)
    if cameras.width is not None and (cameras.width, cameras.height) != (width, height):
        raise ValueError(f"plucker_rays: cameras are for {cameras.width}x{cameras.height} (WxH) "
                         f"images but rays were asked at {width}x{height}; "
                         "resize the cameras first")
    dtype, device = cameras.K.dtype, cameras.K.device
    v, u = torch.meshgrid(torch.arange(height, dtype=dtype, device=device) + 0.5,
                          torch.arange(width, dtype=dtype, device=device) + 0.5, indexing="ij")
    pixels = torch.stack([u, v, torch.ones_like(u)], dim=-1)  # (H, W, 3) homogeneous pixel centres
    K_inv = torch.linalg.inv(cameras.K)  # (F, 3, 3)
    ray_to_world = cameras.rotations() @ K_inv  # (F, 3, 3): R K⁻¹
    d = torch.einsum("fij,hwj->fhwi", ray_to_world, pixels)  # (F, H, W, 3)
    d = d / d.norm(dim=-1, keepdim=True)
    o = cameras.centers()[:, None, None, :].expand_as(d)  # (F, H, W, 3)
    moment = torch.linalg.cross(o, d, dim=-1)  # o × d
    return torch.cat([moment, d], dim=-1).permute(0, 3, 1, 2).contiguous()  # (F, 6, H, W)


def dit_rays(reference: Cameras, cameras: Cameras, height: int, width: int) -> Tensor:
    """Plücker rays packed for the DiT's ray slot (DESIGN.md "Condition fusion", 24 channels).

    reference: 1 camera (the reference image's); cameras: F = 4k + 1 cameras of the generated
    video; both with K for ``height × width`` pixel images (multiples of 16).
    All cameras are made relative to the reference (which becomes the identity) and rays are
    taken at latent resolution ``h = height/8, w = width/8`` (K scaled by 1/8).

    Returns ``(24, 1 + F_lat, h, w)`` with ``F_lat = (F − 1)/4 + 1`` and channel ``6·k + c``
    = Plücker channel ``c`` (0–5, moment then direction) of the ``k``-th (0–3) video frame of
    the latent frame:
      - latent frame 0: the reference (identity) camera, repeated ×4;
      - latent frame 1: video frame 0, repeated ×4 (the VAE's first latent frame holds 1 frame);
      - latent frame 1 + j (j ≥ 1): video frames 4j − 3, …, 4j.
    """
    _check_image_size("dit_rays", height, width, PIXEL_MULTIPLE)
    if len(reference) != 1:
        raise ValueError(f"dit_rays: reference must be 1 camera, got {len(reference)}")
    num_frames = len(cameras)
    if num_frames % TEMPORAL_STRIDE != 1:
        raise ValueError("dit_rays: the video must have F = 4k + 1 frames (1, 5, 9, …), "
                         f"got {num_frames}")
    for name, cams in (("reference", reference), ("cameras", cameras)):
        if cams.width is not None and (cams.width, cams.height) != (width, height):
            raise ValueError(f"dit_rays: {name} are for {cams.width}x{cams.height} (WxH) images, "
                             f"expected {width}x{height}")
    h, w = height // LATENT_STRIDE, width // LATENT_STRIDE
    relative = cameras.relative_to(reference)
    identity = Cameras.identity(1, reference.K[0].to(cameras.K))
    identity_rays = plucker_rays(identity.scale_intrinsics(1 / LATENT_STRIDE), h, w)  # (1, 6, h, w)
    video_rays = plucker_rays(relative.scale_intrinsics(1 / LATENT_STRIDE), h, w)  # (F, 6, h, w)
    frames = torch.cat([
        identity_rays.expand(TEMPORAL_STRIDE, -1, -1, -1),  # latent frame 0: reference ×4
        video_rays[:1].expand(TEMPORAL_STRIDE, -1, -1, -1),  # latent frame 1: video frame 0 ×4
        video_rays[1:],  # latent frames 2..: 4 video frames each
    ])  # (4 (1 + F_lat), 6, h, w)
    packed = frames.reshape(-1, TEMPORAL_STRIDE * 6, h, w)  # (1 + F_lat, 24, h, w), ch = 6k + c
    return packed.permute(1, 0, 2, 3).contiguous()  # (24, 1 + F_lat, h, w)


def _check_pose_matrix(name: str, P: Tensor) -> None:
    if not isinstance(P, Tensor) or P.ndim != 3 or tuple(P.shape[1:]) != (3, 4):
        got = tuple(P.shape) if isinstance(P, Tensor) else type(P).__name__
        raise ValueError(f"{name}: P must be a tensor of shape (F, 3, 4), got {got}")
    if not P.is_floating_point():
        raise ValueError(f"{name}: P must be floating point, got {P.dtype}")
    bad = (~torch.isfinite(P).flatten(1).all(1)).nonzero()
    if len(bad):
        raise ValueError(f"{name}: frame {int(bad[0, 0])}: P has non-finite values")


def head_pose_ray_map(P: Tensor, height: int, width: int) -> Tensor:
    """DeX-Portrait head-pose ray map (Eq. 3) of head poses ``P = [sR | t]`` ``(F, 3, 4)``.

    ``RayMap(u, v) = P [u, v, 0, 1]ᵀ − [u, v, 0]ᵀ`` (homogeneous 1, see DESIGN.md; the paper's
    ``[u, v, 0, 0]`` would drop the translation) on a grid of pixel centres mapped into
    [−1, 1]²: ``u_i = (2i + 1)/W − 1`` along the width, ``v_j = (2j + 1)/H − 1`` along the
    height.
    Returns ``(F, 3, H, W)``, channels x, y, z; the identity pose gives zeros.
    """
    _check_pose_matrix("head_pose_ray_map", P)
    _check_image_size("head_pose_ray_map", height, width)
    dtype, device = P.dtype, P.device
    u = (2 * torch.arange(width, dtype=dtype, device=device) + 1) / width - 1  # (W,)
    v = (2 * torch.arange(height, dtype=dtype, device=device) + 1) / height - 1  # (H,)
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    uv0 = torch.stack([uu, vv, torch.zeros_like(uu)], dim=-1)  # (H, W, 3) = [u, v, 0]
    # Eq. 3: sR [u, v, 0]ᵀ + t − [u, v, 0]ᵀ
    mapped = torch.einsum("fij,hwj->fhwi", P[:, :, :3], uv0) + P[:, None, None, :, 3]
    return (mapped - uv0).permute(0, 3, 1, 2).contiguous()  # (F, 3, H, W)


def rts_from_matrix(P: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Split similarity poses ``P = [sR | t]`` ``(F, 3, 4)`` into R, t, s.

    Returns R ``(F, 3, 3)``, t ``(F, 3)``, s ``(F,)``.

    s = det(sR)^(1/3); raises if det ≤ 0 or sR/s is not a rotation (tolerance 1e-3).
    """
    _check_pose_matrix("rts_from_matrix", P)
    sR, t = P[:, :, :3], P[:, :, 3]
    det = torch.linalg.det(sR)
    bad = (det <= 0).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(f"rts_from_matrix: frame {i}: det(sR) = {det[i]:.6g}, expected > 0")
    s = det.pow(1.0 / 3.0)
    R = sR / s[:, None, None]
    eye = torch.eye(3, dtype=P.dtype, device=P.device)
    err = (R.transpose(1, 2) @ R - eye).abs().flatten(1).amax(1)
    bad = (err > ROTATION_TOLERANCE).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(f"rts_from_matrix: frame {i}: P[:, :3] is not a scaled rotation "
                         f"(max |RᵀR − I| = {err[i]:.3g})")
    return R, t, s


def matrix_from_rts(R: Tensor, t: Tensor, s: Tensor) -> Tensor:
    """Compose ``P = [sR | t]`` ``(F, 3, 4)`` from R ``(F, 3, 3)``, t ``(F, 3)``, s ``(F,)`` > 0."""
    if R.ndim != 3 or tuple(R.shape[1:]) != (3, 3):
        raise ValueError(f"matrix_from_rts: R must have shape (F, 3, 3), got {tuple(R.shape)}")
    num = R.shape[0]
    if tuple(t.shape) != (num, 3) or tuple(s.shape) != (num,):
        raise ValueError(f"matrix_from_rts: expected t ({num}, 3) and s ({num},), "
                         f"got {tuple(t.shape)} and {tuple(s.shape)}")
    bad = (~(s > 0)).nonzero()
    if len(bad):
        i = int(bad[0, 0])
        raise ValueError(f"matrix_from_rts: frame {i}: scale must be > 0, got {float(s[i])}")
    return torch.cat([s[:, None, None] * R, t[:, :, None]], dim=-1)
