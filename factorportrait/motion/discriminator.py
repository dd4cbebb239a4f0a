"""Multi-scale PatchGAN discriminator (pix2pixHD) of the motion trainer's GAN (DeX §3.2).

Scale ``k`` judges the image average-pooled ``k`` times by 2 with its own PatchGAN:
4×4 stride-2 convolutions (LeakyReLU 0.2; InstanceNorm after the first) for all widths but the
last, a 3×3 stride-1 convolution of the last width, and a 3×3 convolution to one logit per
patch. Every layer's activation is returned, for the feature-matching loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from factorportrait.motion.config import MotionTrainerConfig


class PatchGAN(nn.Module):
    """One scale: image ``(B, 3, H, W)`` -> activations, the last the logits
    ``(B, 1, H / 2**(n−1), W / 2**(n−1))``, ``n = len(widths)``."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for index, width in enumerate(widths):
            last = index == len(widths) - 1
            conv = (nn.Conv2d(channels, width, 3, padding=1) if last
                    else nn.Conv2d(channels, width, 4, stride=2, padding=1))
            norm = nn.Identity() if index == 0 else nn.InstanceNorm2d(width)
            layers.append(nn.Sequential(conv, norm, nn.LeakyReLU(0.2)))
            channels = width
        layers.append(nn.Conv2d(channels, 1, 3, padding=1))
        self.layers = nn.ModuleList(layers)

    def forward(self, image: Tensor) -> list[Tensor]:
        features, x = [], image
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features


class PatchDiscriminator(nn.Module):
    """Images ``(B, 3, S, S)`` in [-1, 1] -> per scale (finest first) the list of activations
    of its :class:`PatchGAN`; ``out[k][-1]`` are scale k's patch logits."""

    def __init__(self, config: MotionTrainerConfig):
        super().__init__()
        self.scales = nn.ModuleList(PatchGAN(config.discriminator_widths)
                                    for _ in range(config.discriminator_scales))

    def forward(self, images: Tensor) -> list[list[Tensor]]:
        outputs = []
        for index, discriminator in enumerate(self.scales):
            if index:
                images = F.avg_pool2d(images, 2)  # (B, 3, S / 2**k, S / 2**k)
            outputs.append(discriminator(images))
        return outputs
