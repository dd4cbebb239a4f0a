"""Normal maps, shaded RGB, masks and depth of batched meshes: :class:`MeshRenderer` and
:func:`render`.

Outputs (``F`` frames, ``H x W`` pixels; docs/rendering.md):

- ``"normals"`` ``(F, 3, H, W)`` in [0, 1]: camera-space normals with the OpenGL look,
  ``rgb = (n_cv * (1, -1, -1) + 1) / 2`` (x right -> R, y up -> G, towards the viewer -> B);
  background ``background_normal`` (default 0, black).
- ``"rgb"`` ``(F, 3, H, W)`` in [0, 1]: vertex colours with Lambert shading (ambient plus one
  directional light fixed to the camera) over ``background_rgb`` (default white).
- ``"mask"`` ``(F, 1, H, W)`` in [0, 1] (fractional at edges when supersampling).
- ``"depth"`` ``(F, 1, H, W)``: camera-space z in metres, 0 on background (with supersampling,
  the mean z of the covered sub-pixels).

Back faces: by default both sides are drawn and a pixel on a face whose winding points away
from the camera gets its normal flipped towards the camera (two-sided lighting, robust to open
meshes and inconsistent winding). ``cull_backfaces=True`` drops those faces instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import torch
import torch.nn.functional as F_nn

from factorportrait.render import shading
from factorportrait.render.fragments import Fragments
from factorportrait.render.rasterizer import rasterize

OUTPUTS = ("normals", "rgb", "mask", "depth")


@dataclass(frozen=True)
class Meshes:
    """``F`` frames of one triangle topology.

    Attributes:
        verts: ``(F, V, 3)`` world-space vertices in metres (``(V, 3)`` for a static mesh).
        faces: ``(M, 3)`` long vertex indices shared by all frames.
        vertex_colors: optional ``(V, 3)`` or ``(F, V, 3)`` albedo in [0, 1] (grey if None).
    """

    verts: torch.Tensor
    faces: torch.Tensor
    vertex_colors: torch.Tensor | None = None


def camera_tensors(cameras: Any, device: torch.device | str | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """``K (N, 3, 3)`` and ``c2w (N, 4, 4)`` float32 from an object with ``.K`` and ``.c2w``
    (e.g. ``factorportrait.geometry.Cameras``) or a ``(K, c2w)`` pair; a single ``K`` or
    ``c2w`` (``(3, 3)`` / ``(4, 4)``) broadcasts to the other's count ``N``."""
    if hasattr(cameras, "K") and hasattr(cameras, "c2w"):
        K, c2w = cameras.K, cameras.c2w
    elif isinstance(cameras, (tuple, list)) and len(cameras) == 2:
        K, c2w = cameras
    else:
        raise ValueError("cameras: expected an object with .K (F,3,3) and .c2w (F,4,4) or a "
                         f"(K, c2w) pair, got {type(cameras).__name__}")
    K = torch.as_tensor(K, dtype=torch.float32, device=device)
    c2w = torch.as_tensor(c2w, dtype=torch.float32, device=device)
    K = K.unsqueeze(0) if K.ndim == 2 else K
    c2w = c2w.unsqueeze(0) if c2w.ndim == 2 else c2w
    count = max(K.shape[0], c2w.shape[0])
    if K.shape[1:] != (3, 3) or K.shape[0] not in (1, count):
        raise ValueError(f"cameras.K: expected (3, 3) or ({count}, 3, 3), got {tuple(K.shape)}")
    if c2w.shape[1:] != (4, 4) or c2w.shape[0] not in (1, count):
        raise ValueError(f"cameras.c2w: expected (4, 4) or ({count}, 4, 4), "
                         f"got {tuple(c2w.shape)}")
    return K.expand(count, 3, 3), c2w.expand(count, 4, 4)


