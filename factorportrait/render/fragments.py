"""The rasteriser's output: the visible surface at every covered pixel.

Stored sparsely (one entry per covered pixel, ``P`` of them) because shading only touches
covered pixels; dense ``(F, H, W)`` views are computed on demand.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class Fragments:
    """Visible surface of ``F`` frames of ``H x W`` pixels.

    Attributes:
        size: ``(F, H, W)``.
        pixels: ``(P,)`` long flat indices ``(f * H + v) * W + u`` of the covered pixels,
            ascending.
        pixel_faces: ``(P,)`` long index into the shared faces ``(M, 3)``.
        pixel_barycentrics: ``(P, 3)`` perspective-correct barycentric weights of the face's
            three vertices (they sum to 1).
        pixel_depth: ``(P,)`` camera-space z of the surface (metres).
        pixel_front_facing: ``(P,)`` bool, the face's winding (``(v1 - v0) x (v2 - v0)``)
            points towards the camera.
    """

    size: tuple[int, int, int]
    pixels: torch.Tensor
    pixel_faces: torch.Tensor
    pixel_barycentrics: torch.Tensor
    pixel_depth: torch.Tensor
    pixel_front_facing: torch.Tensor

    @property
    def pixel_frames(self) -> torch.Tensor:
        """``(P,)`` long frame index of every covered pixel."""
        return torch.div(self.pixels, self.size[1] * self.size[2], rounding_mode="floor")

    def to_image(self, values: torch.Tensor, background: float | Sequence[float] | torch.Tensor
                 = 0.0) -> torch.Tensor:
        """Scatter per-pixel ``values (P, C)`` into images ``(F, C, H, W)`` over a constant
        ``background`` (a scalar or ``C`` values)."""
        frames, height, width = self.size
        channels = values.shape[-1]
        fill = torch.as_tensor(background, dtype=values.dtype, device=values.device)
        image = fill.expand(channels).repeat(frames * height * width, 1)  # (F*H*W, C)
        image.index_copy_(0, self.pixels, values)
        return image.view(frames, height, width, channels).permute(0, 3, 1, 2).contiguous()

    def _dense(self, values: torch.Tensor, fill: float | bool) -> torch.Tensor:
        frames, height, width = self.size
        out = torch.full((frames * height * width, *values.shape[1:]), fill, dtype=values.dtype,
                         device=values.device)
        out.index_copy_(0, self.pixels, values)
        return out.view(frames, height, width, *values.shape[1:])

    @property
    def mask(self) -> torch.Tensor:
        """``(F, H, W)`` bool foreground."""
        return self._dense(torch.ones_like(self.pixel_front_facing), False)

    @property
    def face_index(self) -> torch.Tensor:
        """``(F, H, W)`` long face index, -1 on background."""
        return self._dense(self.pixel_faces, -1)

    @property
    def barycentrics(self) -> torch.Tensor:
        """``(F, H, W, 3)`` barycentrics, 0 on background."""
        return self._dense(self.pixel_barycentrics, 0.0)

    @property
    def depth(self) -> torch.Tensor:
        """``(F, H, W)`` camera-space z, 0 on background."""
        return self._dense(self.pixel_depth, 0.0)

    @property
    def front_facing(self) -> torch.Tensor:
        """``(F, H, W)`` bool, False on background."""
        return self._dense(self.pixel_front_facing, False)
