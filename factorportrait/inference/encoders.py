"""The expression encoder interface (the trained encoder itself is a later component).

FactorPortrait §4.1 extracts 128-d expression codes per driving frame with a pre-trained
encoder. The pipeline accepts any ``expression_encoder`` with this protocol: a callable (e.g.
an ``nn.Module``) mapping frames or face crops ``(N, 3, H, W)`` in [-1, 1] to codes
``(N, D)``, ``D <= 128`` (zero-padded to 128 as in training). Cropping and resizing to its input
size are the encoder's business; it receives whole frames at their own resolution.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor

ENCODER_BATCH = 16  # frames per encoder call


@runtime_checkable
class ExpressionEncoder(Protocol):
    """``(N, 3, H, W)`` in [-1, 1] -> ``(N, D)`` expression codes, ``D <= 128``."""

    def __call__(self, frames: Tensor) -> Tensor:
        ...


def _device_of(encoder: ExpressionEncoder, default: torch.device) -> torch.device:
    if isinstance(encoder, torch.nn.Module):
        parameter = next(encoder.parameters(), None)
        if parameter is not None:
            return parameter.device
    return default


@torch.no_grad()
def encode_expressions(encoder: ExpressionEncoder, frames: Tensor,
                       device: torch.device | str = "cpu",
                       batch: int = ENCODER_BATCH) -> Tensor:
    """Expression codes of video frames.

    Args:
        frames: ``uint8 (F, H, W, 3)`` RGB (as ``read_video`` returns).
    Returns:
        ``(F, D)`` float32 on the CPU.
    """
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"encode_expressions: frames must be uint8 (F, H, W, 3), got "
                         f"{frames.dtype} {tuple(frames.shape)}")
    if getattr(encoder, "needs_landmarks", False):
        raise ValueError(f"{type(encoder).__name__} cuts its crop from tracked landmarks: track "
                         "the frames (track_head=True, tracking.tracked_codes), not whole frames")
    device = _device_of(encoder, torch.device(device))
    codes = []
    for start in range(0, frames.shape[0], batch):
        chunk = frames[start:start + batch].permute(0, 3, 1, 2).to(device).float() / 127.5 - 1
        out = encoder(chunk)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != chunk.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"expression_encoder must return (N, D) codes for N = "
                             f"{chunk.shape[0]} frames, got {got}")
        codes.append(out.float().cpu())
    return torch.cat(codes)
