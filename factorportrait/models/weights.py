"""Weights of the DiT: official Wan 2.1 checkpoints in, our own safetensors checkpoints in/out.

Only safetensors are read here; nothing is ever unpickled.
"""

from __future__ import annotations

import json
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
    :func:`read_trained_size`)."""
    record = {"format": FORMAT, "config": config.to_dict()}
    if trained:
        record["trained"] = {key: int(value) for key, value in trained.items()}
    return record


def read_trained_size(directory: str | os.PathLike) -> tuple[int, int] | None:
    """``(height, width)`` the checkpoint in ``directory`` was trained at, or None when its
    ``config.json`` does not say (checkpoints written before the field existed)."""
    data = json.loads((Path(directory) / CONFIG_FILE).read_text())
    trained = data.get("trained") if isinstance(data, dict) else None
    if not isinstance(trained, dict) or not {"height", "width"} <= set(trained):
        return None
    return int(trained["height"]), int(trained["width"])


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
    """Move ``source`` to ``target``, replacing an existing ``target`` with two renames."""
    if target.exists():
        backup = target.with_name(f".{target.name}.old")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(source, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(source, target)


def read_config(directory: str | os.PathLike) -> DiTConfig:
    """The :class:`DiTConfig` stored in a checkpoint directory."""
    path = Path(directory) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a FactorPortrait checkpoint: {CONFIG_FILE} "
                                f"is missing")
    data = json.loads(path.read_text())
    if data.get("format") != FORMAT:
        raise ValueError(f"{path}: unknown checkpoint format {data.get('format')!r}, "
                         f"expected {FORMAT!r}")
    return DiTConfig.from_dict(data["config"])


def load_pretrained(cls: type, directory: str | os.PathLike,
                    map_location: str | torch.device = "cpu") -> "FactorPortraitDiT":
    """Build ``cls(config)`` from a directory written by :func:`save_pretrained`."""
    from safetensors.torch import load_file

    config = read_config(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    model = cls(config)
    state = load_file(str(weights), device=str(map_location))
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:
        raise WeightsMismatchError(f"{weights} does not match its {CONFIG_FILE} "
                                   f"({config.describe()}): {error}") from error
    return model.to(map_location)
