"""A process killed in the middle of writing a checkpoint leaves the previous one loadable,
and resuming from it reproduces the uninterrupted run exactly."""

import signal
import subprocess
import sys

import pytest
import torch

from factorportrait.training import loss_curve, train
from factorportrait.training.checkpoint import latest_checkpoint, load_weights, staging_path
from factorportrait.training.metrics import read_metrics
from tests.training_recipes import ROOT, tiny_config

OVERRIDES = ["stage.steps=6", "checkpoint.every=2", "validation.every=0"]

# Runs the recipe; while saving the step-4 checkpoint, writes half of model.safetensors and
# SIGKILLs itself (no cleanup handlers run, exactly like an OOM kill or a pre-emption).
KILLED_RUN = """
import os, signal, sys
from pathlib import Path
sys.path.insert(0, {root!r})
from factorportrait.training import checkpoint, train
from tests.training_recipes import tiny_config

real_write = checkpoint.write_safetensors

def write_then_die(path, tensors, metadata=None):
    path = Path(path)
    if path.parent.name == ".step-00000004.tmp" and path.name == "model.safetensors":
        real_write(path, tensors, metadata)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, tensors, metadata)

checkpoint.write_safetensors = write_then_die
import torch
torch.set_num_threads(int(sys.argv[2]))  # the test's own count, whatever OMP_NUM_THREADS says
train(tiny_config(Path(sys.argv[1]), *sys.argv[3:]))
"""


@pytest.mark.slow
def test_kill_during_save_then_resume_matches_the_uninterrupted_run(tmp_path):
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN.format(root=str(ROOT)), str(tmp_path / "killed"),
         str(torch.get_num_threads()), *OVERRIDES], cwd=ROOT, capture_output=True, text=True,
        timeout=300)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]

    config = tiny_config(tmp_path / "killed", *OVERRIDES)
    checkpoints = tmp_path / "killed" / "factorportrait" / "stage1" / "checkpoints"
    assert latest_checkpoint(checkpoints).name == "step-00000002"
    assert (staging_path(checkpoints, 4) / "model.safetensors").is_file()  # the torn write
    logged_before_kill = {r["step"]: r["loss"] for r in read_metrics(config.stage_dir)}
    assert sorted(logged_before_kill) == [1, 2, 3, 4]

    resumed = train(config)
    straight = train(tiny_config(tmp_path / "straight", *OVERRIDES))
    assert not staging_path(checkpoints, 4).exists()
    assert [c.name for c in sorted(checkpoints.iterdir())] == [
        "step-00000002", "step-00000004", "step-00000006"]
    curve = loss_curve(resumed.stage_dir)
    assert curve == loss_curve(straight.stage_dir)
    assert {s: curve[s] for s in (3, 4)} == {s: logged_before_kill[s] for s in (3, 4)}
    final, expected = load_weights(resumed.final_weights), load_weights(straight.final_weights)
    assert all(torch.equal(final[name], expected[name]) for name in expected)
