"""Training checkpoints: atomic directories of safetensors + JSON, keep-last-N, RNG states.

Layout of ``<stage_dir>/checkpoints/step-00001000/`` (see docs/training.md):

    config.json, model.safetensors      consolidated weights (``FactorPortraitDiT.from_pretrained``
                                        loads this directory as it is)
    ema.safetensors                     EMA weights, when enabled
    optimizer-rank00000.{json,safetensors}   optimizer state of each rank that holds one
    scheduler.json                      LR scheduler state
    rng-rank00000.{json,safetensors}    python / numpy / torch (CPU, CUDA) RNG states per rank
    deepspeed/                          ZeRO-3 only: DeepSpeed's own checkpoint (pickled files)
    trainer_state.json                  step, stage, sampler position, bad-step counters

Nothing is pickled except inside ``deepspeed/``: a state "tree" (nested dicts, lists, tuples,
numbers, strings, tensors — e.g. ``optimizer.state_dict()``) is split into a JSON file that
holds the structure and a safetensors file that holds the tensors.

Atomicity: every rank writes into ``.step-00001000.tmp/``; after a barrier rank 0 writes
``trainer_state.json`` and renames the folder to ``step-00001000``. A process killed during a
save leaves only the hidden staging folder, which readers ignore and the next save removes;
the previous checkpoint stays loadable. Old checkpoints are renamed away before deletion, so a
kill during pruning cannot leave a half-deleted checkpoint that looks complete.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from factorportrait.config import DiTConfig
from factorportrait.models.weights import (CONFIG_FILE, FORMAT, WEIGHTS_FILE, config_record,
                                           replace_directory)

STATE_FILE = "trainer_state.json"
CHECKPOINT_FORMAT = "factorportrait-training-checkpoint/1"
NAME_PATTERN = re.compile(r"^step-(\d{8})$")
PathLike = str | os.PathLike


# ---------------------------------------------------------------------------- files

def _fsync(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def write_safetensors(path: PathLike, tensors: dict[str, torch.Tensor],
                      metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.save_file`` of CPU-contiguous copies, then fsync."""
    from safetensors.torch import save_file

    prepared = {name: t.detach().to("cpu").contiguous() for name, t in tensors.items()}
    save_file(prepared, str(path), metadata=metadata)
    _fsync(Path(path))


def write_json(path: PathLike, data: Any) -> None:
    Path(path).write_text(json.dumps(data, indent=1, allow_nan=True))
    _fsync(Path(path))


# ---------------------------------------------------------------------------- state trees

