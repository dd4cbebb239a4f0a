"""tools/prepare_captures.py: real phone videos and a calibrated studio take become dataset
clips the validator accepts and stage 1 trains on; the studio pose is the rig's; bad
calibrations are refused in one line; runs resume."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from factorportrait.data import read_manifest
from factorportrait.data.annotations import load_annotations
from factorportrait.data.captures import CaptureSettings, plan_captures, prepare_captures
from factorportrait.data.validate import validate_dataset
from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_angle
from factorportrait.io import read_video
from tests.real_faces import phone_clip, studio_take

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def captures(tmp_path_factory):
    source = tmp_path_factory.mktemp("captures")
    phone_clip(source / "phone" / "astro" / "turn.mp4")
    phone_clip(source / "phone" / "astro2" / "lean.mp4", frames=17)
    truth = studio_take(source / "studio" / "avatar7" / "take1")
    return source, truth


@pytest.fixture(scope="module")
def prepared(captures, tmp_path_factory):
    source, _ = captures
    root = tmp_path_factory.mktemp("dataset")
    report = prepare_captures(source, root, CaptureSettings(encoder=str(ROOT / "checkpoints"
                                                                          / "demo"),
                                                            heldout=("astro2",)))
    return root, report


def test_captures_become_a_valid_dataset(prepared):
    root, report = prepared
    assert report.written == 5 and report.clips == 5
    validation = validate_dataset(root, full_decode=True)
    assert validation.ok, validation.problems
    records = {r.id: r for r in read_manifest(root)}
    assert set(records) == {"astro_turn", "astro2_lean", "avatar7_take1_cam0",
                            "avatar7_take1_cam1", "avatar7_take1_cam2"}
    assert records["astro2_lean"].split == "heldout"
    assert {records[f"avatar7_take1_cam{i}"].take for i in range(3)} == {"avatar7_take1"}
    phone = load_annotations(root / records["astro_turn"].annotations)
    assert phone.kind == "phone" and phone.expression_codes.shape == (13, 128)
    assert torch.equal(phone.c2w, torch.eye(4).expand(13, 4, 4))
    assert phone.mesh["avatar_scale"].shape == (13, 1)
    normals = read_video(root / records["astro_turn"].normals)
    assert normals.shape == (13, 192, 192, 3) and float((normals.sum(-1) > 0).float().mean()) > 0.2


def test_the_studio_take_shares_one_world_pose_close_to_the_truth(prepared, captures):
    root, _ = prepared
    rotation, centre = captures[1]
    poses = []
    for view in range(3):
        a = load_annotations(root / "annotations" / f"avatar7_take1_cam{view}.safetensors")
        poses.append((a.head_rotation, a.head_translation))
    assert all(torch.equal(p[0], poses[0][0]) and torch.equal(p[1], poses[0][1]) for p in poses)
    fitted = axis_angle_to_matrix(poses[0][0].double())
    errors = torch.rad2deg(rotation_angle(fitted @ rotation.double().transpose(1, 2)))
    distance = (poses[0][1].double() - centre.double()).norm(dim=1)
    assert float(errors.mean()) < 8.0, errors  # measured 6.0° (MediaPipe on avatar faces)
    assert float(distance.max()) < 0.02, distance  # metres; measured ≈ 1 cm


def test_a_second_run_resumes_and_other_settings_are_refused(prepared, captures):
    root, _ = prepared
    source, _ = captures
    again = prepare_captures(source, root, CaptureSettings(encoder=str(ROOT / "checkpoints"
                                                                         / "demo"),
                                                           heldout=("astro2",)))
    assert again.written == 0 and again.skipped == 5
    with pytest.raises(ValueError, match="fov_deg: 40.0 there, 50.0 now"):
        prepare_captures(source, root, CaptureSettings(fov_deg=50.0, encoder=str(
            ROOT / "checkpoints" / "demo"), heldout=("astro2",)))


def test_calibrations_that_do_not_match_the_views_are_refused(tmp_path):
    take = tmp_path / "captures" / "studio" / "p" / "t"
    studio_take(take, frames=5, size=96)
    (take / "cam2.mp4").rename(take / "side.mp4")
    items = plan_captures(tmp_path / "captures")
    from factorportrait.data.captures import load_calibration
    load_calibration(items[0].calibration, items[0].videos, 96, 96)  # ours: by sorted order
    with pytest.raises(ValueError, match="is for 96x96 images, the videos are 128x128"):
        load_calibration(items[0].calibration, items[0].videos, 128, 128)
    (take / "side.mp4").unlink()
    with pytest.raises(ValueError, match=r"has 3 cameras for 2 views \(cam0, cam1\)"):
        load_calibration(items[0].calibration, plan_captures(tmp_path / "captures")[0].videos,
                         96, 96)
    nerf = tmp_path / "nerf" / "studio" / "p" / "t"
    studio_take(nerf, frames=5, size=96, calibration="transforms.json")
    (nerf / "cam1.mp4").rename(nerf / "front.mp4")
    item = plan_captures(tmp_path / "nerf")[0]
    with pytest.raises(ValueError, match=r"file_path stems \['cam0', 'cam1', 'cam2'\] are not "
                                         r"the views \['cam0', 'cam2', 'front'\]"):
        load_calibration(item.calibration, item.videos, 96, 96)


def test_bad_capture_folders_are_one_line(tmp_path):
    (tmp_path / "c" / "studio" / "p" / "t").mkdir(parents=True)
    (tmp_path / "c" / "photos").mkdir()
    result = subprocess.run([sys.executable, str(ROOT / "tools" / "prepare_captures.py"),
                             str(tmp_path / "c"), str(tmp_path / "out"), "--no-progress"],
                            capture_output=True, text=True, cwd=ROOT)
    lines = [line for line in result.stderr.splitlines() if "error" in line]
    assert result.returncode == 2 and len(lines) == 1 and "unknown folder(s) ['photos']" in \
        lines[0]
    (tmp_path / "c" / "photos").rmdir()
    with pytest.raises(ValueError, match="expected one calibration file"):
        plan_captures(tmp_path / "c")


@pytest.mark.slow
def test_stage_one_trains_on_prepared_captures(prepared, tmp_path):
    from factorportrait.data import PortraitClipDataset, precompute_latents
    from factorportrait.models.vae import VAEConfig, WanVAE
    from factorportrait.training import train
    from tests.test_training_loop import loss_curve
    from tests.training_recipes import tiny_config

    root, _ = prepared
    torch.manual_seed(0)
    vae = WanVAE(VAEConfig.small(dim=8))
    vae.save_pretrained(tmp_path / "vae")
    clips = PortraitClipDataset(root, 13, size=(64, 64), split=None, window_step=4,
                                reference_count=4, latents=False)
    assert not precompute_latents(clips, vae).failed
    config = tiny_config(tmp_path / "runs", "data=synthetic", f"data.options.root={root}",
                         f"data.options.vae={tmp_path / 'vae'}", "data.options.window_step=4",
                         "data.options.reference_count=4", "data.num_workers=0",
                         "stage.steps=6", "validation.batches=1", "train.micro_batch_size=1")
    result = train(config)
    losses = list(loss_curve(result.stage_dir).values())
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
