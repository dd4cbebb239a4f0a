"""The progressive-training curriculum (FactorPortrait §4.3, Table 1): stage outputs, where
each stage's weights start, and running the stages in order.

Every stage of a run writes to ``<run_dir>/<stage>/``; its final weights are
``<run_dir>/<stage>/final/`` (``config.json`` + ``model.safetensors``). A stage's
``init_from`` names the previous stage (resolved to that folder) or is a path to any
directory holding ``model.safetensors``; ``None`` starts from Wan weights (``model.wan_weights``)
or, without them, from the seeded random initialisation.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional, TypeVar

from factorportrait.models.weights import WEIGHTS_FILE
from factorportrait.training.config import TrainConfig

FINAL_DIR = "final"
FINAL_EMA_DIR = "final-ema"
LOG = logging.getLogger(__name__)
Result = TypeVar("Result")


def final_dir(stage_dir: str | Path) -> Path:
    """Where a stage's final (consolidated) weights are exported."""
    return Path(stage_dir) / FINAL_DIR


def stage_finished(config: TrainConfig) -> bool:
    return (final_dir(config.stage_dir) / WEIGHTS_FILE).is_file()


def resolve_init_from(config: TrainConfig) -> Optional[Path]:
    """The weights directory this stage starts from, or ``None`` (module docstring).

    Raises ``FileNotFoundError`` with the command to run when the previous stage has no final
    checkpoint yet.
    """
    init_from = config.stage.init_from
    if init_from in (None, ""):
        return None
    candidate = Path(init_from)
    is_path = candidate.is_absolute() or "/" in init_from or candidate.exists()
    directory = candidate if is_path else final_dir(Path(config.run_dir) / init_from)
    if is_path and (directory / FINAL_DIR / WEIGHTS_FILE).is_file():
        directory = directory / FINAL_DIR  # a stage folder was given
    if not (directory / WEIGHTS_FILE).is_file():
        hint = (f"train {init_from} first in the same run folder {config.run_dir} "
                f"(python tools/train.py stage={init_from} with the same experiment and "
                f"output_root), or set stage.init_from to a checkpoint directory"
                if not is_path else
                "point stage.init_from at a directory with model.safetensors")
        raise FileNotFoundError(f"{config.stage.name} initialises from {init_from!r}, but "
                                f"{directory} holds no {WEIGHTS_FILE}; {hint}")
    return directory


def run_curriculum(stages: Sequence[str], compose: Callable[[str], TrainConfig],
                   train: Callable[[TrainConfig], Result]) -> list[Optional[Result]]:
    """Train ``stages`` in order; ``compose(name)`` builds a stage's config.

    A stage whose final weights already exist is skipped, so re-running a curriculum after an
    interruption continues where it stopped (the interrupted stage resumes from its latest
    checkpoint when ``checkpoint.resume=auto``).
    """
    if not stages:
        raise ValueError("curriculum.stages is empty")
    results: list[Optional[Result]] = []
    for name in stages:
        config = compose(name)
        if config.stage.name != name:
            raise ValueError(f"curriculum stage {name!r} composed a config for stage "
                             f"{config.stage.name!r}")
        if stage_finished(config):
            LOG.info("%s: final weights exist in %s; skipping", name,
                     final_dir(config.stage_dir))
            results.append(None)
            continue
        results.append(train(config))
    return results
