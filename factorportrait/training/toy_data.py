"""`SyntheticLatentDataset`: random latents standing in for real data in tests and benchmarks.

Not a portrait dataset: no VAE, no video. Each item has the shapes of the training contract
(:func:`factorportrait.training.batches.batch_to_conditions`), and its target is a fixed,
noise-free function of its conditions, so a DiT *can* learn it and the loss falls:

    latents[:, f] = (A · normal_latents[:, f] + B · reference_latent[:, 0]) / √2

with ``A, B`` fixed random orthogonal ``16 × 16`` channel mixes (the same for every dataset,
so a validation set with another ``seed`` poses the same task on unseen items). Items are
pure functions of ``(seed, index)``; clip kinds cycle through ``kinds`` so the curriculum's
mixture sampler has something to mix.

Items also carry plausible DeX head poses ``head_pose (1+F, 3, 4)`` (a source pose, then a
drift between two random poses over the driving frames: rotations of ~0.15 rad, scale ~0.5,
image translation ~0.1) and, with ``landmark_points = N > 0``, landmarks ``(F, N, 2)``: random
head-frame points moved by the driving poses. Both come from a second generator seeded from
the item's seed, so every other field is the same with or without them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from factorportrait.data.format import KINDS
from factorportrait.geometry.rays import matrix_from_rts
from factorportrait.geometry.rotations import axis_angle_to_matrix

LATENT_CHANNELS = 16
RAY_CHANNELS = 24
EXPRESSION_DIM = 128
MIXING_SEED = 20240917  # fixes A and B (part of the task's definition)
POSE_STREAM = 0x5DEECE66D  # offset of the head-pose/landmark generator's seed from the item's


def _orthogonal(generator: torch.Generator, size: int) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(size, size, generator=generator, dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()  # (size, size), orthonormal


def _mixing_matrices() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(MIXING_SEED)
    return _orthogonal(generator, LATENT_CHANNELS), _orthogonal(generator, LATENT_CHANNELS)


def _random_poses(generator: torch.Generator, count: int) -> tuple[torch.Tensor, ...]:
    """``count`` random RTS parameters: axis-angle ``(count, 3)``, image translation
    ``(count, 3)`` (z = 0), scale ``(count,)``."""
    rotation = 0.15 * torch.randn(count, 3, generator=generator)
    translation = 0.1 * torch.randn(count, 3, generator=generator)
    translation[:, 2] = 0
    scale = 0.5 * torch.exp(0.1 * torch.randn(count, generator=generator))
    return rotation, translation, scale


def toy_head_poses(generator: torch.Generator, frames: int) -> torch.Tensor:
    """``(1 + frames, 3, 4)`` poses ``[sR | t]``: a random source pose, then driving poses
    drifting linearly from one random pose to another."""
    rotation, translation, scale = _random_poses(generator, 3)  # source, start, end
    weight = torch.linspace(0, 1, frames)[:, None]  # (F, 1)
    rotation = torch.cat([rotation[:1], torch.lerp(rotation[1], rotation[2], weight)])
    translation = torch.cat([translation[:1], torch.lerp(translation[1], translation[2],
                                                         weight)])
    scale = torch.cat([scale[:1], torch.lerp(scale[1], scale[2], weight[:, 0])])
    return matrix_from_rts(axis_angle_to_matrix(rotation), translation, scale)


def toy_landmarks(generator: torch.Generator, head_pose: torch.Tensor, points: int
                  ) -> torch.Tensor:
    """``(F, points, 2)`` in [−1, 1]: random head-frame points (inside the unit cube) moved by
    the driving poses ``head_pose[1:]``, with a little per-frame jitter."""
    face = 1.4 * torch.rand(points, 3, generator=generator) - 0.7  # (N, 3) head units
    driving = head_pose[1:]  # (F, 3, 4)
    moved = torch.einsum("fij,nj->fni", driving[:, :2, :3], face) + driving[:, None, :2, 3]
    jitter = 0.01 * torch.randn(moved.shape, generator=generator)
    return (moved + jitter).clamp(-1, 1)  # (F, N, 2)


class SyntheticLatentDataset(Dataset):
    """Deterministic random-latent items (module docstring).

    Args:
        num_items: dataset length.
        frames: video frames ``F = 4k + 1``; items have ``F_lat = (F − 1)/4 + 1`` latent frames
            and ``F`` expression codes.
        height, width: *latent* size ``h, w`` (pixels / 8).
        seed: items are a pure function of ``(seed, index)``.
        kinds: clip kinds assigned round-robin (index ``i`` has ``kinds[i % len(kinds)]``).
        landmark_points: ``N`` landmarks per frame; 0 (default) leaves ``landmarks`` out.

    Items (float32, CPU): ``latents (16, F_lat, h, w)``, ``reference_latent (16, 1, h, w)``,
    ``normal_latents (16, F_lat, h, w)``, ``rays (24, 1+F_lat, h, w)``, ``expression (F, 128)``,
    ``head_pose (1+F, 3, 4)``, ``landmarks (F, N, 2)`` when ``N > 0``, and ``kind`` (str).
    ``dataset[index, draw]`` (as ``DrawSampler`` yields) ignores ``draw``.
    """

    def __init__(self, num_items: int, frames: int, height: int, width: int, seed: int = 0,
                 kinds: Sequence[str] = KINDS, landmark_points: int = 0) -> None:
        for name, value in (("num_items", num_items), ("height", height), ("width", width)):
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"SyntheticLatentDataset: {name} must be a positive integer, "
                                 f"got {value!r}")
        if not (isinstance(frames, int) and frames >= 1 and frames % 4 == 1):
            raise ValueError(f"SyntheticLatentDataset: frames must be 4k + 1 video frames, got "
                             f"{frames!r}")
        if not kinds:
            raise ValueError("SyntheticLatentDataset: kinds must not be empty")
        if isinstance(landmark_points, bool) or not (isinstance(landmark_points, int)
                                                     and landmark_points >= 0):
            raise ValueError(f"SyntheticLatentDataset: landmark_points must be an integer >= 0, "
                             f"got {landmark_points!r}")
        self.landmark_points = landmark_points
        self.num_items, self.frames = num_items, frames
        self.latent_frames = (frames - 1) // 4 + 1
        self.height, self.width, self.seed = height, width, seed
        self.kinds = [kinds[i % len(kinds)] for i in range(num_items)]
        self.normal_mix, self.reference_mix = _mixing_matrices()

    def __len__(self) -> int:
        return self.num_items

    def kind_to_indices(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        for index, kind in enumerate(self.kinds):
            groups.setdefault(kind, []).append(index)
        return groups

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, torch.Tensor | str]:
        index = item[0] if isinstance(item, tuple) else item
        if not (0 <= index < self.num_items):
            raise IndexError(f"SyntheticLatentDataset: index {index} out of range "
                             f"[0, {self.num_items})")
        item_seed = self.seed * 1_000_003 + index
        generator = torch.Generator().manual_seed(item_seed)
        frames, h, w = self.latent_frames, self.height, self.width

        def randn(*shape: int) -> torch.Tensor:
            return torch.randn(*shape, generator=generator)

        reference = randn(LATENT_CHANNELS, 1, h, w)
        normals = randn(LATENT_CHANNELS, frames, h, w)
        mixed = (torch.einsum("oc,cfhw->ofhw", self.normal_mix, normals)
                 + torch.einsum("oc,cfhw->ofhw", self.reference_mix, reference))
        item = {
            "latents": mixed / math.sqrt(2.0),  # (16, F_lat, h, w), unit variance
            "reference_latent": reference,
            "normal_latents": normals,
            "rays": 0.5 * randn(RAY_CHANNELS, 1 + frames, h, w),
            "expression": 0.5 * randn(self.frames, EXPRESSION_DIM),
            "kind": self.kinds[index],
        }
        # DeX fields from their own stream: the fields above stay as they were without them
        poses = torch.Generator().manual_seed(item_seed + POSE_STREAM)
        item["head_pose"] = toy_head_poses(poses, self.frames)  # (1 + F, 3, 4)
        if self.landmark_points:
            item["landmarks"] = toy_landmarks(poses, item["head_pose"], self.landmark_points)
        return item
