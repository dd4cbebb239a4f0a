"""The demo recipe (``recipes/demo.yaml``): loading, overrides and the paths it implies.

The recipe is plain YAML read with OmegaConf in struct mode, so an override of a key the recipe
does not have (``dit.stages.stage5.steps=1``, a typo) is an error that names the key.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "recipes" / "demo.yaml"
STAGES = ("stage1", "stage2", "stage3", "stage4")
# The shipped checkpoint folder (FactorPortraitPipeline.from_pretrained reads the DiT and VAE
# files; ExpressionEncoder.from_pretrained the encoder files; demo.json records the run).
DEMO_RECORD = "demo.json"


def load_demo_config(path: str | Path = RECIPE, overrides: Sequence[str] = ()) -> DictConfig:
    """The recipe at ``path`` with ``key=value`` overrides; ``ValueError`` naming a bad
    override or missing stage."""
    try:
        config = OmegaConf.load(path)
        OmegaConf.set_struct(config, True)
        for override in overrides:
            if "=" not in override:
                raise ValueError(f"override {override!r}: expected key=value")
        config = OmegaConf.merge(config, OmegaConf.from_dotlist(list(overrides)))
    except OmegaConfBaseException as error:
        raise ValueError(f"demo recipe {path}: {error}") from error
    stages = list(config.dit.stages)
    if stages != list(STAGES):
        raise ValueError(f"demo recipe {path}: dit.stages must be {', '.join(STAGES)} in order, "
                         f"got {', '.join(stages)}")
    for name, stage in config.dit.stages.items():
        if (stage.frames - 1) % 4 or stage.frames < 5 or stage.steps < 1:
            raise ValueError(f"demo recipe {path}: dit.stages.{name} needs frames = 4k + 1 >= 5 "
                             f"and steps >= 1, got frames {stage.frames}, steps {stage.steps}")
    if config.size % 16 or config.data.size % config.size:
        raise ValueError(f"demo recipe {path}: size must be a multiple of 16 dividing data.size, "
                         f"got size {config.size}, data.size {config.data.size}")
    return config


def work_dir(config: DictConfig) -> Path:
    return _resolve(config.output_dir)


def checkpoint_dir(config: DictConfig) -> Path:
    return _resolve(config.checkpoints)


def _resolve(path: str) -> Path:
    """Relative recipe paths are relative to the repository (``make`` runs from there)."""
    candidate = Path(path)
    return candidate if candidate.is_absolute() else REPO / candidate
