"""Long videos: sliding windows over latent frames, denoised together at every step.

A video of ``F = 4k + 1`` frames has ``L = (F − 1)/4 + 1`` latent frames; the DiT is trained on
windows of at most ``n`` latent frames (81 video frames: n = 21). The fewest windows of ``n``
latent frames that overlap by at least ``overlap`` frames are spaced evenly from the first
latent frame to the last. At **every** Euler step
each window predicts the velocity of its slice (all guidance branches batched), and the
velocities are blended with per-frame weights that sum to 1 on every latent frame
(MultiDiffusion, Bar-Tal et al. 2023); one Euler step then moves the whole video. Because the
windows agree at every step there is no seam to hide afterwards.

Each window sees the slice of the full-length conditions (:func:`window_conditions`): the
reference latent and the identity-camera rays as its frame 0, then the normal latents, rays and
expression codes of its latent frames. Blend weights rise linearly across an overlap (``1/(o+1),
…, o/(o+1)``) and are normalised so that they sum to exactly 1.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm.auto import tqdm

from factorportrait.diffusion.flow_matching import DEFAULT_SHIFT, VelocityModel
from factorportrait.diffusion.guidance import Guidance, branch_conditions, combine
from factorportrait.diffusion.sampler import (check_finite_latents, effective_weights,
                                              flow_sigmas, initial_noise, predict_branches,
                                              resolve_guidance)
from factorportrait.models.conditions import PortraitConditions

TEMPORAL_STRIDE = 4  # video frames per latent frame (after the first)


@dataclass(frozen=True, eq=False)
class LatentWindow:
    """Generated latent frames ``[start, stop)`` and their blend weights ``(stop − start,)``."""

    start: int
    stop: int
    weights: Tensor

    @property
    def length(self) -> int:
        return self.stop - self.start

    def video_frames(self) -> tuple[int, int]:
        """``[first, last]`` video frames whose expression codes the window reads: the window's
        first latent frame is represented by the last video frame of its chunk, ``4·start``
        (for ``start = 0``: video frame 0), the others by their 4 frames."""
        return TEMPORAL_STRIDE * self.start, TEMPORAL_STRIDE * (self.stop - 1)


def latent_frames(num_frames: int) -> int:
    """``F = 4k + 1`` video frames -> ``k + 1`` latent frames."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"num_frames must be 4k + 1 (1, 5, 9, …), got {num_frames}")
    return (num_frames - 1) // TEMPORAL_STRIDE + 1


def _ramp(length: int, left: int, right: int) -> Tensor:
    """Ones with linear ramps over the first ``left`` and last ``right`` entries (float64)."""
    ramp = torch.ones(length, dtype=torch.float64)
    if left:
        ramp[:left] = torch.arange(1, left + 1, dtype=torch.float64) / (left + 1)
    if right:
        ramp[length - right:] = torch.arange(right, 0, -1, dtype=torch.float64) / (right + 1)
    return ramp


