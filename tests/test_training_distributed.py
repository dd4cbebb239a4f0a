"""Multi-process training through the user entry point: 2 CPU processes, DeepSpeed over gloo."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from factorportrait import FactorPortraitDiT
from factorportrait.training import loss_curve
from factorportrait.training.checkpoint import load_weights
from factorportrait.training.distributed import fill_deepspeed_config, init_runtime
from tests.training_recipes import QUIET, ROOT

ZERO2 = "distributed.deepspeed_config=recipes/deepspeed/zero2.json"
ZERO3 = "distributed.deepspeed_config=recipes/deepspeed/zero3.json"
RUN = ["scale=tiny", *QUIET, "validation.every=0", "distributed.export_rank_weights=true"]


def launch(output_root, *overrides: str) -> None:
    """``torchrun --nproc_per_node 2 tools/train.py ...`` on CPU, as a user launches it."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_DEEPSPEED_CONFIG_FILE", None)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tools/train.py", *RUN, f"output_root={output_root}", *overrides],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert result.returncode == 0, result.stderr[-4000:]


def stage_dir(output_root):
    return output_root / "factorportrait" / "stage1"


@pytest.fixture(scope="module")
def zero2_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("zero2")
    launch(root, ZERO2, "stage.steps=6", "checkpoint.every=3")
    return stage_dir(root)


@pytest.mark.slow
def test_two_process_zero2_trains_and_ranks_agree(zero2_run):
    losses = list(loss_curve(zero2_run).values())
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert losses[-1] < losses[0] and sum(losses[3:]) < sum(losses[:3])
    rank0 = load_file(zero2_run / "rank_weights" / "rank0.safetensors")
    rank1 = load_file(zero2_run / "rank_weights" / "rank1.safetensors")
    final = load_weights(zero2_run / "final")
    assert all(torch.equal(rank0[k], rank1[k]) and torch.equal(rank0[k], final[k])
               for k in final)
    checkpoint = zero2_run / "checkpoints" / "step-00000006"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert (state["engine"], state["world_size"], state["sampler"]["samples_consumed"]) == (
        "zero2", 2, 6 * 4)
    names = {p.name for p in checkpoint.iterdir()}
    assert {"optimizer-rank00000.safetensors", "optimizer-rank00001.safetensors"} <= names
    assert not any(name.endswith((".pt", ".pth", ".bin")) for name in names)  # no pickles


@pytest.mark.slow
def test_two_process_zero2_resume_is_exact(zero2_run, tmp_path):
    launch(tmp_path, ZERO2, "stage.steps=6", "checkpoint.every=3", "train.stop_at=3")
    launch(tmp_path, ZERO2, "stage.steps=6", "checkpoint.every=3")
    assert loss_curve(stage_dir(tmp_path)) == loss_curve(zero2_run)
    resumed, straight = load_weights(stage_dir(tmp_path) / "final"), load_weights(
        zero2_run / "final")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


@pytest.mark.slow
def test_two_process_zero3_resumes_and_exports_consolidated_weights(zero2_run, tmp_path):
    launch(tmp_path, ZERO3, "stage.steps=4", "checkpoint.every=2", "train.stop_at=2")
    launch(tmp_path, ZERO3, "stage.steps=4", "checkpoint.every=2")
    directory = stage_dir(tmp_path)
    assert (directory / "checkpoints" / "step-00000004" / "deepspeed").is_dir()
    zero3, zero2 = loss_curve(directory), loss_curve(zero2_run)
    assert list(zero3) == [1, 2, 3, 4]  # (zero2_run has 6 steps and another schedule)
    assert zero3[1] == zero2[1]  # same data, noise and initial weights
    model = FactorPortraitDiT.from_pretrained(directory / "final")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_fill_deepspeed_config_fills_auto_and_refuses_conflicts():
    raw = json.loads((ROOT / "recipes" / "deepspeed" / "zero2.json").read_text())
    config = fill_deepspeed_config(raw, micro_batch=1, accumulation=8, world_size=8,
                                   grad_clip=1.0, bf16=True)
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"],
            config["train_batch_size"], config["gradient_clipping"]) == (1, 8, 64, 1.0)
    assert config["bf16"]["enabled"] is True and raw["bf16"]["enabled"] == "auto"
    with pytest.raises(ValueError, match="train_micro_batch_size_per_gpu is 4 but the recipe "
                                         "gives 1"):
        fill_deepspeed_config({**raw, "train_micro_batch_size_per_gpu": 4}, 1, 8, 8, 1.0, True)
    with pytest.raises(ValueError, match=r"remove \['optimizer'\]"):
        fill_deepspeed_config({**raw, "optimizer": {"type": "Adam"}}, 1, 8, 8, 1.0, True)


