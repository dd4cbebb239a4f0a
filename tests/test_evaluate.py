"""tools/evaluate.py over a results folder built from a real photo: every metric of every
protocol equals the metric function applied to the same frames, set metrics equal the
Fréchet distance of the detector's features, the tables and plot are written, a face the
tracker cannot find is reported in its row, and missing weights are one line."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from factorportrait.evaluation.frechet import FeatureStatistics, frechet_distance
from factorportrait.evaluation.identity import csim, load_arcface
from factorportrait.evaluation.metrics import psnr, ssim
from factorportrait.evaluation.motion import aed, apd, metric_tracker
from factorportrait.evaluation.perceptual import load_lpips, lpips
from factorportrait.evaluation.report import parse_metrics
from factorportrait.evaluation.results import find_cases, write_case
from factorportrait.io.video import read_video
from tests.real_faces import astronaut, chelsea, moved_photo
from tests.test_metrics_face import TinyEmbedder, export
from tests.test_metrics_networks import TinyI3D, TinyInception, _scripted, _write_weights
from tools.evaluate import main

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore::FutureWarning"),  # torch.jit's notices
              pytest.mark.filterwarnings("ignore:Matrix is singular")]  # 6 frames, 16-d features
SIZE, FRAMES = 256, 3


def _noisy(frames: torch.Tensor, seed: int, amount: int = 6) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    noise = torch.randint(-amount, amount + 1, frames.shape, generator=g)
    return (frames.short() + noise).clamp(0, 255).byte()


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Four cases (self, cross, disentangled, and a cat: no face) and the weight files."""
    root = tmp_path_factory.mktemp("results")
    photo = astronaut()
    still = moved_photo(photo, [0.0] * FRAMES, [1.0] * FRAMES, size=SIZE)
    turning = moved_photo(photo, [0.0, 5.0, 10.0], [1.0] * FRAMES, size=SIZE)
    write_case(root / "cases", "a_self", _noisy(turning, 0), 25, reference=still[0],
               ground_truth=turning)
    write_case(root / "cases", "b_cross", _noisy(still, 1), 25, reference=still[0],
               driving=turning)
    write_case(root / "cases", "c_disentangled", _noisy(still, 2), 25, reference=still[0],
               driving_pose=turning, driving_expression=still)
    cat = chelsea()[:, :300].permute(2, 0, 1)[None].float()  # a square of the cat photo
    cat = F.interpolate(cat, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    cat = cat.round().byte().permute(0, 2, 3, 1).expand(FRAMES, -1, -1, -1).contiguous()
    write_case(root / "cases", "d_cat", cat, 25, reference=still[0], ground_truth=cat)
    weights = root / "weights"
    weights.mkdir()
    _, backbone, heads = _write_weights("alex", weights)
    torch.manual_seed(0)
    export(TinyEmbedder(), weights / "w600k_r50.onnx")
    torch.manual_seed(1)
    _scripted(TinyInception(), weights / "inception.pt")
    torch.manual_seed(2)
    _scripted(TinyI3D(FRAMES), weights / "i3d.pt")
    flags = ["--lpips-backbone", str(backbone), "--lpips-heads", str(heads), "--arcface",
             str(weights / "w600k_r50.onnx"), "--inception", str(weights / "inception.pt"),
             "--i3d", str(weights / "i3d.pt")]
    return root, flags


@pytest.fixture(scope="module")
def report(results):
    root, flags = results
    assert main([str(root / "cases"), "--out", str(root / "out"), "--no-progress",
                 *flags]) == 0
    return json.loads((root / "out" / "evaluation.json").read_text())


def _case(report: dict, name: str) -> dict:
    return next(row for row in report["cases"] if row["case"] == name)


def test_cases_are_found_with_their_protocols(results):
    root, _ = results
    protocols = {case.name: case.protocol for case in find_cases(root / "cases")}
    assert protocols == {"a_self": "self", "b_cross": "cross", "c_disentangled": "disentangled",
                         "d_cat": "self"}


def test_self_reenactment_metrics_equal_the_metric_functions(results, report):
    root, flags = results
    folder = root / "cases" / "a_self"
    generated, truth = read_video(folder / "generated.mp4"), read_video(folder / "ground_truth.mp4")
    a, b = generated.permute(0, 3, 1, 2).float(), truth.permute(0, 3, 1, 2).float()
    row = _case(report, "a_self")
    assert row["psnr"] == pytest.approx(float(psnr(a, b, 255.0).mean()), rel=1e-6)
    assert row["ssim"] == pytest.approx(float(ssim(a, b, 255.0).mean()), rel=1e-6)
    network = load_lpips("alex", flags[1], flags[3])
    assert row["lpips"] == pytest.approx(
        float(lpips(a / 127.5 - 1, b / 127.5 - 1, network).mean()), rel=1e-5)
    arcface = load_arcface(flags[5])
    reference = read_video(folder / "ground_truth.mp4")[0]  # = reference.png's photo
    with metric_tracker() as tracker:
        assert row["csim"] == pytest.approx(float(csim(generated, reference, arcface, tracker)
                                                  .mean()), abs=2e-3)
        assert row["apd"] == pytest.approx(apd(generated, truth, tracker).value, abs=1e-6)
        assert row["aed"] == pytest.approx(aed(generated, truth, tracker).value, abs=1e-6)
    assert row["apd"] < math.radians(1.0)  # the same turns, noise only


def test_cross_and_disentangled_pose_distance_is_the_known_turn(report):
    # generated frames hold the pose; the driver turns by 0, 5, 10 degrees (roll): the mean
    # over frames and three angles is (0 + 5 + 10) / 3 / 3 degrees, tracked within ~0.5
    expected = math.radians(15 / 9)
    for name in ("b_cross", "c_disentangled"):
        assert _case(report, name)["apd"] == pytest.approx(expected, abs=math.radians(0.6))
    # the disentangled expression driver is the still photo itself: AED of noise only
    assert _case(report, "c_disentangled")["aed"] < 0.02


def test_aggregates_set_metrics_and_files(results, report):
    root, flags = results
    protocols = report["protocols"]
    assert protocols["self"]["cases"] == 2 and protocols["cross"]["cases"] == 1
    # the cat has no face but has PSNR (capped at 100 dB, identical frames): both count
    assert protocols["self"]["psnr"] == pytest.approx((_case(report, "a_self")["psnr"] + 100) / 2)
    assert protocols["self"]["csim"] == pytest.approx(_case(report, "a_self")["csim"])
    assert math.isfinite(protocols["self"]["fid"]) and math.isfinite(protocols["self"]["fvd"])
    detector = torch.jit.load(flags[7])
    real, fake = [], []
    for name in ("a_self", "d_cat"):
        folder = root / "cases" / name
        for bucket, file in ((real, "ground_truth.mp4"), (fake, "generated.mp4")):
            bucket.append(detector(read_video(folder / file).permute(0, 3, 1, 2).contiguous(),
                                   return_features=True))
    r = FeatureStatistics.from_features(torch.cat(real))
    f = FeatureStatistics.from_features(torch.cat(fake))
    # FID is a difference of terms of size E|x|^2 that nearly cancel here (7e-4 of 2.6): its
    # error is float32 feature noise (batched network, streamed sums) relative to that scale,
    # not relative to the small result (rel=1e-5 failed in CI at 1.1e-5)
    scale = sum(float(s.covariance.trace() + s.mean @ s.mean) for s in (r, f))
    assert protocols["self"]["fid"] == pytest.approx(
        frechet_distance(r.mean, r.covariance, f.mean, f.covariance), abs=1e-7 * scale)
    assert protocols["cross"]["fid_samples"] == FRAMES  # one video: frames, but one FVD clip
    assert "fvd" not in protocols["cross"] and "2 clips" in report["skipped"]["fvd (cross)"]
    markdown = (root / "out" / "evaluation.md").read_text()
    for title in ("Self-reenactment", "Cross-reenactment", "Disentangled reenactment",
                  "Per video"):
        assert title in markdown
    assert (root / "out" / "evaluation.png").stat().st_size > 1000


def test_a_video_without_a_face_keeps_its_image_metrics_and_names_the_cause(report):
    row = _case(report, "d_cat")
    assert "no face" in row["face_error"] and "d_cat/generated.mp4" in row["face_error"]
    assert row["psnr"] == 100.0  # identical frames (capped)
    assert "csim" not in row and report["cases_without_face"] == 1


def test_missing_weights_are_skipped_by_default_and_refused_by_name(results, tmp_path,
                                                                   monkeypatch):
    root, _ = results
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    assert main([str(root / "cases" / "a_self"), "--out", str(tmp_path / "o"),
                 "--metrics", "psnr,ssim", "--no-progress"]) == 0
    partial = json.loads((tmp_path / "o" / "evaluation.json").read_text())
    assert set(partial["protocols"]["self"]) == {"cases", "psnr", "ssim"}
    env = {**os.environ, "HOME": str(tmp_path),
           "TORCH_HOME": str(tmp_path / "torch")}
    result = subprocess.run([sys.executable, "tools/evaluate.py", str(root / "cases"),
                             "--metrics", "psnr,lpips", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "alexnet-owt-7be5be79.pth" in lines[0] and \
        "published at" in lines[0], result.stderr
    assert not (tmp_path / "x").exists()  # nothing written
    skipped = subprocess.run([sys.executable, "tools/evaluate.py", str(root / "cases" / "a_self"),
                              "--out", str(tmp_path / "y"), "--no-progress"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert skipped.returncode == 0, skipped.stderr
    listed = json.loads((tmp_path / "y" / "evaluation.json").read_text())["skipped"]
    assert set(listed) == {"lpips", "csim", "fid", "fvd"}
    assert all("published at" in reason for reason in listed.values())


def test_bad_results_folders_are_one_line(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no <case>/generated.mp4"):
        find_cases(tmp_path / "empty")
    case = tmp_path / "lonely"
    case.mkdir()
    (case / "generated.mp4").write_bytes(b"")
    with pytest.raises(ValueError, match="no ground_truth.mp4, driving.mp4"):
        find_cases(case)
    with pytest.raises(ValueError, match="unknown metric"):
        parse_metrics("psnr,nope")
    assert main([str(tmp_path / "empty")]) == 2


def test_unusable_faces_and_weight_files_are_one_line(results, tmp_path):
    root, flags = results
    small = moved_photo(astronaut(), [0.0] * FRAMES, [1.0] * FRAMES, size=64)  # a 64² render
    write_case(tmp_path / "cases", "tiny", small, 25, ground_truth=small)
    assert main([str(tmp_path / "cases"), "--metrics", "psnr,apd", "--no-progress"]) == 0
    row = json.loads((tmp_path / "cases" / "evaluation.json").read_text())["cases"][0]
    assert row["psnr"] == 100.0 and "tiny/generated.mp4" in row["face_error"]
    broken = tmp_path / "inception.pt"
    broken.write_text("not TorchScript")
    result = subprocess.run([sys.executable, "tools/evaluate.py", str(tmp_path / "cases"),
                             "--metrics", "fid", "--inception", str(broken)],
                            capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "FID" in lines[0], result.stderr
