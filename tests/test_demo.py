"""The end-to-end demo (issue 9): recipe checks, the orbit, held-out clips, the shipped
checkpoints rendering, the metric-table command on a reduced set, and a miniature
``demo-train`` run through every step (resumable)."""

import hashlib
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from factorportrait.demo.config import RECIPE, REPO, checkpoint_dir, load_demo_config
from factorportrait.demo.heldout import HeldoutClip, heldout_identities, heldout_spec
from factorportrait.demo.showcase import orbit_about
from factorportrait.demo.train import synthetic_config
from factorportrait.geometry.cameras import Cameras
from factorportrait.inference.control_track import ControlTrack
from factorportrait.tracking.crop import center_boxes

SHIPPED = checkpoint_dir(load_demo_config())


def _looking_at_origin(distance: float = 0.6) -> Cameras:
    c2w = torch.eye(4)[None]
    c2w[0, 2, 3] = -distance  # at z = -d, looking along +z at the origin
    K = torch.tensor([[[60.0, 0, 32], [0, 60.0, 32], [0, 0, 1]]])
    return Cameras(K, c2w, 64, 64)


def test_recipe_rejects_unknown_keys_and_bad_sizes():
    with pytest.raises(ValueError, match="stage5"):
        load_demo_config(RECIPE, ["dit.stages.stage5.steps=1"])
    with pytest.raises(ValueError, match="size"):
        load_demo_config(RECIPE, ["size=40"])
    with pytest.raises(ValueError, match="frames = 4k"):
        load_demo_config(RECIPE, ["dit.stages.stage2.frames=8"])
    assert load_demo_config(RECIPE, ["vae.steps=3"]).vae.steps == 3


def test_orbit_about_keeps_the_target_in_view_at_constant_distance():
    camera = _looking_at_origin()
    orbit = orbit_about(camera, torch.zeros(3), 8)
    assert torch.allclose(orbit.c2w[0], camera.c2w[0], atol=1e-6)
    centres = orbit.c2w[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((8,), 0.6), atol=1e-5)
    assert torch.allclose(centres[2], torch.tensor([-0.6, 0.0, 0.0]), atol=1e-5)  # 90 degrees
    # the target projects to the image centre from every camera of the orbit
    w2c = torch.linalg.inv(orbit.c2w.double())
    points = w2c[:, :3, 3]  # the origin in camera coordinates
    pixels = (orbit.K.double() @ points[..., None])[..., 0]
    assert torch.allclose(pixels[:, :2] / pixels[:, 2:], torch.full((8, 2), 32.0,
                                                                    dtype=torch.float64))


def test_frontal_frame_is_the_camera_facing_the_face():
    orbit = orbit_about(_looking_at_origin(), torch.zeros(3), 8)  # frame 0 sees the face
    frames = 8
    track = ControlTrack(head_rotation=torch.zeros(frames, 3),
                         head_translation=torch.zeros(frames, 3), cameras=orbit)
    clip = HeldoutClip("x", torch.zeros(frames, 64, 64, 3, dtype=torch.uint8),
                       torch.zeros(frames, 64, 64, 3, dtype=torch.uint8), orbit, track, 0,
                       center_boxes(64, 64, frames))
    assert clip.frontal_frame() == 0
    # frames 4..7 see the head from 180..315 degrees: 315 (window frame 3) is the most frontal
    assert clip.window(4, 4).frontal_frame() == 3


def test_heldout_specs_are_only_heldout_identities():
    synth = synthetic_config(load_demo_config())
    identities = heldout_identities(synth)
    assert identities == [synth.identities - 2, synth.identities - 1]
    spec = heldout_spec(synth, identities[0], "dynamicsweep", 5)
    assert spec.split == "heldout" and spec.clip_index == 5
    with pytest.raises(ValueError, match="not held out"):
        heldout_spec(synth, 0, "phone", 0)


