"""Shared fixtures: tiny configs, random conditions, Wan-format checkpoints made on the fly."""

from __future__ import annotations

import os

os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch starts its OpenMP pool

import pytest  # noqa: E402
import torch  # noqa: E402
torch.set_num_threads(min(2, os.cpu_count() or 1))

from factorportrait import DiTConfig, PortraitConditions  # noqa: E402


def make_conditions(config: DiTConfig, batch: int = 2, frames: int = 3, height: int = 8,
                    width: int = 8, seed: int = 0, context_length: int | None = 5
                    ) -> tuple[torch.Tensor, PortraitConditions]:
    """Random ``z_t (B,16,F,h,w)`` and conditions of matching shapes."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    noisy = randn(batch, 16, frames, height, width)
    conditions = PortraitConditions(
        reference_latent=randn(batch, 16, 1, height, width),
        normal_latents=randn(batch, 16, frames, height, width),
        rays=randn(batch, 24, 1 + frames, height, width),
        expression=randn(batch, 4 * (frames - 1) + 1, config.expression_dim),
        context=None if context_length is None else randn(batch, context_length,
                                                          config.text_dim),
    )
    return noisy, conditions


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module: small renders, tiny VAEs and small networks are
    call-overhead bound, and on shared cores extra threads only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vae(one_thread):
    """A tiny random Wan VAE (width 8, seed 0)."""
    from factorportrait.models.vae import VAEConfig, WanVAE

    torch.manual_seed(0)
    return WanVAE(VAEConfig.small(dim=8))


@pytest.fixture
def tiny_config() -> DiTConfig:
    return DiTConfig.tiny()


@pytest.fixture(scope="session")
def wan_checkpoint(tmp_path_factory) -> tuple[str, torch.nn.Module]:
    """A Wan 2.1 T2V checkpoint at the tiny size: diffsynth's ``WanModel`` with random
    weights, saved as safetensors under the official key names."""
    from safetensors.torch import save_file

    from factorportrait.models import backbone

    torch.manual_seed(1234)
    wan = backbone.wan_plain_model(DiTConfig.tiny()).eval()
    path = tmp_path_factory.mktemp("wan") / "diffusion_pytorch_model.safetensors"
    save_file({k: v.contiguous() for k, v in wan.state_dict().items()}, str(path))
    return str(path), wan
