"""Wan VAE wrapper: shapes, normalisation, official weight files, tiling, round trips."""

import pytest
import torch
import torch.nn.functional as F

from factorportrait.models.vae import VAEConfig, WanVAE, _tiled


def test_encode_decode_shapes_follow_wan_compression(vae):
    video = torch.rand(1, 3, 9, 32, 48) * 2 - 1
    latents = vae.encode(video)
    assert latents.shape == (1, 16, 3, 4, 6)
    decoded = vae.decode(latents)
    assert decoded.shape == (1, 3, 9, 32, 48)
    assert decoded.min() >= -1 and decoded.max() <= 1
    image = vae.encode_image(video[:, :, 0])
    assert image.shape == (1, 16, 1, 4, 6)
    # the causal VAE encodes the first frame alone: image latent == video's first latent
    assert torch.allclose(image[:, :, 0], latents[:, :, 0], atol=1e-5)


def test_latents_are_normalised_with_wan_mean_and_std(vae):
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    raw = vae.model.encode(video, [torch.zeros(16), torch.ones(16)])  # un-normalised mean
    mean = torch.tensor(VAEConfig().latent_mean).view(1, 16, 1, 1, 1)
    std = torch.tensor(VAEConfig().latent_std).view(1, 16, 1, 1, 1)
    assert torch.allclose(vae.encode(video), (raw - mean) / std, atol=1e-5)


def test_official_pth_and_safetensors_load(vae, tmp_path):
    from safetensors.torch import save_file
    state = vae.model.state_dict()
    assert "encoder.conv1.weight" in state and "decoder.head.2.weight" in state
    torch.save(state, tmp_path / "Wan2.1_VAE.pth")
    torch.save({"model_state": state}, tmp_path / "wrapped.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "vae.safetensors"))
    for name in ("Wan2.1_VAE.pth", "wrapped.pth", "vae.safetensors"):
        loaded = WanVAE.from_wan(tmp_path / name, VAEConfig.small(dim=8))
        assert torch.equal(loaded.model.encoder.conv1.weight, vae.model.encoder.conv1.weight)
    with pytest.raises(ValueError, match="width 16"):
        WanVAE.from_wan(tmp_path / "Wan2.1_VAE.pth", VAEConfig.small(dim=16))
    with pytest.raises(FileNotFoundError):
        WanVAE.from_wan(tmp_path / "absent.pth")


def test_save_load_round_trip_and_hash(vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    loaded = WanVAE.from_pretrained(tmp_path / "vae")
    assert loaded.config == vae.config
    assert loaded.weights_hash() == vae.weights_hash()
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    assert torch.equal(loaded.encode(video), vae.encode(video))
    with torch.no_grad():
        loaded.model.conv1.weight.add_(1e-3)
    assert loaded.weights_hash() != vae.weights_hash()


def test_tiling_blends_to_the_untiled_result_for_local_maps():
    x = torch.randn(1, 3, 1, 64, 80)
    pool = lambda t: F.avg_pool3d(t, (1, 8, 8))  # noqa: E731 - an 8x-downsampling local map
    assert torch.allclose(_tiled(pool, x, tile=32, scale=1 / 8), pool(x), atol=1e-6)
    up = lambda t: F.interpolate(t, scale_factor=(1, 8, 8), mode="nearest")  # noqa: E731
    z = torch.randn(1, 16, 2, 6, 7)
    assert torch.allclose(_tiled(up, z, tile=4, scale=8), up(z), atol=1e-6)
    ones = lambda t: torch.ones_like(t)  # noqa: E731 - blend weights must sum to 1
    assert torch.allclose(_tiled(ones, x, tile=24, scale=1), torch.ones_like(x))


@pytest.mark.parametrize("shape, message", [
    ((1, 3, 8, 16, 16), "4k\\+1"),
    ((1, 3, 5, 12, 16), "multiples of 8"),
    ((1, 4, 5, 16, 16), "\\(B,3,F,H,W\\)"),
])
def test_bad_video_is_rejected(vae, shape, message):
    with pytest.raises(ValueError, match=message):
        vae.encode(torch.zeros(shape))
