"""Sources of expression codes for the pipeline's ``(B, T, 128)`` expression condition.

Three ways to get per-frame codes, one check for all of them:

- :class:`EncoderCodeSource` — our :class:`ExpressionEncoder`: crops the face of each frame
  (given boxes, or the centred square of frames that are already portrait crops) and encodes it;
- :class:`ModuleCodeSource` — any user ``nn.Module`` / callable mapping images
  ``(N, 3, H, W)`` in [-1, 1] to ``(N, D)`` codes (``D <= 128``; resized to its ``input_size``
  first when given);
- :func:`codes_from_file` — a ``(T, D)`` array in ``.npy`` (read with
  ``numpy.load(allow_pickle=False)``), ``.safetensors`` (one tensor, or the key
  ``expression_codes``) or ``.pt``/``.pth`` (a plain tensor, ``torch.load(weights_only=True)``).

Every code tensor passes :func:`check_codes`: 2-D ``(N, D)``, ``1 <= D <= 128`` (zero-padded to
128, as the dataset pads shorter codes), the expected number of frames, all finite — otherwise a
``ValueError`` names the source and what was expected. :func:`encode_video` and
:func:`batch_codes` then give ``(B, T, 128)``.

The :class:`ExpressionCodeSource` protocol is a superset of the pipeline's
``inference.encoders.ExpressionEncoder`` (``frames -> (N, D)``): the optional ``boxes``
argument carries face boxes when the frames are whole video frames.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

from factorportrait.expression.crop import FaceBoxes, boxes_from_xyxy, center_boxes, crop_faces
from factorportrait.models.expression_encoder import ExpressionEncoder

CODE_DIM = 128
BATCH = 64  # frames per encoder call

Boxes = FaceBoxes | Tensor  # FaceBoxes, or (N, 4) as (x0, y0, x1, y1) pixels


@runtime_checkable
class ExpressionCodeSource(Protocol):
    """``frames (N, 3, H, W)`` in [-1, 1] (+ optional face boxes of N frames) -> codes
    ``(N, D)``, ``D <= 128``."""

    def __call__(self, frames: Tensor, boxes: Boxes | None = None) -> Tensor:
        ...


def check_codes(codes: object, source: str, frames: int | None = None) -> Tensor:
    """Validate codes from ``source`` (named in errors) -> float32 ``(N, 128)`` (zero-padded).

    Raises ``ValueError`` for a non-tensor, another rank, ``D`` outside ``[1, 128]``, ``N`` not
    equal to ``frames`` (when given), or non-finite values (with the first bad frame).
    """
    if not isinstance(codes, Tensor):
        raise ValueError(f"expression codes from {source}: expected a tensor (N, D), got "
                         f"{type(codes).__name__}")
    if codes.ndim != 2 or not 1 <= codes.shape[1] <= CODE_DIM:
        raise ValueError(f"expression codes from {source}: expected shape (N, D) with "
                         f"1 <= D <= {CODE_DIM}, got {tuple(codes.shape)}")
    if frames is not None and codes.shape[0] != frames:
        raise ValueError(f"expression codes from {source}: expected {frames} frames (N, D), "
                         f"got {codes.shape[0]} (shape {tuple(codes.shape)})")
    if not codes.is_floating_point():
        raise ValueError(f"expression codes from {source}: expected floating-point values, "
                         f"got {codes.dtype}")
    finite = torch.isfinite(codes).all(1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise ValueError(f"expression codes from {source}: non-finite values (NaN/Inf), first "
                         f"at frame {bad}")
    codes = codes.detach().float()
    return F.pad(codes, (0, CODE_DIM - codes.shape[1]))


def _check_frames(frames: object, source: str) -> Tensor:
    if not isinstance(frames, Tensor) or frames.ndim != 4 or frames.shape[1] != 3:
        got = tuple(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__
        raise ValueError(f"{source}: expected frames (N, 3, H, W) in [-1, 1], got {got}")
    return frames


def _as_boxes(boxes: Boxes | None, frames: Tensor) -> FaceBoxes:
    count, _, height, width = frames.shape
    if boxes is None:
        return center_boxes(height, width, count)
    boxes = boxes if isinstance(boxes, FaceBoxes) else boxes_from_xyxy(boxes)
    if len(boxes) != count:
        raise ValueError(f"face boxes: expected one per frame ({count}), got {len(boxes)}")
    return boxes


class EncoderCodeSource:
    """Codes of our encoder for whole frames: crop (boxes, or the centred square) -> encode.

    Args:
        encoder: a trained :class:`ExpressionEncoder` (put in eval mode here).
        roll_normalise: rotate each crop so the eyes are level (needs boxes with a roll, e.g.
            from :func:`~factorportrait.expression.crop.face_boxes`).
    """

    def __init__(self, encoder: ExpressionEncoder, roll_normalise: bool = False) -> None:
        self.encoder = encoder.eval()
        self.roll_normalise = roll_normalise

    @torch.no_grad()
    def __call__(self, frames: Tensor, boxes: Boxes | None = None) -> Tensor:
        """``frames (N, 3, H, W)`` in [-1, 1] -> ``(N, 128)``."""
        frames = _check_frames(frames, "EncoderCodeSource")
        boxes = _as_boxes(boxes, frames)
        device = next(self.encoder.parameters()).device
        size = self.encoder.config.crop_size
        codes = []
        for start in range(0, len(frames), BATCH):
            part = slice(start, start + BATCH)
            crops = crop_faces(frames[part].float(), boxes[part], size, self.roll_normalise)
            codes.append(self.encoder(crops.to(device)).cpu())
        return check_codes(torch.cat(codes), "EncoderCodeSource", len(frames))


class ModuleCodeSource:
    """Any callable ``images (N, 3, H, W)`` in [-1, 1] -> ``(N, D)``, ``D <= 128``.

    Args:
        module: e.g. an external expression encoder wrapped as an ``nn.Module``.
        name: how errors name it (default: its class name).
        input_size: when given, frames are face-cropped (boxes or the centred square) to
            ``input_size`` pixels first; otherwise they are passed as they are.
    """

    def __init__(self, module: Callable[[Tensor], Tensor], name: str | None = None,
                 input_size: int | None = None) -> None:
        self.module, self.input_size = module, input_size
        self.name = name or type(module).__name__

    @torch.no_grad()
    def __call__(self, frames: Tensor, boxes: Boxes | None = None) -> Tensor:
        """``frames (N, 3, H, W)`` in [-1, 1] -> ``(N, 128)``."""
        frames = _check_frames(frames, self.name)
        if self.input_size is not None:
            frames = crop_faces(frames, _as_boxes(boxes, frames), self.input_size)
        elif boxes is not None:
            raise ValueError(f"{self.name}: boxes given but no input_size to crop them to")
        return check_codes(self.module(frames), self.name, len(frames))


def codes_from_file(path: str | os.PathLike, frames: int | None = None) -> Tensor:
    """Codes ``(T, 128)`` from a ``(T, D)`` array in a ``.npy``, ``.safetensors`` or
    ``.pt``/``.pth`` file (module docstring); ``frames``: the expected ``T``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"expression codes: {path} not found")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            import numpy

            codes = torch.from_numpy(numpy.load(path, allow_pickle=False))
        elif suffix == ".safetensors":
            from safetensors.torch import load_file

            tensors = load_file(str(path))
            if "expression_codes" not in tensors and len(tensors) != 1:
                raise ValueError(f"expected one tensor or the key 'expression_codes', found "
                                 f"{sorted(tensors)}")
            codes = tensors.get("expression_codes", next(iter(tensors.values()), None))
        elif suffix in (".pt", ".pth"):
            codes = torch.load(path, map_location="cpu", weights_only=True)
        else:
            raise ValueError(f"unsupported file type {suffix!r} (use .npy, .safetensors, .pt)")
    except ValueError as error:
        raise ValueError(f"expression codes from {path}: {error}") from error
    except Exception as error:  # unreadable / pickled / truncated files
        raise ValueError(f"expression codes from {path}: cannot read the file "
                         f"({type(error).__name__}: {error})") from error
    return check_codes(codes, str(path), frames)


