"""The Wan 2.1 video VAE: ``(B,3,F,H,W)`` pixels <-> ``(B,16,F_lat,H/8,W/8)`` normalised latents.

Wraps diffsynth's Wan VAE code (causal 3D convolutions, 4x temporal and 8x spatial
compression, 16 latent channels) at a configurable width: the full Wan 2.1 VAE (width 96,
loads the official ``Wan2.1_VAE.pth``) or a reduced width trained here for CPU demos and tests.
Latents are normalised per channel with the VAE's latent mean/std (Wan's constants for the
official weights). The same wrapper encodes RGB videos, normal-map videos and the reference
image (as a 1-frame video).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from factorportrait.io.atomic import atomic_output, atomic_write_bytes
from factorportrait.models import backbone

WAN_LATENT_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                   0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN_LATENT_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                  3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
CONFIG_FILE, WEIGHTS_FILE, FORMAT = "vae_config.json", "vae.safetensors", "factorportrait-vae/1"


@dataclass(frozen=True)
class VAEConfig:
    """Architecture of a Wan VAE. ``dim`` is the base width (Wan 2.1: 96)."""

    dim: int = 96
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    latent_mean: tuple[float, ...] = WAN_LATENT_MEAN
    latent_std: tuple[float, ...] = WAN_LATENT_STD

    def __post_init__(self) -> None:
        for name in ("dim_mult", "temporal_downsample", "latent_mean", "latent_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.dim <= 0 or self.num_res_blocks <= 0:
            raise ValueError(f"VAEConfig.dim and num_res_blocks must be positive, got "
                             f"{self.dim}, {self.num_res_blocks}")
        if self.z_dim != 16:
            raise ValueError(f"VAEConfig.z_dim must be 16 (the DiT's latent channels), got "
                             f"{self.z_dim}")
        if len(self.dim_mult) != 4 or list(self.temporal_downsample) != [False, True, True]:
            raise ValueError("VAEConfig.dim_mult must have 4 entries and temporal_downsample "
                             "must be (False, True, True): 8x spatial, 4x temporal")
        if len(self.latent_mean) != 16 or len(self.latent_std) != 16:
            raise ValueError("VAEConfig.latent_mean and latent_std need 16 values each")
        if min(self.latent_std) <= 0:
            raise ValueError("VAEConfig.latent_std must be positive")

    @classmethod
    def wan_2_1(cls) -> "VAEConfig":
        """The official Wan 2.1 VAE (127M parameters)."""
        return cls()

    @classmethod
    def small(cls, dim: int = 32) -> "VAEConfig":
        """A reduced-width Wan VAE for CPU training and demos (width 32: about 14M)."""
        return cls(dim=dim)

    def to_dict(self) -> dict[str, Any]:
        return {key: list(value) if isinstance(value, tuple) else value
                for key, value in dataclasses.asdict(self).items()}


class WanVAE(nn.Module):
    """Wan video VAE with normalised latents. Frozen (``requires_grad=False``) by default."""

    def __init__(self, config: VAEConfig | None = None):
        super().__init__()
        self.config = config or VAEConfig()
        self.model = backbone.wan_vae_model(self.config)
        self.register_buffer("latent_mean", torch.tensor(self.config.latent_mean))
        self.register_buffer("latent_std", torch.tensor(self.config.latent_std))
        self.requires_grad_(False).eval()

    # ------------------------------------------------------------------ encode / decode

    def encode(self, video: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """``(B,3,F,H,W)`` in [-1, 1], ``F = 4k+1``, ``H, W`` multiples of 8 ->
        ``(B,16,F_lat,H/8,W/8)`` normalised latents (the posterior mean).

        ``tile``: spatial tile size in pixels (multiple of 8) to bound memory; tiles overlap
        by a quarter and are blended linearly.
        """
        _check_video("video", video, channels=3, spatial_multiple=8)
        if (video.shape[2] - 1) % 4:
            raise ValueError(f"video must have F = 4k+1 frames, got F={video.shape[2]}")
        dtype = next(self.model.parameters()).dtype
        video = video.to(dtype)
        return _tiled(self._encode_tile, video, tile, scale=1 / 8)

    def decode(self, latents: torch.Tensor, tile: int | None = None) -> torch.Tensor:
        """``(B,16,F_lat,h,w)`` normalised latents -> ``(B,3,4·(F_lat−1)+1,8h,8w)`` in [-1, 1].

        ``tile``: spatial tile size in latent pixels.
        """
        _check_video("latents", latents, channels=16, spatial_multiple=1)
        dtype = next(self.model.parameters()).dtype
        return _tiled(self._decode_tile, latents.to(dtype), tile, scale=8).clamp(-1, 1)

    def _scale(self) -> list[torch.Tensor]:
        return [self.latent_mean, 1.0 / self.latent_std]

    def _encode_tile(self, video: torch.Tensor) -> torch.Tensor:
        return self.model.encode(video, self._scale())

    def _decode_tile(self, latents: torch.Tensor) -> torch.Tensor:
        return self.model.decode(latents, self._scale())

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """``(B,3,H,W)`` in [-1, 1] -> ``(B,16,1,H/8,W/8)``: the image as a 1-frame video."""
        return self.encode(image.unsqueeze(2))

    # ------------------------------------------------------------------ weights

    def weights_hash(self) -> str:
        """SHA-256 over config and weights: identifies this VAE (latent caches store it)."""
        digest = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for name, tensor in sorted(self.model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        return digest.hexdigest()[:16]

    @classmethod
    def from_wan(cls, path: str | os.PathLike, config: VAEConfig | None = None) -> "WanVAE":
        """Load official Wan 2.1 VAE weights (``Wan2.1_VAE.pth`` through
        ``torch.load(weights_only=True)``, or a safetensors file) with official key names."""
        from factorportrait.io.tensors import read_safetensors, read_torch_weights

        path = Path(path)
        if path.suffix == ".safetensors":
            state = read_safetensors(path, "VAE weights")
        else:
            state = read_torch_weights(path, "VAE weights")
        vae = cls(config)
        expected = {k: tuple(v.shape) for k, v in vae.model.state_dict().items()}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        wrong = sorted(k for k in set(expected) & set(state)
                       if tuple(state[k].shape) != expected[k])
        if missing or unexpected or wrong:
            raise ValueError(f"{path} does not match a Wan VAE of width {vae.config.dim}: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}, wrong shape "
                             f"{wrong[:8]} (official Wan 2.1 VAE: VAEConfig.wan_2_1())")
        vae.model.load_state_dict(state)
        return vae

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``vae_config.json`` + ``vae.safetensors`` into ``directory`` (atomic files)."""
        from safetensors.torch import save_file
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {k: v.contiguous() for k, v in self.model.state_dict().items()}
        with atomic_output(directory / WEIGHTS_FILE) as tmp:
            save_file(state, str(tmp), metadata={"format": FORMAT})
        config = json.dumps({"format": FORMAT, "config": self.config.to_dict()}, indent=2)
        atomic_write_bytes(directory / CONFIG_FILE, config.encode())

    @classmethod
    def load(cls, path: str | os.PathLike, config: VAEConfig | None = None) -> "WanVAE":
        """A folder written by :meth:`save_pretrained`, or an official weights file read by
        :meth:`from_wan` with ``config`` (default: the full Wan 2.1 VAE)."""
        path = Path(path)
        if path.is_dir():
            return cls.from_pretrained(path)
        return cls.from_wan(path, config or VAEConfig.wan_2_1())

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "WanVAE":
        """Load a directory written by :meth:`save_pretrained`."""
        from factorportrait.io.tensors import read_safetensors
        directory = Path(directory)
        if not (directory / CONFIG_FILE).exists() or not (directory / WEIGHTS_FILE).exists():
            raise FileNotFoundError(f"{directory} is not a FactorPortrait VAE checkpoint: "
                                    f"expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            data = json.loads((directory / CONFIG_FILE).read_text())
            config = VAEConfig(**data["config"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{directory / CONFIG_FILE} is not a VAE config: {err}") from err
        state = read_safetensors(directory / WEIGHTS_FILE, "VAE weights")
        vae = cls(config)
        try:
            vae.model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{directory / WEIGHTS_FILE} does not match {CONFIG_FILE}: "
                             f"{str(err).splitlines()[0]}") from err
        return vae


def _check_video(name: str, tensor: torch.Tensor, channels: int, spatial_multiple: int) -> None:
    if not isinstance(tensor, torch.Tensor) or tensor.ndim != 5 or tensor.shape[1] != channels:
        shape = tuple(tensor.shape) if isinstance(tensor, torch.Tensor) else type(tensor).__name__
        raise ValueError(f"{name} must be a (B,{channels},F,H,W) tensor, got {shape}")
    if tensor.shape[3] % spatial_multiple or tensor.shape[4] % spatial_multiple:
        raise ValueError(f"{name} height and width must be multiples of {spatial_multiple}, "
                         f"got {tuple(tensor.shape[3:])}")


def _blend_ramp(length: int, overlap: int, first: bool, last: bool) -> torch.Tensor:
    """1D weights: linear ramps of ``overlap`` samples at inner tile borders, 1 elsewhere."""
    ramp = torch.ones(length)
    if overlap > 0:
        edge = (torch.arange(overlap) + 1) / (overlap + 1)
        if not first:
            ramp[:overlap] = edge
        if not last:
            ramp[-overlap:] = edge.flip(0)
    return ramp


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    starts = list(range(0, max(size - tile, 0) + 1, stride))
    if starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def _tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int | None,
           scale: float) -> torch.Tensor:
    """Apply a spatially equivariant ``fn`` (output size = input size × scale) tile by tile,
    blending overlaps with weights that sum to 1. ``tile=None`` runs it whole."""
    height, width = x.shape[-2:]
    if tile is None or (tile >= height and tile >= width):
        return fn(x)
    unit = round(1 / scale) if scale < 1 else 1
    if tile % unit:
        raise ValueError(f"tile must be a multiple of {unit}, got {tile}")
    stride = max(unit, (tile * 3 // 4) // unit * unit)
    output = weight = None
    rows, cols = _tile_starts(height, min(tile, height), stride), _tile_starts(
        width, min(tile, width), stride)
    for top in rows:
        for left in cols:
            piece = fn(x[..., top:top + tile, left:left + tile])
            ph, pw = piece.shape[-2:]
            overlap = round((min(tile, height) - stride) * scale)
            mask = (_blend_ramp(ph, overlap, top == rows[0], top == rows[-1])[:, None]
                    * _blend_ramp(pw, overlap, left == cols[0], left == cols[-1])[None])
            mask = mask.to(piece)
            if output is None:
                shape = (*piece.shape[:-2], round(height * scale), round(width * scale))
                output = piece.new_zeros(shape)
                weight = piece.new_zeros(shape[-2:])
            y, x0 = round(top * scale), round(left * scale)
            output[..., y:y + ph, x0:x0 + pw] += piece * mask
            weight[y:y + ph, x0:x0 + pw] += mask
    return output / weight
