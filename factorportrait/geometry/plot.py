"""3D picture of a camera trajectory: frusta, the path of the centres and the look-at target.

matplotlib is imported lazily (Agg canvas, no pyplot global state). The OpenCV world (y down)
is drawn with "up" (−y) pointing up: plot axes are (x, z, −y), a proper rotation (no mirroring).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.io.atomic import atomic_output


def _to_plot(points: Tensor) -> Tensor:
    """World ``(..., 3)`` → plot coordinates ``(..., 3)`` = (x, z, −y)."""
    return torch.stack([points[..., 0], points[..., 2], -points[..., 1]], dim=-1)


def estimate_target(cameras: Cameras) -> Tensor | None:
    """Least-squares point closest to all optical axes ``(3,)``, or None if ill-posed (parallel
    axes, or the point is not in front of every camera)."""
    c2w = cameras.c2w.double()
    d, c = c2w[:, :3, 2], c2w[:, :3, 3]  # (F, 3) axis directions and centres
    proj = torch.eye(3, dtype=d.dtype) - d[:, :, None] * d[:, None, :]  # (F, 3, 3) I − d dᵀ
    A, b = proj.sum(0), (proj @ c[:, :, None]).sum(0)[:, 0]
    eig = torch.linalg.eigvalsh(A)
    if float(eig[0]) < 1e-3 * float(eig[-1]):
        return None
    point = torch.linalg.solve(A, b)
    depth = ((point - c) * d).sum(-1)
    return point.to(cameras.K.dtype) if bool((depth > 1e-6).all()) else None


def _frustum_lines(camera: Cameras, size: float) -> list[Tensor]:
    """Polylines ``(n, 3)`` (world) of one camera's frustum to depth ``size``, with an up-marker."""
    K = camera.K[0].double()
    width = camera.width or float(2 * K[0, 2])
    height = camera.height or float(2 * K[1, 2])
    corners = torch.tensor([[0, 0], [width, 0], [width, height], [0, height]], dtype=torch.float64)
    up_tip = torch.tensor([[width / 2, -0.25 * height]], dtype=torch.float64)
    pixels = torch.cat([corners, up_tip])  # (5, 2)
    rays = torch.cat([pixels, torch.ones(5, 1, dtype=torch.float64)], 1) @ torch.linalg.inv(K).T
    c2w = camera.c2w[0].double()
    world = (rays * size) @ c2w[:3, :3].T + c2w[:3, 3]  # (5, 3) at depth `size`
    centre = c2w[:3, 3][None]
    rim = world[[0, 1, 2, 3, 0]]
    triangle = world[[0, 4, 1]]  # points above the image's top edge: "up" in the image
    spokes = [torch.cat([centre, world[i : i + 1]]) for i in range(4)]
    return [rim, triangle, *spokes]


def plot_trajectory(cameras: Cameras, path: str | os.PathLike,
                    target: Sequence[float] | Tensor | None = None, max_frusta: int = 16,
                    title: str | None = None, dpi: int = 120) -> None:
    """Draw camera frusta (coloured by frame), the path of the centres and the target to a PNG.

    target: look-at point ``(3,)``; None estimates it from the optical axes (skipped if ill-posed).
    At most ``max_frusta`` evenly spaced frusta are drawn (always the first and last).
    """
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cams = cameras.to(torch.float64)
    if target is None:
        target_t = estimate_target(cams)
    else:
        target_t = torch.as_tensor(target, dtype=torch.float64)
    centers = cams.centers()
    points = [centers] + ([target_t[None]] if target_t is not None else [])
    extent = float((torch.cat(points).amax(0) - torch.cat(points).amin(0)).max())
    size = 0.1 * max(extent, 0.3)  # frustum depth drawn, metres
    picks = torch.linspace(0, len(cams) - 1, min(max_frusta, len(cams))).round().long().unique()
    colours = colormaps["viridis"]

    fig = Figure(figsize=(6.4, 6.4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(projection="3d")
    ax.plot(*_to_plot(centers).T.tolist(), color="0.4", linewidth=1.0, label="path")
    for i in picks.tolist():
        colour = colours(i / max(len(cams) - 1, 1))
        for line in _frustum_lines(cams[i], size):
            ax.plot(*_to_plot(line).T.tolist(), color=colour, linewidth=0.9)
            points.append(line)
    ends = _to_plot(centers[[0, -1]])
    ax.scatter(*ends[:1].T.tolist(), color=colours(0.0), marker="o", s=40, label="first")
    ax.scatter(*ends[1:].T.tolist(), color=colours(1.0), marker="s", s=40, label="last")
    if target_t is not None:
        ax.scatter(*_to_plot(target_t[None]).T.tolist(), color="crimson", marker="*", s=160,
                   label="target")
    _equal_axes(ax, _to_plot(torch.cat(points)))
    ax.set_xlabel("x (m)")
    ax.set_ylabel("z (m)")
    ax.set_zlabel("−y, up (m)")
    ax.set_title(title or f"{len(cams)} cameras")
    ax.legend(loc="upper left", fontsize=8)
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _equal_axes(ax: object, points: Tensor) -> None:
    """Equal scale on all three axes around the points' bounding box ``(N, 3)``."""
    low, high = points.amin(0), points.amax(0)
    middle, half = ((low + high) / 2).tolist(), float((high - low).max()) / 2 * 1.05 + 1e-3
    ax.set_xlim(middle[0] - half, middle[0] + half)
    ax.set_ylim(middle[1] - half, middle[1] + half)
    ax.set_zlim(middle[2] - half, middle[2] + half)
    ax.set_box_aspect((1, 1, 1))
