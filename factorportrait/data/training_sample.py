"""The training contract: a dataset sample → the DiT's inputs (DESIGN.md "Condition fusion").

``to_training_sample(sample, vae=None, landmarks=False)`` returns, for ``F = 4k + 1`` driving
frames at ``H × W`` (``h, w = H/8, W/8``, ``F_lat = (F − 1)/4 + 1``), all float32 on the CPU:

    latents           (16, F_lat, h, w)      VAE latents of the driving video (the target)
    reference_latent  (16, 1, h, w)          VAE latent of the reference image (1-frame video)
    normal_latents    (16, F_lat, h, w)      VAE latents of the normal-map video; zeros when
                                             the clip has none (``has_normals`` False)
    rays              (24, 1 + F_lat, h, w)  ``dit_rays(reference_camera, cameras, H, W)``
    expression        (F, 128)               expression codes; see ``expression_features``
    expression_source str                    "codes" | "parameters" | "none"
    head_pose         (1 + F, 3, 4)          DeX head poses ``P = [sR | t]``
                                             (``factorportrait.geometry.head_pose``): row 0 the
                                             reference frame's pose seen by the reference
                                             camera, rows 1.. the driving frames' by theirs
    landmarks         (F, 478, 2)            only with ``landmarks=True``: MediaPipe's face-mesh
                                             points in [−1, 1] image coordinates, from the
                                             clip's avatar (synthetic clips only;
                                             ``factorportrait.data.landmarks``)
    has_normals       bool
    clip_id, kind, reference_clip_id  str;  frame_indices (F,) int64;  reference_frame int

Latents come from the sample when the dataset served them from the cache, else the pixels are
encoded with ``vae`` (on its device); without either, ``ValueError``. All values collate with
``torch.utils.data.default_collate`` (strings become lists), giving the batched shapes of
``PortraitConditions``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from factorportrait.data.landmarks import sample_landmarks
from factorportrait.data.latent_cache import encode_images, encode_video
from factorportrait.geometry.head_pose import source_and_driving_poses
from factorportrait.geometry.rays import PIXEL_MULTIPLE, dit_rays

EXPRESSION_DIM = 128  # the expression controller's input width (FactorPortrait §4.2)
PASSED_THROUGH = ("clip_id", "kind", "frame_indices", "reference_clip_id", "reference_frame",
                  "has_normals")


def expression_features(sample: Mapping[str, Any], dim: int = EXPRESSION_DIM
                        ) -> tuple[Tensor, str]:
    """Per-frame expression input ``(F, dim)`` and where it came from.

    - ``"codes"``: the annotated ``expression_codes (F, D)``, zero-padded to ``dim`` if D < dim
      (the paper's encoder gives D = 128).
    - ``"parameters"``: no codes, so the named ``expression (F, E)`` parameters zero-padded to
      ``dim`` — a stand-in until the trained expression encoder (issue 8) writes codes.
    - ``"none"``: neither annotated: zeros.

    ``ValueError`` if D or E exceeds ``dim``.
    """
    frames = len(sample["frame_indices"])
    for key, source in (("expression_codes", "codes"), ("expression", "parameters")):
        value = sample.get(key)
        if value is None:
            continue
        if value.shape[-1] > dim:
            raise ValueError(f"clip {sample['clip_id']!r}: {key} has {value.shape[-1]} "
                             f"dimensions, more than the expression input's {dim}")
        return torch.nn.functional.pad(value.float(), (0, dim - value.shape[-1])), source
    return torch.zeros(frames, dim), "none"


def _check_size(sample: Mapping[str, Any]) -> tuple[int, int]:
    cameras = sample["cameras"]
    height, width = cameras.height, cameras.width
    if height % PIXEL_MULTIPLE or width % PIXEL_MULTIPLE:
        raise ValueError(f"clip {sample['clip_id']!r}: frames are {height}x{width}; the DiT "
                         f"needs multiples of {PIXEL_MULTIPLE}: pass size=(H, W) to the dataset")
    return height, width


def _latent(sample: Mapping[str, Any], latent_key: str, pixel_key: str,
            vae: torch.nn.Module | None, tile: int | None) -> Tensor:
    if sample.get(latent_key) is not None:
        return sample[latent_key].float()
    if vae is None:
        raise ValueError(f"clip {sample['clip_id']!r}: the sample holds pixels ({pixel_key}) "
                         f"but no {latent_key} and no vae was given: pass vae= to encode on "
                         "the fly, or precompute latents (tools/precompute.py)")
    pixels = sample[pixel_key]
    if pixel_key == "reference_image":  # (3, H, W) → (16, 1, h, w)
        return encode_images(vae, pixels[None], tile)[0]
    return encode_video(vae, pixels, tile)  # (3, F, H, W) → (16, F_lat, h, w)


def sample_head_pose(sample: Mapping[str, Any]) -> Tensor:
    """``(1 + F, 3, 4)`` float32 head poses ``P``: the reference frame's seen by
    ``reference_camera``, then the ``F`` driving frames' seen by ``cameras``."""
    try:
        return source_and_driving_poses(
            sample["reference_head_rotation"], sample["reference_head_translation"],
            sample["reference_camera"], sample["head_rotation"], sample["head_translation"],
            sample["cameras"])
    except ValueError as err:
        raise ValueError(f"clip {sample['clip_id']!r}: {err}") from err


def to_training_sample(sample: Mapping[str, Any], vae: torch.nn.Module | None = None,
                       tile: int | None = None, landmarks: bool = False) -> dict[str, Any]:
    """A ``PortraitClipDataset`` sample → the DiT's training inputs (module docstring).

    ``vae``: a ``WanVAE`` for pixels the cache did not cover; ``tile``: its spatial tile size.
    ``landmarks``: add ``landmarks (F, 478, 2)``; ``ValueError`` for a clip without an avatar.
    """
    height, width = _check_size(sample)
    latents = _latent(sample, "latents", "video", vae, tile)
    reference_latent = _latent(sample, "reference_latent", "reference_image", vae, tile)
    if sample.get("normal_latents") is not None or sample.get("normals") is not None:
        normal_latents = _latent(sample, "normal_latents", "normals", vae, tile)
    else:
        normal_latents = torch.zeros_like(latents)  # no normal maps: the dropped condition
    expression, source = expression_features(sample)
    out = {key: sample[key] for key in PASSED_THROUGH}
    out["replaced"] = sample.get("replaced", "")  # the bad clip(s) this sample stands for
    out.update(latents=latents, reference_latent=reference_latent,
               normal_latents=normal_latents, expression=expression, expression_source=source,
               rays=dit_rays(sample["reference_camera"], sample["cameras"], height,
                             width).float(), head_pose=sample_head_pose(sample))
    if landmarks:
        out["landmarks"] = sample_landmarks(sample)
    return out


class LatentTrainingDataset(Dataset):
    """``to_training_sample`` over a ``PortraitClipDataset`` (same indices and draws).

    With a ``vae`` on the GPU, keep DataLoader workers at 0 (or use the ``spawn`` start
    method); precomputed latents need no VAE in the loader. ``landmarks``: items carry
    ``landmarks (F, 478, 2)`` (synthetic clips only).
    """

    def __init__(self, dataset: Dataset, vae: torch.nn.Module | None = None,
                 tile: int | None = None, landmarks: bool = False) -> None:
        self.dataset = dataset
        self.vae = vae
        self.tile = tile
        self.landmarks = bool(landmarks)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        return to_training_sample(self.dataset[item], self.vae, self.tile, self.landmarks)

    def kind_to_indices(self) -> dict[str, list[int]]:
        return self.dataset.kind_to_indices()

    @property
    def bad_clips(self) -> dict[str, str]:
        return self.dataset.bad_clips
