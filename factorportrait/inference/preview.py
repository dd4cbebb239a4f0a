"""A contact sheet of a render's conditions, drawn without sampling (``--preview``).

Rows: the reference image and the trajectory plot; the normal maps (the pose condition); the
Plücker ray directions and moments relative to the reference camera (the camera condition), at
up to ``columns`` evenly spaced frames. Ray directions ``d`` are shown as ``(d + 1)/2`` (the
reference view's centre ray, +z, is ``(0.5, 0.5, 1)``); moments ``o × d`` as ``(m/s + 1)/2``
with ``s`` the largest moment magnitude of the video (grey = the reference camera's zero moment).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from factorportrait.geometry.plot import plot_trajectory
from factorportrait.geometry.rays import plucker_rays
from factorportrait.inference.controls import ControlPlan, plan_controls, render_plan_normals
from factorportrait.inference.inputs import RenderRequest, load_normal_maps
from factorportrait.io.atomic import atomic_output

TILE = 128  # longer side of a cell, pixels
LABEL_WIDTH = 110


def _frame_picks(frames: int, columns: int) -> list[int]:
    return torch.linspace(0, frames - 1, min(columns, frames)).round().long().unique().tolist()


def ray_images(plan: ControlPlan, frames: list[int], height: int, width: int
               ) -> tuple[Tensor, Tensor]:
    """Ray directions and moments of ``frames`` as RGB ``(N, 3, H, W)`` in [0, 1] each."""
    relative = plan.cameras.relative_to(plan.reference_camera)
    rays = plucker_rays(relative, height, width)  # (F, 6, H, W)
    scale = rays[:, :3].abs().amax().clamp_min(1e-8)
    moments = (rays[frames, :3] / scale + 1) / 2
    directions = (rays[frames, 3:] + 1) / 2
    return directions.clamp(0, 1), moments.clamp(0, 1)


def _to_pil(image: Tensor | np.ndarray, size: tuple[int, int]):
    """``(3, H, W)`` in [0, 1] or ``uint8 (H, W, 3)`` -> PIL image of ``size = (w, h)``."""
    from PIL import Image

    if isinstance(image, Tensor) and image.is_floating_point():
        image = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0)
    array = image.numpy() if isinstance(image, Tensor) else image
    return Image.fromarray(np.ascontiguousarray(array)).resize(size, Image.BILINEAR)


def contact_sheet(plan: ControlPlan, reference_image: Tensor, normal_maps: Tensor | None,
                  path: str | os.PathLike | None = None, columns: int = 8) -> np.ndarray:
    """Draw the conditions of ``plan`` -> ``uint8 (H_sheet, W_sheet, 3)``; also written to
    ``path`` (PNG, atomically) when given.

    Args:
        reference_image: ``(3, H, W)`` in [-1, 1].
        normal_maps: ``(F, 3, H, W)`` in [0, 1], or None (a dropped pose condition: black).
    """
    from PIL import Image, ImageDraw

    height, width = reference_image.shape[-2:]
    scale = TILE / max(height, width)
    cell = (max(1, round(width * scale)), max(1, round(height * scale)))
    picks = _frame_picks(plan.num_frames, columns)
    directions, moments = ray_images(plan, picks, height, width)
    normals = normal_maps[picks] if normal_maps is not None else torch.zeros_like(directions)
    rows = [("normals", normals), ("ray directions", directions), ("ray moments", moments)]
    header = 2 * cell[1]  # the reference and the trajectory plot, twice the cell height
    gap = TILE // 16
    sheet = Image.new("RGB", (LABEL_WIDTH + max(cell[0] * len(picks), 2 * cell[0] + header),
                              header + gap + len(rows) * (cell[1] + gap)), "white")
    draw = ImageDraw.Draw(sheet)
    sheet.paste(_to_pil((reference_image + 1) / 2, (2 * cell[0], header)), (LABEL_WIDTH, 0))
    sheet.paste(_trajectory_image(plan, header), (LABEL_WIDTH + 2 * cell[0], 0))
    draw.text((4, 4), f"{plan.mode}\n{plan.num_frames} frames\n\nreference,\ntrajectory",
              fill=0)
    top = header + gap
    for label, images in rows:
        draw.text((4, top + 4), label, fill=0)
        for column, (frame, image) in enumerate(zip(picks, images)):
            sheet.paste(_to_pil(image, cell), (LABEL_WIDTH + column * cell[0], top))
            draw.text((LABEL_WIDTH + column * cell[0] + 2, top + 2), str(frame), fill=(255, 0, 0))
        top += cell[1] + gap
    array = np.asarray(sheet)
    if path is not None:
        with atomic_output(path, suffix=".png") as tmp:
            sheet.save(tmp, format="PNG")
    return array


def _trajectory_image(plan: ControlPlan, size: int):
    """The trajectory plot (reference camera first) as a ``size × size`` PIL image."""
    from PIL import Image

    from factorportrait.geometry.cameras import Cameras

    cameras = Cameras.cat([plan.reference_camera, plan.cameras])
    with tempfile.TemporaryDirectory() as folder:
        file = Path(folder) / "trajectory.png"
        plot_trajectory(cameras.to(torch.float64), file, title="reference + frames", dpi=60)
        with Image.open(file) as image:
            return image.convert("RGB").resize((size, size), Image.BILINEAR)


def preview_conditions(request: RenderRequest, mesh_source=None,
                       path: str | os.PathLike | None = None, supersample: int = 1
                       ) -> np.ndarray:
    """The contact sheet of a checked request, with no model: expression codes are not drawn,
    so missing ones are taken as zeros. Returns the sheet (see :func:`contact_sheet`)."""
    def with_codes(track):
        if track is None or track.expression_codes is not None:
            return track
        return track.replace(expression_codes=torch.zeros(track.num_frames, 128))

    driving = request.driving
    if driving is None and request.driving_video is not None:  # a video alone: length only
        from factorportrait.inference.control_track import ControlTrack
        driving = ControlTrack(fps=request.fps, expression_codes=torch.zeros(
            request.num_frames, 128))
    plan = plan_controls(request.mode, request.num_frames, with_codes(request.reference),
                         driving=with_codes(driving), trajectory=request.trajectory,
                         pose_source=with_codes(request.pose_source),
                         expression_source=with_codes(request.expression_source),
                         normal_maps=load_normal_maps(request))
    normals = render_plan_normals(plan, mesh_source, request.height, request.width,
                                  supersample)
    return contact_sheet(plan, request.reference_image, normals, path)
