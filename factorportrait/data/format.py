"""The dataset format: a JSONL manifest of clips (this module) and one safetensors
annotation file per clip (``factorportrait.data.annotations``).

A dataset is a folder (docs/dataset.md)::

    root/manifest.jsonl               one ClipRecord per line (JSON object)
    root/<video>.mp4                  RGB video; every path is relative to root
    root/<normals>.mp4                optional normal-map video, same frames and size
    root/<annotations>.safetensors    cameras, head pose, expressions (ClipAnnotations)

Writers are atomic (``write_manifest``) or append a whole line under a lock and fsync
(``append_manifest``); readers name the file and line of every problem.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path, PurePosixPath
from typing import Any

from factorportrait.io.atomic import PathLike, atomic_write_bytes

try:  # advisory lock for concurrent appenders (POSIX only)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

KINDS = ("phone", "studio", "viewsweep", "dynamicsweep")
SPLITS = ("train", "heldout")
MANIFEST_NAME = "manifest.jsonl"
PATH_FIELDS = ("video", "annotations", "normals")


@dataclass(frozen=True)
class ClipRecord:
    """One manifest line: a clip and where its files are (paths relative to the dataset root).

    ``kind``: phone | studio | viewsweep | dynamicsweep. ``take``: studio clips recorded at the
    same time (other views of one performance) share a take id, so one view can serve as the
    reference of another. ``split``: train | heldout. ``num_frames``: optional, checked by the
    validator against the video.
    """

    id: str
    kind: str
    identity: str
    fps: float
    video: str
    annotations: str
    normals: str | None = None
    take: str | None = None
    split: str | None = None
    num_frames: int | None = None

    def __post_init__(self) -> None:
        for name in ("id", "identity", "video", "annotations"):
            _check_text(self, name, getattr(self, name))
        for name in ("normals", "take"):
            if getattr(self, name) is not None:
                _check_text(self, name, getattr(self, name))
        if self.kind not in KINDS:
            raise ValueError(f"clip {self.id!r}: unknown kind {self.kind!r}; valid kinds: "
                             f"{', '.join(KINDS)}")
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"clip {self.id!r}: unknown split {self.split!r}; valid splits: "
                             f"{', '.join(SPLITS)}")
        fps = self.fps
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not (
                math.isfinite(fps) and fps > 0):
            raise ValueError(f"clip {self.id!r}: fps must be a positive number, got {fps!r}")
        object.__setattr__(self, "fps", float(fps))
        frames = self.num_frames
        if frames is not None and (isinstance(frames, bool) or not isinstance(frames, int)
                                   or frames < 1):
            raise ValueError(f"clip {self.id!r}: num_frames must be a positive int, got "
                             f"{frames!r}")
        for name in PATH_FIELDS:
            value = getattr(self, name)
            if value is not None and PurePosixPath(value).is_absolute():
                raise ValueError(f"clip {self.id!r}: {name} path {value!r} must be relative "
                                 "to the dataset root")

    def resolve(self, root: PathLike, name: str) -> Path | None:
        """Absolute path of file field ``name`` (video | annotations | normals) under ``root``."""
        if name not in PATH_FIELDS:
            raise ValueError(f"clip {self.id!r}: {name!r} is not a file field; "
                             f"choose from {', '.join(PATH_FIELDS)}")
        value = getattr(self, name)
        return None if value is None else Path(root) / value

    def to_json(self) -> dict[str, Any]:
        """The manifest line's object; fields that are ``None`` are left out."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if getattr(self, f.name) is not None}

    @classmethod
    def from_json(cls, data: object) -> ClipRecord:
        """Build from a manifest line's object; ``ValueError`` on missing or unknown fields."""
        if not isinstance(data, dict):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        names = [f.name for f in fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"unknown field(s) {unknown}; valid fields: {', '.join(names)}")
        required = [f.name for f in fields(cls) if f.default is not None]
        missing = [name for name in required if name not in data]
        if missing:
            raise ValueError(f"missing field(s) {missing}")
        return cls(**data)


def _check_text(record: ClipRecord, name: str, value: object) -> None:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"clip {record.id!r}: {name} must be a non-empty string, got "
                         f"{value!r}")


# -- manifest ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class ManifestLine:
    """One non-blank manifest line: its record, or why it is invalid (``clip_id`` if known)."""

    line: int
    record: ClipRecord | None
    error: str | None
    clip_id: str | None


