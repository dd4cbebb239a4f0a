"""Wan-VAE latents of a dataset's training windows, computed once (``tools/precompute.py``).

The Wan VAE is causal with 4x temporal compression, so the latents of a window are not a
slice of the whole clip's latents. The cache therefore stores, per clip and ``SamplingSpec``,
the latents of exactly the windows the spec allows (``spec.window_starts``), each encoded on
its own as the loader would encode it, plus the reference candidates (``spec.reference_frames``)
each encoded as a 1-frame video::

    <root>/latents/<vae hash>/<spec key>/<clip file>.safetensors
        latents         (W, 16, F_lat, h, w)   one per window start
        normal_latents  (W, 16, F_lat, h, w)   when the clip has a normal-map video
        references      (R, 16, 1, h, w)       one per reference candidate frame

The header's ``"factorportrait"`` JSON records the format version, clip id, VAE hash (of its
weights, ``WanVAE.weights_hash``), the spec, the clip's frame count, the window starts and
reference frames, and the size and mtime of every source file. An entry whose VAE hash,
spec or sources differ is stale: the loader does not serve it and ``precompute_latents``
recomputes it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from factorportrait.data.clip import ClipSource
from factorportrait.data.format import PATH_FIELDS, ClipRecord
from factorportrait.data.sampling import SamplingSpec
from factorportrait.io.atomic import PathLike, atomic_write_bytes

if TYPE_CHECKING:
    from factorportrait.data.dataset import PortraitClipDataset

CACHE_FORMAT = "factorportrait.latents"
CACHE_VERSION = 1
CACHE_FOLDER = "latents"
REFERENCE_BATCH = 8  # reference images encoded per VAE call
LOG = logging.getLogger(__name__)


class CacheMiss(ValueError):
    """A clip has no up-to-date cache entry (missing, unreadable or stale; the message says)."""


def source_stamp(root: PathLike, record: ClipRecord) -> dict[str, list[int]]:
    """``{field: [size in bytes, mtime in ns]}`` of the clip's files (video, annotations,
    normals); a missing file raises ``FileNotFoundError``."""
    stamp = {}
    for name in PATH_FIELDS:
        path = record.resolve(root, name)
        if path is not None:
            info = path.stat()
            stamp[name] = [info.st_size, info.st_mtime_ns]
    return stamp


def clip_file_name(clip_id: str) -> str:
    """A file name for a clip id: the id itself if it is a safe name, else a cleaned id plus a
    short hash (ids may hold ``/`` or spaces)."""
    if re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", clip_id):
        return f"{clip_id}.safetensors"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", clip_id).lstrip(".")[:80]
    digest = hashlib.sha1(clip_id.encode("utf-8")).hexdigest()[:10]
    return f"{cleaned}-{digest}.safetensors"


@dataclass(frozen=True)
class CacheEntry:
    """An up-to-date cache file of one clip; tensors are read lazily, one window at a time."""

    path: Path
    meta: dict[str, Any]
    window_starts: list[int] = field(init=False)
    reference_frames: list[int] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "window_starts", list(self.meta["window_starts"]))
        object.__setattr__(self, "reference_frames", list(self.meta["reference_frames"]))

    @property
    def clip_frames(self) -> int:
        return int(self.meta["clip_frames"])

    @property
    def has_normals(self) -> bool:
        return bool(self.meta["has_normals"])

    def _rows(self, name: str, row: int) -> Tensor:
        from safetensors import safe_open

        try:
            with safe_open(str(self.path), framework="pt") as handle:
                return handle.get_slice(name)[row:row + 1][0].float()
        except Exception as err:  # SafetensorError, OSError: truncated or replaced file
            raise CacheMiss(f"latent cache entry {self.path} is unreadable: {err}") from err

    def window(self, start: int) -> tuple[Tensor, Tensor | None]:
        """Latents ``(16, F_lat, h, w)`` of the window at ``start`` and of its normal-map
        window (``None`` without normals)."""
        if start not in self.window_starts:
            raise ValueError(f"latent cache entry {self.path} has no window at frame {start}")
        row = self.window_starts.index(start)
        normals = self._rows("normal_latents", row) if self.has_normals else None
        return self._rows("latents", row), normals

    def reference(self, frame: int) -> Tensor:
        """Latent ``(16, 1, h, w)`` of reference candidate ``frame``."""
        if frame not in self.reference_frames:
            raise ValueError(f"latent cache entry {self.path} has no reference frame {frame}")
        return self._rows("references", self.reference_frames.index(frame))


class LatentCache:
    """The cache of one VAE (``vae_hash``) under ``<root>/latents/<vae_hash>/``."""

    def __init__(self, root: PathLike, vae_hash: str) -> None:
        if not isinstance(vae_hash, str) or not re.fullmatch(r"[0-9a-zA-Z]+", vae_hash):
            raise ValueError(f"LatentCache: vae_hash must be an alphanumeric string "
                             f"(WanVAE.weights_hash()), got {vae_hash!r}")
        self.root = Path(root)
        self.vae_hash = vae_hash

    def folder(self, spec: SamplingSpec) -> Path:
        return self.root / CACHE_FOLDER / self.vae_hash / spec.key()

    def path(self, clip_id: str, spec: SamplingSpec) -> Path:
        return self.folder(spec) / clip_file_name(clip_id)

    def entry(self, record: ClipRecord, spec: SamplingSpec) -> CacheEntry:
        """The clip's entry; ``CacheMiss`` saying why when it is missing, unreadable or stale."""
        path = self.path(record.id, spec)
        if not path.is_file():
            raise CacheMiss(f"clip {record.id!r}: no latent cache entry {path} (run "
                            "tools/precompute.py with this VAE and sampling spec)")
        meta = _read_meta(path)
        try:
            stamp = source_stamp(self.root, record)
        except OSError as err:
            raise CacheMiss(f"clip {record.id!r}: a source file is missing: {err}") from err
        expected = {"clip_id": record.id, "vae_hash": self.vae_hash, "spec": spec.to_dict(),
                    "sources": stamp}
        changed = [key for key, value in expected.items() if meta.get(key) != value]
        if changed:
            raise CacheMiss(f"clip {record.id!r}: latent cache entry {path} is stale "
                            f"({', '.join(changed)} changed; rerun tools/precompute.py)")
        return CacheEntry(path, meta)

    def is_current(self, record: ClipRecord, spec: SamplingSpec) -> bool:
        try:
            self.entry(record, spec)
        except CacheMiss:
            return False
        return True

    def write(self, source: ClipSource, spec: SamplingSpec, tensors: dict[str, Tensor],
              tile: int | None = None) -> Path:
        """Store ``encode_clip``'s tensors for ``source`` atomically; returns the path."""
        from safetensors.torch import save

        path = self.path(source.record.id, spec)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"format": CACHE_FORMAT, "version": CACHE_VERSION, "clip_id": source.record.id,
                "vae_hash": self.vae_hash, "spec": spec.to_dict(),
                "sources": source_stamp(self.root, source.record),
                "clip_frames": source.num_frames,
                "window_starts": spec.window_starts(source.num_frames),
                "reference_frames": spec.reference_frames(source.num_frames),
                "has_normals": "normal_latents" in tensors, "tile": tile,
                "dtype": str(tensors["latents"].dtype).removeprefix("torch.")}
        data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        atomic_write_bytes(path, save(data, metadata={"factorportrait": json.dumps(meta)}))
        return path


