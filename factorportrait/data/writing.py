"""Writing dataset folders safely, shared by the tools that make them (``make_synthetic.py``,
``prepare_captures.py``): one writer at a time, the clip folders with no stray temporary files,
the settings a folder was made with, the ids already in its manifest.

A clip belongs to a dataset once its manifest line is there: writers put each clip's files in
place atomically first, then append the line (docs/dataset.md), so a killed run resumes.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

from factorportrait.data.format import MANIFEST_NAME, read_manifest
from factorportrait.io import atomic_write_bytes

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no protection against two writers
    fcntl = None

CLIP_FOLDERS = ("videos", "normals", "annotations")


@contextlib.contextmanager
def exclusive(root: Path, lock_name: str, tool: str) -> Iterator[None]:
    """Hold an exclusive lock on ``root`` (released by the OS if the process dies);
    ``RuntimeError`` naming ``tool`` when another process holds it."""
    with open(root / lock_name, "a") as handle:
        if fcntl is not None:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RuntimeError(f"{root}: another {tool} run is writing here "
                                   f"(lock {root / lock_name})") from None
        yield


def prepare_folders(root: Path, folders: tuple[str, ...] = CLIP_FOLDERS) -> None:
    """Make the clip folders and remove temporary files a killed atomic write left there."""
    for folder in folders:
        (root / folder).mkdir(exist_ok=True)
        for stray in (root / folder).glob(".*.tmp.*"):
            stray.unlink()


def claim_settings(root: Path, name: str, settings: dict, tool: str,
                   read: Callable[[dict], dict] | None = None) -> None:
    """Check ``root / name`` against ``settings`` (JSON-ready) or write it: a folder is
    resumed only with the settings it was made with; a manifest without the file is
    another tool's folder. ``ValueError`` lists what differs."""
    path = root / name
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}: {err}") from err
        stored = read(stored) if read is not None else stored
        if stored != settings:
            changed = [f"{key}: {stored.get(key)!r} there, {settings.get(key)!r} now"
                       for key in sorted(set(stored) | set(settings))
                       if stored.get(key) != settings.get(key)]
            raise ValueError(f"{root} was made by {tool} with other settings "
                             f"({'; '.join(changed)}); use the same settings to resume, or "
                             "another folder")
    elif (root / MANIFEST_NAME).is_file() and (root / MANIFEST_NAME).stat().st_size:
        raise ValueError(f"{root} has a manifest but no {name}: not a folder written by "
                         f"{tool}; choose an empty folder")
    else:
        atomic_write_bytes(path, (json.dumps(settings, indent=1) + "\n").encode())


def listed_ids(root: Path) -> set[str]:
    """Ids of the clips already in ``root``'s manifest (none without one)."""
    if not (root / MANIFEST_NAME).is_file():
        return set()
    return {record.id for record in read_manifest(root / MANIFEST_NAME)}
