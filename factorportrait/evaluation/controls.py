"""Per-control accuracy on synthetic ground truth, read from the generated frames alone.

A synthetic clip knows every factor, so each control can be scored without an external
network. Each measure looks only at the generated pixels and compares them with the ground
truth (or, for a held factor, with the reference); the conditions handed to the model never
enter:

- **pose / camera**: the subject's silhouette in a generated frame (pixels away from the
  renders' white background, :func:`foreground_mask`) against the ground-truth silhouette
  (the normal map's non-black pixels, :func:`normal_map_mask`): intersection over union per
  frame, :func:`mask_iou`. A head turned or a camera moved the wrong way moves the outline.
- **expression**: the trained expression encoder reads the generated face (crop at the
  ground-truth face box) and its linear parameter head predicts the avatar's expression
  parameters (``jaw_open``, ``smile``, …), :func:`read_expression`; :func:`expression_rmse`
  compares two readings. As AED compares the expression coefficients one network
  reads from the generated and the ground-truth frames, the demo compares the readout of the
  generated frame with the readout of the ground-truth frame: the encoder's own bias cancels
  (against the ground-truth parameters its RMSE is 0.22 on full-size 128² frames, worse than
  predicting the mean, 0.11, though its readout moves with the expression).
- **identity / appearance**: the colour distribution of the subject's pixels against the
  ground-truth frame's or the reference image's: the Wasserstein-1 distance of each channel's
  distribution (in [0, 1] of the grey range), :func:`colour_distance`;
  :func:`identity_margin` compares a video with its own reference and with other identities'
  references (a model that keeps the reference's appearance is nearer its own). A colour
  histogram distance was tried first: it scored the VAE's reconstruction of the ground truth
  0.67 of its maximum (the VAE's small colour shifts move pixels across bin edges), so it
  could not tell appearances apart.
"""

from __future__ import annotations

import torch
from torch import Tensor

from factorportrait.tracking.crop import FaceBoxes

WHITE = (255, 255, 255)
FOREGROUND_THRESHOLD = 24  # max channel distance (of 255) from the background: subject
NORMAL_THRESHOLD = 16  # a normal map's background is black; any normal has a channel >= 74
QUANTILES = 64  # per channel, for colour distances


def _check_frames(frames: Tensor, name: str) -> Tensor:
    if not isinstance(frames, Tensor) or frames.dtype != torch.uint8 or frames.ndim != 4 or \
            frames.shape[-1] != 3:
        got = (f"{frames.dtype} {tuple(frames.shape)}" if isinstance(frames, Tensor)
               else type(frames).__name__)
        raise ValueError(f"{name}: expected uint8 (F, H, W, 3) RGB frames, got {got}")
    return frames


def foreground_mask(frames: Tensor, background: tuple[int, int, int] = WHITE,
                    threshold: int = FOREGROUND_THRESHOLD) -> Tensor:
    """``uint8 (F, H, W, 3)`` -> bool ``(F, H, W)``: pixels whose largest channel distance
    from ``background`` exceeds ``threshold``."""
    frames = _check_frames(frames, "frames")
    colour = torch.tensor(background, dtype=torch.int16)
    distance = (frames.to(torch.int16) - colour).abs().amax(-1)
    return distance > threshold


def normal_map_mask(normals: Tensor, threshold: int = NORMAL_THRESHOLD) -> Tensor:
    """Ground-truth silhouettes from encoded normal maps ``uint8 (F, H, W, 3)`` (black
    background, docs/rendering.md) -> bool ``(F, H, W)``."""
    normals = _check_frames(normals, "normal maps")
    return normals.amax(-1) > threshold


def mask_iou(prediction: Tensor, target: Tensor) -> Tensor:
    """Intersection over union of bool masks ``(F, H, W)`` per frame ``(F,)``; two empty
    masks score 1."""
    if prediction.shape != target.shape:
        raise ValueError(f"masks {tuple(prediction.shape)} and {tuple(target.shape)} must "
                         "have the same shape")
    intersection = (prediction & target).flatten(1).sum(1).double()
    union = (prediction | target).flatten(1).sum(1).double()
    return torch.where(union > 0, intersection / union.clamp_min(1), 1.0).float()


