"""Pure-torch z-buffer rasteriser for batched triangle meshes in OpenCV cameras.

Conventions (docs/rendering.md): OpenCV camera (x right, y down, z forward), intrinsics ``K``
in pixels, pixel ``(u, v)`` covers ``[u, u+1) x [v, v+1)`` and is sampled at its centre
``(u + 0.5, v + 0.5)``; depth is camera-space ``z`` (metres), not ray length.

Algorithm (scan conversion, vectorised; work scales with covered pixels, not pixels x
triangles):

1. set-up: project, bound each triangle by the pixel centres it may cover, and express its
   screen barycentrics and inverse depth as affine functions of the pixel centre;
2. rows: every triangle expands into the pixel rows of its box and every row into the exact
   span of pixel centres inside the triangle (edge functions, inclusive edges);
3. z-test: every covered (pixel, triangle) pair writes the 64-bit key
   ``(float bits of 1/z) << 32 | (2^32 - 1 - t)`` into the z-buffer with one
   ``scatter_reduce(amax)``: the nearest surface wins, ties go to the lower face, and the
   result is deterministic on CPU and CUDA;
4. resolve: perspective-correct barycentrics and depth of the winner at each covered pixel.

Triangles are processed in chunks to bound memory. Triangles with a vertex closer than
``near`` are dropped (no clipping).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from factorportrait.render.fragments import Fragments

_FACE_BITS = 32
_FACE_MASK = (1 << _FACE_BITS) - 1
_EDGE_TOLERANCE = 1e-5  # barycentric slack: pixel centres on shared edges are never dropped


def project_points(verts_cam: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Pinhole projection of camera-space points to continuous pixel coordinates.

    Args:
        verts_cam: ``(F, V, 3)`` OpenCV camera-space points (z > 0 in front of the camera).
        K: ``(F, 3, 3)`` intrinsics in pixels.

    Returns:
        ``(F, V, 2)`` pixel coordinates ``(x, y)``; pixel ``(u, v)`` has its centre at
        ``(u + 0.5, v + 0.5)``.
    """
    homogeneous = torch.einsum("fij,fvj->fvi", K, verts_cam)  # (F, V, 3)
    z = homogeneous[..., 2:].clamp_min(1e-12)
    return homogeneous[..., :2] / z


def face_facing(tri_cam: torch.Tensor) -> torch.Tensor:
    """Whether each triangle's winding faces the camera at the origin.

    Args:
        tri_cam: ``(..., 3, 3)`` camera-space triangle vertices.

    Returns:
        ``(...)`` bool, True where ``((v1 - v0) x (v2 - v0)) . v0 < 0``.
    """
    normal = torch.linalg.cross(tri_cam[..., 1, :] - tri_cam[..., 0, :],
                                tri_cam[..., 2, :] - tri_cam[..., 0, :])
    return (normal * tri_cam[..., 0, :]).sum(-1) < 0


