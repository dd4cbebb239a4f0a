"""Weights of the DiT: official Wan 2.1 checkpoints in, our own safetensors checkpoints in/out.

Only safetensors are read here; nothing is ever unpickled.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from factorportrait.config import DiTConfig
from factorportrait.models import backbone

if TYPE_CHECKING:
    from factorportrait.models.dit import FactorPortraitDiT

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
FORMAT = "factorportrait-dit/1"

# Modules that FactorPortrait adds to Wan: absent from official checkpoints, zero-initialised.
NEW_PREFIXES = ("expression_controller.", "expression_tokens.", "landmark_encoder.",
                "expression_attention.", "reference_warp.", "null_context")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model built from the requested config."""


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_wan_shapes(config: DiTConfig, found: dict[str, tuple[int, ...]], source: str
                     ) -> None:
    """Raise :class:`WeightsMismatchError` listing missing / unexpected / mis-shaped keys of
    Wan 2.1 T2V weights (``found``: name -> shape) for a DiT of ``config``."""
    from factorportrait.models.dit import FactorPortraitDiT

    with torch.device("meta"):
        model = FactorPortraitDiT(config)
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()
                if not name.startswith(NEW_PREFIXES)}
    expected["patch_embedding.weight"] = (config.dim, config.latent_channels, *config.patch_size)
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{name} {tuple(found[name])} != {shape}"
                        for name, shape in expected.items()
                        if name in found and tuple(found[name]) != shape)
    if missing or unexpected or mismatched:
        problems = []
        if missing:
            problems.append(f"missing keys: {_format_keys(missing)}")
        if unexpected:
            problems.append(f"unexpected keys: {_format_keys(unexpected)}")
        if mismatched:
            problems.append(f"shape mismatches (file != model): {_format_keys(mismatched)}")
        raise WeightsMismatchError(
            f"{source} does not match the Wan 2.1 T2V DiT of {config.describe()}: "
            + "; ".join(problems)
            + ". Is it a Wan 2.1 T2V checkpoint of that size (1.3B: DiTConfig.wan_1_3b(), "
              "14B: DiTConfig.wan_14b())?")


SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16,
                      "BF16": torch.bfloat16, "I64": torch.int64, "I32": torch.int32,
                      "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


