"""The training loop: exact resume, the bad-step guard, falling loss, what trains, init_from."""

import logging
import math

import pytest
import torch
from torch.utils.data import default_collate

from factorportrait.training import (NonFiniteLossError, SyntheticLatentDataset,
                                     batch_to_conditions, loop, loss_curve, train)
from factorportrait.training.checkpoint import latest_checkpoint, load_weights
from factorportrait.training.metrics import read_metrics
from tests.training_recipes import tiny_config

SHORT = ["stage.steps=4", "validation.every=0", "checkpoint.every=100"]


def _equal_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_toy_items_are_deterministic_and_follow_the_contract():
    dataset = SyntheticLatentDataset(num_items=8, frames=9, height=4, width=6, seed=3)
    item = dataset[5]
    assert item["latents"].shape == (16, 3, 4, 6) and item["rays"].shape == (24, 4, 4, 6)
    assert item["reference_latent"].shape == (16, 1, 4, 6)
    assert item["expression"].shape == (9, 128) and item["kind"] == "studio"
    assert torch.equal(dataset[5, 17]["latents"], item["latents"])  # (index, draw) form
    target = (torch.einsum("oc,cfhw->ofhw", dataset.normal_mix, item["normal_latents"])
              + torch.einsum("oc,cfhw->ofhw", dataset.reference_mix, item["reference_latent"]))
    assert torch.allclose(item["latents"], target / math.sqrt(2), atol=1e-6)
    other = SyntheticLatentDataset(num_items=8, frames=9, height=4, width=6, seed=4)
    assert not torch.equal(other[5]["latents"], item["latents"])
    assert dataset.kind_to_indices()["phone"] == [0, 4]


def test_batch_to_conditions_builds_portrait_conditions():
    dataset = SyntheticLatentDataset(num_items=2, frames=5, height=4, width=4)
    latents, conditions = batch_to_conditions(default_collate([dataset[0], dataset[1]]))
    assert latents.shape == (2, 16, 2, 4, 4) and conditions.rays.shape == (2, 24, 3, 4, 4)
    assert conditions.expression.shape == (2, 5, 128) and conditions.context is None
    with pytest.raises(ValueError, match=r"lacks \['rays'\]"):
        batch_to_conditions({k: v for k, v in default_collate([dataset[0]]).items()
                             if k != "rays"})


@pytest.mark.slow
def test_resume_is_exact(tmp_path):
    """8 steps straight == 4 steps, stop, resume, 4 more: every loss and the final weights
    (model and EMA) are identical — with accumulation 2, condition dropout and validation."""
    common = ["stage.steps=8", "validation.every=4", "checkpoint.every=100",
              "optim.ema_decay=0.9"]
    straight = train(tiny_config(tmp_path / "straight", *common))
    first = train(tiny_config(tmp_path / "resumed", *common, "train.stop_at=4"))
    assert (first.step, first.finished, first.final_weights) == (4, False, None)
    assert latest_checkpoint(first.stage_dir / "checkpoints").name == "step-00000004"
    resumed = train(tiny_config(tmp_path / "resumed", *common))
    assert resumed.finished and resumed.step == 8
    expected, got = loss_curve(straight.stage_dir), loss_curve(resumed.stage_dir)
    assert list(got) == list(range(1, 9)) and got == expected
    assert loss_curve(resumed.stage_dir, "validation_loss") == loss_curve(
        straight.stage_dir, "validation_loss")
    assert _equal_weights(load_weights(resumed.final_weights),
                          load_weights(straight.final_weights))
    assert _equal_weights(load_weights(resumed.stage_dir / "final-ema"),
                          load_weights(straight.stage_dir / "final-ema"))


def _poison(monkeypatch, bad_calls, value=float("nan")):
    """Make flow_matching_loss return ``value`` on the given (1-based) micro-batch calls."""
    real, calls = loop.flow_matching_loss, [0]

    def poisoned(*args, **kwargs):
        loss, details = real(*args, **kwargs)
        calls[0] += 1
        return (loss * value if calls[0] in bad_calls else loss), details

    monkeypatch.setattr(loop, "flow_matching_loss", poisoned)


