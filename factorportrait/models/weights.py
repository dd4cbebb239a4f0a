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
NEW_PREFIXES = ("expression_controller.", "null_context")


class WeightsMismatchError(ValueError):
    """A checkpoint does not fit the model built from the requested config."""


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def check_wan_state(model: "FactorPortraitDiT", state: dict[str, torch.Tensor],
                    source: str) -> None:
    """Raise :class:`WeightsMismatchError` listing missing / unexpected / mis-shaped keys."""
    config = model.config
    expected = {name: tuple(tensor.shape) for name, tensor in model.state_dict().items()
                if not name.startswith(NEW_PREFIXES)}
    expected["patch_embedding.weight"] = (config.dim, config.latent_channels, *config.patch_size)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(f"{name} {tuple(state[name].shape)} != {shape}"
                        for name, shape in expected.items()
                        if name in state and tuple(state[name].shape) != shape)
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


def load_wan_weights(model: "FactorPortraitDiT", path: str | os.PathLike) -> None:
    """Load official Wan 2.1 T2V DiT weights into ``model``.

    ``path``: one ``.safetensors`` file, a ``*.safetensors.index.json`` of shards, or a
    directory with either. The pretrained 16-channel patch embedding is copied into the
    widened one; the new channels and modules keep their zero initialisation.
    """
    state = backbone.load_weight_files(path)
    check_wan_state(model, state, f"Wan checkpoint {path}")
    model.patch_embedding.load_wan_weight(state.pop("patch_embedding.weight"),
                                          state.pop("patch_embedding.bias"))
    result = model.load_state_dict(state, strict=False)
    leftover = [name for name in result.missing_keys
                if not name.startswith(NEW_PREFIXES) and not name.startswith("patch_embedding")]
    if leftover or result.unexpected_keys:  # check_wan_state makes this unreachable
        raise WeightsMismatchError(f"Wan checkpoint {path}: missing {leftover}, unexpected "
                                   f"{result.unexpected_keys}")


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
    """Build ``cls(config)`` from a directory written by :func:`save_pretrained`."""
    from factorportrait.io.tensors import read_safetensors

    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    check_weights_header(weights, config)  # before anything is allocated
    state = read_safetensors(weights, "DiT weights", map_location)
    model = cls(config)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsMismatchError(f"{weights} does not match its {CONFIG_FILE} "
                                   f"({config.describe()}): {error}") from error
    return model.to(map_location)
