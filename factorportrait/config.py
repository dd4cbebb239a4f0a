"""Frozen model configurations with presets.

`DiTConfig` keeps Wan 2.1's field names (``dim, ffn_dim, freq_dim, text_dim, num_heads,
num_layers, patch_size, eps``) so a preset reads like the official model card, and adds the
sizes of FactorPortrait's conditions (FactorPortrait §4.2, Fig. 3).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

EXPRESSION_INJECTIONS = ("adaln", "cross_attention", "both")
EXPRESSION_CONDITIONS = ("codes", "landmarks")
HEAD_RAY_CHANNELS = 24  # 4 video frames x (source 3 + driving 3) head-pose ray-map channels


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

    DeX-Portrait conditioning (docs/conditioning.md; every path starts at zero, so a fresh
    model still equals Wan):
        head_pose_rays: concatenate the head-pose ray maps (DeX Eq. 3, source and driving,
            24 channels per latent frame) after the Plücker rays in the patch embedding.
        reference_warp_blocks: blocks before which the reference frame's tokens, lifted to a
            volume, warped by ``P_d P_s⁻¹`` and projected, are added to each frame's tokens.
        reference_warp_depth: depth slices of that volume (must divide ``dim``).
        expression_injection: ``adaln`` (FactorPortrait), ``cross_attention`` (DeX: each frame's
            tokens attend to its own expression tokens) or ``both``.
        expression_condition: ``codes`` (128-d per frame) or ``landmarks`` (FactorPortrait C3:
            2D landmarks through spatial/temporal attention into cross attention).
        landmark_points: landmarks per frame for ``expression_condition="landmarks"``.
        landmark_layers: pairs of (spatial, temporal) attention layers of the landmark encoder.
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
    head_pose_rays: bool = False
    reference_warp_blocks: tuple[int, ...] = ()
    reference_warp_depth: int = 4
    expression_injection: str = "adaln"
    expression_condition: str = "codes"
    landmark_points: int = 478
    landmark_layers: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        object.__setattr__(self, "reference_warp_blocks",
                           tuple(self.reference_warp_blocks))
        positive = ("dim", "ffn_dim", "num_heads", "num_layers", "freq_dim", "text_dim",
                    "latent_channels", "ray_channels", "normal_channels", "expression_dim",
                    "expression_width", "expression_heads", "expression_layers",
                    "context_length", "reference_warp_depth", "landmark_points",
                    "landmark_layers")
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
        self._check_dex_fields()

    def _check_dex_fields(self) -> None:
        if not isinstance(self.head_pose_rays, bool):
            raise ValueError(f"DiTConfig.head_pose_rays must be true or false, got "
                             f"{self.head_pose_rays!r}")
        blocks = self.reference_warp_blocks
        bad = [b for b in blocks if isinstance(b, bool) or not isinstance(b, int)
               or not 0 <= b < self.num_layers]
        if bad or len(set(blocks)) != len(blocks):
            raise ValueError(f"DiTConfig.reference_warp_blocks must be distinct block indices in "
                             f"[0, {self.num_layers}), got {list(blocks)}")
        if self.dim % self.reference_warp_depth:
            raise ValueError(f"DiTConfig.reference_warp_depth ({self.reference_warp_depth}) must "
                             f"divide DiTConfig.dim ({self.dim})")
        if self.expression_injection not in EXPRESSION_INJECTIONS:
            raise ValueError(f"DiTConfig.expression_injection must be one of "
                             f"{list(EXPRESSION_INJECTIONS)}, got {self.expression_injection!r}")
        if self.expression_condition not in EXPRESSION_CONDITIONS:
            raise ValueError(f"DiTConfig.expression_condition must be one of "
                             f"{list(EXPRESSION_CONDITIONS)}, got {self.expression_condition!r}")
        if self.expression_condition == "landmarks" and self.expression_injection != \
                "cross_attention":
            raise ValueError("DiTConfig: expression_condition 'landmarks' enters through cross "
                             "attention only; set expression_injection: cross_attention")

    @property
    def uses_adaln_expression(self) -> bool:
        """Expression codes offset the timestep embedding (FactorPortrait Eq. 1)."""
        return self.expression_condition == "codes" and self.expression_injection != \
            "cross_attention"

    @property
    def uses_expression_attention(self) -> bool:
        """Each frame's tokens cross-attend to its expression (codes or landmark) tokens."""
        return self.expression_injection in ("cross_attention", "both")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def in_channels(self) -> int:
        """Channels entering the patch embedding: latent | reference | normals | rays (72)."""
        return (2 * self.latent_channels + self.normal_channels + self.ray_channels
                + (HEAD_RAY_CHANNELS if self.head_pose_rays else 0))

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
        data["reference_warp_blocks"] = list(self.reference_warp_blocks)
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
