"""The expression-conditioned decoder (DeX §3.2): a StyleGAN2-like generator that decodes the
warped appearance volume into an image while injecting the expression code through AdaIN.

    volume (B, C, D, h, w) -> depth folded into channels (B, C·D, h, w) -> 3×3 conv
      -> [styled conv] at h -> n × [×2 upsample, styled conv, styled conv] -> (B, 3, S, S)

StyleGAN2's skip architecture: every resolution has a 1×1 ``to_rgb`` whose output is added to
the upsampled RGB of the previous one; ``tanh`` puts the image in [-1, 1]. The code passes a
mapping MLP (StyleGAN's ``z -> w``) and every styled convolution has its own AdaIN affine.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorportrait.motion.config import MotionTrainerConfig

ADAIN_EPS = 1e-5


class AdaIN(nn.Module):
    """Adaptive instance normalisation (Huang & Belongie 2017) of ``(B, C, H, W)`` by a code
    ``(B, K)``: ``scale · (x − μ(x)) / σ(x) + bias`` with per-sample, per-channel ``μ, σ``
    over ``H, W`` and ``(scale, bias) = affine(code)`` ``(B, C)`` each, so the output's
    channel means are ``bias`` and its standard deviations ``|scale|``.
    The affine starts at ``scale = 1 + A·code``, ``bias = B·code`` with small ``A, B``."""

    def __init__(self, channels: int, code_dim: int):
        super().__init__()
        self.affine = nn.Linear(code_dim, 2 * channels)
        nn.init.normal_(self.affine.weight, std=1 / code_dim ** 0.5 / 4)
        with torch.no_grad():
            self.affine.bias.copy_(torch.cat([torch.ones(channels), torch.zeros(channels)]))

    def style(self, code: Tensor) -> tuple[Tensor, Tensor]:
        """``code (B, K)`` -> ``scale (B, C)``, ``bias (B, C)``."""
        scale, bias = self.affine(code).chunk(2, dim=1)
        return scale, bias

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        scale, bias = self.style(code)
        normalised = F.instance_norm(x, eps=ADAIN_EPS)  # (B, C, H, W), per-channel 0 / 1
        return scale[:, :, None, None] * normalised + bias[:, :, None, None]


class StyledConv(nn.Module):
    """3×3 conv -> AdaIN(code) -> LeakyReLU(0.2): ``(B, C_in, H, W)`` -> ``(B, C_out, H, W)``."""

    def __init__(self, channels_in: int, channels_out: int, code_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, padding=1)
        self.adain = AdaIN(channels_out, code_dim)

    def forward(self, x: Tensor, code: Tensor) -> Tensor:
        return F.leaky_relu(self.adain(self.conv(x), code), 0.2)


class UpBlock(nn.Module):
    """×2 bilinear upsampling and two styled convolutions, plus this resolution's ``to_rgb``:
    ``x (B, C_in, H, W)``, ``rgb (B, 3, H, W)`` -> ``(B, C_out, 2H, 2W)``, ``(B, 3, 2H, 2W)``."""

    def __init__(self, channels_in: int, channels_out: int, code_dim: int):
        super().__init__()
        self.conv1 = StyledConv(channels_in, channels_out, code_dim)
        self.conv2 = StyledConv(channels_out, channels_out, code_dim)
        self.to_rgb = nn.Conv2d(channels_out, 3, 1)

    def forward(self, x: Tensor, rgb: Tensor, code: Tensor) -> tuple[Tensor, Tensor]:
        x = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        x = self.conv2(self.conv1(x, code), code)
        rgb = F.interpolate(rgb, scale_factor=2, mode="bilinear", align_corners=False)
        return x, rgb + self.to_rgb(x)


def mapping_network(code_dim: int, layers: int) -> nn.Module:
    """StyleGAN's mapping MLP ``(B, K)`` -> ``(B, K)``: ``layers`` × (Linear, LeakyReLU 0.2);
    0 layers = the identity."""
    blocks: list[nn.Module] = []
    for _ in range(layers):
        blocks += [nn.Linear(code_dim, code_dim), nn.LeakyReLU(0.2)]
    return nn.Sequential(*blocks)


class Decoder(nn.Module):
    """Warped volume ``(B, C, D, h, w)`` and expression code ``(B, K)`` -> image
    ``(B, 3, h·2**n, w·2**n)`` in [-1, 1], ``n = len(decoder_widths)``."""

    def __init__(self, config: MotionTrainerConfig):
        super().__init__()
        code_dim, widths = config.code_dim, config.decoder_widths
        self.mapping = mapping_network(code_dim, config.mapping_layers)
        self.input = nn.Conv2d(config.volume_channels * config.volume_depth, widths[0], 3,
                               padding=1)
        self.base = StyledConv(widths[0], widths[0], code_dim)
        self.base_rgb = nn.Conv2d(widths[0], 3, 1)
        self.blocks = nn.ModuleList(UpBlock(a, b, code_dim)
                                    for a, b in zip((widths[0], *widths), widths))

    def forward(self, volume: Tensor, code: Tensor) -> Tensor:
        batch, channels, depth, height, width = volume.shape
        style = self.mapping(code)  # (B, K)
        x = self.input(volume.reshape(batch, channels * depth, height, width))  # (B, W0, h, w)
        x = self.base(x, style)
        rgb = self.base_rgb(x)  # (B, 3, h, w)
        for block in self.blocks:
            x, rgb = block(x, rgb, style)
        return torch.tanh(rgb)  # (B, 3, S, S)
