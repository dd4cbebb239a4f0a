"""``PortraitClipDataset``: training samples — a window of driving frames, a reference frame of
the same identity, cameras, normal maps and expressions — from a dataset folder (docs/dataset.md).

A sample (``dataset[index]`` or ``dataset[index, draw]``) is a dict; ``F`` = ``num_frames``,
``H × W`` = ``size`` (or the clip's size), ``h, w = H/8, W/8``, ``F_lat = (F − 1)/4 + 1``:

    clip_id, kind            str
    frame_indices            (F,) int64      source frames of the window
    cameras                  Cameras (F)     K for H × W, c2w in the clip's world frame
    reference_clip_id        str             the clip the reference frame comes from
    reference_frame          int             its frame index there
    reference_camera         Cameras (1)     camera of that frame (same world frame for a take)
    reference_head_rotation  (3,)            head pose of that frame (axis-angle, metres), in
    reference_head_translation  (3,)         the world frame of the cameras, like the camera
    head_rotation            (F, 3)          axis-angle, world frame
    head_translation         (F, 3)          metres, world frame
    expression_codes         (F, D)          when annotated
    expression               (F, E)          when annotated (named parameters)
    betas                    (S,)            when annotated, as stored (synthetic clips: the
                                             avatar identity, float64; for landmarks)
    has_normals              bool            the clip has a normal-map video
  pixels (no up-to-date latent cache entry, or ``latents=False``):
    video                    (3, F, H, W)    float32 in [-1, 1]
    reference_image          (3, H, W)       float32 in [-1, 1]
    normals                  (3, F, H, W)    in [-1, 1], when ``has_normals``
  latents (served from the cache, ``latents=True`` / ``"auto"``):
    latents                  (16, F_lat, h, w)
    reference_latent         (16, 1, h, w)
    normal_latents           (16, F_lat, h, w), when ``has_normals``

``to_training_sample`` (``factorportrait.data.training_sample``) turns either form into the
DiT's inputs. Samples are pure functions of ``(seed, clip id, draw)``; ``DrawSampler`` pairs
each index of a stream with its position as the draw, so every visit of a clip draws a new
window and a resumed stream repeats exactly.

Unreadable clips (a corrupt video, a missing annotation file, mismatched frame counts,
non-finite annotations in the window, …) are logged once, recorded in ``bad_clips`` and
replaced by a readable clip of the same kind drawn at random (a pure function of the draw, so
the mixture and every clip's share stay fair and resuming repeats it); the sample's
``replaced`` names what it stands for. When more than ``max_bad_fraction`` of the clips are
bad, ``TooManyBadClips`` lists them.
With DataLoader workers each worker keeps its own record (every worker finds the same bad
clips when it reaches them).
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from factorportrait.data.clip import ClipSource
from factorportrait.data.format import KINDS, SPLITS, ClipRecord, manifest_path, read_manifest
from factorportrait.data.latent_cache import CacheEntry, CacheMiss, LatentCache
from factorportrait.data.mixture import indices_by_kind
from factorportrait.data.sampling import (
    SamplingSpec,
    choose_reference,
    choose_start,
    choose_view,
    sample_rng,
)
from factorportrait.io.atomic import PathLike

REFERENCE_POLICIES = ("same_clip", "other_view")
DEFAULT_REFERENCE = {"studio": "other_view"}  # every other kind: "same_clip"
LOADING_ERRORS = (OSError, ValueError, RuntimeError)  # what a bad clip raises
REPLACEMENT_DRAWS = 10_000  # uniform draws tried for a bad clip's replacement
LOG = logging.getLogger(__name__)


class TooManyBadClips(RuntimeError):
    """More than ``max_bad_fraction`` of the clips are unreadable (the message lists them)."""


def _reference_policy(reference: str | Mapping[str, str] | None) -> dict[str, str]:
    """Policy per kind: one for all kinds, a mapping (absent kinds: the defaults), or None."""
    chosen = dict(DEFAULT_REFERENCE)
    if isinstance(reference, str):
        chosen = dict.fromkeys(KINDS, reference)
    elif reference is not None:
        unknown = sorted(set(reference) - set(KINDS))
        if unknown:
            raise ValueError(f"PortraitClipDataset: reference policy for unknown kind(s) "
                             f"{unknown}; valid kinds: {', '.join(KINDS)}")
        chosen.update(reference)
    policy = {kind: chosen.get(kind, "same_clip") for kind in KINDS}
    bad = sorted({p for p in policy.values() if p not in REFERENCE_POLICIES})
    if bad:
        raise ValueError(f"PortraitClipDataset: unknown reference policy {bad}; choose from "
                         f"{', '.join(REFERENCE_POLICIES)}")
    return policy


def _select(records: list[ClipRecord], split: str | None, kinds: Sequence[str] | None,
            spec: SamplingSpec) -> list[ClipRecord]:
    """Records of ``split`` (``"train"`` also takes records without a split; ``None``: all)
    and ``kinds``, dropping clips whose manifest ``num_frames`` is shorter than a window."""
    if split is not None and split not in SPLITS:
        raise ValueError(f"PortraitClipDataset: unknown split {split!r}; choose from "
                         f"{', '.join(SPLITS)} or None")
    if kinds is not None:
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"PortraitClipDataset: unknown kind(s) {unknown}; valid kinds: "
                             f"{', '.join(KINDS)}")
    chosen = [r for r in records if (split is None or (r.split or "train") == split)
              and (kinds is None or r.kind in kinds)]
    short = [r.id for r in chosen if r.num_frames is not None and r.num_frames < spec.span]
    if short:
        LOG.warning("PortraitClipDataset: leaving out %d clip(s) shorter than a window of %d "
                    "frames (e.g. %s)", len(short), spec.span, short[:3])
    return [r for r in chosen if r.id not in set(short)]


class PortraitClipDataset(Dataset):
    """Map-style dataset of training samples (module docstring for the sample's keys).

    Args:
        root: dataset folder (with ``manifest.jsonl``) or the manifest file.
        num_frames: driving frames per sample, ``4k + 1`` (13, 25, 49, 81).
        stride: source frames between driving frames. size: ``(H, W)`` multiples of 16
            (centre crop to the aspect ratio, then resize; K follows) or ``None``.
        split: ``"train"`` (records without a split count as train), ``"heldout"``, or None.
        kinds: kinds to keep (default all). reference: ``"same_clip"`` (another frame of the
            clip) or ``"other_view"`` (a frame of another view of the same take, else the same
            clip), for every kind or per kind; default ``other_view`` for studio.
        window_step, reference_count: the allowed window starts and reference candidates
            (``SamplingSpec``); a latent cache holds those of the spec it was built for.
        max_bad_fraction: fraction of unreadable clips tolerated before ``TooManyBadClips``.
        seed: samples are a function of ``(seed, clip id, draw)``.
        latents: ``False`` pixels; ``True`` latents from the cache of ``vae_hash`` (a clip
            without an up-to-date entry is a bad clip); ``"auto"`` latents where cached,
            pixels elsewhere.
        vae_hash: ``WanVAE.weights_hash()`` of the cache to read (needed unless pixels).
    """

    def __init__(self, root: PathLike, num_frames: int, stride: int = 1,
                 size: tuple[int, int] | None = None, *, split: str | None = "train",
                 kinds: Sequence[str] | None = None,
                 reference: str | Mapping[str, str] | None = None, window_step: int = 1,
                 reference_count: int | None = None, max_bad_fraction: float = 0.1,
                 seed: int = 0, latents: bool | Literal["auto"] = False,
                 vae_hash: str | None = None) -> None:
        self.root = manifest_path(root).parent
        self.spec = SamplingSpec(num_frames, stride, size, window_step, reference_count)
        self.records = _select(read_manifest(root), split, kinds, self.spec)
        if not self.records:
            raise ValueError(f"PortraitClipDataset: no clips in {self.root} for split "
                             f"{split!r} and kinds {kinds!r}")
        if not 0 <= max_bad_fraction <= 1:
            raise ValueError(f"PortraitClipDataset: max_bad_fraction must be in [0, 1], got "
                             f"{max_bad_fraction!r}")
        self.reference_policy = _reference_policy(reference)
        self.max_bad_fraction = float(max_bad_fraction)
        self.seed = int(seed)
        self.latents = latents
        self.cache = self._latent_cache(latents, vae_hash)
        self.bad_clips: dict[str, str] = {}  # clip id → why it is unreadable
        self._index = {r.id: i for i, r in enumerate(self.records)}
        self._by_kind = indices_by_kind([r.kind for r in self.records])
        self._kind_position = {i: k for indices in self._by_kind.values()
                               for k, i in enumerate(indices)}  # index → place in its kind
        self._views = self._take_views()
        self._checked: set[str] = set()  # clips whose videos were checked against annotations

    def _latent_cache(self, latents: object, vae_hash: str | None) -> LatentCache | None:
        if latents is False:
            return None
        if latents not in (True, "auto"):
            raise ValueError(f"PortraitClipDataset: latents must be False, True or 'auto', "
                             f"got {latents!r}")
        if vae_hash is None:
            raise ValueError("PortraitClipDataset: latents need vae_hash (WanVAE.weights_hash()"
                             " of the VAE the cache was built with)")
        cache = LatentCache(self.root, vae_hash)
        folder = cache.folder(self.spec)
        if latents is True and not folder.is_dir():
            built = sorted(p.relative_to(self.root).as_posix()
                           for p in (self.root / "latents").glob("*/*") if p.is_dir())
            raise FileNotFoundError(f"PortraitClipDataset: no latent cache {folder} for this VAE "
                                    f"and sampling spec; caches present: {built or 'none'} "
                                    "(run tools/precompute.py)")
        return cache

    def _take_views(self) -> dict[str, list[str]]:
        """Other clips of the same take (sorted ids), per clip id."""
        takes: dict[str, list[str]] = {}
        for record in self.records:
            if record.take is not None:
                takes.setdefault(record.take, []).append(record.id)
        return {r.id: sorted(i for i in takes.get(r.take, []) if i != r.id)
                for r in self.records}

    # -- index structure ------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.records)

    def kinds(self) -> list[str]:
        """Kind of every index."""
        return [r.kind for r in self.records]

    def kind_to_indices(self) -> dict[str, list[int]]:
        """Indices of each kind, for ``MixtureSampler``."""
        return {kind: list(indices) for kind, indices in self._by_kind.items()}

    # -- samples ----------------------------------------------------------------------------------
    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        """Sample of clip ``index`` for ``draw`` (default 0). A bad clip is replaced by a clip
        of its kind drawn uniformly at random — candidates come from a generator seeded by
        ``(seed, clip id, draw)``, so the replacement is a pure function of the draw (fair to
        every good clip, and the same after a resume) — with the same draw; the sample's
        ``replaced`` names the bad clip it stands for (``""`` when none)."""
        index, draw = (item if isinstance(item, tuple) else (item, 0))
        index, draw = operator.index(index), operator.index(draw)
        if not -len(self) <= index < len(self):
            raise IndexError(f"PortraitClipDataset: index {index} out of range for "
                             f"{len(self)} clips")
        record = self.records[index % len(self)]
        same_kind = self._by_kind[record.kind]
        for candidate in self._candidates(record, draw, same_kind):
            if candidate.id not in self.bad_clips:
                try:
                    sample = self._sample(candidate, draw)
                except TooManyBadClips:
                    raise
                except LOADING_ERRORS as err:
                    self._mark_bad(candidate, err)
                else:
                    sample["replaced"] = "" if candidate is record else record.id
                    return sample
            if all(self.records[i].id in self.bad_clips for i in same_kind):
                break
        raise TooManyBadClips(f"PortraitClipDataset: every {record.kind} clip is unreadable:\n"
                              + self._bad_listing())

    def _candidates(self, record: ClipRecord, draw: int, same_kind: Sequence[int]
                    ) -> Iterator[ClipRecord]:
        """``record``, then uniform draws among its kind (replacements for a bad clip)."""
        yield record
        rng = sample_rng(self.seed, f"replacement:{record.id}", draw)
        for _ in range(REPLACEMENT_DRAWS):
            yield self.records[same_kind[int(rng.integers(len(same_kind)))]]

    def _mark_bad(self, record: ClipRecord, err: BaseException) -> None:
        reason = f"{type(err).__name__}: {err}"
        self.bad_clips[record.id] = reason
        LOG.warning("skipping unreadable clip %r (%d bad so far): %s", record.id,
                    len(self.bad_clips), reason)
        if len(self.bad_clips) > self.max_bad_fraction * len(self):
            raise TooManyBadClips(
                f"PortraitClipDataset {self.root}: {len(self.bad_clips)} of {len(self)} clips "
                f"are unreadable (more than max_bad_fraction={self.max_bad_fraction}):\n"
                + self._bad_listing())

    def _bad_listing(self, limit: int = 20) -> str:
        lines = [f"  {clip_id}: {reason}" for clip_id, reason in self.bad_clips.items()]
        more = [f"  … and {len(lines) - limit} more"] if len(lines) > limit else []
        return "\n".join(lines[:limit] + more)

    def _open(self, record: ClipRecord) -> tuple[ClipSource, CacheEntry | None]:
        """The clip and its cache entry (``None``: serve pixels)."""
        entry = None
        if self.cache is not None:
            try:
                entry = self.cache.entry(record, self.spec)
            except CacheMiss:
                if self.latents is True:
                    raise
        check = entry is None and record.id not in self._checked
        source = ClipSource.open(self.root, record, check_videos=check)
        if check:
            self._checked.add(record.id)
        if entry is not None and entry.clip_frames != source.num_frames:
            raise CacheMiss(f"clip {record.id!r}: latent cache entry {entry.path} has "
                            f"{entry.clip_frames} frames, the annotations {source.num_frames}")
        return source, entry

    def _sample(self, record: ClipRecord, draw: int) -> dict[str, Any]:
        spec = self.spec
        rng = sample_rng(self.seed, record.id, draw)
        source, entry = self._open(record)
        start = choose_start(spec, source.num_frames, rng, record.id)
        frames = spec.frame_indices(start)
        sample: dict[str, Any] = {
            "clip_id": record.id, "kind": record.kind,
            "frame_indices": torch.tensor(frames, dtype=torch.long),
            "cameras": source.cameras(frames, spec.size), "has_normals": source.has_normals,
            **source.per_frame(frames)}
        if source.annotations.betas is not None:
            sample["betas"] = source.annotations.betas.clone()
        if entry is None:
            sample["video"] = source.read("video", frames, spec.size)
            if source.has_normals:
                sample["normals"] = source.read("normals", frames, spec.size)
        else:
            latents, normal_latents = entry.window(start)
            sample["latents"] = latents
            if normal_latents is not None:
                sample["normal_latents"] = normal_latents
        own_frame = choose_reference(spec, source.num_frames, rng, (frames[0], frames[-1]))
        size = source.output_size(spec.size)
        sample.update(self._other_view(record, rng, size) or self._reference_from(
            source, entry, own_frame))
        return sample

    def _other_view(self, record: ClipRecord, rng: np.random.Generator,
                    size: tuple[int, int]) -> dict[str, Any] | None:
        """Reference from another view of the take (policy ``other_view``), or ``None``:
        no other view, an unreadable one (recorded as bad), or one of another image size
        (possible with ``size=None``)."""
        if self.reference_policy[record.kind] != "other_view":
            return None
        view = choose_view(self._views[record.id], rng)
        if view is None or view in self.bad_clips:
            return None
        other = self.records[self._index[view]]
        try:
            source, entry = self._open(other)
            if source.output_size(self.spec.size) != size:
                return None
            frame = choose_reference(self.spec, source.num_frames, rng)
            return self._reference_from(source, entry, frame)
        except LOADING_ERRORS as err:
            self._mark_bad(other, err)
            return None

    def _reference_from(self, source: ClipSource, entry: CacheEntry | None,
                        frame: int) -> dict[str, Any]:
        out = {"reference_clip_id": source.record.id, "reference_frame": frame,
               "reference_camera": source.cameras([frame], self.spec.size),
               **_reference_head_pose(source, frame)}
        if entry is None:
            out["reference_image"] = source.read("video", [frame], self.spec.size)[:, 0]
        else:
            out["reference_latent"] = entry.reference(frame)
        return out


def _reference_head_pose(source: ClipSource, frame: int) -> dict[str, torch.Tensor]:
    """``reference_head_rotation (3,)`` and ``reference_head_translation (3,)`` float32 of
    ``frame``; ``ValueError`` (a bad clip) for non-finite values."""
    out = {}
    for name in ("head_rotation", "head_translation"):
        value = getattr(source.annotations, name)[frame].float()  # (3,)
        if not bool(torch.isfinite(value).all()):
            raise ValueError(f"clip {source.record.id!r}: annotation {name} has NaN/Inf values "
                             f"at reference frame {frame}")
        out[f"reference_{name}"] = value
    return out


class DrawSampler(Sampler[tuple[int, int]]):
    """Wrap an index sampler: yield ``(index, draw)`` with ``draw`` the index's global stream
    position (``MixtureSampler``: positions of every rank; otherwise a running count).

    Use as ``DataLoader(dataset, sampler=DrawSampler(mixture))``. ``state_dict`` and
    ``load_state_dict`` are the wrapped sampler's, so resuming replays the same samples.
    """

    def __init__(self, sampler: Sampler[int]) -> None:
        super().__init__()
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        stream = getattr(self.sampler, "samples_consumed", None) is not None
        for count, index in enumerate(self.sampler):
            if stream:  # MixtureSampler has counted this item already
                world = self.sampler.world_size
                draw = self.sampler.samples_consumed - world + self.sampler.rank
            else:
                draw = count
            yield int(index), int(draw)

    def __len__(self) -> int:
        return len(self.sampler)  # TypeError for infinite samplers, like theirs

    def state_dict(self) -> dict[str, Any]:
        return self.sampler.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.sampler.load_state_dict(state)

