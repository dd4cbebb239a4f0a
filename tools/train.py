"""Train FactorPortrait from a Hydra recipe in recipes/ (docs/training.md).

    python tools/train.py stage=stage2 model.wan_weights=...         one process
    python tools/train.py scale=tiny stage=stage1                    CPU-sized run
    python tools/train.py curriculum=paper scale=tiny                stages 1-4 in order
    python tools/train.py --cfg job --resolve                        dry run: print the config
    torchrun --nproc_per_node 8 tools/train.py \
        distributed.deepspeed_config=recipes/deepspeed/zero2.json
    accelerate launch --config_file recipes/accelerate/zero2.yaml tools/train.py ...
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
CURRICULUM_KEYS = ("curriculum", "stage")


def to_train_config(cfg: DictConfig):
    from factorportrait.training import TrainConfig

    return TrainConfig.from_dict(OmegaConf.to_container(cfg, resolve=True))


def stage_overrides() -> list[str]:
    """The command line's overrides minus the curriculum's own (stage, curriculum)."""
    return [o for o in HydraConfig.get().overrides.task
            if o.split("=", 1)[0].lstrip("+~") not in CURRICULUM_KEYS]


@hydra.main(version_base="1.3", config_path=str(RECIPES), config_name="config")
def main(cfg: DictConfig) -> None:
    from factorportrait.training import run_curriculum, train

    if cfg.get("curriculum") is None:
        train(to_train_config(cfg))
        return
    overrides = stage_overrides()

    def compose_stage(name: str):
        return to_train_config(compose("config", overrides=[*overrides, f"stage={name}"]))

    run_curriculum(list(cfg.curriculum.stages), compose_stage, train)


if __name__ == "__main__":
    main()
