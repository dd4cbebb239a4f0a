"""An infinite, deterministic, rank-aware, resumable mixture of clip kinds (Table 1's ratios).

The stream. Global position ``p = 0, 1, 2, …`` draws a kind with probability ``ratio /
sum(ratios)`` (from a generator seeded by ``(seed, p // BLOCK)``), then the next clip of that
kind in an epoch-shuffled order: the k-th draw of a kind with ``n`` clips is clip
``perm_e[k % n]`` with ``e = k // n`` and ``perm_e`` a permutation seeded by
``(seed, kind, e)`` — every clip of a kind is seen once per epoch of that kind.

Ranks. Rank ``r`` of ``world_size`` takes positions ``r, r + world_size, r + 2·world_size, …``:
the ranks' streams are disjoint and together they are exactly the single-process stream.

Resuming. The whole state is one number, ``samples_consumed``: how many positions all ranks
together have used (each rank has taken ``samples_consumed / world_size``). ``state_dict()``
reports what this sampler has handed out; a ``DataLoader`` with workers prefetches ahead of
training, so a training loop should rather save what it trained on —
``{"samples_consumed": step * global_batch_size}`` — and pass that to ``load_state_dict``
(the seed, kinds and ratios saved alongside are checked when present). The continuation is
then identical to the uninterrupted stream, also with a different ``world_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler

BLOCK = 4096  # positions whose kinds are drawn together (part of the stream's definition)


def indices_by_kind(kinds: Sequence[str]) -> dict[str, list[int]]:
    """Dataset indices grouped by kind, e.g. ``indices_by_kind([r.kind for r in records])``."""
    groups: dict[str, list[int]] = {}
    for index, kind in enumerate(kinds):
        groups.setdefault(kind, []).append(index)
    return groups


def _normalise(kind_to_indices: Mapping[str, Sequence[int]], ratios: Mapping[str, float]
               ) -> dict[str, float]:
    """Probabilities of the kinds with ratio > 0 (sorted by name); ``ValueError`` if invalid.

    Kinds absent from ``ratios`` have ratio 0; a kind with ratio > 0 must have clips.
    """
    for kind, ratio in ratios.items():
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not (
                math.isfinite(ratio) and ratio >= 0):
            raise ValueError(f"MixtureSampler: ratio of kind {kind!r} must be a finite number "
                             f">= 0, got {ratio!r}")
    total = float(sum(ratios.values()))
    if total <= 0:
        raise ValueError(f"MixtureSampler: ratios must sum to > 0, got {dict(ratios)}")
    available = sorted(kind for kind, indices in kind_to_indices.items() if len(indices))
    for kind in sorted(k for k, r in ratios.items() if r > 0):
        if kind not in available:
            raise ValueError(f"MixtureSampler: kind {kind!r} has ratio {ratios[kind]} but no "
                             f"clips (kinds with clips: {available})")
    return {kind: ratios[kind] / total for kind in sorted(ratios) if ratios[kind] > 0}


def _pool(kind: str, indices: Sequence[int]) -> np.ndarray:
    pool = np.asarray(indices)
    if pool.ndim != 1 or pool.dtype.kind not in "iu" or (pool < 0).any():
        raise ValueError(f"MixtureSampler: indices of kind {kind!r} must be a flat list of "
                         f"non-negative ints, got {str(indices)[:80]}")
    return pool.astype(np.int64)


class MixtureSampler(Sampler[int]):
    """Infinite stream of dataset indices mixing clip kinds by ratio (module docstring).

    Args:
        kind_to_indices: dataset indices of each kind, e.g. ``{"phone": [0, 1], ...}``.
        ratios: relative weight per kind (normalised; absent = 0), e.g. Table 1 stage 3
            ``{"phone": .2, "studio": .2, "viewsweep": .3, "dynamicsweep": .3}``.
        seed: non-negative int; the stream is a pure function of it (and the inputs).
        rank, world_size: this process's share of the stream.

    Use as ``DataLoader(dataset, sampler=sampler, batch_size=...)``; it has no ``len``.
    Iterating continues from the current state, so only one iterator should be live.
    """

    def __init__(self, kind_to_indices: Mapping[str, Sequence[int]],
                 ratios: Mapping[str, float], seed: int, rank: int = 0,
                 world_size: int = 1) -> None:
        super().__init__()
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"MixtureSampler: seed must be an int >= 0, got {seed!r}")
        if not (isinstance(world_size, int) and world_size >= 1):
            raise ValueError(f"MixtureSampler: world_size must be an int >= 1, got "
                             f"{world_size!r}")
        if not (isinstance(rank, int) and 0 <= rank < world_size):
            raise ValueError(f"MixtureSampler: rank must be in [0, {world_size}), got {rank!r}")
        self.probabilities = _normalise(kind_to_indices, ratios)
        self.kinds = tuple(self.probabilities)
        self._pools = [_pool(kind, kind_to_indices[kind]) for kind in self.kinds]
        self._cdf = np.cumsum([self.probabilities[kind] for kind in self.kinds])
        self._cdf[-1] = 1.0
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self._start = 0  # global position this rank's stripe starts from (after a resume)
        self._taken = 0  # indices this rank has handed out since then
        self._block: tuple[int, np.ndarray, np.ndarray] | None = None  # (b, clips, counts after)
        self._perms: dict[tuple[int, int], np.ndarray] = {}

    # -- the stream ---------------------------------------------------------------------------
    def _kinds(self, block: int) -> np.ndarray:
        """Kind index ``(BLOCK,)`` of positions ``[block·BLOCK, (block+1)·BLOCK)``."""
        uniform = np.random.default_rng([self.seed, 0, block]).random(BLOCK)
        return np.searchsorted(self._cdf, uniform, side="right")

    def _permutation(self, kind: int, epoch: int) -> np.ndarray:
        key = (kind, epoch)
        if key not in self._perms:
            if len(self._perms) > 4 * len(self.kinds):
                self._perms.clear()
            rng = np.random.default_rng([self.seed, 1, kind, epoch])
            self._perms[key] = rng.permutation(len(self._pools[kind]))
        return self._perms[key]

    def _counts_before(self, block: int) -> np.ndarray:
        """Draws of each kind before ``block``: the cached block's, or replayed (fast)."""
        if self._block is not None and self._block[0] == block - 1:
            return self._block[2]
        counts = np.zeros(len(self.kinds), dtype=np.int64)
        for earlier in range(block):
            counts += np.bincount(self._kinds(earlier), minlength=len(self.kinds))
        return counts

    def _clips(self, block: int) -> np.ndarray:
        """Dataset index ``(BLOCK,)`` of every position in ``block`` (cached)."""
        if self._block is not None and self._block[0] == block:
            return self._block[1]
        counts = self._counts_before(block)
        kinds = self._kinds(block)
        clips = np.empty(BLOCK, dtype=np.int64)
        for kind, pool in enumerate(self._pools):
            where = np.nonzero(kinds == kind)[0]
            draws = counts[kind] + np.arange(len(where))  # k-th draw of this kind
            epochs = draws // len(pool)
            for epoch in np.unique(epochs):
                hit = epochs == epoch
                order = self._permutation(kind, int(epoch))
                clips[where[hit]] = pool[order[draws[hit] % len(pool)]]
        after = counts + np.bincount(kinds, minlength=len(self.kinds))
        self._block = (block, clips, after)
        return clips

    def index_at(self, position: int) -> int:
        """Dataset index at global stream position ``position`` (any rank's)."""
        return int(self._clips(position // BLOCK)[position % BLOCK])

    def __iter__(self) -> Iterator[int]:
        while True:
            position = self._start + self._taken * self.world_size + self.rank
            block, offset = divmod(position, BLOCK)
            clips = self._clips(block)
            for index in clips[offset::self.world_size].tolist():  # this rank's, in this block
                self._taken += 1
                yield index

    # -- state --------------------------------------------------------------------------------
    @property
    def samples_consumed(self) -> int:
        """Global positions used by all ranks, assuming they advance in lockstep."""
        return self._start + self._taken * self.world_size

    def state_dict(self) -> dict[str, Any]:
        """``{"samples_consumed", "seed", "probabilities", "num_clips"}`` (only the first
        is needed to resume; the rest is checked)."""
        return {"samples_consumed": self.samples_consumed, "seed": self.seed,
                "probabilities": dict(self.probabilities),
                "num_clips": {kind: len(pool) for kind, pool in zip(self.kinds, self._pools)}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state["samples_consumed"]`` (see the module docstring)."""
        consumed = state.get("samples_consumed")
        if isinstance(consumed, bool) or not isinstance(consumed, int) or consumed < 0:
            raise ValueError(f"MixtureSampler.load_state_dict: samples_consumed must be an int "
                             f">= 0, got {consumed!r}")
        mine = self.state_dict()
        for key in ("seed", "probabilities", "num_clips"):
            if key in state and not _same(state[key], mine[key]):
                raise ValueError(f"MixtureSampler.load_state_dict: saved {key} {state[key]!r} "
                                 f"differs from this sampler's {mine[key]!r}; the stream "
                                 "would not continue")
        self._start, self._taken = consumed, 0


def _same(saved: Any, current: Any) -> bool:
    if isinstance(saved, Mapping) and isinstance(current, Mapping):
        return saved.keys() == current.keys() and all(
            math.isclose(float(saved[k]), float(current[k]), rel_tol=1e-9) for k in saved)
    return saved == current
