"""Real-photo fixtures for the tracking tests: ``skimage.data.astronaut()`` (a portrait) moved
by known similarity transforms and written as mp4, ``skimage.data.chelsea()`` (a cat: no
face), and a studio take of a procedural avatar filmed by calibrated cameras. Everything is
generated here; nothing is downloaded."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import torch

from factorportrait.io import write_video
from factorportrait.tracking.crop import FaceBoxes, crop_faces

ASTRONAUT_FACE = (224.0, 150.0)  # about where the astronaut's face is (pixels of 512 x 512)


@functools.cache
def astronaut() -> torch.Tensor:
    """``uint8 (512, 512, 3)``."""
    import skimage.data
    return torch.from_numpy(skimage.data.astronaut()).contiguous()


@functools.cache
def chelsea() -> torch.Tensor:
    """``uint8 (300, 451, 3)``: a cat."""
    import skimage.data
    return torch.from_numpy(skimage.data.chelsea()).contiguous()


def moved_photo(image: torch.Tensor, angles_deg, zooms, shifts=None, size: int = 512,
                center=ASTRONAUT_FACE) -> torch.Tensor:
    """``uint8 (F, size, size, 3)``: ``image`` turned counter-clockwise on screen by
    ``angles_deg[i]`` and zoomed by ``zooms[i]`` about ``center`` (+ ``shifts[i]`` pixels of
    the source), each frame one bicubic warp."""
    count = len(angles_deg)
    shifts = torch.zeros(count, 2) if shifts is None else torch.as_tensor(shifts).float()
    # The crop frame turned by +a shows the content turned by -a in image coordinates
    # (y down): counter-clockwise on screen.
    boxes = FaceBoxes(torch.tensor(center).expand(count, 2) + shifts,
                      torch.tensor([size / z for z in zooms], dtype=torch.float32),
                      torch.tensor([math.radians(a) for a in angles_deg], dtype=torch.float32))
    pixels = image.permute(2, 0, 1)[None].float().expand(count, -1, -1, -1)
    frames = crop_faces(pixels, boxes, size, roll_normalise=True, mode="bicubic")
    return frames.round().clamp(0, 255).byte().permute(0, 2, 3, 1).contiguous()


def write_clip(path: Path, frames: torch.Tensor, fps: float = 25.0) -> Path:
    write_video(path, frames, fps=fps)
    return path


def studio_take(folder: Path, frames: int = 9, size: int = 192, seed: int = 7,
                calibration: str = "cameras.json"):
    """A procedural avatar filmed by three calibrated cameras into ``folder``
    (``cam0.mp4``… and the calibration) -> the true head rotation ``(F, 3, 3)`` and centre
    ``(F, 3)`` in the rig's world."""
    from factorportrait.body import AvatarIdentity, HeadAvatar
    from factorportrait.data.synthetic.performance import _euler_to_axis_angle
    from factorportrait.geometry import Cameras, save_cameras_json, save_nerf_transforms
    from factorportrait.geometry.trajectories import static
    from factorportrait.render import Meshes, render

    folder.mkdir(parents=True, exist_ok=True)
    avatar = HeadAvatar(AvatarIdentity.sample(seed=seed))
    t = torch.linspace(0, 1, frames)
    angles = torch.stack([0.3 * torch.sin(2 * math.pi * t), 0.1 * t,
                          0.08 * torch.cos(2 * math.pi * t)], 1)
    axis_angle = _euler_to_axis_angle(angles.float())
    translation = torch.stack([0.01 * t, -0.01 * t, 0.02 * t], 1)
    verts = avatar.pose(torch.zeros(frames, 8), axis_angle, translation)
    views = [static(1, yaw_deg=yaw, elevation_deg=e, distance=0.9, fov_deg=25.0, width=size,
                    height=size) for yaw, e in ((-30, 5), (0, 0), (30, 10))]
    names = [f"cam{i}" for i in range(len(views))]
    rig = Cameras.cat(views)
    if calibration == "transforms.json":
        save_nerf_transforms(rig, folder / calibration, [f"{n}.png" for n in names])
    else:
        save_cameras_json(rig, folder / calibration)
    for name, camera in zip(names, views):
        rgb = render(Meshes(verts, avatar.faces, avatar.vertex_colors),
                     (camera.K.expand(frames, 3, 3), camera.c2w.expand(frames, 4, 4)), size,
                     size, outputs=("rgb",), supersample=2)["rgb"]
        write_clip(folder / f"{name}.mp4",
                   (rgb.permute(0, 2, 3, 1).clamp(0, 1) * 255).round().byte())
    return avatar.head_transform(axis_angle, translation)


def phone_clip(path: Path, frames: int = 13, size: int = 192) -> Path:
    """The astronaut turning and leaning in: a monocular 'phone' clip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    t = torch.linspace(0, 1, frames)
    return write_clip(path, moved_photo(astronaut(), (12 * torch.sin(2 * math.pi * t)).tolist(),
                                        (1 + 0.15 * t).tolist(), size=size))
