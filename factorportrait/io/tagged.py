"""Safetensors files tagged with a JSON ``factorportrait`` metadata entry (format + version):
clip annotations and control tracks. Writes are atomic; nothing is unpickled."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import Tensor

from factorportrait.io.atomic import PathLike, atomic_write_bytes

METADATA_KEY = "factorportrait"


def write_tagged(path: PathLike, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    """Write ``tensors`` (moved to CPU, contiguous) with ``meta`` as JSON metadata."""
    from safetensors.torch import save

    tensors = {key: value.detach().cpu().contiguous() for key, value in tensors.items()}
    atomic_write_bytes(path, save(tensors, metadata={METADATA_KEY: json.dumps(meta)}))


def read_tagged(path: Path, what: str, fmt: str, version: int
                ) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``(meta, tensors)`` of a tagged file; ``ValueError`` naming ``what`` and ``path`` when it
    is unreadable, untagged, of another format, or of another version."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as err:  # SafetensorError, OSError: truncated or not safetensors
        raise ValueError(f"{what} {path} is unreadable (truncated or not safetensors?): "
                         f"{err}") from err
    try:
        meta = json.loads(header[METADATA_KEY])
        assert isinstance(meta, dict) and meta.get("format") == fmt
    except (KeyError, json.JSONDecodeError, AssertionError) as err:
        raise ValueError(f"{what} {path}: missing or malformed '{METADATA_KEY}' metadata "
                         f"(format {fmt!r}); is it a {what} file?") from err
    if meta.get("version") != version:
        raise ValueError(f"{what} {path}: format version {meta.get('version')!r}, this "
                         f"library reads version {version}")
    return meta, tensors