class SafetensorsFile:
    """A ``.safetensors`` file read tensor by tensor with ``pread`` — not memory-mapped, so a
    process that reads a whole checkpoint does not keep its pages resident (with ``mmap``,
    rank 0 of a ZeRO-3 load would hold every page of the file it streamed)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        try:
            with open(self.path, "rb") as handle:
                length = int.from_bytes(handle.read(8), "little")
                if not 0 < length <= self.path.stat().st_size - 8:
                    raise ValueError(f"header length {length} does not fit the file")
                header = json.loads(handle.read(length))
        except (OSError, ValueError, UnicodeDecodeError) as err:
            raise WeightsMismatchError(f"{self.path} is unreadable (truncated or not "
                                       f"safetensors?): {err}") from err
        header.pop("__metadata__", None)
        self._data_start = 8 + length
        self._entries = header
        size = self.path.stat().st_size - self._data_start
        for key, entry in header.items():
            begin, end = entry["data_offsets"]
            if entry.get("dtype") not in SAFETENSORS_DTYPES or not 0 <= begin <= end <= size:
                raise WeightsMismatchError(f"{self.path}: tensor {key!r} has dtype "
                                           f"{entry.get('dtype')!r} or offsets {begin}..{end} "
                                           f"outside the {size}-byte data (truncated?)")

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def get(self, key: str) -> torch.Tensor:
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        with open(self.path, "rb") as handle:
            data = bytearray(os.pread(handle.fileno(), end - begin, self._data_start + begin))
        if len(data) != end - begin:
            raise WeightsMismatchError(f"{self.path}: tensor {key!r} is cut short (truncated)")
        dtype = SAFETENSORS_DTYPES[entry["dtype"]]
        if not data:
            return torch.empty(self.shape(key), dtype=dtype)
        return torch.frombuffer(data, dtype=dtype).reshape(self.shape(key))


class WeightReader:
    """The tensors of a DiT checkpoint, read one at a time and named as the model's
    parameters and buffers — so no process holds more than the model and one tensor, and
    under ZeRO-3 each rank holds its partition and one tensor.

    ``wan=True``: official Wan 2.1 T2V safetensors (one file, a ``*.safetensors.index.json``
    of shards, or a folder): the 16-channel patch embedding is widened with zeros; the new
    modules (:data:`NEW_PREFIXES`) are absent and keep their initialisation. ``wan=False``:
    our ``model.safetensors``. Every name and shape is checked against ``config`` from the
    headers before any tensor is read; each tensor read is checked finite.
    """

    def __init__(self, path: str | os.PathLike, config: DiTConfig, wan: bool) -> None:
        self.config, self.wan, self.path = config, wan, Path(path)
        files = backbone.resolve_weight_files(path) if wan else [Path(path)]
        if not wan:
            check_weights_header(self.path, config)
        self._where: dict[str, SafetensorsFile] = {}
        shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            handle = SafetensorsFile(file)
            for key in handle.keys():
                self._where[key] = handle
                shapes[key] = handle.shape(key)
        if wan:
            check_wan_shapes(config, shapes, f"Wan checkpoint {path}")
        self.names = frozenset(shapes)

    def get(self, name: str) -> torch.Tensor:
        """The tensor for the model's ``name``."""
        from factorportrait.io.tensors import check_finite

        tensor = self._where[name].get(name)
        if self.wan and name == "patch_embedding.weight":
            widened = torch.zeros(self.config.dim, self.config.in_channels,
                                  *self.config.patch_size, dtype=tensor.dtype)
            widened[:, : self.config.latent_channels] = tensor
            tensor = widened
        check_finite({name: tensor}, str(self.path))
        return tensor

    def load_into(self, model: "FactorPortraitDiT") -> None:
        """Copy every tensor into a whole (unpartitioned) model, one at a time."""
        with torch.no_grad():
            for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
                if name in self.names:
                    tensor.copy_(self.get(name))


def load_wan_weights(model: "FactorPortraitDiT", path: str | os.PathLike) -> None:
    """Load official Wan 2.1 T2V DiT weights into ``model``, one tensor at a time.

    ``path``: one ``.safetensors`` file, a ``*.safetensors.index.json`` of shards, or a
    directory with either. The pretrained 16-channel patch embedding is copied into the
    widened one; the new channels and modules keep their zero initialisation.
    """
    WeightReader(path, model.config, wan=True).load_into(model)


def config_record(config: DiTConfig, trained: dict | None = None) -> dict:
    """The ``config.json`` content: format, architecture and, when known, what the weights
    were trained on (``{"height", "width", "frames"}``: the render default, see
    :func:`read_trained`)."""
    record = {"format": FORMAT, "config": config.to_dict()}
    if trained:
        record["trained"] = {key: int(value) for key, value in trained.items()}
    return record


def read_trained(directory: str | os.PathLike) -> dict[str, int]:
    """What the checkpoint in ``directory`` was trained on — ``{"height", "width",
    "frames"}`` — or ``{}`` when its ``config.json`` does not say (checkpoints written before
    the field existed)."""
    data = json.loads((Path(directory) / CONFIG_FILE).read_text())
    trained = data.get("trained") if isinstance(data, dict) else None
    if not isinstance(trained, dict):
        return {}
    return {key: int(trained[key]) for key in ("height", "width", "frames")
            if isinstance(trained.get(key), int) and trained[key] > 0}


