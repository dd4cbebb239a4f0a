"""Which frames a training sample takes: the window grid, reference candidates and the draws.

A ``SamplingSpec`` fixes what one sample is (``num_frames = 4k + 1`` driving frames every
``stride`` source frames, the pixel ``size``) and which choices exist per clip: window starts
``0, window_step, 2·window_step, …`` that fit in the clip, and ``reference_count`` reference
candidate frames spread evenly over the clip (``None``: every frame). The latent cache stores
exactly these windows and candidates, so pixel and latent samples of one spec draw the same
frames.

Draws are pure functions of ``(seed, clip id, draw)``: a NumPy generator seeded with that
triple picks, in this order, the window start, the reference view (studio takes) and the
reference frame. The same sample comes back in any process, in either mode.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from factorportrait.geometry.rays import PIXEL_MULTIPLE, TEMPORAL_STRIDE


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"SamplingSpec: {name} must be a positive int, got {value!r}")
    return int(value)


@dataclass(frozen=True)
class SamplingSpec:
    """What a sample is (frame count, stride, size) and the choices per clip (module docstring).

    ``num_frames``: ``F = 4k + 1`` driving frames (13, 25, 49, 81 in the curriculum).
    ``stride``: source frames between consecutive driving frames. ``size``: ``(H, W)``
    multiples of 16 (centre crop to its aspect, then resize), ``None``: the clip's own size.
    ``window_step``: source frames between allowed window starts. ``reference_count``:
    reference candidate frames per clip (``None``: all frames).
    """

    num_frames: int
    stride: int = 1
    size: tuple[int, int] | None = None
    window_step: int = 1
    reference_count: int | None = None

    def __post_init__(self) -> None:
        frames = _positive_int("num_frames", self.num_frames)
        if frames % TEMPORAL_STRIDE != 1:
            raise ValueError(f"SamplingSpec: num_frames must be 4k + 1 (13, 25, 49, 81, …) for "
                             f"the Wan VAE's 4x temporal compression, got {frames}")
        _positive_int("stride", self.stride)
        _positive_int("window_step", self.window_step)
        if self.reference_count is not None:
            _positive_int("reference_count", self.reference_count)
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or any(_positive_int("size", s) % PIXEL_MULTIPLE for s in size):
                raise ValueError(f"SamplingSpec: size must be (H, W) with multiples of "
                                 f"{PIXEL_MULTIPLE}, got {self.size!r}")
            object.__setattr__(self, "size", (int(size[0]), int(size[1])))

    @property
    def span(self) -> int:
        """Source frames a window covers: ``(num_frames − 1)·stride + 1``."""
        return (self.num_frames - 1) * self.stride + 1

    def window_starts(self, clip_frames: int) -> list[int]:
        """Allowed first frames of a window in a clip of ``clip_frames`` frames (may be empty)."""
        return list(range(0, clip_frames - self.span + 1, self.window_step))

    def frame_indices(self, start: int) -> list[int]:
        """The ``num_frames`` source frames of the window starting at ``start``."""
        return [start + i * self.stride for i in range(self.num_frames)]

    def reference_frames(self, clip_frames: int) -> list[int]:
        """Reference candidates: ``reference_count`` frames evenly spread (ends included)."""
        if self.reference_count is None or self.reference_count >= clip_frames:
            return list(range(clip_frames))
        spread = np.rint(np.linspace(0, clip_frames - 1, self.reference_count))
        return sorted(set(spread.astype(int).tolist()))

    def key(self) -> str:
        """A folder name for this spec, e.g. ``f13_s1_128x128_w6_r8`` (latent cache)."""
        size = "native" if self.size is None else f"{self.size[0]}x{self.size[1]}"
        refs = "all" if self.reference_count is None else str(self.reference_count)
        return f"f{self.num_frames}_s{self.stride}_{size}_w{self.window_step}_r{refs}"

    def to_dict(self) -> dict[str, object]:
        return {"num_frames": self.num_frames, "stride": self.stride,
                "size": None if self.size is None else list(self.size),
                "window_step": self.window_step, "reference_count": self.reference_count}


def sample_rng(seed: int, clip_id: str, draw: int) -> np.random.Generator:
    """The generator of one sample, seeded by ``(seed, crc32(clip_id), draw)``."""
    return np.random.default_rng([int(seed), zlib.crc32(clip_id.encode("utf-8")), int(draw)])


def choose_start(spec: SamplingSpec, clip_frames: int, rng: np.random.Generator,
                 clip_id: str) -> int:
    """A window start from ``spec.window_starts``; ``ValueError`` if the clip is too short."""
    starts = spec.window_starts(clip_frames)
    if not starts:
        raise ValueError(f"clip {clip_id!r} has {clip_frames} frames, fewer than the "
                         f"{spec.span} a window of {spec.num_frames} frames at stride "
                         f"{spec.stride} spans")
    return starts[int(rng.integers(len(starts)))]


def choose_view(views: Sequence[str], rng: np.random.Generator) -> str | None:
    """One of the other views of a take (``None`` if there are none; draws nothing then)."""
    return views[int(rng.integers(len(views)))] if views else None


def choose_reference(spec: SamplingSpec, clip_frames: int, rng: np.random.Generator,
                     window: tuple[int, int] | None = None) -> int:
    """A reference frame among the candidates, outside ``window = (first, last)`` if possible."""
    candidates = spec.reference_frames(clip_frames)
    if window is not None:
        outside = [f for f in candidates if not window[0] <= f <= window[1]]
        candidates = outside or candidates
    return candidates[int(rng.integers(len(candidates)))]