def world_to_camera(verts: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """World points ``(F, V, 3)`` -> OpenCV camera space ``(F, V, 3)`` of ``c2w (F, 4, 4)``."""
    w2c = torch.linalg.inv(c2w)
    return torch.einsum("fij,fvj->fvi", w2c[:, :3, :3], verts) + w2c[:, None, :3, 3]


@dataclass(frozen=True)
class MeshRenderer:
    """Renders :class:`Meshes` from cameras into normal maps, RGB, masks and depth.

    Attributes:
        height, width: output size in pixels.
        supersample: render at ``supersample x`` the resolution and box-filter down
            (anti-aliasing); 1 disables it.
        cull_backfaces: drop faces whose winding points away from the camera instead of
            drawing them two-sided.
        backend: ``"torch"`` (built-in rasteriser) or ``"pytorch3d"`` (optional).
        light_direction: camera-space direction towards the light (default: upper left,
            in front of the subject).
        ambient, diffuse: Lambert light intensities.
        background_rgb: RGB of the background in ``"rgb"``.
        background_normal: value of the background in ``"normals"``.
        near: triangles closer than this (metres) are dropped.
    """

    height: int
    width: int
    supersample: int = 1
    cull_backfaces: bool = False
    backend: str = "torch"
    light_direction: tuple[float, float, float] = (-0.4, -0.5, -1.0)
    ambient: float = 0.35
    diffuse: float = 0.75
    background_rgb: tuple[float, float, float] = (1.0, 1.0, 1.0)
    background_normal: float = 0.0
    near: float = 1e-3

    def __post_init__(self) -> None:
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"height, width: expected positive, got {self.height}x{self.width}")
        if self.supersample < 1:
            raise ValueError(f"supersample: expected an integer >= 1, got {self.supersample}")
        if self.backend not in ("torch", "pytorch3d"):
            raise ValueError(f"backend: expected 'torch' or 'pytorch3d', got {self.backend!r}")

    def __call__(self, meshes: Meshes, cameras: Any, outputs: Sequence[str] = OUTPUTS
                 ) -> dict[str, torch.Tensor]:
        """Render ``meshes`` seen by ``cameras``.

        Args:
            meshes: ``F`` frames (or one static mesh) of one topology, world space.
            cameras: ``.K (F, 3, 3)`` and ``.c2w (F, 4, 4)`` (OpenCV, metres), or a
                ``(K, c2w)`` pair; a single camera broadcasts over frames.
            outputs: any of ``"normals", "rgb", "mask", "depth"``.

        Returns:
            dict of ``(F, C, H, W)`` float tensors, see the module docstring.
        """
        unknown = set(outputs) - set(OUTPUTS)
        if unknown:
            raise ValueError(f"outputs: expected a subset of {OUTPUTS}, got {sorted(unknown)}")
        verts = meshes.verts.unsqueeze(0) if meshes.verts.ndim == 2 else meshes.verts
        if verts.ndim != 3 or verts.shape[-1] != 3:
            raise ValueError(f"meshes.verts: expected (V, 3) or (F, V, 3), "
                             f"got {tuple(meshes.verts.shape)}")
        K, c2w = camera_tensors(cameras, verts.device)
        frames = max(verts.shape[0], K.shape[0])
        if verts.shape[0] not in (1, frames) or K.shape[0] not in (1, frames):
            raise ValueError(f"meshes.verts has {verts.shape[0]} frames but cameras have "
                             f"{K.shape[0]}: expected equal counts or one of them 1")
        verts = verts.expand(frames, -1, -1)
        K, c2w = K.expand(frames, 3, 3), c2w.expand(frames, 4, 4)
        verts_cam = world_to_camera(verts.float(), c2w)
        return self._render_camera_space(verts_cam, meshes, K, outputs)

    def _rasterize(self, verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                   scale: int) -> Fragments:
        K = K.clone()
        K[:, :2] *= scale
        height, width = self.height * scale, self.width * scale
        if self.backend == "pytorch3d":
            from factorportrait.render.pytorch3d_backend import rasterize_pytorch3d
            return rasterize_pytorch3d(verts_cam, faces, K, height, width, near=self.near,
                                       cull_backfaces=self.cull_backfaces)
        return rasterize(verts_cam, faces, K, height, width, near=self.near,
                         cull_backfaces=self.cull_backfaces)

    def _render_camera_space(self, verts_cam: torch.Tensor, meshes: Meshes, K: torch.Tensor,
                             outputs: Sequence[str]) -> dict[str, torch.Tensor]:
        faces = meshes.faces.long().to(verts_cam.device)
        scale = self.supersample
        fragments = self._rasterize(verts_cam, faces, K, scale)
        result: dict[str, torch.Tensor] = {}
        if "normals" in outputs or "rgb" in outputs:
            normals = shading.pixel_normals(
                fragments, faces, shading.vertex_normals(verts_cam, faces),
                two_sided=not self.cull_backfaces)  # (P, 3)
        if "normals" in outputs:
            result["normals"] = _downsample(fragments.to_image(
                shading.encode_normals(normals), self.background_normal), scale)
        if "rgb" in outputs:
            result["rgb"] = _downsample(fragments.to_image(
                self._shade(fragments, faces, normals, meshes), self.background_rgb), scale)
        if "mask" in outputs or "depth" in outputs:
            ones = torch.ones_like(fragments.pixel_depth).unsqueeze(-1)
            coverage = _downsample(fragments.to_image(ones, 0.0), scale)
        if "mask" in outputs:
            result["mask"] = coverage
        if "depth" in outputs:
            depth = _downsample(fragments.to_image(fragments.pixel_depth.unsqueeze(-1), 0.0),
                                scale)
            result["depth"] = torch.where(coverage > 0, depth / coverage.clamp_min(1e-12),
                                          torch.zeros_like(depth))
        return result

    def _shade(self, fragments: Fragments, faces: torch.Tensor, normals: torch.Tensor,
               meshes: Meshes) -> torch.Tensor:
        """``(P, 3)`` Lambert-shaded vertex colours of the covered pixels."""
        colors = meshes.vertex_colors
        if colors is None:
            colors = torch.full((meshes.verts.shape[-2], 3), 0.7)
        albedo = shading.interpolate(fragments, faces, colors.to(normals.device, torch.float32))
        return shading.lambert(albedo, normals, torch.tensor(self.light_direction),
                               self.ambient, self.diffuse)


def _downsample(image: torch.Tensor, scale: int) -> torch.Tensor:
    """Box-filter ``(F, C, sH, sW)`` to ``(F, C, H, W)``."""
    return image if scale == 1 else F_nn.avg_pool2d(image, scale)


def render(meshes: Meshes, cameras: Any, height: int, width: int,
           outputs: Sequence[str] = OUTPUTS, supersample: int = 1, **options: Any
           ) -> dict[str, torch.Tensor]:
    """Render ``meshes`` from ``cameras``; shorthand for
    ``MeshRenderer(height, width, supersample, **options)(meshes, cameras, outputs)``.

    Args:
        meshes: :class:`Meshes` with ``verts (F, V, 3)`` world space, ``faces (M, 3)``.
        cameras: ``.K (F, 3, 3)`` and ``.c2w (F, 4, 4)`` or a ``(K, c2w)`` pair.
        height, width: output size in pixels.
        outputs: any of ``"normals", "rgb", "mask", "depth"``.
        supersample: anti-aliasing factor (1 = off).

    Returns:
        dict of ``(F, C, H, W)`` tensors (C = 3 for normals/rgb, 1 for mask/depth).
    """
    renderer = MeshRenderer(height, width, supersample=supersample, **options)
    return renderer(meshes, cameras, outputs)