def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {"__tensor__": path}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {"__items__": [[k, _encode(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"cannot store {type(value).__name__} at {path or '/'} in a checkpoint: "
                    f"only tensors, numbers, strings, None, lists, tuples and dicts")


def _decode(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode(v, tensors) for v in value]
    if isinstance(value, dict):
        if "__tensor__" in value:
            return tensors[value["__tensor__"]]
        if "__tuple__" in value:
            return tuple(_decode(v, tensors) for v in value["__tuple__"])
        if "__items__" in value:
            return {k: _decode(v, tensors) for k, v in value["__items__"]}
        return {k: _decode(v, tensors) for k, v in value.items()}
    return value


def save_tree(stem: PathLike, tree: Any) -> None:
    """Write ``tree`` as ``<stem>.json`` (+ ``<stem>.safetensors`` when it holds tensors)."""
    tensors: dict[str, torch.Tensor] = {}
    structure = _encode(tree, "", tensors)
    if tensors:
        write_safetensors(f"{stem}.safetensors", tensors)
    write_json(f"{stem}.json", structure)


def load_tree(stem: PathLike, device: torch.device | str = "cpu") -> Any:
    """Inverse of :func:`save_tree`; tensors are bit-identical, on ``device``."""
    from safetensors.torch import load_file

    structure_path, tensor_path = Path(f"{stem}.json"), Path(f"{stem}.safetensors")
    if not structure_path.exists():
        raise FileNotFoundError(f"checkpoint part {structure_path} is missing")
    tensors = load_file(str(tensor_path), device=str(device)) if tensor_path.exists() else {}
    return _decode(json.loads(structure_path.read_text()), tensors)


# ---------------------------------------------------------------------------- RNG states

def capture_rng() -> dict[str, Any]:
    """Python, numpy, torch CPU and CUDA RNG states as a storable tree."""
    version, mt_state, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {"python": {"version": version, "state": list(mt_state), "gauss": gauss},
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)),
                       "position": int(position), "has_gauss": int(has_gauss),
                       "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy = state["numpy"]
    np.random.set_state((numpy["kind"], numpy["keys"].numpy().astype(np.uint32),
                         numpy["position"], numpy["has_gauss"], numpy["cached"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ---------------------------------------------------------------------------- weights

def save_weights(directory: PathLike, state: dict[str, torch.Tensor], config: DiTConfig,
                 trained: dict | None = None) -> None:
    """Write ``config.json`` + ``model.safetensors`` in ``FactorPortraitDiT.save_pretrained``'s
    format into an existing (staging) directory (``trained``: the training size and frames,
    ``models.weights.config_record``)."""
    directory = Path(directory)
    write_safetensors(directory / WEIGHTS_FILE, state, metadata={"format": FORMAT})
    write_json(directory / CONFIG_FILE, config_record(config, trained))


def export_weights(directory: PathLike, state: dict[str, torch.Tensor], config: DiTConfig,
                   trained: dict | None = None) -> None:
    """:func:`save_weights` to a fresh staging folder, then replace ``directory`` atomically."""
    directory = Path(directory)
    staging = directory.with_name(f".{directory.name}.tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_weights(staging, state, config, trained)
    replace_directory(staging, directory)


def load_weights(directory: PathLike, device: torch.device | str = "cpu"
                 ) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} holds no {WEIGHTS_FILE}")
    return load_file(str(path), device=str(device))


# ---------------------------------------------------------------------------- directories

def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def list_checkpoints(root: PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` as ``(step, path)``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        match = NAME_PATTERN.match(path.name)
        if match and (path / STATE_FILE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def latest_checkpoint(root: PathLike) -> Optional[Path]:
    checkpoints = list_checkpoints(root)
    return checkpoints[-1][1] if checkpoints else None


def staging_path(root: PathLike, step: int) -> Path:
    return Path(root) / f".{checkpoint_name(step)}.tmp"


def prepare_staging(root: PathLike, step: int) -> Path:
    """(Rank 0.) Remove staging folders left by interrupted saves; create this one."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".step-*"):
        shutil.rmtree(stale, ignore_errors=True)
    staging = staging_path(root, step)
    staging.mkdir()
    return staging


def commit(root: PathLike, step: int, trainer_state: dict[str, Any], keep_last: int) -> Path:
    """(Rank 0, after every rank wrote its part.) Finish and publish checkpoint ``step``."""
    staging = staging_path(root, step)
    write_json(staging / STATE_FILE, {"format": CHECKPOINT_FORMAT, **trainer_state})
    target = Path(root) / checkpoint_name(step)
    replace_directory(staging, target)
    prune(root, keep_last)
    return target


NATIVE_FOLDER = "deepspeed"  # DeepSpeed's own (pickled) files inside a checkpoint


def digest_folder(folder: PathLike) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``folder`` (none if it is missing)."""
    import hashlib

    folder = Path(folder)
    if not folder.is_dir():
        return {}
    digests = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        sha = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                sha.update(block)
        digests[path.relative_to(folder).as_posix()] = sha.hexdigest()
    return digests


def verify_folder(folder: PathLike, digests: dict[str, str] | None) -> None:
    """Refuse to let DeepSpeed unpickle anything in ``folder`` we did not write: every file
    must be one recorded at save time with its sha256 (``digests``) and none may be missing;
    ``ValueError`` saying why otherwise."""
    folder = Path(folder)
    found = digest_folder(folder)
    if not found:
        return
    if digests is None:
        raise ValueError(f"{folder} holds DeepSpeed files (read with pickle) but the checkpoint "
                         "records no digests for them: refusing to load files this library "
                         "did not write (a checkpoint from an older version? re-save it)")
    unknown = sorted(set(found) - set(digests))
    missing = sorted(set(digests) - set(found))
    changed = sorted(name for name in set(found) & set(digests) if found[name] != digests[name])
    if unknown or missing or changed:
        parts = [f"{label} {names[:5]}" for label, names in (
            ("not written by this run:", unknown), ("missing:", missing),
            ("changed since saved:", changed)) if names]
        raise ValueError(f"{folder}: refusing to load DeepSpeed's pickled files, which do not "
                         f"match the digests recorded at save time ({'; '.join(parts)})")


def prune(root: PathLike, keep_last: int) -> None:
    """Delete all but the newest ``keep_last`` checkpoints (renamed away first)."""
    for _, path in list_checkpoints(root)[:-keep_last]:
        doomed = path.with_name(f".{path.name}.deleting")
        os.replace(path, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def read_trainer_state(directory: PathLike) -> dict[str, Any]:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{directory} is not a complete training checkpoint "
                                f"({STATE_FILE} is missing)")
    state = json.loads(path.read_text())
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {state.get('format')!r}, "
                         f"expected {CHECKPOINT_FORMAT!r}")
    return state


def rank_stem(directory: PathLike, part: str, rank: int) -> Path:
    """``<directory>/<part>-rank00003`` (add ``.json`` / ``.safetensors``)."""
    return Path(directory) / f"{part}-rank{rank:05d}"
