"""tools/train.py (dry run, whole curriculum) and tools/benchmark.py train, as users run them."""

import json
import subprocess
import sys

import pytest
import yaml

from factorportrait.training import loss_curve
from factorportrait.training.checkpoint import load_weights
from tests.training_recipes import QUIET, ROOT


def run_tool(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def test_printing_the_resolved_config_is_a_dry_run(tmp_path):
    result = run_tool("tools/train.py", "--cfg", "job", "--resolve", "stage=stage3",
                      "model=wan_14b", f"output_root={tmp_path}")
    config = yaml.safe_load(result.stdout)
    assert config["stage"]["frames"] == 49 and config["stage"]["lr"] == 5e-5
    assert config["model"]["preset"] == "wan_14b" and config["train"]["global_batch_size"] == 64
    assert config["stage_dir"] == f"{tmp_path}/factorportrait/stage3"
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.slow
def test_whole_curriculum_runs_every_stage_from_the_previous_one(tmp_path):
    args = ["tools/train.py", "curriculum=paper", "scale=tiny", "stage.steps=2",
            "validation.every=0", f"output_root={tmp_path}", *QUIET]
    run_tool(*args)
    run_dir = tmp_path / "factorportrait"
    for stage, frames in (("stage1", 13), ("stage2", 25), ("stage3", 49), ("stage4", 81)):
        assert list(loss_curve(run_dir / stage)) == [1, 2], stage
        assert (run_dir / stage / "final" / "model.safetensors").is_file()
        state = json.loads((run_dir / stage / "checkpoints" / "step-00000002" /
                            "trainer_state.json").read_text())
        assert (state["stage"], state["frames"]) == (stage, frames)
    assert load_weights(run_dir / "stage4" / "final").keys() == load_weights(
        run_dir / "stage1" / "final").keys()
    rerun = run_tool(*args)  # finished stages are skipped
    assert (rerun.stdout + rerun.stderr).count("final weights exist") == 4


@pytest.mark.slow
def test_train_benchmark_reports_samples_per_second_and_peak_memory():
    result = run_tool("tools/benchmark.py", "train", "--json", "--cases", "tiny", "--steps", "1",
                      "--warmup", "1", "--frames", "5")
    report = json.loads(result.stdout.strip().splitlines()[-1])
    tiny = report["cases"]["tiny"]
    assert tiny["samples_per_second"] > 0 and tiny["peak_mib"] >= 0
    assert tiny["tokens_per_sample"] == (1 + 2) * 4 * 4
