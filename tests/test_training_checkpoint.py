"""Checkpoint parts round-trip bit-exactly without pickle; staging folders are invisible."""

import json
import random

import numpy as np
import pytest
import torch

from factorportrait import DiTConfig, FactorPortraitDiT
from factorportrait.training import checkpoint as ckpt
from factorportrait.training.config import OptimSpec
from factorportrait.training.optim import WarmupDecay, build_scheduler


def test_state_tree_round_trips_tensors_tuples_and_int_keys(tmp_path):
    tree = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(4, 3)},
                      1: {"m": torch.randn(2, dtype=torch.bfloat16)}},
            "param_groups": [{"betas": (0.9, 0.999), "lr": 1e-4, "params": [0, 1],
                              "foreach": None, "name": "decay"}],
            "__odd": float("inf")}
    ckpt.save_tree(tmp_path / "opt", tree)
    loaded = ckpt.load_tree(tmp_path / "opt")
    assert list(loaded["state"]) == [0, 1]
    assert torch.equal(loaded["state"][0]["exp_avg"], tree["state"][0]["exp_avg"])
    assert loaded["state"][0]["step"].shape == () and loaded["state"][0]["step"].item() == 3.0
    assert loaded["state"][1]["m"].dtype == torch.bfloat16
    assert loaded["param_groups"] == tree["param_groups"]  # tuple stays a tuple
    assert loaded["__odd"] == float("inf")
    assert not (tmp_path / "opt.pt").exists() and (tmp_path / "opt.safetensors").exists()


def test_state_tree_refuses_objects(tmp_path):
    with pytest.raises(TypeError, match="cannot store object at /scaler"):
        ckpt.save_tree(tmp_path / "x", {"scaler": object()})


def test_adamw_and_scheduler_state_round_trip_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    scheduler = build_scheduler(optimizer, OptimSpec(warmup_steps=2), total_steps=10)
    for _ in range(3):
        model(torch.randn(5, 4)).square().mean().backward()
        optimizer.step(), scheduler.step(), optimizer.zero_grad()
    ckpt.save_tree(tmp_path / "optimizer", optimizer.state_dict())
    ckpt.save_tree(tmp_path / "scheduler", scheduler.state_dict())
    twin = torch.nn.Linear(4, 3)
    twin.load_state_dict(model.state_dict())
    twin_optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-2, foreach=False)
    twin_scheduler = build_scheduler(twin_optimizer, OptimSpec(warmup_steps=2), total_steps=10)
    twin_optimizer.load_state_dict(ckpt.load_tree(tmp_path / "optimizer"))
    twin_scheduler.load_state_dict(ckpt.load_tree(tmp_path / "scheduler"))
    batch = torch.randn(5, 4)
    for net, opt, sched in ((model, optimizer, scheduler), (twin, twin_optimizer, twin_scheduler)):
        net(batch).square().mean().backward()
        opt.step(), sched.step()
    assert torch.equal(model.weight, twin.weight) and torch.equal(model.bias, twin.bias)
    assert scheduler.get_last_lr() == twin_scheduler.get_last_lr()


def test_rng_states_round_trip(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    ckpt.save_tree(tmp_path / "rng", ckpt.capture_rng())
    expected = (random.random(), np.random.randn(3), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    ckpt.restore_rng(ckpt.load_tree(tmp_path / "rng"))
    assert random.random() == expected[0]
    assert np.array_equal(np.random.randn(3), expected[1])
    assert torch.equal(torch.rand(3), expected[2])


def _fake_checkpoint(root, step):
    ckpt.prepare_staging(root, step)
    return ckpt.commit(root, step, {"step": step}, keep_last=2)


def test_commit_keeps_the_last_n_and_ignores_staging(tmp_path):
    for step in (10, 20, 30):
        _fake_checkpoint(tmp_path, step)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [20, 30]
    ckpt.prepare_staging(tmp_path, 40)  # a save killed before its commit
    (ckpt.staging_path(tmp_path, 40) / "model.safetensors").write_bytes(b"partial")
    assert ckpt.latest_checkpoint(tmp_path).name == "step-00000030"
    _fake_checkpoint(tmp_path, 50)  # the next save clears the leftover
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000030", "step-00000050"]
    state = ckpt.read_trainer_state(tmp_path / "step-00000050")
    assert state == {"format": ckpt.CHECKPOINT_FORMAT, "step": 50}


def test_a_folder_without_trainer_state_is_not_a_checkpoint(tmp_path):
    (tmp_path / "step-00000005").mkdir()
    assert ckpt.list_checkpoints(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="not a complete training checkpoint"):
        ckpt.read_trainer_state(tmp_path / "step-00000005")
    (tmp_path / "step-00000005" / ckpt.STATE_FILE).write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="unknown checkpoint format"):
        ckpt.read_trainer_state(tmp_path / "step-00000005")


def test_exported_weights_load_with_from_pretrained(tmp_path):
    model = FactorPortraitDiT(DiTConfig.tiny())
    ckpt.export_weights(tmp_path / "final", model.state_dict(), model.config)
    loaded = FactorPortraitDiT.from_pretrained(tmp_path / "final")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 loaded.state_dict().values(), strict=True))


def test_warmup_then_cosine_decay():
    rule = WarmupDecay(warmup_steps=4, total_steps=14, schedule="cosine", min_ratio=0.1)
    assert [rule(s) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert rule(9) == pytest.approx(0.1 + 0.9 * 0.5) and rule(14) == pytest.approx(0.1)
    assert WarmupDecay(0, 10, "linear")(5) == 0.5 and WarmupDecay(2, 10, "constant")(9) == 1.0
