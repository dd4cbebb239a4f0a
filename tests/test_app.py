"""The web app's work without the page (factorportrait/app/session.py), the control track a
render exports, and the app's command line."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from factorportrait.app.session import (Renderer, RenderForm, parse_extra, plot_cameras,
                                        preset_defaults, trajectory_input)
from factorportrait.cli.app import main as app_main
from factorportrait.inference.control_track import load_control_track, save_control_track
from factorportrait.inference.controls import default_reference_camera, plan_controls, plan_track
from tests.pipeline_helpers import driving_track

DEMO = Path(__file__).resolve().parents[1] / "checkpoints" / "demo"


@pytest.fixture(scope="module")
def renderer(tmp_path_factory):
    torch.set_num_threads(1)
    return Renderer(DEMO, tmp_path_factory.mktemp("app"))


def test_the_trajectory_takes_only_the_presets_parameters_and_a_camera_file_wins():
    form = RenderForm(mode="camera_only", trajectory="dolly",
                      params=dict(degrees=90.0, distance=0.8, end_distance=0.5, easing="linear"),
                      extra="fov_deg=30, end_distance=0.45")
    assert trajectory_input(form) == ("dolly", dict(distance=0.8, end_distance=0.45,
                                                    easing="linear", fov_deg=30))
    assert trajectory_input(RenderForm(mode="expression_only", trajectory="orbit")) is None
    assert trajectory_input(RenderForm(mode="mixed", camera_file="cams.json")) == \
        Path("cams.json")
    assert preset_defaults("orbit")["degrees"] == 360.0 and "degrees" not in \
        preset_defaults("dolly")
    with pytest.raises(ValueError, match="expected key=value, got 'fov_deg'"):
        parse_extra("fov_deg")
    with pytest.raises(ValueError, match="preset 'twirl': expected one of orbit, spiral"):
        preset_defaults("twirl")


def test_the_plot_follows_the_parameters_and_names_a_bad_camera_file(tmp_path):
    quarter = plot_cameras(RenderForm(params=dict(degrees=90.0)), 9, 64, 64)
    full = plot_cameras(RenderForm(params=dict(degrees=360.0)), 9, 64, 64)
    assert quarter.dtype == np.uint8 and quarter.ndim == 3 and quarter.shape == full.shape
    assert np.abs(quarter.astype(int) - full).mean() > 1  # another path was drawn
    bad = tmp_path / "cams.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="^camera file: .*cams.json"):
        plot_cameras(RenderForm(camera_file=str(bad)), 9, 64, 64)
    with pytest.raises(ValueError, match="camera_trajectory: .*has no parameter"):
        plot_cameras(RenderForm(extra="twist=3"), 9, 64, 64)


def test_a_plans_control_track_drives_the_same_plan_again(tmp_path):
    """The exported track, read back as the driving track, gives the same cameras, codes,
    head pose and mesh expression (exactly)."""
    driving = driving_track(frames=5)
    reference = driving[0].replace(cameras=default_reference_camera(32, 32))
    plan = plan_controls("driving", 5, reference, driving=driving)
    save_control_track(plan_track(plan, 12.0, "test"), tmp_path / "controls.safetensors")
    track = load_control_track(tmp_path / "controls.safetensors")
    again = plan_controls("driving", 5, reference, driving=track)
    assert track.fps == 12.0 and track.source == "test"
    assert torch.equal(again.expression_codes, plan.expression_codes)
    assert torch.equal(again.cameras.c2w, plan.cameras.c2w)
    for name in ("head_rotation", "head_translation", "expression"):
        assert torch.equal(getattr(again.mesh_pose, name), getattr(plan.mesh_pose, name))


def test_a_missing_portrait_and_a_text_file_are_one_line_errors(renderer, tmp_path):
    with pytest.raises(ValueError, match="^portrait: upload a portrait image"):
        renderer.preview(RenderForm(mode="camera_only"))
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    with pytest.raises(ValueError, match=r"notes.txt is unreadable \(truncated or not an "):
        renderer.render(RenderForm(portrait=str(text), mode="camera_only"))


def test_renders_of_two_threads_run_one_after_the_other(renderer):
    """The demo identity, orbit: each render writes its mp4, track and sheet; two requests
    at once never overlap on the model."""
    form = RenderForm(demo_identity=True, mode="camera_only", params=dict(degrees=90.0),
                      frames=5, steps=1)
    results = []
    threads = [threading.Thread(target=lambda: results.append(renderer.render(
        form, progress=False))) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 2 and results[0].video != results[1].video
    (first_start, first_end), (second_start, second_end) = sorted(renderer.intervals[-2:])
    assert first_end <= second_start
    for result in results:
        assert result.num_frames == 5 and result.video.stat().st_size > 0
        assert len(load_control_track(result.track)) == 5
        assert Image.open(result.sheet).size[0] > 0


def test_the_demo_identity_is_the_held_out_subject(renderer):
    identity = renderer.demo_identity()
    assert identity.photo.shape == (64, 64, 3) and identity.name.endswith("_phone00")
    assert len(identity.reference) == 1 and identity.reference.expression_codes is not None
    driver = load_control_track(renderer.demo_driver())
    assert len(driver) == 17 and driver.source != identity.name


def test_the_app_command_refuses_bad_arguments_in_one_line(tmp_path, capsys):
    assert app_main(["--checkpoint", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err.strip().splitlines()[-1]
    assert app_main(["--checkpoint", str(DEMO), "--port", "0"]) == 2
    assert "--port must be in 1..65535" in capsys.readouterr().err
    assert app_main(["--checkpoint", str(DEMO), "--pose-encoder", str(tmp_path)]) == 2
    assert f"--pose-encoder {tmp_path}: expected a folder with motion_trainer.json" in \
        capsys.readouterr().err


def test_sampling_and_paste_back_are_refused_before_any_work(tmp_path):
    fresh = Renderer(DEMO, tmp_path / "outputs")
    cases = [(dict(steps=0), "^steps must be a whole number >= 1, got 0"),
             (dict(seed=2**63), r"^seed must be an integer in \[0, 2\^63\)"),
             (dict(guidance="cfg", guidance_scale=-1.0), "^guidance: guidance scale must be"),
             (dict(paste_back=True), "^paste_back: the demo identity has no full photo")]
    for changes, message in cases:
        form = RenderForm(demo_identity=True, mode="camera_only", frames=5, steps=1)
        with pytest.raises(ValueError, match=message):
            fresh.render(RenderForm(**{**form.__dict__, **changes}))
    assert fresh._pipeline is None  # no weights were read
    with pytest.raises(ValueError, match="num_frames must be 4k"):
        fresh.render(RenderForm(demo_identity=True, mode="camera_only", frames=6, steps=1))
    assert list((tmp_path / "outputs").iterdir()) == []  # a failed render leaves no folder
