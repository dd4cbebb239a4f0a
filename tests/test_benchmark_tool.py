"""The benchmark entry point runs and reports the documented keys (no timing assertions)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dit_benchmark_json_reports_overhead_ratio():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "dit", "--json", "--dim", "64",
         "--heads", "2", "--layers", "1", "--frames", "5", "--size", "32", "--batch", "1",
         "--repeats", "1"], capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["overhead_ratio"] > 0
    assert report["per_token_max_abs_diff"] < 1e-4  # same model, two modulation layouts
    assert report["config"]["tokens_per_sample"] == (1 + 2) * 2 * 2
    assert report["per_token_adaln_saved_activations_mib"] > report["ours_saved_activations_mib"]


def test_unknown_benchmark_is_a_clear_error():
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "benchmark.py"), "bogus"],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 2 and "choose a benchmark: dit" in result.stderr


def test_track_benchmark_reports_tracking_beside_rendering():
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "benchmark.py"), "track", "--json", "--size",
         "256", "--frames", "5", "--steps", "2", "--repeats", "1"],
        capture_output=True, text=True, check=True, cwd=ROOT)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["tracking_fps"] > 0 and report["render_fps"] > 0
    assert report["config"]["render_size"] == [64, 64]
    assert abs(report["tracking_to_render_ratio"]
               - report["tracking_fps"] / report["render_fps"]) < 0.1