def silhouette_iou(frames: Tensor, normals: Tensor) -> Tensor:
    """Pose / camera accuracy per frame ``(F,)``: the generated subject's silhouette against
    the ground truth's (module docstring)."""
    return mask_iou(foreground_mask(frames), normal_map_mask(normals))


@torch.no_grad()
def read_expression(encoder, frames: Tensor, boxes: FaceBoxes) -> Tensor:
    """The expression parameters ``(F, E)`` a trained
    :class:`~factorportrait.models.expression_encoder.ExpressionEncoder` reads from
    ``uint8 (F, H, W, 3)`` frames, cropped at ``boxes`` (pixels of these frames)."""
    from factorportrait.expression.codes import EncoderCodeSource

    frames = _check_frames(frames, "frames")
    if len(boxes) != len(frames):
        raise ValueError(f"{len(boxes)} face boxes for {len(frames)} frames")
    unit = frames.permute(0, 3, 1, 2).float() / 127.5 - 1
    codes = EncoderCodeSource(encoder)(unit, boxes)
    return encoder.predict_parameters(codes[:, :encoder.config.code_dim]).float()


def expression_rmse(predicted: Tensor, target: Tensor) -> Tensor:
    """Per-frame RMSE ``(F,)`` of expression parameters ``(F, E)``."""
    if predicted.shape != target.shape:
        raise ValueError(f"expression parameters {tuple(predicted.shape)} and "
                         f"{tuple(target.shape)} must have the same shape")
    return (predicted.double() - target.double()).square().mean(-1).sqrt().float()


def colour_quantiles(frames: Tensor, masks: Tensor | None = None,
                     count: int = QUANTILES) -> Tensor:
    """Per-channel colour distribution of the pixels under ``masks (F, H, W)`` (default: the
    foreground) as ``count`` evenly spaced quantiles in [0, 1]: ``(F, 3, count)``. A frame
    with no such pixel gets the background's colour."""
    frames = _check_frames(frames, "frames")
    masks = foreground_mask(frames) if masks is None else masks
    levels = (torch.arange(count, dtype=torch.float64) + 0.5) / count
    rows = []
    for frame, mask in zip(frames, masks):
        pixels = frame[mask].double() / 255 if bool(mask.any()) else \
            torch.tensor([WHITE], dtype=torch.float64) / 255  # (P, 3)
        rows.append(torch.quantile(pixels, levels, dim=0).T)  # (3, count)
    return torch.stack(rows).float()


def colour_distance(a: Tensor, b: Tensor) -> Tensor:
    """Wasserstein-1 distance between colour distributions given as quantiles ``(..., 3, Q)``
    (:func:`colour_quantiles`), averaged over channels: ``(...)`` in [0, 1]; two constant
    colours are ``mean_c |a_c − b_c|`` apart."""
    return (a.double() - b.double()).abs().mean((-2, -1)).float()


def identity_distance(frames: Tensor, reference: Tensor) -> Tensor:
    """Appearance distance ``(F,)`` of each frame's subject to the ``reference`` image
    ``uint8 (H, W, 3)``: :func:`colour_distance` of their foreground colours."""
    reference = _check_frames(reference[None], "reference image")
    return colour_distance(colour_quantiles(frames), colour_quantiles(reference))


def identity_margin(frames: Tensor, own: Tensor, others: list[Tensor] | Tensor
                    ) -> dict[str, float]:
    """How much nearer the frames are to their ``own`` reference than to ``others``
    (references of other identities): ``own`` distance, mean ``other`` distance, ``margin``
    (other − own, > 0 when appearance is kept) and ``accuracy`` (frames nearest their own
    reference)."""
    mine = identity_distance(frames, own)
    theirs = torch.stack([identity_distance(frames, other) for other in others])  # (O, F)
    return {"own": float(mine.mean()), "other": float(theirs.mean()),
            "margin": float((theirs.mean(0) - mine).mean()),
            "accuracy": float((mine[None] < theirs).all(0).float().mean())}
