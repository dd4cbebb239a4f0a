"""Writing a synthetic dataset folder: atomic per clip, resumable, one writer at a time.

Layout (docs/dataset.md): ``manifest.jsonl``, ``videos/<id>.mp4`` (RGB), ``normals/<id>.mp4``
(normal maps, lossless), ``annotations/<id>.safetensors``, plus ``synthetic.json`` (the
:class:`SyntheticConfig` the folder belongs to) and ``.make_synthetic.lock``.

A clip belongs to the dataset once its manifest line is there. Each clip's three files are
written atomically to their final paths first, then the line is appended (one locked, fsynced
write). A run killed at any moment leaves at most the files of one unlisted clip (overwritten
on the next run) and temporary files (removed when the next run starts). Re-running with the
same config skips the listed clips and renders the others; since every clip depends only on
its own seed, the result is the dataset an uninterrupted run writes.
"""

from __future__ import annotations

import functools
import json
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from factorportrait.body import HeadAvatar
from factorportrait.data.annotations import save_annotations
from factorportrait.data.format import MANIFEST_NAME, ClipRecord, append_manifest
from factorportrait.data.synthetic.config import ClipSpec, SyntheticConfig, plan_clips
from factorportrait.data.synthetic.generator import make_avatar, render_clip
from factorportrait.data.writing import claim_settings, exclusive, listed_ids, prepare_folders
from factorportrait.io import write_video
from factorportrait.io.atomic import PathLike

CONFIG_NAME = "synthetic.json"
LOCK_NAME = ".make_synthetic.lock"
TOOL = "make_synthetic"


@dataclass(frozen=True)
class GenerationReport:
    """What ``generate_dataset`` did: clips planned, written now, already there; wall time."""

    root: Path
    planned: int
    written: int
    skipped: int
    seconds: float

    def summary(self) -> str:
        return (f"{self.root}: {self.planned} clips ({self.written} written, {self.skipped} "
                f"already there) in {self.seconds:.1f} s")


def write_clip_files(root: PathLike, spec: ClipSpec, config: SyntheticConfig,
                     avatar: HeadAvatar | None = None) -> ClipRecord:
    """Render one clip and write its two videos and annotations, each atomically, to their
    final paths (no manifest line yet). Returns the clip's manifest record."""
    root = Path(root)
    clip = render_clip(spec, config, avatar)
    record = spec.record(config)
    write_video(record.resolve(root, "video"), clip.rgb, fps=config.fps,
                lossless=config.lossless_rgb)
    write_video(record.resolve(root, "normals"), clip.normals, fps=config.fps, lossless=True)
    save_annotations(record.resolve(root, "annotations"), clip.annotations)
    return record


def generate_dataset(root: PathLike, config: SyntheticConfig, progress: bool = False,
                     workers: int = 1) -> GenerationReport:
    """Write (or finish) the dataset of ``config`` in ``root``: per clip ``write_clip_files``,
    then its manifest line (the order that makes an interrupted run safe).

    ``workers`` > 1 renders clips in that many processes (one torch thread each); manifest
    lines are still appended in plan order, so the folder is the same for any ``workers``.
    ``ValueError`` if ``root`` holds another config's dataset or a manifest this tool did not
    write; ``RuntimeError`` if another generator is writing there. ``progress``: a tqdm bar.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers: must be an int >= 1, got {workers!r}")
    start = time.perf_counter()
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root, LOCK_NAME, TOOL):
        _claim(root, config)
        plan = plan_clips(config)
        listed = _listed_ids(root, plan)
        pending = [spec for spec in plan if spec.id not in listed]
        with tqdm(total=len(plan), initial=len(plan) - len(pending), unit="clip",
                  desc="make_synthetic", disable=not progress, dynamic_ncols=True) as bar:
            for record in _written_clips(root, pending, config, workers):
                append_manifest(root / MANIFEST_NAME, record)
                bar.set_postfix_str(record.id, refresh=False)
                bar.update(1)
    return GenerationReport(root, len(plan), len(pending), len(plan) - len(pending),
                            time.perf_counter() - start)


def _written_clips(root: Path, pending: list[ClipSpec], config: SyntheticConfig,
                   workers: int) -> Iterator[ClipRecord]:
    """Write the files of ``pending`` clips; yield their records in plan order."""
    if workers == 1:
        for spec in pending:
            yield write_clip_files(root, spec, config, _avatar(config, spec.identity_index))
        return
    context = multiprocessing.get_context("spawn")  # fork after torch threads can deadlock
    with context.Pool(workers, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        yield from pool.imap(functools.partial(_write_in_worker, str(root), config), pending)


_AVATARS: dict[tuple[SyntheticConfig, int], HeadAvatar] = {}


def _avatar(config: SyntheticConfig, index: int) -> HeadAvatar:
    """The identity's avatar, keeping the last one built (clips come identity by identity)."""
    if (config, index) not in _AVATARS:
        _AVATARS.clear()
        _AVATARS[config, index] = make_avatar(config, index)
    return _AVATARS[config, index]


def _write_in_worker(root: str, config: SyntheticConfig, spec: ClipSpec) -> ClipRecord:
    return write_clip_files(root, spec, config, _avatar(config, spec.identity_index))


def read_config(root: PathLike) -> SyntheticConfig:
    """The ``SyntheticConfig`` a dataset folder was written with (its ``synthetic.json``)."""
    path = Path(root) / CONFIG_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a make_synthetic folder")
    try:
        return SyntheticConfig.from_json(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: {err}") from err


def _claim(root: Path, config: SyntheticConfig) -> None:
    """Check or write ``synthetic.json``; make the folders; remove stray temporary files."""
    claim_settings(root, CONFIG_NAME, config.to_json(), TOOL,
                   read=lambda data: SyntheticConfig.from_json(data).to_json())
    prepare_folders(root)


def _listed_ids(root: Path, plan: list[ClipSpec]) -> set[str]:
    """Ids already in the manifest; ``ValueError`` for ids the plan does not have."""
    listed = listed_ids(root)
    foreign = sorted(listed - {spec.id for spec in plan})
    if foreign:
        raise ValueError(f"{root / MANIFEST_NAME} lists clips this config does not plan "
                         f"({', '.join(foreign[:5])}{', …' if len(foreign) > 5 else ''})")
    return listed
