"""Validation renders: sample a held-out item's video with the model being trained.

Every ``validation.render_every`` steps rank 0 denoises the first held-out item's conditions
with :class:`~factorportrait.pipeline.FactorPortraitPipeline` (seeded noise, the sampler and
guidance used at inference), decodes it and its target latents with the VAE
(``validation.vae``), and writes ``<stage_dir>/validation/step-00001000.mp4``: prediction on
the left, target on the right.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional

import torch

from factorportrait.models.vae import WanVAE
from factorportrait.training.batches import batch_to_conditions


def load_vae(path: str | os.PathLike) -> WanVAE:
    """A ``WanVAE.save_pretrained`` folder, or official Wan 2.1 VAE weights (a file)."""
    path = Path(path)
    if path.is_dir():
        return WanVAE.from_pretrained(path)
    if path.is_file():
        return WanVAE.from_wan(path)
    raise FileNotFoundError(f"validation.vae: {path} is neither a VAE folder nor a weights file")


@torch.no_grad()
def render_validation(dit: torch.nn.Module, vae: WanVAE, batch: dict[str, Any], path: Path, *,
                      num_steps: int, guidance: Optional[str], seed: int, fps: float) -> Path:
    """Write ``path`` (mp4, prediction | target side by side) for the batch's first item.

    ``dit`` is left in eval mode (the pipeline switches it); the caller restores train mode.
    """
    from factorportrait.io.video import write_video
    from factorportrait.pipeline import FactorPortraitPipeline

    device = next(dit.parameters()).device
    latents, conditions = batch_to_conditions(batch, device)
    first = conditions.map(lambda tensor: tensor[:1])
    pipeline = FactorPortraitPipeline(dit, vae)
    sampled = pipeline.denoise(first, num_steps=num_steps, guidance=guidance, seed=seed,
                               progress=False)  # (1, 16, F_lat, h, w)
    frames = torch.cat([pipeline.decode(sampled), pipeline.decode(latents[:1].float())],
                       dim=2)  # (F, H, 2W, 3) uint8
    path.parent.mkdir(parents=True, exist_ok=True)
    write_video(path, frames, fps=fps)
    return path
