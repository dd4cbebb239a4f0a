"""Expression controller (FactorPortrait §4.2, Eq. 1; DESIGN "Expression controller").

Codes ``(B, T, 128)`` → two self-attention layers → ``(B, T, C)`` → the first frame alone
(repeated to 4C) and the rest in chunks of 4 → ``(B, F_lat, 4C)`` → zero-initialised linear →
per-latent-frame offsets ``e_i`` of the DiT width, added to the timestep embedding:
``t_i = t + e_i``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from factorportrait.config import DiTConfig


def frame_position_encoding(frames: int, width: int, device: torch.device,
                            dtype: torch.dtype) -> torch.Tensor:
    """Fixed sinusoidal encoding of frame indices -> ``(frames, width)``.

    Self-attention alone is order-blind; the encoding lets the layers see temporal order.
    """
    half = width // 2
    position = torch.arange(frames, device=device, dtype=torch.float64)[:, None]
    scale = torch.exp(-math.log(10000.0) * torch.arange(half, device=device,
                                                        dtype=torch.float64) / half)
    angles = position * scale[None]
    encoding = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if width % 2:
        encoding = torch.cat([encoding, torch.zeros_like(encoding[:, :1])], dim=1)
    return encoding.to(dtype)


class ZeroLinear(nn.Linear):
    """A linear layer that starts at zero — zeroed in its own ``__init__``, so the zeros hold
    where parameters are partitioned as each module is built (``deepspeed.zero.Init``), which
    would miss a parent zeroing its child after the fact."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__(in_features, out_features)
        with torch.no_grad():
            self.weight.zero_()
            self.bias.zero_()


class ExpressionController(nn.Module):
    """Maps per-video-frame expression codes to per-latent-frame AdaLN offsets."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        width = config.expression_width
        self.input = nn.Linear(config.expression_dim, width)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(width, config.expression_heads, dim_feedforward=4 * width,
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(config.expression_layers)
        ])
        self.norm = nn.LayerNorm(width)
        self.output = ZeroLinear(4 * width, config.dim)  # every new path starts at zero

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        """``codes (B, T, 128)`` with ``T = 4·(F_lat−1)+1`` -> ``e (B, F_lat, dim)``."""
        batch, frames, _ = codes.shape
        if (frames - 1) % 4:
            raise ValueError(f"expression codes must cover T = 4k+1 frames, got T={frames}")
        x = self.input(codes)
        x = x + frame_position_encoding(frames, x.shape[-1], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)  # (B, T, C)
        first = x[:, :1].repeat(1, 1, 4)  # (B, 1, 4C): video frame 0 is latent frame 0 alone
        rest = x[:, 1:].reshape(batch, (frames - 1) // 4, 4 * x.shape[-1])  # (B, F_lat-1, 4C)
        return self.output(torch.cat([first, rest], dim=1))  # (B, F_lat, dim)