def _read_meta(path: Path) -> dict[str, Any]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = json.loads((handle.metadata() or {})["factorportrait"])
    except Exception as err:  # truncated file, foreign file, missing or bad JSON
        raise CacheMiss(f"latent cache entry {path} is unreadable: {err}") from err
    if meta.get("format") != CACHE_FORMAT or meta.get("version") != CACHE_VERSION:
        raise CacheMiss(f"latent cache entry {path} has format {meta.get('format')!r} "
                        f"version {meta.get('version')!r}; this library reads "
                        f"{CACHE_FORMAT!r} version {CACHE_VERSION}")
    return meta


# -- encoding ---------------------------------------------------------------------------------
@torch.no_grad()
def encode_video(vae: torch.nn.Module, video: Tensor, tile: int | None = None) -> Tensor:
    """Pixels ``(3, F, H, W)`` in [-1, 1] → latents ``(16, F_lat, H/8, W/8)`` float32 on the
    CPU (encoded on the VAE's device)."""
    device = next(vae.parameters()).device
    return vae.encode(video[None].to(device), tile=tile)[0].float().cpu()


@torch.no_grad()
def encode_images(vae: torch.nn.Module, images: Tensor, tile: int | None = None) -> Tensor:
    """Images ``(N, 3, H, W)`` in [-1, 1], each a 1-frame video → ``(N, 16, 1, H/8, W/8)``
    float32 on the CPU."""
    device = next(vae.parameters()).device
    return vae.encode(images[:, :, None].to(device), tile=tile).float().cpu()


