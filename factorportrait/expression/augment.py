"""DeX-Portrait's expression-input augmentations (§3.2, Fig. 3), applied while training.

"For the expression input, we first perform random rotation or select another viewpoint ...
Then we crop the facial region and resize it to a fixed size ... to eliminate the head
translation and scale." Here, per training sample:

1. random in-plane rotation of the crop (``rotation_deg``), about the face box centre;
2. a tight face crop with jittered centre (``shift_jitter`` × side) and side
   (``scale_jitter``), resized to the encoder's crop size — one affine warp with (1);
3. colour jitter: brightness, contrast, saturation (the renders' palette is narrow).

Another viewpoint comes from the expression sets themselves (every view of a set is another
camera, identity and head pose). Horizontal flips are not used: they swap ``blink_left`` and
``blink_right``, so the expression label would not survive them. None of these change the
expression, which is why the label of a set is shared by all its augmented views.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.expression.crop import FaceBoxes, crop_faces


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges (uniform, ±) of the augmentations; all zero = a plain face crop.

    Attributes:
        rotation_deg: in-plane rotation of the crop.
        scale_jitter: relative change of the box side.
        shift_jitter: shift of the box centre per axis, as a fraction of the side.
        brightness: added to the [-1, 1] image (×2 of a [0, 1] brightness shift).
        contrast: relative change of the contrast about the image mean.
        saturation: relative change of the saturation about the grey image.
        roll_normalise: rotate relative to the face's own roll (upright eyes) instead of the
            image axes.
    """

    rotation_deg: float = 15.0
    scale_jitter: float = 0.08
    shift_jitter: float = 0.05
    brightness: float = 0.15
    contrast: float = 0.2
    saturation: float = 0.3
    roll_normalise: bool = False

    def __post_init__(self) -> None:
        for name in ("rotation_deg", "scale_jitter", "shift_jitter", "brightness", "contrast",
                     "saturation"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"AugmentConfig.{name} must be a finite number >= 0, "
                                 f"got {value!r}")
        if self.scale_jitter >= 1 or self.contrast >= 1 or self.saturation >= 1:
            raise ValueError("AugmentConfig: scale_jitter, contrast and saturation must be < 1")


def _symmetric(count: int, limit: float, generator: torch.Generator, *shape: int) -> Tensor:
    return (torch.rand(count, *shape, generator=generator) * 2 - 1) * limit


def jitter_boxes(boxes: FaceBoxes, config: AugmentConfig, generator: torch.Generator
                 ) -> FaceBoxes:
    """Randomly rotated, shifted and scaled copies of ``N`` boxes; their ``roll`` is the crop
    angle to use with ``roll_normalise=True``."""
    count = len(boxes)
    angle = _symmetric(count, math.radians(config.rotation_deg), generator)
    base = boxes.roll if config.roll_normalise else torch.zeros_like(boxes.roll)
    side = boxes.side * (1 + _symmetric(count, config.scale_jitter, generator))
    shift = _symmetric(count, config.shift_jitter, generator, 2) * boxes.side[:, None]
    return FaceBoxes(boxes.center + shift, side, base + angle)


def colour_jitter(images: Tensor, config: AugmentConfig, generator: torch.Generator) -> Tensor:
    """Per-image brightness, contrast and saturation jitter of ``(N, 3, H, W)`` in [-1, 1];
    the result is clamped to [-1, 1]."""
    count = images.shape[0]
    grey = images.mean(1, keepdim=True)  # (N, 1, H, W)
    saturation = 1 + _symmetric(count, config.saturation, generator)[:, None, None, None]
    images = grey + saturation * (images - grey)
    mean = images.mean(dim=(1, 2, 3), keepdim=True)
    contrast = 1 + _symmetric(count, config.contrast, generator)[:, None, None, None]
    brightness = 2 * _symmetric(count, config.brightness, generator)[:, None, None, None]
    return (mean + contrast * (images - mean) + brightness).clamp(-1, 1)


def augment_faces(frames: Tensor, boxes: FaceBoxes, size: int, config: AugmentConfig,
                  generator: torch.Generator) -> tuple[Tensor, FaceBoxes]:
    """Augmented face crops: frames ``(N, 3, H, W)`` in [-1, 1] and their face boxes ->
    crops ``(N, 3, size, size)`` and the boxes actually cropped (rotated by their ``roll``)."""
    jittered = jitter_boxes(boxes, config, generator)
    crops = crop_faces(frames, jittered, size, roll_normalise=True)
    return colour_jitter(crops, config, generator), jittered