def _edge_coefficients(xy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Affine screen barycentrics of triangles ``xy (..., 3, 2)``.

    Returns ``coeffs (..., 3, 3)`` with ``w_i(x, y) = a_i x + b_i y + c_i`` in row ``i`` (all
    ``w_i >= 0`` inside, whatever the winding; ``c_i = w_i(0, 0)``) and the doubled signed
    area ``(...)``.
    """
    start = xy.roll(-1, dims=-2)  # edge i runs from vertex i+1 to vertex i+2
    end = xy.roll(-2, dims=-2)
    dx, dy = end[..., 0] - start[..., 0], end[..., 1] - start[..., 1]
    coeffs = torch.stack([-dy, dx, dy * start[..., 0] - dx * start[..., 1]], dim=-1)
    area = coeffs[..., 0, 2] + coeffs[..., 1, 2] + coeffs[..., 2, 2]
    safe = torch.where(area.abs() > 1e-12, area, torch.ones_like(area))
    return coeffs / safe[..., None, None], area


class _Setup(NamedTuple):
    """Raster setup of the ``T`` (frame, face) pairs that may cover a pixel centre."""

    planes: torch.Tensor  # (T, 4, 3): screen barycentrics (rows 0-2) and inverse depth
    #                       (row 3) as a x + b y + c of the pixel centre relative to the
    #                       box corner (small coordinates keep float32 accurate)
    inverse_z: torch.Tensor  # (T, 3) 1 / z of the three vertices
    face: torch.Tensor  # (T,) long face index
    facing: torch.Tensor  # (T,) bool, winding faces the camera
    corner: torch.Tensor  # (T,) long flat z-buffer index of the pixel box's first pixel
    size: torch.Tensor  # (T, 2) long pixel box width and height


def _triangle_setup(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor,
                    height: int, width: int, near: float, cull_backfaces: bool) -> _Setup:
    """Project triangles, bound them to pixel boxes and drop those that cannot be drawn."""
    frames, faces_count = verts_cam.shape[0], faces.shape[0]
    xyz = torch.cat([project_points(verts_cam, K), verts_cam[..., 2:]], dim=-1)  # (F, V, 3)
    tri = xyz.index_select(1, faces.reshape(-1)).view(frames, faces_count, 3, 3)
    lo = torch.ceil(tri[..., :2].amin(dim=-2) - 0.5).clamp_min(0)  # (F, M, 2) first pixel
    hi = torch.floor(tri[..., :2].amax(dim=-2) - 0.5)  # last pixel
    hi = torch.minimum(hi, hi.new_tensor([width - 1.0, height - 1.0]))
    size = (hi - lo + 1).clamp_min(0)  # (F, M, 2)
    tri_cam = verts_cam.index_select(1, faces.reshape(-1)).view(frames, faces_count, 3, 3)
    facing = face_facing(tri_cam)
    keep = (tri[..., 2] > near).all(dim=-1) & (size > 0).all(dim=-1)
    if cull_backfaces:
        keep &= facing
    flat = keep.view(-1).nonzero(as_tuple=True)[0]  # (T,) over frames x faces
    tri, lo, size, facing = (t.reshape(frames * faces_count, *t.shape[2:])[flat]
                             for t in (tri, lo, size, facing))
    coeffs, area = _edge_coefficients(tri[..., :2] - lo[:, None])  # (T, 3, 3)
    inverse_z = 1.0 / tri[..., 2]  # (T, 3)
    inverse_depth = (coeffs * inverse_z[..., None]).sum(dim=-2, keepdim=True)  # (T, 1, 3)
    lo = lo.long()
    frame = torch.div(flat, faces_count, rounding_mode="floor")
    valid = (area.abs() > 1e-12).nonzero(as_tuple=True)[0]
    return _Setup(planes=torch.cat([coeffs, inverse_depth], dim=-2)[valid],
                  inverse_z=inverse_z[valid], face=(flat - frame * faces_count)[valid],
                  facing=facing[valid],
                  corner=((frame * height + lo[:, 1]) * width + lo[:, 0])[valid],
                  size=size.long()[valid])


def _chunks(counts: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Split consecutive items with ``counts (N,)`` candidates into ``[start, stop)`` ranges
    of about ``budget`` candidates (at most ``budget`` plus one item)."""
    if counts.numel() == 0:
        return []
    starts = torch.cumsum(counts, 0) - counts
    _, sizes = torch.unique_consecutive(starts // max(budget, 1), return_counts=True)
    stops = torch.cumsum(sizes, 0).tolist()
    return list(zip([0] + stops[:-1], stops))


def _expand(counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``counts (N,)``: the owner ``(S,)`` and rank within its owner ``(S,)`` of each of
    the ``S = counts.sum()`` items."""
    owner = torch.repeat_interleave(torch.arange(len(counts), device=counts.device), counts)
    first = torch.cumsum(counts, 0) - counts
    return owner, torch.arange(len(owner), device=counts.device) - first.index_select(0, owner)


def _row_spans(planes: torch.Tensor, width: torch.Tensor, y: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """First pixel and pixel count of the centres inside each triangle on a row.

    Args:
        planes: ``(R, 4, 3)`` the row's triangle set-up (box-local coordinates).
        width: ``(R,)`` long box width.
        y: ``(R,)`` box-local y of the row's pixel centres.

    Returns:
        ``start (R,)`` and ``count (R,)`` long, within ``[0, width)``.
    """
    a = planes[:, :3, 0]  # edge i: a_i x + k_i >= -tol
    k = planes[:, :3, 1] * y[:, None] + planes[:, :3, 2]
    bound = (-_EDGE_TOLERANCE - k) / torch.where(a == 0, torch.ones_like(a), a)
    inf = torch.full_like(bound, float("inf"))
    lower = torch.where(a > 0, bound, -inf).amax(dim=-1)
    upper = torch.where(a < 0, bound, inf).amin(dim=-1)
    blocked = ((a == 0) & (k < -_EDGE_TOLERANCE)).any(dim=-1)
    start = torch.ceil(lower - 0.5).clamp(min=0)
    stop = torch.minimum(torch.floor(upper - 0.5), width.to(upper.dtype) - 1)
    count = (stop - start + 1).clamp(min=0).masked_fill(blocked, 0)
    return start.long(), count.long()


def _rasterize_chunk(setup: _Setup, start: int, stop: int, zbuffer: torch.Tensor,
                     width: int) -> None:
    """Z-test the covered pixels of set-up triangles ``[start, stop)`` into ``zbuffer``."""
    row_owner, row = _expand(setup.size[start:stop, 1])  # (R,)
    planes = setup.planes[start:stop].index_select(0, row_owner)  # (R, 4, 3)
    y = row.to(planes.dtype) + 0.5
    span_start, count = _row_spans(planes, setup.size[start:stop, 0].index_select(0, row_owner),
                                   y)
    # per row: inverse depth = slope * x + intercept; z-buffer index of the span's first pixel
    slope = planes[:, 3, 0]
    intercept = planes[:, 3, 1] * y + planes[:, 3, 2] + slope * (span_start.to(y.dtype) + 0.5)
    first = setup.corner[start:stop].index_select(0, row_owner) + row * width + span_start
    low_bits = _FACE_MASK - start - row_owner  # tie-break: lower set-up index wins
    pixel_owner, offset = _expand(count)  # (N,)
    inverse_depth = torch.addcmul(intercept.index_select(0, pixel_owner),
                                  slope.index_select(0, pixel_owner), offset.to(y.dtype))
    key = inverse_depth.clamp_min(0).view(torch.int32).long().bitwise_left_shift_(_FACE_BITS)
    key.bitwise_or_(low_bits.index_select(0, pixel_owner))
    zbuffer.scatter_reduce_(0, first.index_select(0, pixel_owner) + offset, key, reduce="amax")


def rasterize(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
              width: int, *, near: float = 1e-3, cull_backfaces: bool = False,
              max_candidates: int = 1 << 22) -> Fragments:
    """Rasterise ``F`` frames of one triangle topology seen by ``F`` pinhole cameras.

    Args:
        verts_cam: ``(F, V, 3)`` vertices in each frame's OpenCV camera space (metres).
        faces: ``(M, 3)`` long vertex indices, shared by all frames.
        K: ``(F, 3, 3)`` or ``(3, 3)`` intrinsics in pixels.
        height, width: image size in pixels.
        near: triangles with any vertex at ``z <= near`` are dropped.
        cull_backfaces: drop triangles whose winding faces away from the camera (faster on
            closed, consistently wound meshes); otherwise both sides are rasterised.
        max_candidates: pixel-box area processed per chunk; bounds peak memory.

    Returns:
        :class:`Fragments`: face, barycentrics, depth and facing of every covered pixel.
    """
    verts_cam, faces, K = _check_inputs(verts_cam, faces, K, height, width)
    frames = verts_cam.shape[0]
    setup = _triangle_setup(verts_cam, faces, K, height, width, near, cull_backfaces)
    zbuffer = torch.zeros(frames * height * width, dtype=torch.long, device=verts_cam.device)
    for start, stop in _chunks(setup.size[:, 0] * setup.size[:, 1], max_candidates):
        _rasterize_chunk(setup, start, stop, zbuffer, width)
    return _resolve(zbuffer, setup, (frames, height, width))


def _check_inputs(verts_cam: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, height: int,
                  width: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if verts_cam.ndim != 3 or verts_cam.shape[-1] != 3:
        raise ValueError(f"verts_cam: expected shape (F, V, 3), got {tuple(verts_cam.shape)}")
    if faces.ndim != 2 or faces.shape[-1] != 3:
        raise ValueError(f"faces: expected shape (M, 3), got {tuple(faces.shape)}")
    if faces.numel() and (faces.min() < 0 or faces.max() >= verts_cam.shape[1]):
        raise ValueError(f"faces: expected indices in [0, {verts_cam.shape[1]}), got range "
                         f"[{int(faces.min())}, {int(faces.max())}]")
    if K.shape == (3, 3):
        K = K.expand(verts_cam.shape[0], 3, 3)
    if K.shape != (verts_cam.shape[0], 3, 3):
        raise ValueError(f"K: expected shape (3, 3) or ({verts_cam.shape[0]}, 3, 3), "
                         f"got {tuple(K.shape)}")
    if height <= 0 or width <= 0:
        raise ValueError(f"height, width: expected positive sizes, got {height} x {width}")
    verts_cam = verts_cam.float()
    return verts_cam, faces.long().to(verts_cam.device), K.to(verts_cam)


def _resolve(zbuffer: torch.Tensor, setup: _Setup, size: tuple[int, int, int]
             ) -> Fragments:
    """Decode the flat z-buffer ``(F * H * W,)`` into :class:`Fragments`."""
    width = size[2]
    pixels = zbuffer.nonzero(as_tuple=True)[0]  # (P,) covered pixels, ascending
    t = _FACE_MASK - (zbuffer.index_select(0, pixels) & _FACE_MASK)  # set-up index
    offset = pixels - setup.corner.index_select(0, t)
    dv = torch.div(offset, width, rounding_mode="floor")
    planes = setup.planes.index_select(0, t)[:, :3]  # (P, 3, 3)
    x = (offset - dv * width).to(planes.dtype) + 0.5
    y = dv.to(planes.dtype) + 0.5
    screen = (planes[..., 0] * x[:, None] + planes[..., 1] * y[:, None] + planes[..., 2])
    screen = screen.clamp_min(0)
    screen = screen / screen.sum(-1, keepdim=True).clamp_min(1e-12)
    weights = screen * setup.inverse_z.index_select(0, t)  # (P, 3)
    inverse_depth = weights.sum(-1, keepdim=True)
    return Fragments(size=size, pixels=pixels, pixel_faces=setup.face.index_select(0, t),
                     pixel_barycentrics=weights / inverse_depth,
                     pixel_depth=1.0 / inverse_depth.squeeze(-1),
                     pixel_front_facing=setup.facing.index_select(0, t))
