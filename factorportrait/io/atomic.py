"""Atomic file output: write next to the target, then ``os.replace`` onto it.

A reader never sees a half-written file, and a writer that fails (or is interrupted) leaves
neither a partial target nor its temporary file behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

PathLike = str | os.PathLike


@contextlib.contextmanager
def atomic_output(path: PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path in ``path``'s folder; on success rename it onto ``path``.

    ``suffix`` (default: ``path``'s own suffix) is kept on the temporary name so tools that
    pick a container by extension (ffmpeg) still work. The file is fsynced before the rename and
    given mode 0o644. On any exception, ``KeyboardInterrupt`` included, the temporary file is
    removed and the exception propagates; ``path`` is untouched.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise ValueError(f"cannot write {path}: folder {path.parent} does not exist")
    suffix = path.suffix if suffix is None else suffix
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see ``atomic_output``)."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
