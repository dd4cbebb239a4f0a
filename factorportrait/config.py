"""Frozen model configurations with presets.

`DiTConfig` keeps Wan 2.1's field names (``dim, ffn_dim, freq_dim, text_dim, num_heads,
num_layers, patch_size, eps``) so a preset reads like the official model card, and adds the
sizes of FactorPortrait's conditions (FactorPortrait §4.2, Fig. 3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DiTConfig:
    """Architecture of a FactorPortrait DiT (a Wan 2.1 T2V DiT plus condition modules).

    Wan fields:
        dim: transformer width.
        ffn_dim: hidden width of each block's feed-forward network.
        freq_dim: size of the sinusoidal timestep embedding.
        text_dim: width of the text context fed to cross-attention (umT5-XXL: 4096).
        num_heads: attention heads; ``dim / num_heads`` must split into Wan's 3D RoPE.
        num_layers: number of DiT blocks.
        patch_size: (t, h, w) patch of the latent video.
        eps: epsilon of the layer and RMS norms.
        latent_channels: channels of a Wan VAE latent (16).

    FactorPortrait conditions:
        ray_channels: Plücker channels per latent frame (4 video frames x 6 = 24).
        normal_channels: channels of the VAE-encoded normal-map video (16).
        expression_dim: size of one per-frame expression code (128).
        expression_width: width C of the expression controller's self-attention layers.
        expression_heads: heads of those layers.
        expression_layers: number of those layers (the paper uses 2).
        context_length: tokens of the stored null text context (Wan pads umT5 to 512).
    """

    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    freq_dim: int = 256
    text_dim: int = 4096
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    latent_channels: int = 16
    ray_channels: int = 24
    normal_channels: int = 16
    expression_dim: int = 128
    expression_width: int = 512
    expression_heads: int = 8
    expression_layers: int = 2
    context_length: int = 512

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        positive = ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim",
                    "latent_channels", "ray_channels", "normal_channels", "expression_dim",
                    "expression_width", "expression_heads", "expression_layers",
                    "context_length")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"DiTConfig.{name} must be a positive integer, got {value!r}")
        if len(self.patch_size) != 3 or min(self.patch_size) <= 0:
            raise ValueError(f"DiTConfig.patch_size must be 3 positive integers (t, h, w), "
                             f"got {self.patch_size!r}")
        if self.patch_size[0] != 1:
            raise ValueError(f"DiTConfig.patch_size must have a temporal patch of 1 (conditions "
                             f"are per latent frame), got {self.patch_size!r}")
        if not (0 < self.eps < 1):
            raise ValueError(f"DiTConfig.eps must be in (0, 1), got {self.eps!r}")
        if self.freq_dim % 2:
            raise ValueError(f"DiTConfig.freq_dim must be even, got {self.freq_dim}")
        if self.dim % self.num_heads:
            raise ValueError(f"DiTConfig.num_heads ({self.num_heads}) must divide "
                             f"DiTConfig.dim ({self.dim})")
        head_dim = self.dim // self.num_heads
        # Wan's 3D RoPE gives the (h, w) axes head_dim // 3 dims each and the rest to time;
        # every part must be even to form complex pairs (head_dim 32, 96, 128 work; 16, 64 fail).
        if head_dim % 2 or (head_dim // 3) % 2:
            raise ValueError(f"DiTConfig.num_heads: head_dim = dim / num_heads = {head_dim} "
                             f"cannot be split by Wan's 3D RoPE; head_dim // 3 and head_dim "
                             f"must be even (e.g. 32, 96, 128)")
        if self.ray_channels != 6 * 4 * self.patch_size[0]:
            raise ValueError(f"DiTConfig.ray_channels must be 24 (4 video frames x 6 Plücker "
                             f"channels per latent frame), got {self.ray_channels}")
        if self.expression_width % self.expression_heads:
            raise ValueError(f"DiTConfig.expression_heads ({self.expression_heads}) must divide "
                             f"DiTConfig.expression_width ({self.expression_width})")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def in_channels(self) -> int:
        """Channels entering the patch embedding: latent | reference | normals | rays (72)."""
        return 2 * self.latent_channels + self.normal_channels + self.ray_channels

    @classmethod
    def tiny(cls, **overrides: Any) -> "DiTConfig":
        """A CPU-sized model for tests (about 0.2M parameters)."""
        base = dict(dim=64, ffn_dim=128, num_heads=2, num_layers=2, freq_dim=64, text_dim=32,
                    expression_width=32, expression_heads=2, context_length=8)
        return cls(**{**base, **overrides})

    @classmethod
    def wan_1_3b(cls, **overrides: Any) -> "DiTConfig":
        """Wan 2.1 T2V 1.3B (dim 1536, 30 layers)."""
        return cls(**{**dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30), **overrides})

    @classmethod
    def wan_14b(cls, **overrides: Any) -> "DiTConfig":
        """Wan 2.1 T2V 14B (dim 5120, 40 layers)."""
        return cls(**{**dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40,
                             expression_width=1024, expression_heads=16), **overrides})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "DiTConfig":
        """A preset by name: ``tiny``, ``wan_1_3b`` or ``wan_14b``."""
        presets = {"tiny": cls.tiny, "wan_1_3b": cls.wan_1_3b, "wan_14b": cls.wan_14b}
        if name not in presets:
            raise ValueError(f"unknown DiT preset {name!r}; choose one of {sorted(presets)}")
        return presets[name](**overrides)

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["patch_size"] = list(self.patch_size)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DiTConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"DiTConfig: unknown fields {unknown}; known fields are "
                             f"{sorted(known)}")
        return cls(**data)

    def describe(self) -> str:
        """A short name for messages: the matching preset, if any, else the sizes."""
        for name in ("tiny", "wan_1_3b", "wan_14b"):
            if self == DiTConfig.preset(name):
                return f"preset {name!r}"
        return (f"custom config (dim={self.dim}, ffn_dim={self.ffn_dim}, "
                f"num_heads={self.num_heads}, num_layers={self.num_layers})")
