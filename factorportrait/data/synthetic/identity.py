"""Avatar identities as a flat vector, stored as a clip's ``betas`` so that the avatar of any
synthetic clip can be rebuilt from its annotation file alone.

Layout (``IDENTITY_DIM`` float64 values, exact round trip): the scalar fields of
``AvatarIdentity`` in declaration order (``head_width`` … ``hairline``, metres or ratios), then
the RGB triples of its colour fields (``skin_color``, ``hair_color``, ``eye_color``,
``lip_color``, ``clothing_color``).
"""

from __future__ import annotations

from dataclasses import fields

import torch
from torch import Tensor

from factorportrait.body import AvatarIdentity, HeadAvatar
from factorportrait.data.annotations import ClipAnnotations

SCALAR_FIELDS = tuple(f.name for f in fields(AvatarIdentity) if not f.name.endswith("_color"))
COLOR_FIELDS = tuple(f.name for f in fields(AvatarIdentity) if f.name.endswith("_color"))
IDENTITY_DIM = len(SCALAR_FIELDS) + 3 * len(COLOR_FIELDS)


def identity_to_vector(identity: AvatarIdentity) -> Tensor:
    """``AvatarIdentity`` → ``(IDENTITY_DIM,)`` float64 (layout: module docstring)."""
    values = [getattr(identity, name) for name in SCALAR_FIELDS]
    for name in COLOR_FIELDS:
        values += list(getattr(identity, name))
    return torch.tensor(values, dtype=torch.float64)


def identity_from_vector(vector: Tensor) -> AvatarIdentity:
    """``(IDENTITY_DIM,)`` → ``AvatarIdentity``; ``ValueError`` for another length."""
    if vector.shape != (IDENTITY_DIM,):
        raise ValueError(f"identity vector: expected shape ({IDENTITY_DIM},) (see "
                         f"factorportrait.data.synthetic.identity), got {tuple(vector.shape)}")
    values = vector.double().tolist()
    scalars = dict(zip(SCALAR_FIELDS, values))
    rest = values[len(SCALAR_FIELDS):]
    colors = {name: tuple(rest[3 * i:3 * i + 3]) for i, name in enumerate(COLOR_FIELDS)}
    return AvatarIdentity(**scalars, **colors)


def avatar_from_annotations(annotations: ClipAnnotations) -> HeadAvatar:
    """Rebuild the avatar a synthetic clip was rendered from (its ``betas``)."""
    if annotations.betas is None:
        raise ValueError("annotations have no betas: not a synthetic clip (its avatar identity "
                         "is stored there)")
    return HeadAvatar(identity_from_vector(annotations.betas))
