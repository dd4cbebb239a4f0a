"""Mesh primitives for the procedural avatar: latitude-longitude grids (spheres, ellipsoids,
cylinders, superquadrics) with outward-facing triangle winding.

All shapes are built in the avatar's anatomical frame (x = subject's left, y up, z forward);
``(v1 - v0) x (v2 - v0)`` of every face points out of the shape.
"""

from __future__ import annotations

import math
from typing import Callable

import torch


def direction(theta: torch.Tensor, phi: torch.Tensor) -> torch.Tensor:
    """Unit directions for polar angle ``theta`` from +y and azimuth ``phi`` from +z towards
    +x: ``(sin t sin p, cos t, sin t cos p)``; any broadcastable shapes -> ``(..., 3)``."""
    theta, phi = torch.broadcast_tensors(theta, phi)
    return torch.stack([theta.sin() * phi.sin(), theta.cos(), theta.sin() * phi.cos()], -1)


def grid_faces(rows: int, cols: int, wrap: bool = True) -> torch.Tensor:
    """Two triangles per cell of a ``rows x cols`` vertex grid (row-major indices).

    Rows run top to bottom (increasing polar angle) and columns with increasing azimuth, so
    the winding faces out of the surface. ``wrap`` closes the grid in the column direction.

    Returns:
        ``((rows - 1) * (cols if wrap else cols - 1) * 2, 3)`` long.
    """
    r = torch.arange(rows - 1).view(-1, 1)
    c = torch.arange(cols if wrap else cols - 1).view(1, -1)
    a = r * cols + c
    b = r * cols + (c + 1) % cols
    below_a, below_b = a + cols, b + cols
    upper = torch.stack([a, below_a, b], -1).reshape(-1, 3)
    lower = torch.stack([b, below_a, below_b], -1).reshape(-1, 3)
    return torch.stack([upper, lower], 1).reshape(-1, 3)


def pole_faces(ring_start: int, cols: int, pole: int, top: bool) -> torch.Tensor:
    """Triangle fan joining a ring of ``cols`` vertices (starting at ``ring_start``) to a pole
    vertex; ``top`` is the pole at polar angle 0. Returns ``(cols, 3)`` long."""
    c = torch.arange(cols)
    ring, nxt = ring_start + c, ring_start + (c + 1) % cols
    pole_column = torch.full_like(c, pole)
    if top:
        return torch.stack([pole_column, ring, nxt], -1)
    return torch.stack([pole_column, nxt, ring], -1)


def lat_long_surface(theta: torch.Tensor, phi: torch.Tensor,
                     point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Closed surface over polar rows ``theta (R,)`` (strictly inside ``(0, pi)``) and azimuth
    columns ``phi (C,)`` plus two pole vertices.

    Args:
        theta: ``(R,)`` increasing polar angles of the rings.
        phi: ``(C,)`` increasing azimuths covering one turn.
        point: maps broadcast ``theta, phi`` grids ``(N,)`` to points ``(N, 3)``.

    Returns:
        verts ``(R * C + 2, 3)`` (rings row-major, then top and bottom pole), faces ``(M, 3)``,
        and ``(R * C + 2, 2)`` parameters ``(theta, phi)`` of every vertex.
    """
    rows, cols = theta.numel(), phi.numel()
    grid_t, grid_p = torch.meshgrid(theta, phi, indexing="ij")
    params = torch.stack([grid_t.reshape(-1), grid_p.reshape(-1)], -1)
    poles = torch.tensor([[0.0, 0.0], [math.pi, 0.0]])
    params = torch.cat([params, poles])
    verts = point(params[:, 0], params[:, 1])
    top, bottom = rows * cols, rows * cols + 1
    faces = torch.cat([pole_faces(0, cols, top, True), grid_faces(rows, cols),
                       pole_faces((rows - 1) * cols, cols, bottom, False)])
    return verts, faces, params


def uniform_angles(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rows`` polar angles strictly inside ``(0, pi)`` and ``cols`` azimuths in
    ``[-pi, pi)``."""
    theta = torch.linspace(0.0, math.pi, rows + 2)[1:-1]
    phi = torch.linspace(-math.pi, math.pi, cols + 1)[:-1]
    return theta, phi


def ellipsoid(center: tuple[float, float, float], radii: tuple[float, float, float],
              rows: int, cols: int, exponent: float = 1.0
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Superellipsoid (``exponent`` 1 = ellipsoid, < 1 = boxier) around ``center``.

    Returns verts ``(V, 3)``, faces ``(M, 3)``, unit directions ``(V, 3)`` of the underlying
    sphere (useful to place colours).
    """
    theta, phi = uniform_angles(rows, cols)
    radii_t, center_t = torch.tensor(radii), torch.tensor(center)

    def point(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        d = direction(t, p)
        return center_t + radii_t * d.sign() * d.abs().pow(exponent)

    verts, faces, params = lat_long_surface(theta, phi, point)
    return verts, faces, direction(params[:, 0], params[:, 1])


def axis_sphere(center: torch.Tensor, radius: float, axis: torch.Tensor, rings: torch.Tensor,
                cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sphere whose poles lie on ``axis`` (unit ``(3,)``), with rings at polar angles
    ``rings (R,)`` from the axis: concentric circles around the axis, e.g. iris and pupil
    borders of an eyeball looking along ``axis``.

    Returns verts ``(V, 3)``, faces ``(M, 3)``, polar angle from the axis per vertex ``(V,)``.
    """
    phi = torch.linspace(-math.pi, math.pi, cols + 1)[:-1]
    frame = _orthonormal_frame(axis)  # columns: u, v, axis

    def point(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        local = torch.stack([t.sin() * p.cos(), t.sin() * p.sin(), t.cos()], -1)
        return center + radius * local @ frame.T

    verts, faces, params = lat_long_surface(rings, phi, point)
    return verts, faces, params[:, 0]


def _orthonormal_frame(axis: torch.Tensor) -> torch.Tensor:
    """``(3, 3)`` right-handed frame whose third column is ``axis``."""
    axis = axis / axis.norm()
    helper = torch.tensor([0.0, 1.0, 0.0]) if axis[1].abs() < 0.9 else torch.tensor([1.0, 0, 0])
    u = torch.linalg.cross(helper, axis)
    u = u / u.norm()
    v = torch.linalg.cross(axis, u)
    return torch.stack([u, v, axis], -1)


def open_cylinder(center_top: tuple[float, float, float], radius: float, length: float,
                  rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Vertical open tube hanging down from ``center_top`` (``rows`` rings).

    Returns verts ``(rows * cols, 3)``, faces, and the height fraction per vertex ``(V,)``
    (1 at the top ring, 0 at the bottom).
    """
    phi = torch.linspace(-math.pi, math.pi, cols + 1)[:-1]
    height = torch.linspace(1.0, 0.0, rows)
    h, p = torch.meshgrid(height, phi, indexing="ij")
    top = torch.tensor(center_top)
    verts = torch.stack([radius * p.sin(), -length * (1 - h), radius * p.cos()], -1)
    return (verts + top).reshape(-1, 3), grid_faces(rows, cols), h.reshape(-1)
