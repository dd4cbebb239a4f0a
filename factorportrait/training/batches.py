"""From a dataset to DiT batches: the training data contract, datasets, the resumable loader.

The contract (what a training dataset item holds; ``F_lat = (F − 1)/4 + 1``):

    latents           (16, F_lat, h, w)      target video latents x_0
    reference_latent  (16, 1, h, w)          reference image latent
    normal_latents    (16, F_lat, h, w)      normal-map video latents
    rays              (24, 1 + F_lat, h, w)  Plücker rays, frame 0 = reference camera
    expression        (F, 128)               per-video-frame expression codes

and optionally (``PortraitConditions`` gets ``None`` where an item lacks them):

    head_pose         (1 + F, 3, 4)          DeX head poses ``[sR | t]``, row 0 = reference
    landmarks         (F, N, 2)              2D facial landmarks in [−1, 1]

Other keys (``kind``, ``clip_id`` …) are carried along and ignored. A dataset also offers
``kind_to_indices() -> {kind: [index, …]}`` for the curriculum's mixture sampler.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset

from factorportrait.data.dataset import DrawSampler
from factorportrait.data.mixture import MixtureSampler
from factorportrait.models.conditions import PortraitConditions
from factorportrait.training.config import DataSpec
from factorportrait.training.toy_data import SyntheticLatentDataset

CONTRACT_KEYS = ("latents", "reference_latent", "normal_latents", "rays", "expression")
VALIDATION_SEED_OFFSET = 7919  # the toy validation set: same task, other items


def batch_to_conditions(batch: Mapping[str, Any], device: torch.device | str | None = None
                        ) -> tuple[torch.Tensor, PortraitConditions]:
    """A collated batch -> ``(latents (B,16,F_lat,h,w), PortraitConditions)`` on ``device``;
    ``head_pose (B,1+F,3,4)`` and ``landmarks (B,F,N,2)`` go into the conditions when present.

    Raises ``ValueError`` naming a missing key; shapes are checked by
    :meth:`PortraitConditions.validate` (finiteness is left to the loop's bad-step guard).
    """
    missing = [key for key in CONTRACT_KEYS if key not in batch]
    if missing:
        raise ValueError(f"training batch lacks {missing}; a training dataset item must hold "
                         f"{list(CONTRACT_KEYS)} (see factorportrait.training.batches)")

    def move(key: str) -> torch.Tensor:
        value = batch[key]
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"training batch[{key!r}] must be a tensor, got "
                             f"{type(value).__name__}")
        return value.to(device, non_blocking=True) if device is not None else value

    def optional(key: str) -> torch.Tensor | None:
        return move(key) if batch.get(key) is not None else None

    latents = move("latents")
    conditions = PortraitConditions(reference_latent=move("reference_latent"),
                                    normal_latents=move("normal_latents"), rays=move("rays"),
                                    expression=move("expression"),
                                    head_pose=optional("head_pose"),
                                    landmarks=optional("landmarks"))
    conditions.validate(latents, check_finite=False)
    return latents, conditions


def build_dataset(spec: DataSpec, frames: int, seed: int, split: str = "train") -> Dataset:
    """The dataset named by ``spec.source`` for ``frames`` video frames; ``split`` is
    ``train`` or ``heldout`` (validation; uses ``spec.validation_options`` on top).

    ``toy``: :class:`SyntheticLatentDataset` (``options.num_items``, ``landmark_points``;
    validation items use another seed). ``synthetic``: ``factorportrait.data.build_dataset(frames=, height=,
    width=, split=, seed=, **options)``, which must return a dataset following the contract.
    """
    if split not in ("train", "heldout"):
        raise ValueError(f"split must be 'train' or 'heldout', got {split!r}")
    if spec.source == "toy":
        options = dict(spec.options if split == "train" else
                       {**spec.options, **spec.validation_options})
        num_items = options.pop("num_items", 64)
        landmark_points = options.pop("landmark_points", 0)
        if options:
            raise ValueError(f"data.options for the toy source accept only num_items and "
                             f"landmark_points, got {sorted(options)}")
        item_seed = seed if split == "train" else seed + VALIDATION_SEED_OFFSET
        return SyntheticLatentDataset(num_items, frames, spec.height // 8, spec.width // 8,
                                      seed=item_seed, landmark_points=landmark_points)
    try:
        from factorportrait.data import build_dataset as build_real_dataset
    except ImportError as error:
        raise RuntimeError(
            "data=synthetic needs factorportrait.data.build_dataset(frames=, height=, width=, "
            "split=, seed=, **options) returning latent training items (see "
            "factorportrait.training.batches), and this version of factorportrait.data does not "
            "provide it yet. Use data=toy (random latents) until it lands.") from error
    options = {**spec.options, **(spec.validation_options if split != "train" else {})}
    return build_real_dataset(frames=frames, height=spec.height, width=spec.width, split=split,
                              seed=seed, **options)


def kind_to_indices(dataset: Dataset) -> dict[str, list[int]]:
    if not hasattr(dataset, "kind_to_indices"):
        raise ValueError(f"{type(dataset).__name__} has no kind_to_indices(); the mixture "
                         f"sampler needs each item's clip kind")
    return dataset.kind_to_indices()


def build_loader(dataset: Dataset, mixture: Mapping[str, float], batch_size: int, seed: int,
                 rank: int, world_size: int, num_workers: int = 0, pin_memory: bool = False
                 ) -> tuple[DataLoader, MixtureSampler]:
    """An infinite loader over this rank's share of the mixture stream, and its sampler.

    Resume with ``sampler.load_state_dict({"samples_consumed": steps · global_batch})``
    *before* iterating (see :mod:`factorportrait.data.mixture`).
    """
    ratios = {kind: float(ratio) for kind, ratio in mixture.items()}
    sampler = MixtureSampler(kind_to_indices(dataset), ratios, seed=seed, rank=rank,
                             world_size=world_size)
    generator = torch.Generator().manual_seed(seed + rank)  # DataLoader worker seeds
    loader = DataLoader(dataset, batch_size=batch_size, sampler=DrawSampler(sampler),
                        num_workers=num_workers, pin_memory=pin_memory, drop_last=True,
                        generator=generator, persistent_workers=num_workers > 0)
    return loader, sampler


def fixed_batches(dataset: Dataset, batch_size: int, count: int) -> list[dict[str, Any]]:
    """The first ``count`` batches of ``dataset`` in index order (validation), collated."""
    if len(dataset) < batch_size * count:
        raise ValueError(f"validation needs {batch_size * count} items "
                         f"({count} batches of {batch_size}); the dataset has {len(dataset)}")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    iterator: Iterator[dict[str, Any]] = iter(loader)
    return [next(iterator) for _ in range(count)]
