"""Crops as similarity transforms, and their inverse: paste-back.

A crop box is a square (or, with ``aspect``, a rectangle) in frame pixel coordinates — pixel
``(u, v)`` covers ``[u, u+1) × [v, v+1)`` (docs/cameras.md) — turned by an in-plane angle:
``FaceBoxes(center (N, 2), side (N,), roll (N,))``. ``side`` is the crop's *height* in frame
pixels; a crop of ``h × w`` output pixels covers ``side · w/h`` frame pixels across. ``roll``
(radians) is the image angle of the line from the person's right pupil to their left one (0
for an upright face); a roll-normalised crop turns that line horizontal (FactorPortrait supp.
§8.1).

Three pure functions, each the inverse of the next (LivePortrait's ``crop_image`` /
``paste_back`` habit, with the transform explicit):

- :func:`crop_transform`: the ``affine_grid`` matrix from crop to frame coordinates;
- :func:`crop_faces`: frames → crops (one warp per frame, area pre-filtered when shrinking);
- :func:`paste_back`: crops → the frames they came from, through a feathered mask, with an
  optional colour match on the mask's border band so no seam shows.

The expression encoder (training and inference), the reference portrait crop and the face
mesh's input all go through :func:`crop_faces`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

Size = int | tuple[int, int]  # a square side, or (height, width)


@dataclass(frozen=True, eq=False)
class FaceBoxes:
    """``N`` crop boxes: ``center (N, 2)`` pixels (x, y), ``side (N,)`` pixels (the crop's
    height), ``roll (N,)`` radians (see the module docstring)."""

    center: Tensor
    side: Tensor
    roll: Tensor

    def __post_init__(self) -> None:
        count = self.center.shape[0] if self.center.ndim == 2 else -1
        if self.center.shape != (count, 2) or self.side.shape != (count,) or \
                self.roll.shape != (count,):
            raise ValueError(f"FaceBoxes: expected center (N, 2), side (N,), roll (N,), got "
                             f"{tuple(self.center.shape)}, {tuple(self.side.shape)}, "
                             f"{tuple(self.roll.shape)}")
        values = torch.cat([self.center.flatten(), self.side, self.roll])
        if not bool(torch.isfinite(values).all()) or not bool((self.side > 0).all()):
            raise ValueError("FaceBoxes: centres, sides and rolls must be finite and sides > 0")

    def __len__(self) -> int:
        return self.center.shape[0]

    def __getitem__(self, index: int | slice | Tensor) -> FaceBoxes:
        index = [index] if isinstance(index, int) else index
        return FaceBoxes(self.center[index], self.side[index], self.roll[index])

    def xyxy(self) -> Tensor:
        """Axis-aligned ``(N, 4)`` as ``(x0, y0, x1, y1)`` of the square (ignores ``roll``)."""
        half = self.side[:, None] / 2
        return torch.cat([self.center - half, self.center + half], 1)

    def scaled(self, factor: float) -> FaceBoxes:
        """The boxes with ``side × factor`` about the same centres."""
        return FaceBoxes(self.center, self.side * factor, self.roll)

    @staticmethod
    def cat(boxes: list[FaceBoxes]) -> FaceBoxes:
        return FaceBoxes(torch.cat([b.center for b in boxes]), torch.cat([b.side for b in boxes]),
                         torch.cat([b.roll for b in boxes]))


def boxes_from_xyxy(xyxy: Tensor) -> FaceBoxes:
    """Boxes ``(N, 4)`` ``(x0, y0, x1, y1)`` (e.g. from a face detector) -> squares around their
    centres with side ``max(width, height)``, roll 0."""
    xyxy = torch.as_tensor(xyxy, dtype=torch.float32)
    if xyxy.ndim != 2 or xyxy.shape[1] != 4:
        raise ValueError(f"boxes: expected (N, 4) as (x0, y0, x1, y1), got {tuple(xyxy.shape)}")
    size = xyxy[:, 2:] - xyxy[:, :2]
    if not bool((size > 0).all()):
        raise ValueError("boxes: every box needs x1 > x0 and y1 > y0")
    return FaceBoxes((xyxy[:, :2] + xyxy[:, 2:]) / 2, size.amax(1), torch.zeros(len(xyxy)))


def center_boxes(height: int, width: int, count: int, fraction: float = 1.0) -> FaceBoxes:
    """``count`` copies of the centred square covering ``fraction`` of the shorter side — for
    frames that are already face crops or portrait-framed."""
    side = torch.full((count,), fraction * min(height, width), dtype=torch.float32)
    center = torch.tensor([width / 2, height / 2]).expand(count, 2).clone()
    return FaceBoxes(center, side, torch.zeros(count))


def _size(size: Size) -> tuple[int, int]:
    height, width = (size, size) if isinstance(size, int) else size
    if min(height, width) < 1:
        raise ValueError(f"crop size must be positive, got {size!r}")
    return int(height), int(width)


def crop_transform(boxes: FaceBoxes, height: int, width: int, roll_normalise: bool = False,
                   aspect: float = 1.0) -> Tensor:
    """``affine_grid`` matrices ``(N, 2, 3)`` mapping crop coordinates in [-1, 1] to frame
    coordinates in [-1, 1] (``align_corners=False``) for frames of ``height × width``.

    Crop point ``(x, y)`` ↦ frame pixel ``c + Rot(roll) · (x · side/2 · aspect, y · side/2)``;
    ``aspect`` = crop width / crop height."""
    roll = boxes.roll if roll_normalise else torch.zeros_like(boxes.roll)
    cos, sin = roll.cos(), roll.sin()
    half = boxes.side / 2
    wide = half * aspect
    theta = torch.stack([
        torch.stack([wide * cos * 2 / width, -half * sin * 2 / width,
                     2 * boxes.center[:, 0] / width - 1], 1),
        torch.stack([wide * sin * 2 / height, half * cos * 2 / height,
                     2 * boxes.center[:, 1] / height - 1], 1)], 1)
    return theta  # (N, 2, 3)


def crop_faces(frames: Tensor, boxes: FaceBoxes, size: Size, roll_normalise: bool = False,
               mode: str = "bilinear") -> Tensor:
    """Crops ``(N, 3, h, w)`` of frames ``(N, 3, H, W)`` (any range; outside the frame the
    border pixels repeat); ``size`` = ``s`` (square) or ``(h, w)``. Frames are area-downsampled
    by ``floor(side / h)`` first where the box is at least twice the crop (against aliasing)."""
    if frames.ndim != 4 or len(boxes) != frames.shape[0]:
        raise ValueError(f"crop_faces: expected frames (N, C, H, W) and N boxes, got "
                         f"{tuple(frames.shape)} and {len(boxes)} boxes")
    out_h, out_w = _size(size)
    factors = (boxes.side / out_h).floor().clamp_min(1).long().tolist()
    crops = frames.new_empty(frames.shape[0], frames.shape[1], out_h, out_w)
    for factor in sorted(set(factors)):
        index = torch.tensor([i for i, f in enumerate(factors) if f == factor])
        source = frames[index]
        if factor > 1:
            source = F.avg_pool2d(source, factor, ceil_mode=True)
        scaled = FaceBoxes(boxes.center[index] / factor, boxes.side[index] / factor,
                           boxes.roll[index])
        _, _, height, width = source.shape
        theta = crop_transform(scaled, height, width, roll_normalise, out_w / out_h).to(frames)
        grid = F.affine_grid(theta, [len(index), frames.shape[1], out_h, out_w],
                             align_corners=False)
        crops[index] = F.grid_sample(source, grid, mode=mode, padding_mode="border",
                                     align_corners=False)
    return crops


def frame_to_crop_grid(boxes: FaceBoxes, height: int, width: int, crop_size: Size,
                       roll_normalise: bool = False) -> Tensor:
    """``(N, H, W, 2)``: for every frame pixel centre, its crop coordinates in [-1, 1]
    (``align_corners=False``; outside [-1, 1] = outside the crop) — :func:`crop_transform`
    inverted."""
    out_h, out_w = _size(crop_size)
    roll = boxes.roll if roll_normalise else torch.zeros_like(boxes.roll)
    dtype, device = boxes.side.dtype, boxes.side.device
    ys = torch.arange(height, dtype=dtype, device=device) + 0.5
    xs = torch.arange(width, dtype=dtype, device=device) + 0.5
    dy = ys[None, :, None] - boxes.center[:, 1, None, None]  # (N, H, 1)
    dx = xs[None, None, :] - boxes.center[:, 0, None, None]  # (N, 1, W)
    cos, sin = roll.cos()[:, None, None], roll.sin()[:, None, None]
    half = boxes.side[:, None, None] / 2
    x = (cos * dx + sin * dy) / (half * out_w / out_h)  # Rot(-roll) (p - c), scaled
    y = (-sin * dx + cos * dy) / half
    return torch.stack([x, y], -1)  # (N, H, W, 2)


def feather_mask(grid: Tensor, feather: float) -> Tensor:
    """``(N, 1, H, W)`` in [0, 1]: 1 inside the crop, 0 outside, a smoothstep over the outer
    ``feather`` (fraction of the half-extent) of each crop coordinate."""
    if not 0 < feather <= 1:
        raise ValueError(f"feather must be in (0, 1], got {feather}")
    inside = ((1 - grid.abs()) / feather).clamp(0, 1)  # (N, H, W, 2)
    ramp = inside * inside * (3 - 2 * inside)
    return (ramp[..., 0] * ramp[..., 1])[:, None]


def colour_match(crops: Tensor, targets: Tensor, weight: Tensor, max_gain: float = 2.0
                 ) -> Tensor:
    """Per-channel affine colour transfer of ``crops`` onto ``targets`` (both ``(N, 3, h, w)``),
    with means and standard deviations taken over all ``N`` frames at once under ``weight``
    ``(N, 1, h, w)`` (one correction per video: no flicker). The gain is clamped to
    ``[1 / max_gain, max_gain]``."""
    total = weight.sum().clamp_min(1e-6)

    def stats(x: Tensor) -> tuple[Tensor, Tensor]:
        mean = (x * weight).sum((0, 2, 3), keepdim=True) / total
        var = (((x - mean) ** 2) * weight).sum((0, 2, 3), keepdim=True) / total
        return mean, var.clamp_min(1e-12).sqrt()

    mean_c, std_c = stats(crops)
    mean_t, std_t = stats(targets)
    gain = (std_t / std_c).clamp(1 / max_gain, max_gain)
    return (crops - mean_c) * gain + mean_t


def paste_back(crops: Tensor, frames: Tensor, boxes: FaceBoxes, *, roll_normalise: bool = False,
               feather: float = 0.15, match_colour: bool = True, mode: str = "bicubic"
               ) -> Tensor:
    """Put crops ``(N, 3, h, w)`` back into the frames they were cut from.

    Args:
        frames: ``(N, 3, H, W)``, or ``(1, 3, H, W)`` for one still photo behind every crop.
        boxes: the ``N`` boxes the crops were cut with (:func:`crop_faces`, same
            ``roll_normalise``); smooth boxes give a pasted region that does not jitter.
        feather: width of the blend at the crop's border, as a fraction of its half-extent.
        match_colour: correct the crops' colours to the frames' on the border band (where the
            mask is between 0 and 1, and a margin inside it) before blending.
    Returns:
        ``(N, 3, H, W)`` float, in the frames' range (``crops`` and ``frames`` share it).
    """
    count, _, crop_h, crop_w = crops.shape
    height, width = frames.shape[-2:]
    if frames.ndim != 4 or frames.shape[0] not in (1, count) or len(boxes) != count:
        raise ValueError(f"paste_back: expected crops (N, C, h, w), frames (N or 1, C, H, W) "
                         f"and N boxes, got {tuple(crops.shape)}, {tuple(frames.shape)}, "
                         f"{len(boxes)} boxes")
    frames = frames.expand(count, -1, -1, -1).to(crops.dtype)
    if match_colour:
        originals = crop_faces(frames, boxes, (crop_h, crop_w), roll_normalise)
        inner = _crop_grid(count, crop_h, crop_w, crops)
        band = 1 - feather_mask(inner * (1 + feather), feather)  # the border band + margin
        crops = colour_match(crops, originals, band)
    grid = frame_to_crop_grid(boxes, height, width, (crop_h, crop_w), roll_normalise)
    factor = int(min(crop_h / (boxes.side.min() + 1e-6), 1e9))  # crop px per frame px
    source = F.avg_pool2d(crops, factor, ceil_mode=True) if factor >= 2 else crops
    warped = F.grid_sample(source, grid.to(crops), mode=mode, padding_mode="border",
                           align_corners=False)
    mask = feather_mask(grid, feather).to(crops)
    return frames + mask * (warped - frames)


def _crop_grid(count: int, height: int, width: int, like: Tensor) -> Tensor:
    """``(N, h, w, 2)`` crop coordinates in [-1, 1] of the crop's own pixel centres."""
    ys = (2 * torch.arange(height, dtype=like.dtype, device=like.device) + 1) / height - 1
    xs = (2 * torch.arange(width, dtype=like.dtype, device=like.device) + 1) / width - 1
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), -1)  # (h, w, 2) as (x, y)
    return grid.expand(count, -1, -1, -1)
