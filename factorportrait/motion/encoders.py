"""The motion trainer's appearance and pose encoders (DeX §3.2, Fig. 2a).

- :class:`AppearanceEncoder`: source image ``(B, 3, S, S)`` -> 2D strided convolutions ->
  channels reshaped to depth -> 3D residual blocks -> feature volume ``(B, C, D, h, w)``
  (MegaPortraits / face-vid2vid style, "instantiated by 2D and 3D CNNs").
- :class:`PoseEncoder`: pose input ``(B, 3, S, S)`` -> a small ConvNeXt -> RTS -> ``P (B, 3, 4)``
  (:func:`~factorportrait.motion.geometry.rts_pose`).

The expression encoder is :class:`factorportrait.models.expression_encoder.ExpressionEncoder`
(a ResNet on the fixed face crop, ``code_dim`` 512 as in the paper), so a trained one saves
and loads like the library's own expression encoder.
"""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from factorportrait.motion.config import MotionTrainerConfig
from factorportrait.motion.geometry import rotation_6d_to_matrix, rts_pose

IDENTITY_6D = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
RTS_OUTPUTS = 9  # 6D rotation, (t_u, t_v), log s


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 8, dividing ``channels``."""
    return next(g for g in (8, 4, 2, 1) if channels % g == 0)


class DownBlock2d(nn.Module):
    """``(B, C_in, H, W)`` -> conv 3×3 stride 2 -> GroupNorm -> ReLU -> ``(B, C_out, H/2, W/2)``."""

    def __init__(self, channels_in: int, channels_out: int):
        super().__init__()
        self.conv = nn.Conv2d(channels_in, channels_out, 3, stride=2, padding=1)
        self.norm = nn.GroupNorm(_groups(channels_out), channels_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation 3D residual block ``(B, C, D, H, W)`` -> same shape:
    ``x + conv(relu(norm(conv(relu(norm(x))))))`` with 3×3×3 convolutions."""

    def __init__(self, channels: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(channels), channels)
        self.conv1 = nn.Conv3d(channels, channels, 3, padding=1)
        self.norm2 = nn.GroupNorm(_groups(channels), channels)
        self.conv2 = nn.Conv3d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.conv1(F.relu(self.norm1(x)))
        return x + self.conv2(F.relu(self.norm2(y)))


class AppearanceEncoder(nn.Module):
    """Source image ``(B, 3, S, S)`` in [-1, 1] -> feature volume ``(B, C, D, h, w)``,
    ``h = w = S / 2**len(appearance_widths)``, ``C = volume_channels``, ``D = volume_depth``."""

    def __init__(self, config: MotionTrainerConfig):
        super().__init__()
        self.channels, self.depth = config.volume_channels, config.volume_depth
        widths = (3, *config.appearance_widths)
        self.down = nn.Sequential(*[DownBlock2d(a, b) for a, b in itertools.pairwise(widths)])
        self.to_volume = nn.Conv2d(widths[-1], self.channels * self.depth, 1)
        self.blocks = nn.Sequential(*[ResBlock3d(self.channels)
                                      for _ in range(config.volume_blocks)])

    def forward(self, source: Tensor) -> Tensor:
        features = self.to_volume(self.down(source))  # (B, C·D, h, w)
        batch, _, height, width = features.shape
        volume = features.view(batch, self.channels, self.depth, height, width)
        return self.blocks(volume)  # (B, C, D, h, w)


class ChannelsLastLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of ``(B, C, H, W)`` (ConvNeXt's ``channels_first`` norm)."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    """ConvNeXt block (Liu et al. 2022) ``(B, C, H, W)`` -> same shape: depthwise 7×7 conv ->
    LayerNorm -> Linear C→4C -> GELU -> Linear 4C→C -> layer scale, plus the input."""

    def __init__(self, channels: int, layer_scale: float = 1e-6):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels)
        self.expand = nn.Linear(channels, 4 * channels)
        self.project = nn.Linear(4 * channels, channels)
        self.gamma = nn.Parameter(torch.full((channels,), layer_scale))

    def forward(self, x: Tensor) -> Tensor:
        y = self.depthwise(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.project(F.gelu(self.expand(self.norm(y)))) * self.gamma
        return x + y.permute(0, 3, 1, 2)


class PoseEncoder(nn.Module):
    """Pose input ``(B, 3, S, S)`` in [-1, 1] (eyes and mouth masked,
    :func:`~factorportrait.motion.augment.mask_eyes_and_mouth`) -> RTS pose ``P (B, 3, 4)``.

    ConvNeXt: a 4×4 stride-4 patchify stem + LayerNorm, stages of :class:`ConvNeXtBlock`
    separated by LayerNorm + 2×2 stride-2 convolutions, global average pool, LayerNorm and a
    linear head of 9 outputs: a 6D rotation (:func:`rotation_6d_to_matrix`), ``(t_u, t_v)`` and
    ``log s``. The head's bias is the identity pose (R = I, t = 0, s = 1) and its weights are
    small (ConvNeXt's 0.02 head init), so a fresh encoder predicts nearly identical poses and
    the warp starts close to the identity.
    """

    def __init__(self, config: MotionTrainerConfig):
        super().__init__()
        widths = config.pose_widths
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 4, stride=4),
                                  ChannelsLastLayerNorm(widths[0]))
        stages = []
        for index, (width, count) in enumerate(zip(widths, config.pose_blocks)):
            layers: list[nn.Module] = []
            if index:
                layers += [ChannelsLastLayerNorm(widths[index - 1]),
                           nn.Conv2d(widths[index - 1], width, 2, stride=2)]
            layers += [ConvNeXtBlock(width) for _ in range(count)]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(widths[-1])
        self.head = nn.Linear(widths[-1], RTS_OUTPUTS)
        nn.init.trunc_normal_(self.head.weight, std=0.02)
        with torch.no_grad():
            self.head.bias.copy_(torch.tensor([*IDENTITY_6D, 0.0, 0.0, 0.0]))

    def rts(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, 3, S, S)`` -> rotation ``(B, 3, 3)``, translation ``(B, 2)``, log-scale
        ``(B,)``."""
        features = self.stages(self.stem(images)).mean(dim=(2, 3))  # (B, C)
        out = self.head(self.norm(features))  # (B, 9)
        return rotation_6d_to_matrix(out[:, :6]), out[:, 6:8], out[:, 8]

    def forward(self, images: Tensor) -> Tensor:
        return rts_pose(*self.rts(images))  # (B, 3, 4)
