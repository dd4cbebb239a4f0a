"""DeX-Portrait's conditioning paths in the DiT (DeX §3.3; FactorPortrait supp. §8.2 for C3).

- :class:`ReferenceWarp`: before chosen blocks, the reference frame's tokens are lifted to a
  feature volume (channels split into ``depth`` slices), warped by ``P_d P_s⁻¹`` to each
  generated frame's head pose with trilinear ``grid_sample``, flattened, projected by a
  zero-initialised linear layer and added to that frame's tokens (DeX Fig. 8).
- :class:`FrameCrossAttention`: each generated frame's tokens attend to that frame's own
  expression tokens (DeX / X-NeMo), zero-initialised output.
- :class:`ExpressionTokens`: codes ``(B, T, 128)`` -> 4 tokens per latent frame.
- :class:`LandmarkEncoder`: landmarks ``(B, T, N, 2)`` -> spatial and temporal attention ->
  ``4·N`` tokens per latent frame (FactorPortrait ablation C3).

Every output path starts at zero, so a fresh model equals Wan applied to ``[reference, z_t]``.
Frame 0 of the DiT (the reference) receives none of these.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from factorportrait.config import DiTConfig
from factorportrait.geometry.head_pose import (latent_frame_poses, relative_pose,
                                               to_homogeneous)
from factorportrait.models import backbone
from factorportrait.models.expression import ZeroLinear, frame_position_encoding

TOKENS_PER_LATENT_FRAME = 4  # video frames folded into one latent frame (the first is repeated)


def warp_features(features: torch.Tensor, transform: torch.Tensor, depth: int) -> torch.Tensor:
    """Warp 2D feature maps as 3D volumes by similarity transforms (DeX §3.3).

    Args:
        features: ``(N, C, H, W)``; channel ``c·depth + z`` is slice ``z`` of volume channel c.
        transform: ``(N, 3, 4)`` ``T = [sR | t]`` in normalised coordinates ``[u, v, z]`` ∈
            [−1, 1]³ (pixel and slice centres at ``(2i + 1)/n − 1``, u along W, v along H):
            the feature at ``x`` moves to ``T x``. ``t_u = 2k/W`` shifts by k pixels.
        depth: slices of the volume; must divide C.
    Returns:
        ``(N, C, H, W)`` in ``features``' dtype; outside the source volume is zero.
    """
    count, channels, height, width = features.shape
    if channels % depth:
        raise ValueError(f"warp_features: depth {depth} must divide the channels {channels}")
    if tuple(transform.shape) != (count, 3, 4):
        raise ValueError(f"warp_features: transform must be ({count}, 3, 4), got "
                         f"{tuple(transform.shape)}")
    volume = features.float().view(count, channels // depth, depth, height, width)
    with torch.autocast(volume.device.type, enabled=False):  # positions in fp32, not bf16
        # affine_grid maps output coordinates to the input coordinates they sample: T⁻¹.
        inverse = torch.linalg.inv(to_homogeneous(transform.float()))[:, :3]
        grid = F.affine_grid(inverse, list(volume.shape), align_corners=False)
        warped = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros",
                               align_corners=False)  # trilinear on 5D input
    return warped.view(count, channels, height, width).to(features.dtype)


class ReferenceWarp(nn.Module):
    """One zero-initialised projection per chosen block (``projections.<block>``)."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        self.depth = config.reference_warp_depth
        self.projections = nn.ModuleDict({str(block): ZeroLinear(config.dim, config.dim)
                                          for block in config.reference_warp_blocks})

    def __contains__(self, block: int) -> bool:
        return str(block) in self.projections

    @staticmethod
    def frame_transforms(head_pose: torch.Tensor) -> torch.Tensor:
        """``head_pose (B, 1+T, 3, 4)`` -> ``P_d P_s⁻¹`` per generated latent frame
        ``(B, F_lat, 3, 4)`` (:func:`~factorportrait.geometry.head_pose.latent_frame_poses`)."""
        with torch.autocast(head_pose.device.type, enabled=False):
            poses = latent_frame_poses(head_pose.float())
            return relative_pose(poses[:, :1], poses[:, 1:])

    def warp(self, reference: torch.Tensor, grid: tuple[int, int], transforms: torch.Tensor
             ) -> torch.Tensor:
        """The reference tokens warped to every generated frame.

        Args:
            reference: ``(B, S, D)`` tokens of DiT frame 0, ``S = h'·w'`` row-major.
            grid: ``(h', w')``.
            transforms: ``(B, F, 3, 4)`` from :meth:`frame_transforms`.
        Returns:
            ``(B, F, S, D)``, one batched ``grid_sample`` over all frames.
        """
        batch, tokens, dim = reference.shape
        frames = transforms.shape[1]
        maps = reference.transpose(1, 2).reshape(batch, 1, dim, *grid)
        maps = maps.expand(-1, frames, -1, -1, -1).reshape(batch * frames, dim, *grid)
        warped = warp_features(maps, transforms.reshape(batch * frames, 3, 4), self.depth)
        return warped.view(batch, frames, dim, tokens).transpose(2, 3)

    def project(self, block: int, warped: torch.Tensor) -> torch.Tensor:
        return self.projections[str(block)](warped)


