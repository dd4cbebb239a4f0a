"""Optional pytorch3d rasteriser behind the :func:`~factorportrait.render.rasterizer.rasterize`
interface (``MeshRenderer(backend="pytorch3d")``).

pytorch3d has no installable build on every platform, so it is imported lazily; the built-in
torch rasteriser is the default. Camera-space OpenCV vertices are mapped to pytorch3d's screen
NDC (+X left, +Y up, z = view depth): a pixel centre ``(x, y)`` (``x = u + 0.5``) sits at
``x_ndc = (W - 2x) / S``, ``y_ndc = (H - 2y) / S`` with ``S = min(H, W)``, which is where
pytorch3d samples pixel ``(u, v)``. Near-plane and back-face culling are applied per frame
before rasterising, so both backends drop exactly the same triangles.
"""

from __future__ import annotations

import torch

from factorportrait.render.fragments import Fragments
from factorportrait.render.rasterizer import face_facing, project_points


def _import_rasterize_meshes():
    try:
        from pytorch3d.renderer.mesh.rasterize_meshes import rasterize_meshes
        from pytorch3d.structures import Meshes
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "MeshRenderer(backend='pytorch3d') needs pytorch3d, which is not installed; "
            "install it (pip install 'factorportrait[render3d]' or see "
            "https://github.com/facebookresearch/pytorch3d/blob/main/INSTALL.md) or use the "
            "default backend='torch'") from error
    return rasterize_meshes, Meshes


def is_available() -> bool:
    """Whether pytorch3d can be imported."""
    try:
        _import_rasterize_meshes()
    except ImportError:
        return False
    return True


def to_pytorch3d_screen(verts_cam: torch.Tensor, K: torch.Tensor, height: int, width: int
                        ) -> torch.Tensor:
    """OpenCV camera space ``(F, V, 3)`` -> pytorch3d NDC ``(F, V, 3)`` with z = view depth."""
    xy = project_points(verts_cam, K)
    short = float(min(height, width))
    x_ndc = (width - 2.0 * xy[..., 0]) / short
    y_ndc = (height - 2.0 * xy[..., 1]) / short
    return torch.stack([x_ndc, y_ndc, verts_cam[..., 2]], dim=-1)


def rasterize_pytorch3d(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                        height: int, width: int, *, near: float = 1e-3,
                        cull_backfaces: bool = False) -> Fragments:
    """Same contract as :func:`factorportrait.render.rasterizer.rasterize`, via pytorch3d.

    Args:
        verts_cam: ``(F, V, 3)`` OpenCV camera-space vertices.
        faces: ``(M, 3)`` long indices shared by all frames.
        K: ``(F, 3, 3)`` intrinsics in pixels.
        height, width: image size.
        near: triangles with a vertex at ``z <= near`` are dropped.
        cull_backfaces: drop triangles whose winding faces away from the camera.

    Returns:
        :class:`Fragments` with ``(F, H, W)`` face index, barycentrics, depth and facing.
    """
    rasterize_meshes, Meshes = _import_rasterize_meshes()
    faces = faces.long().to(verts_cam.device)
    tri_cam = verts_cam[:, faces]  # (F, M, 3, 3)
    facing = face_facing(tri_cam)
    keep = (tri_cam[..., 2] > near).all(-1)
    if cull_backfaces:
        keep &= facing
    kept = [row.nonzero(as_tuple=True)[0] for row in keep]  # per frame, (M_f,)
    screen = to_pytorch3d_screen(verts_cam, K, height, width)
    meshes = Meshes(verts=list(screen), faces=[faces[index] for index in kept])
    pix_to_face, zbuf, bary, _ = rasterize_meshes(
        meshes, image_size=(height, width), blur_radius=0.0, faces_per_pixel=1,
        perspective_correct=True, clip_barycentric_coords=True, cull_backfaces=False)
    packed_to_face = torch.cat(kept)  # packed pytorch3d face -> index into `faces`
    packed = pix_to_face[..., 0].reshape(-1)  # (F*H*W,)
    pixels = (packed >= 0).nonzero(as_tuple=True)[0]
    face = packed_to_face.index_select(0, packed.index_select(0, pixels))
    frames = torch.div(pixels, height * width, rounding_mode="floor")
    return Fragments(size=(verts_cam.shape[0], height, width), pixels=pixels, pixel_faces=face,
                     pixel_barycentrics=bary[..., 0, :].reshape(-1, 3).index_select(0, pixels),
                     pixel_depth=zbuf[..., 0].reshape(-1).index_select(0, pixels),
                     pixel_front_facing=facing[frames, face])
