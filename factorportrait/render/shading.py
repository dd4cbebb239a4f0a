"""Per-pixel attributes from :class:`~factorportrait.render.rasterizer.Fragments`: vertex
normals, attribute interpolation, the normal-map colour encoding and Lambert shading."""

from __future__ import annotations

import torch
import torch.nn.functional as F_nn

from factorportrait.render.fragments import Fragments

# Camera-space OpenCV normal -> the OpenGL-looking colour convention of normal maps:
# x right -> R, y up -> G, z towards the viewer -> B (a surface facing the camera is
# (0.5, 0.5, 1.0), light blue). rgb = (n * NORMAL_AXES + 1) / 2.
NORMAL_AXES = (1.0, -1.0, -1.0)


def vertex_normals(verts: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of a batch of meshes.

    Args:
        verts: ``(F, V, 3)`` vertices.
        faces: ``(M, 3)`` long indices; the normal follows ``(v1 - v0) x (v2 - v0)``.

    Returns:
        ``(F, V, 3)`` unit normals (zero for vertices used by no face).
    """
    tri = verts[:, faces]  # (F, M, 3, 3)
    face_normal = torch.linalg.cross(tri[:, :, 1] - tri[:, :, 0], tri[:, :, 2] - tri[:, :, 0])
    normals = torch.zeros_like(verts)
    for corner in range(3):
        normals.index_add_(1, faces[:, corner], face_normal)
    return F_nn.normalize(normals, dim=-1, eps=1e-12)


def interpolate(fragments: Fragments, faces: torch.Tensor, attributes: torch.Tensor
                ) -> torch.Tensor:
    """Perspective-correct interpolation of per-vertex attributes at the covered pixels.

    Args:
        fragments: rasterisation result for ``F`` frames with ``P`` covered pixels.
        faces: ``(M, 3)`` long indices.
        attributes: ``(F, V, C)``, ``(1, V, C)`` or ``(V, C)`` per-vertex values.

    Returns:
        ``(P, C)`` values (see :meth:`Fragments.to_image` for images).
    """
    frames = fragments.size[0]
    if attributes.ndim == 2:
        attributes = attributes.unsqueeze(0)
    if attributes.ndim != 3 or attributes.shape[0] not in (1, frames):
        raise ValueError(f"attributes: expected (V, C) or ({frames}, V, C), "
                         f"got {tuple(attributes.shape)}")
    channels = attributes.shape[-1]
    corners = faces.index_select(0, fragments.pixel_faces)  # (P, 3)
    if attributes.shape[0] > 1:  # per-frame attributes: offset into the flattened frames
        corners = corners + (fragments.pixel_frames * attributes.shape[1]).unsqueeze(-1)
    values = attributes.reshape(-1, channels).index_select(0, corners.reshape(-1))
    weights = fragments.pixel_barycentrics.to(values.dtype)  # (P, 3)
    return (weights.unsqueeze(-1) * values.view(-1, 3, channels)).sum(1)


def pixel_normals(fragments: Fragments, faces: torch.Tensor, normals: torch.Tensor,
                  two_sided: bool = True) -> torch.Tensor:
    """Unit camera-space normals at the covered pixels, ``(P, 3)``.

    Args:
        fragments: rasterisation result.
        faces: ``(M, 3)`` long indices.
        normals: ``(F, V, 3)`` camera-space vertex normals.
        two_sided: flip the normal of pixels whose face winding points away from the camera,
            so back faces of open meshes are shaded as seen.
    """
    n = F_nn.normalize(interpolate(fragments, faces, normals), dim=-1, eps=1e-12)
    if two_sided:
        n = torch.where(fragments.pixel_front_facing.unsqueeze(-1), n, -n)
    return n


def encode_normals(normals: torch.Tensor) -> torch.Tensor:
    """Colour-encode OpenCV camera-space normals ``(..., 3)`` as ``(n * (1, -1, -1) + 1) / 2``
    in [0, 1] (see :data:`NORMAL_AXES`)."""
    return (normals * normals.new_tensor(NORMAL_AXES) + 1.0) * 0.5


def decode_normals(image: torch.Tensor) -> torch.Tensor:
    """Inverse of the normal-map encoding: ``(F, 3, H, W)`` in [0, 1] -> ``(F, H, W, 3)``
    OpenCV camera-space normals (not renormalised)."""
    axes = image.new_tensor(NORMAL_AXES)
    return (image.permute(0, 2, 3, 1) * 2.0 - 1.0) * axes


def lambert(albedo: torch.Tensor, normals: torch.Tensor, light_direction: torch.Tensor,
            ambient: float = 0.35, diffuse: float = 0.75) -> torch.Tensor:
    """Lambert shading with one directional light plus ambient light.

    Args:
        albedo: ``(..., 3)`` surface colour in [0, 1].
        normals: ``(..., 3)`` unit camera-space normals.
        light_direction: ``(3,)`` camera-space direction *towards* the light.
        ambient, diffuse: light intensities.

    Returns:
        ``(..., 3)`` ``albedo * (ambient + diffuse * max(0, n . l))`` clipped to [0, 1].
    """
    light = F_nn.normalize(light_direction.to(normals), dim=0)
    cosine = (normals * light).sum(-1, keepdim=True).clamp_min(0.0)
    return (albedo * (ambient + diffuse * cosine)).clamp(0.0, 1.0)