def encode_clip(source: ClipSource, spec: SamplingSpec, vae: torch.nn.Module,
                tile: int | None = None, dtype: torch.dtype = torch.float32
                ) -> dict[str, Tensor]:
    """Latents of every window and reference candidate of a clip (module docstring shapes),
    each window encoded exactly as ``to_training_sample`` encodes it."""
    starts = spec.window_starts(source.num_frames)
    if not starts:
        raise ValueError(f"clip {source.record.id!r} has {source.num_frames} frames, fewer "
                         f"than the {spec.span} a window spans")
    names = ["video", "normals"] if source.has_normals else ["video"]
    windows: dict[str, list[Tensor]] = {name: [] for name in names}
    for start in starts:
        frames = spec.frame_indices(start)
        for name in names:
            windows[name].append(encode_video(vae, source.read(name, frames, spec.size), tile))
    candidates = spec.reference_frames(source.num_frames)
    references = []
    for i in range(0, len(candidates), REFERENCE_BATCH):
        pixels = source.read("video", candidates[i:i + REFERENCE_BATCH], spec.size)
        references.append(encode_images(vae, pixels.transpose(0, 1), tile))
    out = {"latents": torch.stack(windows["video"]), "references": torch.cat(references)}
    if source.has_normals:
        out["normal_latents"] = torch.stack(windows["normals"])
    return {name: value.to(dtype) for name, value in out.items()}


@dataclass(frozen=True)
class PrecomputeReport:
    """What ``precompute_latents`` did: clip ids written, already up to date, and failed
    (with the reason)."""

    folder: Path
    written: tuple[str, ...]
    up_to_date: tuple[str, ...]
    failed: dict[str, str]

    def summary(self) -> str:
        return (f"{len(self.written)} written, {len(self.up_to_date)} up to date, "
                f"{len(self.failed)} failed ({self.folder})")


def precompute_latents(dataset: PortraitClipDataset, vae: torch.nn.Module,
                       tile: int | None = None, dtype: torch.dtype = torch.float32,
                       force: bool = False, progress: bool = False) -> PrecomputeReport:
    """Encode every clip of ``dataset`` (its records and ``spec``) into the cache of ``vae``.

    Up-to-date entries are skipped unless ``force``; unreadable clips are logged and listed
    in the report, never fatal. Writes are atomic, so an interrupted run leaves only complete
    entries and the next run continues.
    """
    from tqdm.auto import tqdm

    cache = LatentCache(dataset.root, vae.weights_hash())
    spec = dataset.spec
    written, current, failed = [], [], {}
    for record in tqdm(dataset.records, desc="latents", unit="clip", disable=not progress):
        if not force and cache.is_current(record, spec):
            current.append(record.id)
            continue
        try:
            source = ClipSource.open(dataset.root, record)
            cache.write(source, spec, encode_clip(source, spec, vae, tile, dtype), tile)
        except torch.cuda.OutOfMemoryError as err:  # not the clip's fault: stop
            raise RuntimeError(f"precompute: out of GPU memory encoding clip {record.id!r}; "
                               "pass a spatial tile size (tile= / --tile)") from err
        except (OSError, ValueError, RuntimeError) as err:
            LOG.warning("precompute: skipping clip %r: %s", record.id, err)
            failed[record.id] = str(err)
        else:
            written.append(record.id)
    return PrecomputeReport(cache.folder(spec), tuple(written), tuple(current), failed)
