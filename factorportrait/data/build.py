"""``build_dataset``: a FactorPortrait dataset folder as latent training items (the contract of
:mod:`factorportrait.data.training_sample`), for the training recipes' ``data=synthetic``."""

from __future__ import annotations

import os
from typing import Literal

from factorportrait.data.dataset import PortraitClipDataset
from factorportrait.data.training_sample import LatentTrainingDataset


def build_dataset(frames: int, height: int, width: int, split: str = "train", seed: int = 0, *,
                  root: str | os.PathLike, vae: str | os.PathLike | None = None,
                  vae_dim: int | None = None, stride: int = 1,
                  latents: bool | Literal["auto"] = "auto", window_step: int = 1,
                  reference_count: int | None = None, max_bad_fraction: float = 0.1,
                  tile: int | None = None, landmarks: bool = False) -> LatentTrainingDataset:
    """Training items of ``frames`` frames at ``height × width`` from the dataset at ``root``.

    Args:
        vae: a ``WanVAE.save_pretrained`` folder or an official Wan 2.1 VAE file; used to look
            up the latent cache (its weights hash) and to encode windows the cache lacks.
            ``vae_dim`` selects a reduced-width architecture for a weights *file*.
        latents: ``"auto"`` serves cached latents when ``tools/precompute.py`` wrote them for
            this spec (``window_step``, ``reference_count``), else encodes on the fly.
        landmarks: items also hold ``landmarks (F,478,2)`` from the clips' procedural avatars
            (synthetic data only; a recipe sets ``data.options.landmarks: true``).
    Returns:
        A dataset whose items hold ``latents (16,F_lat,h,w)``, ``reference_latent``,
        ``normal_latents``, ``rays (24,1+F_lat,h,w)``, ``expression (F,128)`` and
        ``head_pose (1+F,3,4)`` (:mod:`factorportrait.data.training_sample`).
    """
    from factorportrait.models.vae import VAEConfig, WanVAE

    if vae is None and latents is not True:
        raise ValueError(f"build_dataset: data.options.vae is required to encode {root} (or "
                         f"precompute latents with tools/precompute.py and set latents=true)")
    model = None
    if vae is not None:
        config = VAEConfig.small(vae_dim) if vae_dim else None
        model = WanVAE.load(vae, config)
    clips = PortraitClipDataset(root, frames, stride, (height, width), split=split,
                                window_step=window_step, reference_count=reference_count,
                                max_bad_fraction=max_bad_fraction, seed=seed, latents=latents,
                                vae_hash=model.weights_hash() if model is not None else None)
    return LatentTrainingDataset(clips, vae=model, tile=tile, landmarks=landmarks)