def batch_codes(codes: Tensor, batch: int = 1, source: str = "codes") -> Tensor:
    """``(T, D)`` or ``(B, T, D)`` codes -> the pipeline's ``(B, T, 128)`` (a ``(T, D)`` track
    is repeated for every batch element)."""
    if isinstance(codes, Tensor) and codes.ndim == 3:
        if codes.shape[0] not in (1, batch):
            raise ValueError(f"expression codes from {source}: batch {codes.shape[0]} does "
                             f"not match {batch}")
        checked = [check_codes(item, source) for item in codes]
        return torch.stack(checked).expand(batch, -1, -1).clone()
    return check_codes(codes, source)[None].expand(batch, -1, -1).clone()


def encode_video(source: ExpressionCodeSource, video: Tensor, boxes: Tensor | None = None,
                 name: str | None = None) -> Tensor:
    """Codes of a pixel video ``(B, 3, T, H, W)`` in [-1, 1] (the pipeline's layout) ->
    ``(B, T, 128)``. ``boxes``: ``(B, T, 4)`` ``(x0, y0, x1, y1)`` pixels, or None."""
    name = name or type(source).__name__
    if not isinstance(video, Tensor) or video.ndim != 5 or video.shape[1] != 3:
        got = tuple(video.shape) if isinstance(video, Tensor) else type(video).__name__
        raise ValueError(f"encode_video: expected video (B, 3, T, H, W), got {got}")
    batch, _, frames = video.shape[:3]
    if boxes is not None and tuple(boxes.shape) != (batch, frames, 4):
        raise ValueError(f"encode_video: expected boxes ({batch}, {frames}, 4), got "
                         f"{tuple(boxes.shape)}")
    codes = []
    for index in range(batch):
        clip = video[index].transpose(0, 1)  # (T, 3, H, W)
        out = source(clip, None if boxes is None else boxes[index])
        codes.append(check_codes(out, name, frames))
    return torch.stack(codes)  # (B, T, 128)