def save_pretrained(model: "FactorPortraitDiT", directory: str | os.PathLike,
                    trained: dict | None = None) -> None:
    """Write ``config.json`` and ``model.safetensors`` to ``directory`` atomically
    (``trained``: see :func:`config_record`).

    The files are written into a temporary sibling directory which then replaces
    ``directory``; an interrupted save leaves any previous checkpoint intact.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        state = {name: tensor.detach().contiguous().cpu()
                 for name, tensor in model.state_dict().items()}
        save_file(state, str(staging / WEIGHTS_FILE), metadata={"format": FORMAT})
        (staging / CONFIG_FILE).write_text(json.dumps(config_record(model.config, trained),
                                                      indent=2))
        replace_directory(staging, directory)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_directory(source: Path, target: Path) -> None:
    """Move ``source`` to ``target``, replacing an existing ``target`` so that at every moment
    one complete version is at ``target``: an atomic exchange (Linux ``renameat2`` with
    ``RENAME_EXCHANGE``), then the old version is deleted. Where the exchange is not
    available the old version is renamed to ``.<name>.old`` first and put back by
    :func:`recover_directory` if a kill came between the two renames."""
    source, target = Path(source), Path(target)
    recover_directory(target)
    if not target.exists():
        os.replace(source, target)
        return
    if _exchange(source, target):
        shutil.rmtree(source, ignore_errors=True)  # now the old version
        return
    backup = _backup_name(target)
    shutil.rmtree(backup, ignore_errors=True)
    os.replace(target, backup)
    os.replace(source, target)
    shutil.rmtree(backup, ignore_errors=True)


def recover_directory(target: Path) -> None:
    """Undo a replacement torn between its two renames: ``target`` missing and its
    ``.<name>.old`` backup present -> the backup goes back (the new version was never
    published)."""
    backup = _backup_name(Path(target))
    if backup.exists() and not Path(target).exists():
        os.replace(backup, target)


def _backup_name(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where the
    system call is missing or refused (other kernels, some file systems)."""
    import ctypes
    import ctypes.util

    if not hasattr(os, "uname") or os.uname().sysname != "Linux":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second),
                       rename_exchange)
    return result == 0


def read_config(directory: str | os.PathLike) -> DiTConfig:
    """The :class:`DiTConfig` stored in a checkpoint directory."""
    recover_directory(Path(directory))
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a FactorPortrait checkpoint: {CONFIG_FILE} "
                                f"is missing")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else None
        raise ValueError(f"{path}: unknown checkpoint format {found!r}, expected {FORMAT!r}")
    try:
        return DiTConfig.from_dict(data["config"])
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a valid DiT config: {err}") from err


MAX_PARAMETERS = 20e9  # the largest DiT a config may describe (wan_14b: 14.3 B)


def check_weights_header(weights: Path, config: DiTConfig) -> None:
    """Before anything is allocated: the size ``config`` describes is within
    :data:`MAX_PARAMETERS`, and every tensor name and shape in the safetensors header of
    ``weights`` matches a model of ``config`` built on the ``meta`` device (no memory).
    Raises :class:`WeightsMismatchError` naming the file and what differs."""
    from safetensors import safe_open

    from factorportrait.models.dit import FactorPortraitDiT

    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in FactorPortraitDiT(config).state_dict().items()}
    count = sum(math.prod(shape) for shape in expected.values())
    if count > MAX_PARAMETERS:
        raise WeightsMismatchError(f"{weights.parent / CONFIG_FILE} describes a DiT of "
                                   f"{count / 1e9:.1f} B parameters, more than the "
                                   f"{MAX_PARAMETERS / 1e9:.0f} B accepted (wan_14b has "
                                   f"14.3 B): is the config corrupt?")
    try:
        with safe_open(str(weights), framework="pt") as handle:
            found = {key: tuple(handle.get_slice(key).get_shape()) for key in handle.keys()}
    except Exception as err:  # SafetensorError, OSError
        raise WeightsMismatchError(f"{weights} is unreadable (truncated or not safetensors?): "
                                   f"{err}") from err
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    shapes = [f"{k} {found[k]} != {v}" for k, v in expected.items()
              if k in found and found[k] != v]
    problems = [f"{label} {items[:6]}" for label, items in (
        ("missing", missing), ("unexpected", unexpected), ("wrong shapes", shapes)) if items]
    if problems:
        raise WeightsMismatchError(f"{weights} does not match its {CONFIG_FILE} "
                                   f"({config.describe()}): " + "; ".join(problems))


def load_pretrained(cls: type, directory: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> "FactorPortraitDiT":
    """Build ``cls(config)`` from a directory written by :func:`save_pretrained`: the config
    and the weights' header checked first, then the tensors copied in one at a time."""
    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    reader = WeightReader(weights, config, wan=False)  # checks before anything is allocated
    model = cls(config)
    reader.load_into(model)
    return model.to(map_location)
