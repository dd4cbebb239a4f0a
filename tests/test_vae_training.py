"""Training the reduced-width Wan VAE on synthetic portraits."""

import json

import pytest
import torch

from factorportrait.data.synthetic.config import SyntheticConfig
from factorportrait.data.synthetic.writer import generate_dataset
from factorportrait.models.vae import VAEConfig, WanVAE
from factorportrait.training.vae import VAETrainConfig, posterior, train_vae


def test_posterior_mean_is_what_encode_normalises():
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.small(dim=8))
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    mu, log_var = posterior(vae, video)
    mean = torch.tensor(vae.config.latent_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(vae.config.latent_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(vae.encode(video), (mu - mean) / std, atol=1e-5)
    assert log_var.shape == mu.shape == (1, 16, 2, 2, 2)


def test_config_rejects_bad_values(tmp_path):
    with pytest.raises(ValueError, match="frames"):
        VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path), frames=4)
    with pytest.raises(ValueError, match="size"):
        VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path), size=40)


@pytest.mark.slow
def test_vae_reconstruction_improves_and_latents_are_standardised(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, SyntheticConfig(identities=2, heldout=0, frames=9, width=32,
                                           height=32, studio_views=1, supersample=1,
                                           kinds=("phone", "viewsweep")))
    config = VAETrainConfig(root=str(root), output_dir=str(tmp_path / "vae"), dim=8, frames=5,
                            size=32, steps=40, batch_size=2, lr=1e-3, normals_fraction=0.0,
                            stats_batches=4)
    trained = train_vae(config)
    history = json.loads((tmp_path / "vae" / "vae_training.json").read_text())["history"]
    first = sum(h["l1"] for h in history[:5]) / 5
    last = sum(h["l1"] for h in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    loaded = WanVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == trained.config and loaded.config.dim == 8
    assert loaded.config.latent_std != VAEConfig().latent_std  # measured, not Wan's constants
