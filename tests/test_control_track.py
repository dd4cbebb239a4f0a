"""Control tracks: exact round trips, editing, export from dataset annotations, bad files."""

import json

import pytest
import torch

from factorportrait.geometry import make_trajectory
from factorportrait.inference import ControlTrack, load_control_track, save_control_track


def full_track(frames: int = 9) -> ControlTrack:
    g = torch.Generator().manual_seed(0)
    cameras = make_trajectory("orbit", frames=frames, degrees=40, width=64, height=48,
                              dtype=torch.float64)
    return ControlTrack(
        fps=29.97, expression_codes=torch.randn(frames, 128, generator=g),
        expression=torch.rand(frames, 2, generator=g).double(),
        head_rotation=torch.randn(frames, 3, generator=g) * 0.1,
        head_translation=torch.randn(frames, 3, generator=g) * 0.01,
        body_pose=torch.randn(frames, 66, generator=g).half().float(), cameras=cameras,
        expression_names=("jaw_open", "smile"), source="unit test")


def assert_same(a: ControlTrack, b: ControlTrack) -> None:
    assert a.metadata() == b.metadata()
    ta, tb = a.tensors(), b.tensors()
    assert sorted(ta) == sorted(tb)
    for key in ta:
        assert ta[key].dtype == tb[key].dtype, key
        assert torch.equal(ta[key], tb[key]), key


def test_round_trip_is_exact(tmp_path):
    track = full_track()
    path = tmp_path / "perf.safetensors"
    track.save(path)
    loaded = load_control_track(path)
    assert_same(track, loaded)
    assert loaded.cameras.K.dtype == torch.float64 and loaded.expression.dtype == torch.float64
    assert (loaded.cameras.width, loaded.cameras.height) == (64, 48)
    assert loaded.fps == 29.97 and loaded.source == "unit test"


def test_partial_track_round_trips(tmp_path):
    track = ControlTrack(fps=16, expression_codes=torch.randn(5, 64))
    save_control_track(track, tmp_path / "codes.safetensors")
    loaded = ControlTrack.load(tmp_path / "codes.safetensors")
    assert_same(track, loaded)
    assert loaded.cameras is None and not loaded.has_pose


def test_edit_in_python_then_reload(tmp_path):
    track = full_track()
    edited = track[2:7].replace(head_rotation=torch.zeros(5, 3))
    edited.save(tmp_path / "edit.safetensors")
    loaded = load_control_track(tmp_path / "edit.safetensors")
    assert loaded.num_frames == 5
    assert torch.equal(loaded.expression_codes, track.expression_codes[2:7])
    assert torch.equal(loaded.cameras.c2w, track.cameras.c2w[2:7])
    assert torch.equal(loaded.head_rotation, torch.zeros(5, 3))


def test_hold_and_int_index():
    track = full_track()
    held = track[3].hold(4)
    assert held.num_frames == 4
    assert torch.equal(held.expression_codes, track.expression_codes[3:4].expand(4, -1))
    assert torch.equal(held.cameras.c2w, track.cameras.c2w[3:4].expand(4, -1, -1))


def test_from_dataset_annotations(tmp_path):
    from factorportrait.data.annotations import (ClipAnnotations, load_annotations,
                                                 save_annotations)

    cams = make_trajectory("arc", frames=5, degrees=10, width=32, height=32)
    annotations = ClipAnnotations(
        K=cams.K, c2w=cams.c2w, head_rotation=torch.zeros(5, 3),
        head_translation=torch.ones(5, 3) * 0.01, width=32, height=32, fps=30.0,
        kind="dynamicsweep", expression=torch.rand(5, 8), expression_codes=torch.randn(5, 128),
        expression_names=("jaw_open", "smile", "lip_pucker", "brow_raise", "brow_frown",
                          "blink_left", "blink_right", "cheek_puff"))
    save_annotations(tmp_path / "clip.safetensors", annotations)
    track = ControlTrack.from_annotations(load_annotations(tmp_path / "clip.safetensors"),
                                          source="clip 0")
    assert track.num_frames == 5 and track.fps == 30.0
    assert torch.equal(track.expression_codes, annotations.expression_codes)
    assert torch.equal(track.cameras.c2w, cams.c2w)
    assert track.expression_names == annotations.expression_names


def test_inconsistent_fields_are_rejected():
    with pytest.raises(ValueError, match="frame count"):
        ControlTrack(expression_codes=torch.zeros(5, 128), head_rotation=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="head_rotation must have shape"):
        ControlTrack(head_rotation=torch.zeros(5, 4))
    with pytest.raises(ValueError, match="empty"):
        ControlTrack()
    with pytest.raises(ValueError, match="fps"):
        ControlTrack(fps=0, expression_codes=torch.zeros(5, 128))
    with pytest.raises(ValueError, match="expression_names"):
        ControlTrack(expression=torch.zeros(5, 2), expression_names=("a",))
    with pytest.raises(ValueError, match="NaN"):
        ControlTrack(expression_codes=torch.full((5, 128), float("nan")))


def test_bad_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_control_track(tmp_path / "missing.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="garbage.safetensors.*unreadable"):
        load_control_track(garbage)
    from safetensors.torch import save_file
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other), metadata={"factorportrait": json.dumps(
        {"format": "something else"})})
    with pytest.raises(ValueError, match="other.safetensors.*metadata"):
        load_control_track(other)
    with pytest.raises(ValueError, match="must end in .safetensors"):
        save_control_track(full_track(), tmp_path / "track.pt")


def test_export_from_a_driving_video_and_a_trajectory(tmp_path):
    from factorportrait.io.video import read_video, write_video
    from tests.pipeline_helpers import MeanColourEncoder

    frames = torch.randint(0, 256, (5, 32, 32, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    write_video(tmp_path / "driving.mp4", frames, fps=30, lossless=True)
    cameras = make_trajectory("orbit", frames=5, degrees=20, width=32, height=32)
    encoder = MeanColourEncoder()
    track = ControlTrack.from_video(tmp_path / "driving.mp4", encoder, track_head=False,
                                    cameras=cameras,
                                    head_rotation=torch.zeros(5, 3))
    decoded = read_video(tmp_path / "driving.mp4")
    assert track.fps == 30.0 and track.num_frames == 5
    expected = encoder(decoded.permute(0, 3, 1, 2).float() / 127.5 - 1)
    assert torch.allclose(track.expression_codes, expected, atol=1e-6)
    track.save(tmp_path / "perf.safetensors")
    assert_same(track, load_control_track(tmp_path / "perf.safetensors"))
