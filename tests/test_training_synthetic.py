"""The tiny recipe trains on generated synthetic portrait data (data=synthetic), end to end:
generator → VAE latent cache → factorportrait.data.build_dataset → the training loop."""

import math

import pytest
import torch

from factorportrait.data import PortraitClipDataset, precompute_latents
from factorportrait.data.synthetic.config import SyntheticConfig
from factorportrait.data.synthetic.writer import generate_dataset
from factorportrait.models.vae import VAEConfig, WanVAE
from factorportrait.training import train
from tests.test_training_loop import loss_curve
from tests.training_recipes import tiny_config

FRAMES, SIZE = 13, 64  # stage 1's 13 frames at the tiny scale's 64x64


@pytest.mark.slow
def test_tiny_recipe_loss_falls_on_synthetic_portraits(tmp_path):
    root, vae_dir = tmp_path / "data", tmp_path / "vae"
    generate_dataset(root, SyntheticConfig(identities=3, heldout=1, frames=FRAMES, width=SIZE,
                                           height=SIZE, studio_views=2, supersample=1))
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.small(dim=8))
    vae.save_pretrained(vae_dir)
    clips = PortraitClipDataset(root, FRAMES, size=(SIZE, SIZE), split=None, window_step=6,
                                reference_count=4, latents=False)
    report = precompute_latents(clips, vae)
    assert not report.failed
    config = tiny_config(tmp_path / "runs", "data=synthetic", f"data.options.root={root}",
                         f"data.options.vae={vae_dir}", "data.options.window_step=6",
                         "data.options.reference_count=4", "data.num_workers=0")
    result = train(config)
    losses = list(loss_curve(result.stage_dir).values())
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
