"""A picture of a tracking result: sampled frames with their landmarks, expression crop box and
head axes, above a plot of the head pose over time (``tools/track.py --preview``).

Axes are drawn from the head centre: red = the head's x (the subject's left), green = y
(down), blue = −z (where the face looks), 8 cm each. Untracked (filled) frames are marked.
"""

from __future__ import annotations

import io
import math
import os

import numpy as np
import torch
from torch import Tensor

from factorportrait.io.atomic import atomic_output
from factorportrait.tracking.tracker import FaceTrack

AXIS_M = 0.08
CELL = 256  # pixels of a frame cell's longer side


def _box_corners(track: FaceTrack, index: int) -> list[tuple[float, float]]:
    boxes = track.boxes
    cx, cy = boxes.center[index].tolist()
    half, roll = float(boxes.side[index]) / 2, float(boxes.roll[index])
    cos, sin = math.cos(roll), math.sin(roll)
    return [(cx + cos * x - sin * y, cy + sin * x + cos * y)
            for x, y in ((-half, -half), (half, -half), (half, half), (-half, half))]


def _frame_cell(frame: Tensor, track: FaceTrack, index: int):
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame.numpy())
    draw = ImageDraw.Draw(image)
    scale = max(track.width, track.height) / 512
    for x, y in track.landmarks[index, :, :2].tolist():
        draw.point((x, y), fill=(0, 255, 255))
    draw.polygon(_box_corners(track, index), outline=(255, 255, 0), width=max(1, round(2 * scale)))
    axes = torch.tensor([[0.0, 0, 0], [AXIS_M, 0, 0], [0, AXIS_M, 0], [0, 0, -AXIS_M]])
    ends = track.pose[index:index + 1].project(axes, track.K)[0].tolist()
    for end, colour in zip(ends[1:], ((255, 0, 0), (0, 200, 0), (0, 80, 255))):
        draw.line([tuple(ends[0]), tuple(end)], fill=colour, width=max(1, round(3 * scale)))
    label = f"{index}" + ("" if bool(track.detected[index]) else " (filled)")
    draw.text((4, 4), label, fill=(255, 0, 0))
    factor = CELL / max(image.size)
    return image.resize((max(1, round(image.width * factor)), max(1, round(image.height
                                                                           * factor))))


def _pose_plot(track: FaceTrack, width: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image


    rotation = track.pose.rotation.double()
    face = rotation @ torch.tensor([0.0, 0.0, -1.0], dtype=torch.float64)  # face direction
    x_axis = rotation @ torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    yaw = torch.rad2deg(torch.atan2(-face[:, 0], -face[:, 2]))
    pitch = torch.rad2deg(torch.asin(face[:, 1].clamp(-1, 1)))
    roll = torch.rad2deg(torch.atan2(x_axis[:, 1], x_axis[:, 0]))
    depth = track.head_translation[:, 2]
    time = np.arange(len(track)) / track.fps
    figure, (angles, distance) = plt.subplots(1, 2, figsize=(width / 100, 2.4), dpi=100)
    for values, name in ((yaw, "yaw (+ = subject's left)"), (pitch, "pitch (+ = down)"),
                         (roll, "roll (+ = clockwise)")):
        angles.plot(time, values.numpy(), label=name)
    angles.set_xlabel("seconds")
    angles.set_ylabel("degrees")
    angles.legend(fontsize=7)
    distance.plot(time, depth.numpy(), color="k")
    distance.set_xlabel("seconds")
    distance.set_ylabel("head depth z (m)")
    for ax in (angles, distance):
        for index in (~track.detected).nonzero().flatten().tolist():
            ax.axvspan(time[index] - 0.5 / track.fps, time[index] + 0.5 / track.fps,
                       color="0.85")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def tracking_preview(frames: Tensor, track: FaceTrack, path: str | os.PathLike | None = None,
                     columns: int = 4) -> np.ndarray:
    """Draw ``track`` over ``uint8 (F, H, W, 3)`` frames (module docstring) -> the sheet
    ``uint8 (H', W', 3)``; written as PNG (atomically) to ``path`` when given."""
    from PIL import Image

    picks = torch.linspace(0, len(track) - 1, min(columns, len(track))).round().long().tolist()
    cells = [_frame_cell(frames[i], track, i) for i in picks]
    width = sum(cell.width for cell in cells)
    plot = _pose_plot(track, max(width, 600))
    sheet = Image.new("RGB", (max(width, plot.width), cells[0].height + plot.height), "white")
    left = 0
    for cell in cells:
        sheet.paste(cell, (left, 0))
        left += cell.width
    sheet.paste(plot, (0, cells[0].height))
    if path is not None:
        with atomic_output(path, suffix=".png") as tmp:
            sheet.save(tmp, format="PNG")
    return np.asarray(sheet)
