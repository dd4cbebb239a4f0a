"""Training the reduced-width Wan VAE on synthetic portraits."""

import json
from dataclasses import replace

import pytest
import torch

from factorportrait.data.synthetic.config import SyntheticConfig
from factorportrait.data.synthetic.writer import generate_dataset
from factorportrait.evaluation import psnr
from factorportrait.models.vae import VAEConfig, WanVAE
from factorportrait.training.optim import WarmupDecay
from factorportrait.training.vae import (
    VAETrainConfig,
    posterior,
    reconstruction_psnr,
    train_vae,
    validation_windows,
)


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
    with pytest.raises(ValueError, match="warmup_steps"):
        VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path), warmup_steps=-1)
    with pytest.raises(ValueError, match="init_from: no VAE folder at .*missing"):
        train_vae(VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path),
                                 init_from=str(tmp_path / "missing")))
    with pytest.raises(ValueError, match="vae.device must be cpu, cuda or auto, got 'gpu'"):
        VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path), device="gpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="vae.device is cuda, but CUDA is not available"):
            train_vae(VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path),
                                     device="cuda"))


def test_a_finished_phase_stays_done_on_another_device(tmp_path, monkeypatch):
    from factorportrait.training import vae as vae_training

    trained = []
    monkeypatch.setattr(vae_training, "train_vae", lambda phase: trained.append(phase.device))
    phase = VAETrainConfig(root=str(tmp_path), output_dir=str(tmp_path / "vae"))
    (tmp_path / "vae").mkdir()
    vae_training.train_phases([phase])
    vae_training.train_phases([replace(phase, device="auto")])  # where, not what: done
    vae_training.train_phases([replace(phase, lr=1e-3)])  # what: trained again
    assert trained == ["cpu", "cpu"]


def test_learning_rate_warms_up_linearly_then_decays_by_cosine():
    assert [WarmupDecay(4, 12)(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert WarmupDecay(4, 12)(4) == 1.0
    assert WarmupDecay(4, 12)(8) == pytest.approx(0.5)
    assert WarmupDecay(4, 12)(12) == pytest.approx(0.0)
    assert WarmupDecay(0, 12)(6) == pytest.approx(0.5)  # no warmup: cosine from 0


def test_reconstruction_psnr_is_the_posterior_mean_decode_against_the_input():
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.small(dim=8))
    vae.model.train()
    video = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    decoded = vae.model.decode(posterior(vae, video)[0], [torch.zeros(16), torch.ones(16)])
    frames = lambda x: x.clamp(-1, 1).transpose(1, 2)
    expected = float(psnr(frames(decoded), frames(video), data_range=2.0).mean())
    assert reconstruction_psnr(vae, video) == pytest.approx(expected, abs=1e-4)
    assert vae.model.training  # left as it was found


@pytest.mark.slow
def test_vae_reconstruction_improves_and_latents_are_standardised(tmp_path):
    root = tmp_path / "data"
    generate_dataset(root, SyntheticConfig(identities=3, heldout=1, frames=9, width=32,
                                           height=32, studio_views=1, supersample=1,
                                           kinds=("phone", "viewsweep")))
    config = VAETrainConfig(root=str(root), output_dir=str(tmp_path / "vae"), dim=8, frames=5,
                            size=32, steps=40, batch_size=2, lr=1e-3, normals_fraction=0.0,
                            stats_batches=4, log_every=20, validation_windows=2)
    trained = train_vae(config)
    history = json.loads((tmp_path / "vae" / "vae_training.json").read_text())["history"]
    first = sum(h["l1"] for h in history[:5]) / 5
    last = sum(h["l1"] for h in history[-5:]) / 5
    assert last < 0.8 * first, (first, last)
    assert [h["step"] for h in history if "heldout_psnr" in h] == [20, 40]
    loaded = WanVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == trained.config and loaded.config.dim == 8
    assert loaded.config.latent_std != VAEConfig().latent_std  # measured, not Wan's constants

    # a second phase starts from the first one's weights: at lr 0 they come out unchanged, and
    # its held-out PSNR is the first VAE's on the same (longer) held-out windows
    continued = VAETrainConfig(**{**config.__dict__, "output_dir": str(tmp_path / "more"),
                                  "init_from": str(tmp_path / "vae"), "frames": 9, "lr": 0.0,
                                  "steps": 2, "log_every": 2, "warmup_steps": 1})
    again = train_vae(continued)
    for name, weight in loaded.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[name], weight), name
    history = json.loads((tmp_path / "more" / "vae_training.json").read_text())["history"]
    windows = validation_windows(continued)
    assert windows.shape == (2, 3, 9, 32, 32)
    assert history[-1]["heldout_psnr"] == pytest.approx(reconstruction_psnr(loaded, windows),
                                                        abs=1e-4)
    with pytest.raises(ValueError, match="width 8, vae.dim is 16"):
        train_vae(VAETrainConfig(**{**continued.__dict__, "dim": 16}))


def test_train_vae_tool_refuses_a_missing_dataset_in_one_line(tmp_path, capsys, monkeypatch):
    import sys
    from pathlib import Path

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "tools"))
    sys.modules.pop("train_vae", None)
    import train_vae as tool

    assert tool.main([f"root={tmp_path / 'nowhere'}", f"output_dir={tmp_path / 'vae'}"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: ") and "nowhere" in error and "\n" not in error
    assert not (tmp_path / "vae").exists()
