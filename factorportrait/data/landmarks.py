"""2D facial landmarks of synthetic clips: MediaPipe's 478 face-mesh points on the clip's own
procedural avatar, posed as in the clip and projected — the training input of the landmark
expression condition (``PortraitConditions.landmarks``, FactorPortrait C3).

A synthetic clip stores its avatar identity as ``betas``
(:mod:`factorportrait.data.synthetic.identity`), so its avatar can be rebuilt from the sample.
Each of the 478 points of the canonical face (:func:`factorportrait.tracking.canonical.
canonical_face`, metres in the avatar's head frame) is matched once per identity to the
avatar's nearest neutral vertex (the mesh's spacing: 3-4 mm off at the median, under 2 cm
everywhere, on sampled identities); a frame's landmarks are those vertices of the posed mesh
seen by its camera.
Real captures have no avatar; their landmarks would come from tracking.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from factorportrait.geometry.cameras import Cameras
from factorportrait.geometry.head_pose import normalised_landmarks

LANDMARK_POINTS = 478  # MediaPipe face mesh with irises
AVATAR_CACHE_SIZE = 32  # identities kept (per process: each DataLoader worker has its own)


@functools.lru_cache(maxsize=AVATAR_CACHE_SIZE)
def _avatar_and_vertices(betas: bytes) -> tuple[Any, Tensor]:
    """The avatar of float64 ``betas`` (raw bytes, hashable) and its landmark vertices."""
    from factorportrait.body import HeadAvatar
    from factorportrait.data.synthetic.identity import identity_from_vector

    avatar = HeadAvatar(identity_from_vector(torch.from_numpy(
        np.frombuffer(betas, dtype=np.float64).copy())))
    return avatar, nearest_landmark_vertices(avatar)


def nearest_landmark_vertices(avatar: Any) -> Tensor:
    """Indices ``(478,)``: the avatar's neutral vertex nearest to each canonical-face point
    (metres, head frame) — the vertices standing for MediaPipe's landmarks."""
    from factorportrait.tracking.canonical import canonical_face

    neutral = avatar.neutral_vertices
    return torch.cdist(canonical_face().to(neutral), neutral).argmin(1)


def landmark_vertices(betas: Tensor) -> Tensor:
    """Indices ``(478,)`` of the avatar's vertices standing for MediaPipe's landmarks: the
    neutral vertex nearest to each canonical-face point (cached per identity)."""
    return _avatar_and_vertices(_betas_key(betas))[1]


def avatar_landmarks(betas: Tensor, expression: Tensor, head_rotation: Tensor,
                     head_translation: Tensor, cameras: Cameras) -> Tensor:
    """Landmarks ``(F, 478, 2)`` in [−1, 1] image coordinates of a synthetic avatar.

    Args:
        betas: ``(S,)`` the clip's avatar identity (``identity_to_vector``).
        expression: ``(F, E)`` weights of ``HeadAvatar.EXPRESSION_NAMES``.
        head_rotation: ``(F, 3)`` axis-angle, world frame; head_translation: ``(F, 3)`` metres.
        cameras: ``F`` cameras (or 1) with ``width``/``height``.
    """
    avatar, vertices = _avatar_and_vertices(_betas_key(betas))
    if expression.ndim != 2 or expression.shape[1] != avatar.num_expressions:
        raise ValueError(f"expression: expected (F, {avatar.num_expressions}) weights of "
                         f"{avatar.EXPRESSION_NAMES}, got {tuple(expression.shape)}")
    posed = avatar.pose(expression.float(), head_rotation.float(),
                        head_translation.float())  # (F, V, 3) world
    return normalised_landmarks(posed[:, vertices], cameras)  # (F, 478, 2)


def sample_landmarks(sample: Mapping[str, Any]) -> Tensor:
    """Landmarks ``(F, 478, 2)`` of a ``PortraitClipDataset`` sample's driving frames; a clip
    without an avatar (no ``betas`` or no ``expression``) raises ``ValueError``."""
    clip = sample["clip_id"]
    if sample.get("betas") is None:
        raise ValueError(f"clip {clip!r}: landmarks need synthetic avatars (annotated betas) "
                         "or tracking; this clip has neither")
    if sample.get("expression") is None:
        raise ValueError(f"clip {clip!r}: landmarks need the avatar's expression parameters; "
                         "the clip has none annotated")
    try:
        return avatar_landmarks(sample["betas"], sample["expression"], sample["head_rotation"],
                                sample["head_translation"], sample["cameras"])
    except ValueError as err:
        raise ValueError(f"clip {clip!r}: landmarks: {err}") from err


def _betas_key(betas: Tensor) -> bytes:
    if betas.ndim != 1:
        raise ValueError(f"betas: expected (S,), got {tuple(betas.shape)}")
    return betas.detach().cpu().double().numpy().tobytes()