def plan_windows(total: int, window: int, overlap: int) -> list[LatentWindow]:
    """Windows over ``total`` latent frames (a single window when ``total <= window``).

    Args:
        total: latent frames of the video, ``L``.
        window: latent frames per window, ``n >= 2``.
        overlap: latent frames shared by consecutive windows, ``0 <= overlap < n``.
    Returns:
        Windows in order; every frame is covered and the weights sum to 1 on every frame.
    """
    if total < 1:
        raise ValueError(f"total latent frames must be >= 1, got {total}")
    if total <= window:
        return [LatentWindow(0, total, torch.ones(total, dtype=torch.float64))]
    if window < 2 or not 0 <= overlap < window:
        raise ValueError(f"sliding windows need window >= 2 latent frames and 0 <= overlap < "
                         f"window, got window={window}, overlap={overlap}")
    count = -(-(total - window) // (window - overlap)) + 1  # ceil: windows needed
    starts = [round(i * (total - window) / (count - 1)) for i in range(count)]  # even spacing
    ramps = []
    for i, start in enumerate(starts):
        left = starts[i - 1] + window - start if i > 0 else 0
        right = start + window - starts[i + 1] if i + 1 < len(starts) else 0
        ramps.append(_ramp(window, max(left, 0), max(right, 0)))
    total_weight = torch.zeros(total, dtype=torch.float64)
    for start, ramp in zip(starts, ramps):
        total_weight[start:start + window] += ramp
    return [LatentWindow(start, start + window, ramp / total_weight[start:start + window])
            for start, ramp in zip(starts, ramps)]


def window_conditions(conditions: PortraitConditions, window: LatentWindow
                      ) -> PortraitConditions:
    """The slice of full-length conditions a window sees (frame 0 stays the reference).

    ``normal_latents (B,16,L,h,w)`` -> ``[:, :, start:stop]``; ``rays (B,24,1+L,h,w)`` ->
    frame 0 + ``[1+start : 1+stop]``; ``expression (B,4(L−1)+1,128)`` -> video frames
    ``4·start … 4·(stop−1)`` (``4(n−1)+1`` codes, :meth:`LatentWindow.video_frames`), and so
    do ``landmarks (B,T,N,2)`` and ``head_pose (B,1+T,3,4)`` (after its source pose, index 0).
    """
    first, last = window.video_frames()
    rays, poses = conditions.rays, conditions.head_pose
    return replace(
        conditions,
        normal_latents=conditions.normal_latents[:, :, window.start:window.stop],
        rays=torch.cat([rays[:, :, :1], rays[:, :, 1 + window.start:1 + window.stop]], dim=2),
        expression=None if conditions.expression is None
        else conditions.expression[:, first:last + 1],
        head_pose=None if poses is None
        else torch.cat([poses[:, :1], poses[:, 1 + first:2 + last]], dim=1),
        landmarks=None if conditions.landmarks is None
        else conditions.landmarks[:, first:last + 1])


@torch.no_grad()
def sample_windows(model: VelocityModel, conditions: PortraitConditions,
                   windows: list[LatentWindow], *, noise: Optional[Tensor] = None,
                   generator: Optional[torch.Generator] = None, num_steps: int = 50,
                   shift: float = DEFAULT_SHIFT, guidance: Guidance | str | None = None,
                   batch_cfg: bool = True, progress: bool = True,
                   callback: Optional[Callable[[int, float, Tensor], None]] = None) -> Tensor:
    """Euler flow sampling of a video of any length by blended windows (module docstring).

    Same arguments and schedule as :func:`factorportrait.diffusion.sample`; with a single
    window covering the video the result equals ``sample`` exactly.
    Returns ``(B, 16, L, h, w)`` float32 latents.
    """
    guidance = resolve_guidance(guidance)
    schedule = guidance.schedule(num_steps)
    sigmas = flow_sigmas(num_steps, shift).tolist()
    latents = initial_noise(conditions, generator, noise)  # (B, 16, L, h, w)
    sliced = [window_conditions(conditions, window) for window in windows]
    variants: list[dict[str, PortraitConditions]] = [{} for _ in windows]
    caches: list[dict] = [{} for _ in windows]
    for step in tqdm(schedule, desc="sampling", disable=not progress, leave=False):
        weights = effective_weights(step.weights, conditions)
        sigma = sigmas[step.step]
        velocity = torch.zeros_like(latents) if len(windows) > 1 else None
        for window, window_cond, variant, cache in zip(windows, sliced, variants, caches):
            for name in weights:
                if name not in variant:
                    variant[name] = branch_conditions(window_cond, name)
            predictions = predict_branches(model, latents[:, :, window.start:window.stop],
                                           sigma, variant, list(weights), batch_cfg, cache)
            window_velocity = combine(predictions, weights)  # (B, 16, n, h, w) float32
            if velocity is None:
                velocity = window_velocity
            else:
                blend = window.weights.to(latents)[None, None, :, None, None]
                velocity[:, :, window.start:window.stop] += blend * window_velocity
        latents = latents + (sigmas[step.step + 1] - sigma) * velocity
        check_finite_latents(latents, step.step, num_steps, sigma, guidance)
        if callback is not None:
            callback(step.step, sigma, latents)
    return latents