def manifest_path(root_or_path: PathLike) -> Path:
    """``root/manifest.jsonl`` for a dataset folder, or the given file itself."""
    path = Path(root_or_path)
    return path / MANIFEST_NAME if path.is_dir() else path


def _is_json(raw: bytes) -> bool:
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def _parse_line(number: int, raw: bytes) -> ManifestLine:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return ManifestLine(number, None, f"invalid JSON ({err})", None)
    clip_id = data.get("id") if isinstance(data, dict) else None
    clip_id = clip_id if isinstance(clip_id, str) else None
    try:
        return ManifestLine(number, ClipRecord.from_json(data), None, clip_id)
    except (TypeError, ValueError) as err:
        return ManifestLine(number, None, str(err), clip_id)


def scan_manifest(root_or_path: PathLike) -> list[ManifestLine]:
    """Parse every non-blank line, keeping errors instead of raising (for the validator).

    A last line without its newline that is not valid JSON is what an interrupted
    ``append_manifest`` leaves: it is skipped with a warning (the next append removes it).
    """
    path = manifest_path(root_or_path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path} does not exist")
    chunks = path.read_bytes().split(b"\n")
    lines = [_parse_line(n, raw) for n, raw in enumerate(chunks, start=1) if raw.strip()]
    if chunks[-1].strip() and not _is_json(chunks[-1]):
        warnings.warn(f"manifest {path}: ignoring partial last line {lines[-1].line} "
                      "(an interrupted write?)", stacklevel=2)
        lines.pop()
    return lines


def read_manifest(root_or_path: PathLike) -> list[ClipRecord]:
    """Read a manifest (a dataset folder or the ``.jsonl`` file) → records in file order.

    ``ValueError`` naming the file and line for a malformed line, an unknown kind (listing
    the valid ones) or a duplicate id.
    """
    path = manifest_path(root_or_path)
    records: list[ClipRecord] = []
    first_line: dict[str, int] = {}
    for entry in scan_manifest(path):
        if entry.error is not None:
            raise ValueError(f"manifest {path} line {entry.line}: {entry.error}")
        record = entry.record
        if record.id in first_line:
            raise ValueError(f"manifest {path} line {entry.line}: duplicate id {record.id!r} "
                             f"(first on line {first_line[record.id]})")
        first_line[record.id] = entry.line
        records.append(record)
    return records


def _encode(record: ClipRecord) -> bytes:
    if not isinstance(record, ClipRecord):
        raise ValueError(f"expected a ClipRecord, got {type(record).__name__}")
    return (json.dumps(record.to_json(), ensure_ascii=False) + "\n").encode("utf-8")


def write_manifest(path: PathLike, records: Iterable[ClipRecord]) -> None:
    """Write all ``records`` to ``path`` atomically (``ValueError`` on duplicate ids)."""
    records = list(records)
    seen: set[str] = set()
    for record in records:
        if record.id in seen:
            raise ValueError(f"write_manifest {path}: duplicate id {record.id!r}")
        seen.add(record.id)
    atomic_write_bytes(path, b"".join(_encode(record) for record in records))


def append_manifest(path: PathLike, record: ClipRecord) -> None:
    """Append one record as one line: a single ``write`` under an exclusive lock, then fsync.

    A partial last line left by a killed writer is removed first (with a warning); ids are not
    checked for duplicates here (``read_manifest`` and the validator do).
    """
    line = _encode(record)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        _repair_tail(fd, Path(path))
        written = 0
        while written < len(line):
            written += os.write(fd, line[written:])
        os.fsync(fd)
    finally:
        os.close(fd)  # also releases the lock


def _repair_tail(fd: int, path: Path) -> None:
    """Make the file end in a newline: finish a valid last line, or cut a partial one."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return
    start = max(0, size - 65536)
    while True:  # find the start of the last line
        block = os.pread(fd, size - start, start)
        cut = block.rfind(b"\n")
        if cut >= 0 or start == 0:
            break
        start = max(0, start - 65536)
    tail_start = start + cut + 1
    tail = os.pread(fd, size - tail_start, tail_start)
    if _is_json(tail) or not tail.strip():
        os.write(fd, b"\n")
        return
    warnings.warn(f"manifest {path}: removing partial last line ({len(tail)} bytes) left by "
                  "an interrupted write", stacklevel=3)
    os.ftruncate(fd, tail_start)