def test_several_processes_need_a_deepspeed_config(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("ACCELERATE_DEEPSPEED_CONFIG_FILE", raising=False)
    with pytest.raises(ValueError, match="2 processes were launched but no DeepSpeed config"):
        init_runtime(None)


def _kill_after(output_root, step: int, *overrides: str) -> None:
    """Launch like :func:`launch`, SIGKILL the whole process group once ``step`` is logged."""
    import signal
    import time

    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    env.pop("ACCELERATE_DEEPSPEED_CONFIG_FILE", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "tools/train.py", *RUN, f"output_root={output_root}", *overrides],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    metrics = stage_dir(output_root) / "metrics.jsonl"
    deadline = time.monotonic() + 400
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if metrics.is_file() and any(json.loads(line)["step"] >= step
                                         for line in metrics.read_text().splitlines()
                                         if line.strip() and '"loss"' in line):
                break
            time.sleep(0.2)
        assert process.poll() is None, "the run ended before it could be killed"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@pytest.mark.slow
def test_two_process_zero3_with_zero_init_resumes_exactly_after_kill_9(tmp_path):
    """ZeRO-3 builds the model under zero.Init (each rank its half) and, killed with SIGKILL
    mid-run, resumes to the very losses and weights of an uninterrupted run."""
    run = [ZERO3, "stage.steps=12", "checkpoint.every=3"]
    launch(tmp_path / "straight", *run)
    _kill_after(tmp_path / "killed", 7, *run)
    checkpoints = stage_dir(tmp_path / "killed") / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step-"))[-1] in (
        "step-00000006", "step-00000009")
    launch(tmp_path / "killed", *run)
    resumed, straight = (loss_curve(stage_dir(tmp_path / name)) for name in ("killed",
                                                                             "straight"))
    differing = [step for step in straight if resumed.get(step) != straight[step]]
    assert list(resumed) == list(range(1, 13)) and differing == []
    final = load_weights(stage_dir(tmp_path / "killed") / "final")
    expected = load_weights(stage_dir(tmp_path / "straight") / "final")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    state = json.loads((checkpoints / "step-00000012" / "trainer_state.json").read_text())
    assert state["engine"] == "zero3" and state["native_digests"]  # DeepSpeed files recorded


@pytest.mark.slow
def test_two_process_zero2_lora_resumes_exactly_after_kill_9(tmp_path):
    """A LoRA run (model.trainable=lora) under ZeRO-2, killed with SIGKILL mid-run, resumes
    to the very losses and final (merged) weights of an uninterrupted one."""
    from factorportrait.training import lora

    run = [ZERO2, "model.trainable=lora", "stage.steps=9", "checkpoint.every=3"]
    launch(tmp_path / "straight", *run)
    _kill_after(tmp_path / "killed", 5, *run)
    launch(tmp_path / "killed", *run)
    resumed, straight = (loss_curve(stage_dir(tmp_path / name)) for name in ("killed",
                                                                             "straight"))
    differing = [step for step in straight if resumed.get(step) != straight[step]]
    assert list(resumed) == list(range(1, 10)) and differing == []
    final = load_weights(stage_dir(tmp_path / "killed") / "final")
    expected = load_weights(stage_dir(tmp_path / "straight") / "final")
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert not any(lora.is_lora_key(k) for k in final)  # final/ is the merged plain model
    assert (stage_dir(tmp_path / "killed") / "final" / lora.ADAPTER_FILE).is_file()
