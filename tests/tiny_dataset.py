"""Tiny datasets written on the fly for the loader and latent-cache tests."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from factorportrait.data import ClipAnnotations, ClipRecord, append_manifest, save_annotations
from factorportrait.io import write_video

FPS = 24.0


def rotation_y(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def orbit(frames: int, height: int, width: int, offset: float = 0.0
          ) -> tuple[torch.Tensor, torch.Tensor]:
    """Cameras circling the origin at 1 m, looking at it: ``K (F,3,3)``, ``c2w (F,4,4)``."""
    focal = 1.2 * width
    K = torch.tensor([[focal, 0, width / 2], [0, focal, height / 2], [0, 0, 1]]).repeat(
        frames, 1, 1)
    c2w = torch.eye(4).repeat(frames, 1, 1)
    for i in range(frames):
        R = rotation_y(offset + 0.05 * i)
        c2w[i, :3, :3] = R
        c2w[i, :3, 3] = R @ torch.tensor([0.0, 0.0, -1.0])
    return K, c2w


def smooth_frames(frames: int, height: int, width: int, seed: int) -> np.ndarray:
    """Smooth random content that drifts over time: ``uint8 (F, H, W, 3)``."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, height // 4 + 2, width // 4 + 2, generator=g)
    big = torch.nn.functional.interpolate(base, scale_factor=4, mode="bilinear")[0]
    out = [torch.roll(big, shifts=(t, t), dims=(1, 2))[:, :height, :width] * 0.8
           + 0.2 * t / frames for t in range(frames)]
    return (torch.stack(out).permute(0, 2, 3, 1) * 255).round().clamp(0, 255).byte().numpy()


def add_clip(root: Path, clip_id: str, kind: str = "phone", frames: int = 17,
             height: int = 32, width: int = 32, normals: bool = True, take: str | None = None,
             identity: str = "p1", expression: str | None = "parameters",
             video: np.ndarray | None = None, camera_offset: float = 0.0,
             seed: int = 0) -> ClipRecord:
    """Write a valid clip (video, optional normal-map video, annotations); append it."""
    for folder in ("videos", "normals", "annotations"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    if video is None:
        video = smooth_frames(frames, height, width, seed)
    write_video(root / f"videos/{clip_id}.mp4", video, fps=FPS)
    if normals:
        write_video(root / f"normals/{clip_id}.mp4", smooth_frames(frames, height, width,
                                                                   seed + 1000),
                    fps=FPS, lossless=True)
    K, c2w = orbit(frames, height, width, camera_offset)
    g = torch.Generator().manual_seed(seed)
    extra = {}
    if expression == "parameters":
        extra = {"expression": torch.randn(frames, 10, generator=g),
                 "expression_names": tuple(f"e{i}" for i in range(10))}
    elif expression == "codes":
        extra = {"expression_codes": torch.randn(frames, 128, generator=g)}
    save_annotations(root / f"annotations/{clip_id}.safetensors", ClipAnnotations(
        K=K, c2w=c2w, head_rotation=0.1 * torch.randn(frames, 3, generator=g),
        head_translation=torch.zeros(frames, 3), width=width, height=height, fps=FPS,
        kind=kind, **extra))
    record = ClipRecord(id=clip_id, kind=kind, identity=identity, fps=FPS,
                        video=f"videos/{clip_id}.mp4",
                        annotations=f"annotations/{clip_id}.safetensors",
                        normals=f"normals/{clip_id}.mp4" if normals else None, take=take,
                        num_frames=frames)
    append_manifest(root / "manifest.jsonl", record)
    return record


def make_dataset(root: Path, frames: int = 17) -> Path:
    """Five clips: phone (codes), phone (parameters, no normals), a studio take of two views,
    a viewsweep without expressions."""
    add_clip(root, "phone_a", expression="codes", frames=frames, seed=1)
    add_clip(root, "phone_b", normals=False, frames=frames, seed=2)
    add_clip(root, "studio_a", kind="studio", take="t1", identity="s1", frames=frames, seed=3)
    add_clip(root, "studio_b", kind="studio", take="t1", identity="s1", frames=frames, seed=4,
             camera_offset=0.6)
    add_clip(root, "sweep_a", kind="viewsweep", expression=None, frames=frames, seed=5)
    return root