def test_shipped_checkpoints_load_and_render_a_short_clip(one_thread):
    from factorportrait.demo.evaluate import SampleSettings, evaluate_clip
    from factorportrait.demo.showcase import evaluation_clips, load_components

    config = load_demo_config()
    pipeline, encoder = load_components(SHIPPED)
    record = json.loads((SHIPPED / "demo.json").read_text())
    assert record["weights_total_mb"] <= 25
    clip = evaluation_clips(config, encoder, 1, 9)[0]
    metrics, videos = evaluate_clip(pipeline, clip, SampleSettings(4, None, 0), encoder.encoder)
    video = videos["model"]
    assert video.shape == (9, config.size, config.size, 3) and video.dtype == torch.uint8
    assert video.float().std() > 5  # an image, not a constant
    for row, values in metrics.items():
        assert set(values) == {"psnr", "ssim", "pose_iou", "expression_rmse", "appearance"}
        assert math.isfinite(values["psnr"]) and -1 <= values["ssim"] <= 1, row
        assert 0 <= values["pose_iou"] <= 1 and 0 <= values["appearance"] <= 1, row
    # the model follows the clip's moving camera; the repeated reference cannot
    assert metrics["model"]["pose_iou"] > metrics["(i) reference repeated"]["pose_iou"]


@pytest.mark.slow
def test_metric_table_command_on_a_reduced_set(tmp_path):
    out = tmp_path / "table.json"
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "demo.py"), "evaluate", "--clips", "1",
         "--frames", "9", "--steps", "3", "--out", str(tmp_path), "--json", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for row in ("model", "(i) reference repeated", "(ii) frozen pose + camera",
                "(iii) no expression", "VAE ceiling"):
        assert row in result.stdout
    table = json.loads(out.read_text())
    assert (table["clips"], table["frames"], table["steps"]) == (1, 9, 3)
    for row, values in table["mean"].items():
        assert math.isfinite(values["psnr"]) and 0 < values["ssim"] <= 1, row
    assert set(table["model_beats"]) == {"(i) reference repeated", "(ii) frozen pose + camera",
                                         "(iii) no expression"}


@pytest.mark.slow
def test_demo_train_runs_every_step_and_resumes(tmp_path, one_thread):
    from factorportrait.demo.train import STEPS, train_demo

    overrides = [
        f"output_dir={tmp_path / 'work'}", f"checkpoints={tmp_path / 'ckpt'}", "threads=1",
        "size=32", "data.identities=3", "data.heldout=1", "data.frames=9", "data.size=32",
        "data.workers=1", "vae.steps=2", "vae.batch_size=1",
        "vae.continue_with.frames=9", "vae.continue_with.steps=1",
        "vae.continue_with.batch_size=1", "vae.continue_with.warmup_steps=1",
        ("expression_encoder=[steps=2,preset=tiny,crop_size=32,pool_sets=4,batch_sets=2,"
         "pool_views=2,identities=2,time_limit_minutes=null,threads=1,log_every=1,"
         "projection.sets=8,projection.views=2]"),
        "dit.global_batch_size=2", "dit.reference_count=2", "dit.warmup_steps=1",
        *[f"dit.stages.stage{i}.frames=5" for i in range(1, 5)],
        *[f"dit.stages.stage{i}.steps=2" for i in range(1, 5)],
    ]
    config = load_demo_config(RECIPE, overrides)
    timings = train_demo(config, "test")
    assert set(timings) == set(STEPS) - {"ship"}
    shipped = tmp_path / "ckpt"
    names = {p.name for p in shipped.iterdir()}
    assert {"model.safetensors", "config.json", "vae.safetensors", "vae_config.json",
            "expression_encoder.safetensors", "expression_encoder.json", "demo.json"} <= names
    record = json.loads((shipped / "demo.json").read_text())
    assert record["command"] == "test" and record["seconds"] == timings
    # every frame of every clip got the encoder's codes
    from factorportrait.data.annotations import load_annotations
    from factorportrait.data.format import read_manifest

    root = tmp_path / "work" / "data"
    for record in read_manifest(root):
        codes = load_annotations(record.resolve(root, "annotations")).expression_codes
        assert codes is not None and codes.shape == (9, 128)
    # a second run finds everything done and changes nothing
    before = {p: p.stat().st_mtime_ns for p in shipped.iterdir() if p.suffix == ".safetensors"}
    assert train_demo(config, "test") == timings
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # a changed VAE recipe retrains the VAE and everything downstream of it, not the encoder
    train_demo(load_demo_config(RECIPE, [*overrides, "vae.steps=3"]), "test vae.steps=3")
    changed = {p.name for p, mtime in before.items() if p.stat().st_mtime_ns != mtime}
    assert changed == {"vae.safetensors", "model.safetensors"}
    record = json.loads((shipped / "demo.json").read_text())
    assert record["invocations"] == ["test", "test vae.steps=3"]
    # both VAE phases ran again, the second from the retrained first phase's weights
    vae_work = tmp_path / "work" / "vae"
    phases = [json.loads((folder / "phase.json").read_text())["inputs"]
              for folder in (vae_work, vae_work / "continued")]
    assert phases[0]["config"]["steps"] == 3 and phases[0]["init"] is None
    assert phases[1]["init"] == hashlib.sha256(
        (vae_work / "vae.safetensors").read_bytes()).hexdigest()
    assert (shipped / "vae.safetensors").read_bytes() == (
        vae_work / "continued" / "vae.safetensors").read_bytes()
    assert OmegaConf.to_container(config)["size"] == 32


