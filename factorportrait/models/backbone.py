"""The one place that imports diffsynth: Wan 2.1 DiT blocks, RoPE, embeddings, weight files.

diffsynth takes several seconds to import (it registers every model family), so it is imported
once, lazily, on first use. Its ``WanModel.forward`` is broken in 2.1.x; we use its building
blocks (``DiTBlock``, ``Head``, the attention dispatcher inside them, RoPE tables, the
sinusoidal embedding) and write our own forward in :mod:`factorportrait.models.dit`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from factorportrait.config import DiTConfig
    from factorportrait.models.vae import VAEConfig


@functools.cache
def wan_dit_module() -> ModuleType:
    """``diffsynth.models.wan_video_dit``, imported on first use."""
    try:
        import diffsynth.models.wan_video_dit as wan_video_dit
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("FactorPortrait needs diffsynth for the Wan 2.1 DiT blocks: "
                          "pip install 'diffsynth>=2.1,<2.2'") from error
    return wan_video_dit


def wan_blocks(config: "DiTConfig") -> nn.ModuleList:
    """``num_layers`` Wan T2V DiT blocks (self-attention, text cross-attention, FFN)."""
    wan = wan_dit_module()
    return nn.ModuleList([
        wan.DiTBlock(False, config.dim, config.num_heads, config.ffn_dim, config.eps)
        for _ in range(config.num_layers)
    ])


def wan_head(config: "DiTConfig") -> nn.Module:
    """Wan's output head: norm, per-frame shift/scale (``head.modulation``), linear."""
    return wan_dit_module().Head(config.dim, config.latent_channels, config.patch_size,
                                 config.eps)


def wan_plain_model(config: "DiTConfig") -> nn.Module:
    """diffsynth's plain Wan T2V ``WanModel`` of this size (16 input channels).

    Used as the reference in equivalence tests and benchmarks, never in our forward.
    """
    return wan_dit_module().WanModel(
        dim=config.dim, in_dim=config.latent_channels, ffn_dim=config.ffn_dim,
        out_dim=config.latent_channels, text_dim=config.text_dim, freq_dim=config.freq_dim,
        eps=config.eps, patch_size=config.patch_size, num_heads=config.num_heads,
        num_layers=config.num_layers, has_image_input=False)


def wan_reference_forward(model: nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                          context: torch.Tensor) -> torch.Tensor:
    """diffsynth's own Wan forward (``model_fn_wan_video``) on ``latents (B,16,F,h,w)``."""
    from diffsynth.pipelines.wan_video import model_fn_wan_video
    return model_fn_wan_video(dit=model, latents=latents, timestep=timestep, context=context)


def wan_vae_model(config: "VAEConfig") -> nn.Module:
    """diffsynth's Wan video VAE network (``VideoVAE_``) at ``config.dim`` width; its state
    dict uses the official ``Wan2.1_VAE.pth`` key names."""
    try:
        from diffsynth.models.wan_video_vae import VideoVAE_
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("FactorPortrait needs diffsynth for the Wan VAE: "
                          "pip install 'diffsynth>=2.1,<2.2'") from error
    return VideoVAE_(dim=config.dim, z_dim=config.z_dim, dim_mult=list(config.dim_mult),
                     num_res_blocks=config.num_res_blocks,
                     temperal_downsample=list(config.temporal_downsample))


def wan_text_encoder(tokenizer_dir: str | Path, context_length: int
                     ) -> tuple[nn.Module, object]:
    """Wan's umT5-XXL encoder (random init; load its weights after) and its tokenizer from a
    local ``google/umt5-xxl`` folder, padded/truncated to ``context_length`` tokens."""
    try:
        from diffsynth.models.wan_video_text_encoder import HuggingfaceTokenizer, WanTextEncoder
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("the umT5 text encoder needs diffsynth: pip install "
                          "'diffsynth>=2.1,<2.2'") from error
    tokenizer = HuggingfaceTokenizer(name=str(tokenizer_dir), seq_len=context_length,
                                     clean="whitespace")
    return WanTextEncoder(), tokenizer


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_heads: int
              ) -> torch.Tensor:
    """The one attention dispatcher (diffsynth's: flash-attention where installed, PyTorch
    SDPA otherwise): ``q (B, Lq, H·D)``, ``k, v (B, Lk, H·D)`` -> ``(B, Lq, H·D)``."""
    return wan_dit_module().flash_attention(q, k, v, num_heads)


def timestep_embedding(freq_dim: int, timestep: torch.Tensor) -> torch.Tensor:
    """Wan's sinusoidal embedding of ``timestep (B,)`` -> ``(B, freq_dim)`` (cos, sin)."""
    return wan_dit_module().sinusoidal_embedding_1d(freq_dim, timestep)


@functools.cache
def _rope_table(head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return wan_dit_module().precompute_freqs_cis_3d(head_dim)


def rope_frequencies(head_dim: int, frames: int, height: int, width: int,
                     device: torch.device) -> torch.Tensor:
    """Wan's 3D RoPE for a ``frames x height x width`` token grid -> ``(L, 1, head_dim/2)``.

    Complex128, laid out like diffsynth's forward so its attention applies it unchanged.
    """
    f_freqs, h_freqs, w_freqs = _rope_table(head_dim)
    grid = (frames, height, width)
    freqs = torch.cat([
        f_freqs[:frames].view(frames, 1, 1, -1).expand(*grid, -1),
        h_freqs[:height].view(1, height, 1, -1).expand(*grid, -1),
        w_freqs[:width].view(1, 1, width, -1).expand(*grid, -1),
    ], dim=-1)
    return freqs.reshape(frames * height * width, 1, -1).to(device)


# --------------------------------------------------------------------------- weight files


def resolve_weight_files(path: str | Path) -> list[Path]:
    """The safetensors files of a checkpoint: one file, a ``*.safetensors.index.json`` of
    shards, or a directory holding either."""
    path = Path(path)
    if path.is_dir():
        indices = sorted(path.glob("*.safetensors.index.json"))
        if indices:
            return resolve_weight_files(indices[0])
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise FileNotFoundError(f"no *.safetensors files or *.safetensors.index.json in "
                                    f"{path}")
        return files
    if not path.exists():
        raise FileNotFoundError(f"weights file {path} does not exist")
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as error:
            raise ValueError(f"{path} is not a safetensors index (expected JSON with a "
                             f"'weight_map' of tensor name -> shard file)") from error
        shards = [path.parent / name for name in sorted(set(weight_map.values()))]
        missing = [str(shard) for shard in shards if not shard.exists()]
        if missing:
            raise FileNotFoundError(f"{path} lists shards that do not exist: {missing}")
        return shards
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: expected a .safetensors file or a *.safetensors.index.json "
                         f"(pickled .pth/.bin files are not loaded)")
    return [path]