class FrameCrossAttention(nn.Module):
    """Per-frame cross attention: queries ``(B, F, S, D)`` of frame i attend to keys
    ``(B, F, K, D)`` of frame i only. Wan's cross-attention layout (LayerNorm on the queries'
    input, RMS-normed q and k) with a zero-initialised output projection."""

    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.norm = nn.LayerNorm(dim, eps=eps)
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.norm_q = nn.RMSNorm(dim, eps=eps)
        self.norm_k = nn.RMSNorm(dim, eps=eps)
        self.o = ZeroLinear(dim, dim)

    def forward(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``x (B, F, S, D)``, ``tokens (B, F, K, D)`` -> the update ``(B, F, S, D)``."""
        batch, frames, length, dim = x.shape
        queries = self.norm_q(self.q(self.norm(x))).reshape(batch * frames, length, dim)
        keys = tokens.reshape(batch * frames, tokens.shape[2], dim)
        out = backbone.attention(queries, self.norm_k(self.k(keys)), self.v(keys),
                                 self.num_heads)
        return self.o(out).view(batch, frames, length, dim)


def _encoder_layer(width: int, heads: int) -> nn.TransformerEncoderLayer:
    return nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                      activation="gelu", batch_first=True, norm_first=True)


def chunk_tokens(per_frame: torch.Tensor) -> torch.Tensor:
    """Per-video-frame tokens ``(B, T, K, D)`` -> per generated latent frame
    ``(B, F_lat, 4·K, D)``: latent frame 0 holds video frame 0 (repeated 4×, which leaves
    attention unchanged), latent frame j the video frames 4j−3 … 4j."""
    batch, frames, count, dim = per_frame.shape
    if (frames - 1) % TOKENS_PER_LATENT_FRAME:
        raise ValueError(f"expression tokens must cover T = 4k+1 frames, got T={frames}")
    first = per_frame[:, :1].expand(-1, TOKENS_PER_LATENT_FRAME, -1, -1)
    chunked = torch.cat([first, per_frame[:, 1:]], dim=1)  # (B, 4·F_lat, K, D)
    return chunked.reshape(batch, -1, TOKENS_PER_LATENT_FRAME * count, dim)


class ExpressionTokens(nn.Module):
    """Codes ``(B, T, 128)`` -> two self-attention layers over time -> ``(B, F_lat, 4, dim)``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        width = config.expression_width
        self.input = nn.Linear(config.expression_dim, width)
        self.layers = nn.ModuleList([_encoder_layer(width, config.expression_heads)
                                     for _ in range(config.expression_layers)])
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, config.dim)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        x = self.input(codes)
        x = x + frame_position_encoding(codes.shape[1], x.shape[-1], x.device, x.dtype)
        for layer in self.layers:
            x = layer(x)
        return chunk_tokens(self.output(self.norm(x))[:, :, None])


class LandmarkEncoder(nn.Module):
    """Landmarks ``(B, T, N, 2)`` -> ``landmark_layers`` × (spatial attention over the N points
    of a frame, temporal attention over the T frames of a point) -> ``(B, F_lat, 4·N, dim)``."""

    def __init__(self, config: DiTConfig):
        super().__init__()
        width, heads = config.expression_width, config.expression_heads
        self.points = config.landmark_points
        self.input = nn.Linear(2, width)
        self.point_embedding = nn.Parameter(torch.randn(config.landmark_points, width) * 0.02)
        self.spatial = nn.ModuleList([_encoder_layer(width, heads)
                                      for _ in range(config.landmark_layers)])
        self.temporal = nn.ModuleList([_encoder_layer(width, heads)
                                       for _ in range(config.landmark_layers)])
        self.norm = nn.LayerNorm(width)
        self.output = nn.Linear(width, config.dim)

    def forward(self, landmarks: torch.Tensor) -> torch.Tensor:
        batch, frames, points, _ = landmarks.shape
        if points != self.points:
            raise ValueError(f"landmarks have {points} points per frame; this model was built "
                             f"for landmark_points = {self.points}")
        x = self.input(landmarks) + self.point_embedding  # (B, T, N, C)
        width = x.shape[-1]
        time = frame_position_encoding(frames, width, x.device, x.dtype)
        x = x + time[None, :, None]
        for spatial, temporal in zip(self.spatial, self.temporal):
            x = spatial(x.reshape(batch * frames, points, width)).view(batch, frames, points,
                                                                       width)
            x = x.transpose(1, 2).reshape(batch * points, frames, width)
            x = temporal(x).view(batch, points, frames, width).transpose(1, 2)
        return chunk_tokens(self.output(self.norm(x)))