def test_ablation_recipes_change_only_what_they_ablate():
    from factorportrait.demo.ablation import ablation_config, ablation_names
    from factorportrait.demo.train import stage_config

    assert set(ablation_names()) == {"full", "c1_no_dynamicsweep", "c2_no_normal_maps",
                                     "no_camera_rays", "c3_landmarks", "dex_dual_branch",
                                     "dex_no_ray_map", "dex_no_warping", "neutral_normals"}
    full = {name: stage_config(ablation_config("full"), name)
            for name in ("stage1", "stage3", "stage4")}
    c1 = {name: stage_config(ablation_config("c1_no_dynamicsweep"), name) for name in full}
    assert c1["stage1"].stage.mixture == full["stage1"].stage.mixture
    for name in ("stage3", "stage4"):  # FactorPortrait C1: Phone 20 / Studio 40 / ViewSweep 40
        assert c1[name].stage.mixture == {"phone": 0.2, "studio": 0.4, "viewsweep": 0.4,
                                          "dynamicsweep": 0.0}
        assert c1[name].stage.steps == full[name].stage.steps
    assert Path(c1["stage3"].stage_dir).parent.name == "ablation_c1_no_dynamicsweep"
    assert Path(full["stage3"].stage_dir).parent.name == "dit"  # the shipped model's runs
    c2 = ablation_config("c2_no_normal_maps")
    assert stage_config(c2, "stage3").diffusion.dropout["pose"] == 1.0
    assert list(c2.ablation.drop) == ["pose"]
    rays = stage_config(ablation_config("no_camera_rays"), "stage2").diffusion.dropout
    assert rays["camera"] == 1.0 and rays["pose"] == 0.0
    with pytest.raises(ValueError, match="unknown ablation 'c9'.*c1_no_dynamicsweep"):
        ablation_config("c9")
    # its own dataset (neutral-face normal maps): data, codes, latents and runs in its work
    # folder, never the demo's; the row itself beside the others
    from factorportrait.demo.ablation import ablation_dir, shared_config
    from factorportrait.demo.train import synthetic_config

    neutral = ablation_config("neutral_normals")
    assert synthetic_config(neutral).normals_expression is False
    assert synthetic_config(ablation_config("full")).normals_expression is True
    work = ablation_dir(neutral, "neutral_normals") / "work"
    assert REPO / neutral.ablation.work_dir == work and c2.ablation.work_dir is None
    # the key at its default leaves the data fingerprint as before it existed (an existing
    # work folder is not retrained); the ablation's value changes it
    from factorportrait.demo.train import step_inputs

    assert "normals_expression" not in step_inputs(ablation_config("full"), "vae")["data"]
    assert step_inputs(neutral, "vae")["data"]["normals_expression"] is False
    stage = stage_config(shared_config(neutral), "stage1")
    assert Path(stage.data.options["root"]) == work / "data"
    assert Path(stage.stage_dir).is_relative_to(work / "runs" / "ablation_neutral_normals")


def test_evaluation_drop_feeds_the_null_conditions(one_thread):
    from factorportrait.demo.evaluate import SampleSettings, clip_conditions, generate
    from factorportrait.demo.showcase import evaluation_clips, load_components
    from factorportrait.diffusion.flow_matching import null_conditions

    pipeline, encoder = load_components(SHIPPED)
    clip = evaluation_clips(load_demo_config(), encoder, 1, 5)[0]
    conditions = clip_conditions(pipeline, clip, 0)
    dropped = generate(pipeline, conditions, SampleSettings(2, None, 0, drop=("pose",)))
    by_hand = generate(pipeline, null_conditions(conditions, {"pose"}), SampleSettings(2, None, 0))
    assert torch.equal(dropped, by_hand)
    assert not torch.equal(dropped, generate(pipeline, conditions, SampleSettings(2, None, 0)))
