"""Training batches of positive pairs from a rolling pool of rendered expression sets.

Rendering costs ≈ 20 ms per view on one CPU core, more than a training step of the ``small``
encoder per sample, so sets are rendered into a pool (``pool_sets`` × ``pool_views``) and each
step replaces the ``refresh`` oldest sets with fresh renders (new expressions, identities, poses
and cameras): the data stay on-the-fly while every render is used a few times, each time with
new augmentations. A batch takes ``B`` sets and two different views of each:

    crops (2B, 3, S, S) = [view a of sets 0..B-1, view b of sets 0..B-1],  expression (B, 8)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from factorportrait.expression.augment import AugmentConfig, augment_faces
from factorportrait.expression.sets import AvatarPool, ExpressionSets, SetSampling, render_sets


@dataclass(frozen=True, eq=False)
class PairBatch:
    """``crops (2B, 3, S, S)`` in [-1, 1] (first half view a, second half view b of the same
    sets), ``expression (B, 8)``, ``identity (2B,)`` and ``sets (B,)`` pool indices."""

    crops: Tensor
    expression: Tensor
    identity: Tensor
    sets: Tensor


class SetPool:
    """A pool of ``num_sets`` rendered sets of ``views`` views, refreshed oldest-first."""

    def __init__(self, avatars: AvatarPool, num_sets: int, views: int, face_size: int,
                 sampling: SetSampling, generator: torch.Generator) -> None:
        if views < 2:
            raise ValueError(f"SetPool: need at least 2 views per set for pairs, got {views}")
        self.avatars, self.face_size, self.sampling = avatars, face_size, sampling
        self.generator = generator
        self.sets: ExpressionSets = render_sets(avatars, num_sets, views, face_size, sampling,
                                                generator)
        self._oldest = 0

    def __len__(self) -> int:
        return self.sets.num_sets

    def refresh(self, count: int) -> None:
        """Replace the ``count`` oldest sets with newly rendered ones."""
        if count <= 0:
            return
        fresh = render_sets(self.avatars, count, self.sets.num_views, self.face_size,
                            self.sampling, self.generator)
        index = (self._oldest + torch.arange(count)) % len(self)
        self.sets.images[index] = fresh.images
        self.sets.expression[index] = fresh.expression
        self.sets.identity[index] = fresh.identity
        self.sets.roll[index] = fresh.roll
        for name, value in fresh.factors.items():
            self.sets.factors[name][index] = value
        self._oldest = int((self._oldest + count) % len(self))

    def sample(self, batch_sets: int, augment: AugmentConfig, crop_size: int) -> PairBatch:
        """``batch_sets`` random sets, two different random views of each, augmented."""
        generator, sets = self.generator, self.sets
        chosen = torch.randperm(len(self), generator=generator)[:batch_sets]  # (B,)
        first = torch.randint(sets.num_views, (len(chosen),), generator=generator)
        offset = torch.randint(1, sets.num_views, (len(chosen),), generator=generator)
        second = (first + offset) % sets.num_views  # another view of the same set
        set_index, view_index = chosen.repeat(2), torch.cat([first, second])  # (2B,)
        frames = sets.images[set_index, view_index]  # (2B, 3, R, R)
        boxes = sets.face_boxes(set_index, view_index)
        crops, _ = augment_faces(frames, boxes, crop_size, augment, generator)
        return PairBatch(crops, sets.expression[chosen].clone(),
                         sets.identity[set_index, view_index].clone(), chosen)