@pytest.mark.slow
def test_a_nan_step_is_skipped_with_a_warning_and_counted(tmp_path, monkeypatch, caplog):
    _poison(monkeypatch, bad_calls={3})  # micro-batch 1 of step 2 (accumulation 2)
    config = tiny_config(tmp_path, *SHORT, "checkpoint.every=1", "checkpoint.keep_last=10")
    with caplog.at_level(logging.WARNING, logger="factorportrait.training.loop"):
        result = train(config)
    assert result.finished and result.skipped_steps == 1
    assert "step 2: non-finite loss" in caplog.text
    records = {r["step"]: r for r in read_metrics(result.stage_dir) if "loss" in r}
    assert math.isnan(records[2]["loss"]) and not records[2]["applied"]
    assert [records[s]["applied"] for s in (1, 3, 4)] == [True, True, True]
    assert records[3]["lr"] == records[2]["lr"]  # the schedule did not advance either
    checkpoints = result.stage_dir / "checkpoints"
    assert _equal_weights(load_weights(checkpoints / "step-00000001"),
                          load_weights(checkpoints / "step-00000002"))
    assert not _equal_weights(load_weights(checkpoints / "step-00000002"),
                              load_weights(checkpoints / "step-00000003"))


@pytest.mark.slow
def test_training_stops_after_k_consecutive_bad_steps(tmp_path, monkeypatch):
    _poison(monkeypatch, bad_calls=set(range(1, 100)), value=float("inf"))
    config = tiny_config(tmp_path, *SHORT, "train.max_bad_steps=3")
    with pytest.raises(NonFiniteLossError, match="step 3: 3 consecutive steps had a "
                                                 "non-finite loss"):
        train(config)


@pytest.mark.slow
def test_tiny_recipe_loss_falls(tmp_path):
    result = train(tiny_config(tmp_path))  # scale=tiny as users run it: 40 steps
    losses = list(loss_curve(result.stage_dir).values())
    assert len(losses) == 40 and all(math.isfinite(x) for x in losses)
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    assert last < 0.85 * first, (first, last)
    validation = loss_curve(result.stage_dir, "validation_loss")
    assert validation[40] < validation[20]


@pytest.mark.slow
def test_trainable_conditions_updates_only_the_condition_modules(tmp_path):
    config = tiny_config(tmp_path, *SHORT, "model.trainable=conditions")
    initial = loop.build_model(config).state_dict()
    final = load_weights(train(config).final_weights)
    changed = {name for name in final if not torch.equal(final[name], initial[name])}
    assert changed and all(name.startswith(("patch_embedding", "expression_controller"))
                           for name in changed)


@pytest.mark.slow
def test_next_stage_starts_from_the_previous_final_weights(tmp_path):
    with pytest.raises(FileNotFoundError, match="stage2 initialises from 'stage1'.*train "
                                                "stage1 first"):
        train(tiny_config(tmp_path, *SHORT, "stage=stage2"))
    stage1 = train(tiny_config(tmp_path, *SHORT, "stage.steps=2"))
    stage2 = tiny_config(tmp_path, *SHORT, "stage=stage2")
    assert _equal_weights(loop.build_model(stage2).state_dict(),
                          load_weights(stage1.final_weights))


@pytest.mark.slow
def test_validation_renders_are_written_as_mp4(tmp_path):
    from factorportrait.io.video import video_info
    from factorportrait.models.vae import VAEConfig, WanVAE

    torch.manual_seed(0)
    WanVAE(VAEConfig.small(dim=8)).save_pretrained(tmp_path / "vae")
    result = train(tiny_config(tmp_path, *SHORT, "stage.steps=2", "validation.render_every=2",
                               f"validation.vae={tmp_path / 'vae'}",
                               "validation.render_steps=2"))
    frames, fps, height, width = video_info(result.stage_dir / "validation" /
                                            "step-00000002.mp4")
    assert (frames, fps, height, width) == (13, 16.0, 64, 128)  # prediction | target


def test_stage1_starts_from_wan_weights(tmp_path, wan_checkpoint):
    from factorportrait import DiTConfig, FactorPortraitDiT
    from factorportrait.training import TrainConfig
    from tests.training_recipes import compose_recipe

    path, _ = wan_checkpoint
    model = loop.build_model(tiny_config(tmp_path, f"model.wan_weights={path}"))
    torch.manual_seed(0)  # the recipe's seed: the new, randomly initialised modules agree too
    expected = FactorPortraitDiT.from_wan(path, DiTConfig.tiny())
    assert _equal_weights(model.state_dict(), expected.state_dict())
    config = TrainConfig.from_dict(compose_recipe("model=wan_1_3b", f"output_root={tmp_path}"))
    with pytest.raises(ValueError, match="model.wan_weights is required: stage1 starts from"):
        loop.build_model(config)
