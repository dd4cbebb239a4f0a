"""Compose training recipes (recipes/, Hydra) into TrainConfigs for the training tests."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from factorportrait.training import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"
QUIET = ["logging.progress_bar=false", "logging.tensorboard=false"]


def compose_recipe(*overrides: str) -> dict:
    """The resolved recipe as a plain dict (what tools/train.py hands to TrainConfig)."""
    with initialize_config_dir(str(RECIPES), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return OmegaConf.to_container(cfg, resolve=True)


def tiny_config(output_root: Path, *overrides: str) -> TrainConfig:
    """``scale=tiny`` writing under ``output_root``, quiet, plus ``overrides``."""
    return TrainConfig.from_dict(compose_recipe("scale=tiny", f"output_root={output_root}",
                                                *QUIET, *overrides))
