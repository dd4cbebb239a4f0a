"""Recipes compose for every stage x model preset and carry FactorPortrait Table 1 / §5.1."""

import pytest

from factorportrait.config import DiTConfig
from factorportrait.training import TrainConfig
from factorportrait.training.config import LoopSpec, StageSpec
from tests.training_recipes import compose_recipe, tiny_config

TABLE_1 = {  # stage: (phone, studio, viewsweep, dynamicsweep), frames, lr, steps, init_from
    "stage1": ((1.0, 0.0, 0.0, 0.0), 13, 1e-4, 20000, None),
    "stage2": ((0.6, 0.4, 0.0, 0.0), 25, 1e-4, 20000, "stage1"),
    "stage3": ((0.2, 0.2, 0.3, 0.3), 49, 5e-5, 20000, "stage2"),
    "stage4": ((0.2, 0.2, 0.3, 0.3), 81, 2e-5, 30000, "stage3"),
}
PRESETS = {"tiny": DiTConfig.tiny(), "wan_1_3b": DiTConfig.wan_1_3b(),
           "wan_14b": DiTConfig.wan_14b()}


@pytest.mark.parametrize("model", sorted(PRESETS))
@pytest.mark.parametrize("stage", sorted(TABLE_1))
def test_every_stage_and_model_preset_composes_with_table_1(stage, model):
    config = TrainConfig.from_dict(compose_recipe(
        f"stage={stage}", f"model={model}", "model.wan_weights=/weights/wan.safetensors",
        "data.options.root=/data"))
    mixture, frames, lr, steps, init_from = TABLE_1[stage]
    kinds = ("phone", "studio", "viewsweep", "dynamicsweep")
    assert tuple(config.stage.mixture[kind] for kind in kinds) == mixture
    assert (config.stage.frames, config.stage.lr, config.stage.steps) == (frames, lr, steps)
    assert config.stage.init_from == init_from
    assert config.lr == lr and config.train.global_batch_size == 64
    assert config.model.dit_config() == PRESETS[model]
    assert config.stage_dir == f"outputs/factorportrait/{stage}"


@pytest.mark.parametrize("stage", sorted(TABLE_1))
def test_tiny_scale_keeps_the_stage_and_shrinks_the_rest(stage, tmp_path):
    config = tiny_config(tmp_path, f"stage={stage}")
    _, frames, lr, _, _ = TABLE_1[stage]
    assert config.stage.frames == frames and config.stage.lr == lr
    assert config.lr == pytest.approx(20 * lr)
    assert config.model.dit_config() == DiTConfig.tiny() and config.data.source == "toy"
    assert (config.stage.steps, config.train.global_batch_size) == (40, 4)


def test_wan_weights_are_required_only_where_used(tmp_path):
    config = TrainConfig.from_dict(compose_recipe("model=wan_1_3b", "stage=stage2"))
    assert config.model.wan_weights == "???"  # stage 2 starts from stage 1: not needed


def test_unknown_and_invalid_keys_are_named():
    recipe = compose_recipe("scale=tiny")
    with pytest.raises(ValueError, match=r"optim: unknown keys \['learning_rate'\]"):
        TrainConfig.from_dict({**recipe, "optim": {**recipe["optim"], "learning_rate": 1}})
    with pytest.raises(ValueError, match="stage.frames must be 4k"):
        TrainConfig.from_dict({**recipe, "stage": {**recipe["stage"], "frames": 12}})
    with pytest.raises(ValueError, match="model.trainable"):
        TrainConfig.from_dict({**recipe, "model": {**recipe["model"], "trainable": "blocks"}})
    with pytest.raises(ValueError, match="stage.mixture"):
        StageSpec(name="s", mixture={"phone": 0.0}, frames=13, lr=1e-4, steps=1)


def test_accumulation_divides_the_global_batch():
    assert LoopSpec(global_batch_size=64, micro_batch_size=1).accumulation(8) == 8
    with pytest.raises(ValueError, match="global_batch_size \\(64\\) must be a multiple"):
        LoopSpec(global_batch_size=64, micro_batch_size=3).accumulation(2)
