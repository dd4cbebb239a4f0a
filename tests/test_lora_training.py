"""Training presets (model.trainable): gradients reach only what a preset names; a LoRA run
resumes exactly and exports merged weights plus its adapter."""

import re

import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.diffusion.flow_matching import flow_matching_loss
from factorportrait.training import loop, lora, loss_curve, train
from factorportrait.training.checkpoint import latest_checkpoint, load_weights
from factorportrait.training.config import TrainConfig
from factorportrait.training.optim import select_trainable
from tests.conftest import make_conditions
from tests.training_recipes import compose_recipe, tiny_config

NEW = r"(patch_embedding|expression_controller)\."
EXPECTED = {  # which parameter names a preset trains
    "full": r".*",
    "all": r".*",
    "new_paths_only": NEW + r".*",
    "conditions": NEW + r".*",
    "self_attention_and_new": rf"({NEW}|blocks\.\d+\.self_attn\.).*",
    "lora": rf"({NEW}.*|.*\.lora_[AB]\.default\.weight)",
}


@pytest.mark.parametrize("preset", sorted(EXPECTED))
def test_gradients_reach_only_the_parameters_the_preset_names(preset):
    torch.manual_seed(0)
    model = FactorPortraitDiT(DiTConfig.tiny())
    trainable = select_trainable(model, preset, lora.LoraSpec(rank=2))
    with torch.no_grad():  # live LoRA B and expression output so every named path gets grads
        for name, param in model.named_parameters():
            if ".lora_B." in name or name.startswith("expression_controller.output"):
                param.normal_(0, 0.05)
    noisy, conditions = make_conditions(model.config, batch=2, frames=3)
    loss, _ = flow_matching_loss(model, noisy, conditions, torch.Generator().manual_seed(1))
    loss.backward()
    reached = {name for name, p in model.named_parameters()
               if p.grad is not None and p.grad.abs().sum() > 0}
    named = {name for name, _ in model.named_parameters()
             if re.fullmatch(EXPECTED[preset], name)}
    assert {id(p) for p in trainable} == {id(p) for n, p in model.named_parameters()
                                          if n in named}
    assert reached <= named
    # everything named gets a gradient, except paths the random batch cannot reach
    assert len(reached) >= 0.9 * len(named)


def test_recipe_presets_and_lora_section():
    recipe = compose_recipe("scale=tiny", "model.trainable=lora", "model.lora.rank=2")
    config = TrainConfig.from_dict(recipe)
    assert config.model.trainable == "lora" and config.model.lora.rank == 2
    assert config.model.lora.target_modules == lora.TARGET_MODULES
    stage = TrainConfig.from_dict(compose_recipe("scale=tiny", "stage=stage4_lora"))
    assert stage.model.trainable == "lora" and stage.stage.name == "stage4_lora"
    with pytest.raises(ValueError, match="model.lora.dropout"):
        TrainConfig.from_dict(compose_recipe("scale=tiny", "model.lora.dropout=1.5"))


LORA_RUN = ["stage.steps=6", "validation.every=3", "checkpoint.every=100",
            "optim.ema_decay=0.9", "model.trainable=lora"]


@pytest.mark.slow
def test_lora_run_resumes_exactly_and_exports_its_adapter(tmp_path):
    """6 steps straight == 3 steps, stop, resume, 3 more (LoRA, EMA, accumulation 2)."""
    straight = train(tiny_config(tmp_path / "straight", *LORA_RUN))
    first = train(tiny_config(tmp_path / "resumed", *LORA_RUN, "train.stop_at=3"))
    checkpoint = latest_checkpoint(first.stage_dir / "checkpoints")
    assert any(".lora_A." in key for key in load_weights(checkpoint))
    resumed = train(tiny_config(tmp_path / "resumed", *LORA_RUN))
    assert loss_curve(resumed.stage_dir) == loss_curve(straight.stage_dir)
    assert list(loss_curve(resumed.stage_dir)) == list(range(1, 7))
    final, again = load_weights(resumed.final_weights), load_weights(straight.final_weights)
    assert final.keys() == again.keys() and all(torch.equal(final[k], again[k]) for k in final)
    # final/: plain merged weights (no peft needed) + the adapter, which fits the base
    model = FactorPortraitDiT.from_pretrained(resumed.final_weights)
    assert not any("lora" in key for key in model.state_dict())
    base = loop.build_model(tiny_config(tmp_path / "base", "model.trainable=full")).eval()
    merged = lora.merge_adapters(base, [resumed.final_weights / lora.ADAPTER_FILE]).eval()
    noisy, conditions = make_conditions(model.config, batch=1, frames=3)
    timestep = torch.tensor([500.0])
    with torch.no_grad():
        assert (merged(noisy, timestep, conditions)
                - model.eval()(noisy, timestep, conditions)).abs().max() <= 1e-5
    assert (resumed.stage_dir / "final-ema" / lora.ADAPTER_FILE).is_file()


def test_benchmark_train_compares_the_presets_in_one_run():
    import argparse

    from factorportrait.benchmarks import train as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    args = parser.parse_args(["--cases", "tiny", "--presets", "full", "lora",
                              "self_attention_and_new", "--steps", "1", "--warmup", "0",
                              "--frames", "5", "--lora-rank", "2", "--device", "cpu"])
    cases = bench.run(args)["cases"]
    assert set(cases) == {"tiny", "tiny+lora", "tiny+self_attention_and_new"}
    full, low = cases["tiny"], cases["tiny+lora"]
    assert low["trainable_m"] < cases["tiny+self_attention_and_new"]["trainable_m"] \
        < full["trainable_m"]
    assert low["optimizer_state_mib"] < full["optimizer_state_mib"]
    assert all(row["step_ms"] > 0 and "peak_mib" in row for row in cases.values())
