"""Synthetic data generator: valid datasets, annotations that re-render the videos, the
controls each kind varies, and an interrupted (SIGKILLed) run that resumes into the same
dataset as an uninterrupted one."""

from __future__ import annotations

import fcntl
import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from factorportrait.body import AvatarIdentity
from factorportrait.data import load_annotations, read_manifest, validate_dataset
from factorportrait.data.synthetic import (
    SyntheticConfig,
    derive_seed,
    generate_dataset,
    identity_from_vector,
    identity_to_vector,
    plan_clips,
    read_config,
    render_from_annotations,
    sample_script,
)
from factorportrait.io import read_video, video_info

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
TOOL = REPO / "tools" / "make_synthetic.py"
CLI_ARGS = ["--identities", "2", "--heldout", "1", "--frames", "9", "--size", "64",
            "--studio-views", "2", "--seed", "3"]
CONFIG = SyntheticConfig(identities=2, heldout=1, frames=9, width=64, height=64,
                         studio_views=2, seed=3)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, one_thread) -> Path:
    """The tiny dataset of ``CONFIG``, written in-process."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    report = generate_dataset(root, CONFIG)
    assert (report.planned, report.written, report.skipped) == (10, 10, 0)
    return root


def _annotations(root: Path) -> dict:
    return {r.id: load_annotations(r.resolve(root, "annotations")) for r in read_manifest(root)}


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = (a.double() - b.double()).pow(2).mean()
    return float("inf") if mse == 0 else float(10 * torch.log10(255.0**2 / mse))


def assert_same_dataset(root: Path, expected: Path) -> None:
    """Manifest, config, annotation tensors/metadata and decoded frames all identical."""
    assert (root / "manifest.jsonl").read_bytes() == (expected / "manifest.jsonl").read_bytes()
    assert read_config(root) == read_config(expected)
    for record in read_manifest(root):
        ours = load_annotations(record.resolve(root, "annotations"))
        theirs = load_annotations(record.resolve(expected, "annotations"))
        assert ours.tensors().keys() == theirs.tensors().keys()
        for key, value in ours.tensors().items():
            assert torch.equal(value, theirs.tensors()[key]), (record.id, key)
        assert (ours.width, ours.height, ours.fps, ours.kind, ours.expression_names) == (
            theirs.width, theirs.height, theirs.fps, theirs.kind, theirs.expression_names)
        for field in ("video", "normals"):
            a, b = record.resolve(root, field), record.resolve(expected, field)
            assert a.stat().st_size == b.stat().st_size, (record.id, field)
            assert torch.equal(read_video(a), read_video(b)), (record.id, field)
    strays = [p for p in root.rglob("*") if ".tmp" in p.name]
    assert not strays


# -- the dataset -------------------------------------------------------------------------------
def test_generated_dataset_passes_the_validator(dataset):
    report = validate_dataset(dataset, full_decode=True)
    assert report.ok, report.problems
    records = read_manifest(dataset)
    assert [r.id for r in records] == [spec.id for spec in plan_clips(CONFIG)]
    assert {r.kind for r in records} == {"phone", "studio", "viewsweep", "dynamicsweep"}
    assert {r.identity: r.split for r in records} == {"syn0000": "train", "syn0001": "heldout"}
    assert all(video_info(r.resolve(dataset, "video")) == (9, 25.0, 64, 64) for r in records)


def test_annotations_rerender_the_videos(dataset):
    """Rebuild each avatar from its annotations, re-render a frame, compare: PSNR > 40 dB."""
    supersample = read_config(dataset).supersample
    for record in read_manifest(dataset):
        annotations = load_annotations(record.resolve(dataset, "annotations"))
        frame = 4
        rgb, normals = render_from_annotations(annotations, [frame], supersample)
        for field, rendered in (("video", rgb), ("normals", normals)):
            decoded = read_video(record.resolve(dataset, field), [frame])
            assert _psnr(rendered, decoded) > 40.0, (record.id, field)
        assert annotations.expression_names[0] == "jaw_open"


def _moves(values: torch.Tensor) -> bool:
    """Whether a per-frame tensor ``(F, ...)`` changes over the clip."""
    return bool((values - values[:1]).abs().amax() > 1e-4)


def test_each_kind_varies_its_own_controls(dataset):
    clips = _annotations(dataset)
    for clip_id, a in clips.items():
        kind = a.kind
        camera_moves = _moves(a.c2w)
        if kind == "viewsweep":  # static expression and pose, moving camera
            assert not _moves(a.expression) and camera_moves, clip_id
            assert not a.head_rotation.any() and not a.head_translation.any()
            assert a.c2w[:, :3, 3].diff(dim=0).norm(dim=-1).amin() > 1e-3  # every frame moves
        elif kind == "dynamicsweep":  # all three move
            assert _moves(a.expression) and _moves(a.head_rotation) and camera_moves, clip_id
        else:  # phone and studio: fixed camera, moving head and face
            assert not camera_moves and _moves(a.expression) and _moves(a.head_rotation)
    views = [a for clip_id, a in clips.items() if clip_id.startswith("syn0000_studio00_")]
    assert len(views) == 2 and not torch.equal(views[0].c2w, views[1].c2w)
    assert torch.equal(views[0].expression, views[1].expression)  # one take, several cameras
    identities = {clip_id[:7]: a.betas for clip_id, a in clips.items()}
    assert all(torch.equal(a.betas, identities[clip_id[:7]]) for clip_id, a in clips.items())
    assert not torch.equal(identities["syn0000"], identities["syn0001"])


# -- interruption and resumption ---------------------------------------------------------------
def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.is_file() else 0


@pytest.mark.slow
def test_killed_run_resumes_into_the_same_dataset(dataset, tmp_path):
    """SIGKILL the CLI after two clips, re-run it (with two worker processes this time):
    the folder equals the one written in one go."""
    root = tmp_path / "killed"
    command = [sys.executable, str(TOOL), str(root), *CLI_ARGS, "--threads", "1",
               "--no-progress"]
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while _lines(root / "manifest.jsonl") < 2 and process.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)  # mid-way through the third clip
    process.wait()
    assert 2 <= _lines(root / "manifest.jsonl") < 10, "the kill missed the run"
    result = subprocess.run(command + ["--workers", "2"], cwd=REPO, capture_output=True,
                            text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    assert "already there" in result.stdout
    assert_same_dataset(root, dataset)


def test_unlisted_clip_files_are_overwritten(dataset, tmp_path):
    """Files of clips missing from the manifest (killed before the append) are redone."""
    root = tmp_path / "partial"
    shutil.copytree(dataset, root)
    records = read_manifest(root)
    (root / "manifest.jsonl").write_bytes(b"".join(
        (json.dumps(r.to_json()) + "\n").encode() for r in records[:-2]))
    records[-2].resolve(root, "video").write_bytes(b"half a video")
    records[-1].resolve(root, "annotations").unlink()
    (root / "normals" / f".{records[-1].id}.abc123.tmp.mp4").write_bytes(b"temporary")
    report = generate_dataset(root, CONFIG)
    assert (report.written, report.skipped) == (2, 8)
    assert_same_dataset(root, dataset)


def test_resume_refuses_other_settings_and_a_second_writer(dataset):
    with pytest.raises(ValueError, match="frames: 9 there, 13 now"):
        generate_dataset(dataset, SyntheticConfig(**{**vars(CONFIG), "frames": 13}))
    with open(dataset / ".make_synthetic.lock", "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        with pytest.raises(RuntimeError, match="another make_synthetic run"):
            generate_dataset(dataset, CONFIG)


# -- pieces ------------------------------------------------------------------------------------
def test_talking_performance_dynamics():
    script = sample_script(10.0, torch.Generator().manual_seed(0))
    times = torch.arange(250, dtype=torch.float64) / 25
    performance = script.evaluate(times)
    expression = performance.expression
    assert expression.shape == (250, 8) and expression.amin() >= 0 and expression.amax() <= 1
    jaw = expression[:, 0]
    peaks = ((jaw[1:-1] > jaw[:-2]) & (jaw[1:-1] >= jaw[2:]) & (jaw[1:-1] > 0.1)).sum()
    assert 15 <= int(peaks) <= 60  # syllable-like rhythm, 3.5-5.5 per second while talking
    assert expression[:, 5].amax() > 0.8 and torch.equal(expression[:, 5], expression[:, 6])
    angle_step = performance.head_rotation.diff(dim=0).norm(dim=-1)
    assert angle_step.amax() < torch.deg2rad(torch.tensor(3.0))  # smooth head motion
    assert performance.head_rotation.norm(dim=-1).amax() < torch.deg2rad(torch.tensor(60.0))
    assert performance.head_translation.abs().amax() < 0.05
    segment = script.evaluate(times[100:])  # a segment is the same performance, cut
    assert torch.allclose(segment.expression, expression[100:], atol=1e-6)


def test_identity_vector_round_trip_and_seed_stability():
    identity = AvatarIdentity.sample(7)
    assert identity_from_vector(identity_to_vector(identity)) == identity
    assert derive_seed(0, 1, "phone", 2) == derive_seed(0, 1, "phone", 2)
    assert derive_seed(0, 1, "phone", 2) != derive_seed(0, 1, "phone", 3)
    assert derive_seed(0, "identity", 0) == 5874353970505134723  # stable across runs


def test_config_errors_are_clear():
    with pytest.raises(ValueError, match="valid kinds|phone, studio, viewsweep, dynamicsweep"):
        SyntheticConfig(kinds=("phone", "selfie"))
    with pytest.raises(ValueError, match="multiple of 16"):
        SyntheticConfig(width=100)
    with pytest.raises(ValueError, match="heldout"):
        SyntheticConfig(identities=2, heldout=3)
    with pytest.raises(ValueError, match="frames"):
        SyntheticConfig(frames=1)


def test_cli_rejects_bad_arguments(tmp_path, capsys):
    sys.path.insert(0, str(REPO / "tools"))
    try:
        import make_synthetic
    finally:
        sys.path.remove(str(REPO / "tools"))
    assert make_synthetic.main([str(tmp_path / "x"), "--kinds", "phone,selfie"]) == 2
    assert "phone, studio, viewsweep, dynamicsweep" in capsys.readouterr().err
    assert make_synthetic.main([str(tmp_path / "x"), "--size", "12x"]) == 2
    assert "--size" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_neutral_normals_keep_the_head_pose_and_drop_the_expression():
    """``normals_expression=False``: the same RGB; normal maps of the same head pose and camera
    with a neutral face, so they differ from the expressive ones where the face moves."""
    from dataclasses import replace

    from factorportrait.data.synthetic import make_avatar, render_clip, render_frames
    from factorportrait.data.synthetic.generator import clip_controls
    from factorportrait.data.synthetic.performance import Performance

    spec = next(s for s in plan_clips(CONFIG) if s.kind == "phone")
    neutral_config = replace(CONFIG, normals_expression=False)
    avatar = make_avatar(CONFIG, spec.identity_index)
    expressive, neutral = (render_clip(spec, c, avatar) for c in (CONFIG, neutral_config))
    assert torch.equal(expressive.rgb, neutral.rgb)
    performance, cameras = clip_controls(spec, CONFIG)
    still = Performance(torch.zeros_like(performance.expression), performance.head_rotation,
                        performance.head_translation)
    _, reference = render_frames(avatar, still, cameras.K, cameras.c2w, CONFIG.height,
                                 CONFIG.width, CONFIG.supersample)
    assert torch.equal(neutral.normals, reference)
    strength = performance.expression.abs().sum(dim=1)
    strong = int(strength.argmax())
    difference = (expressive.normals.float() - neutral.normals.float()).abs().mean(dim=(1, 2, 3))
    assert strength[strong] > 0.3 and difference[strong] > 0.05, (strength, difference)
    assert neutral.annotations.expression.abs().sum() > 0  # the RGB's expression is annotated


def test_normals_expression_round_trips_and_old_configs_read_as_expressive():
    from dataclasses import replace

    config = replace(CONFIG, normals_expression=False)
    assert SyntheticConfig.from_json(config.to_json()) == config
    old = CONFIG.to_json()
    del old["normals_expression"]  # a synthetic.json written before the option existed
    assert SyntheticConfig.from_json(old).normals_expression is True
    with pytest.raises(ValueError, match="normals_expression: must be True or False"):
        SyntheticConfig(normals_expression="no")
