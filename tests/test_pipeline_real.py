"""A real photo and a real-looking driving video through the pipeline and the CLI: the
checkpoint's every component loads, the reference is cropped around the tracked face with
the avatar fitted to it, the driving head motion is tracked and transferred, paste-back puts
the frames into the photo, and misuses are one line each."""

import logging
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from factorportrait.expression.codes import EncoderCodeSource
from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_angle
from factorportrait.inference import ControlTrack, default_reference_camera
from factorportrait.inference.faces import fit_avatar, portrait_reference, transfer_motion
from factorportrait.io import read_video
from factorportrait.tracking import FaceTracker
from factorportrait.tracking.canonical import face_points
from tests.real_faces import astronaut, chelsea, moved_photo, write_clip

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "checkpoints" / "demo"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("real")
    Image.fromarray(astronaut().numpy()).save(folder / "astronaut.png")
    Image.fromarray(chelsea().numpy()).save(folder / "chelsea.png")
    t = torch.linspace(0, 1, 9)
    frames = moved_photo(astronaut(), (12 * torch.sin(math.pi * t)).tolist(),
                         (1 + 0.1 * t).tolist(), size=256)
    write_clip(folder / "drive.mp4", frames)
    return folder


@pytest.fixture(scope="module")
def demo_pipeline():
    from factorportrait.pipeline import FactorPortraitPipeline
    return FactorPortraitPipeline.from_pretrained(DEMO)


def test_from_pretrained_loads_every_component_the_folder_ships(demo_pipeline):
    assert isinstance(demo_pipeline.expression_encoder, EncoderCodeSource)
    assert demo_pipeline.expression_encoder.roll_normalise
    assert demo_pipeline.trained_size == (64, 64)


def test_cli_drives_a_real_photo_from_a_video_alone(files, tmp_path):
    out = tmp_path / "x.mp4"
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "render.py"), str(files / "astronaut.png"),
         "--checkpoint", str(DEMO), "--mode", "driving", "--driving-video",
         str(files / "drive.mp4"), "--frames", "9", "--out", str(out), "--evaluation-case",
         str(tmp_path / "cases" / "astronaut")],
        capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert read_video(out).shape == (9, 64, 64, 3)  # the checkpoint's training size
    from factorportrait.evaluation.results import find_cases

    case, = find_cases(tmp_path / "cases")  # the render as a cross-reenactment case
    assert case.protocol == "cross" and case.reference is not None
    lossy = (read_video(case.generated).float() - read_video(out).float()).abs().mean()
    assert lossy < 3  # the same frames: lossless beside the H.264 output
    assert read_video(case.driving).shape[0] == 9


def test_cli_misuse_is_one_line(files, tmp_path):
    def render(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(ROOT / "tools" / "render.py"), *args],
                              capture_output=True, text=True, cwd=ROOT)

    track = ControlTrack(expression_codes=torch.zeros(9, 128), head_rotation=torch.zeros(9, 3),
                         head_translation=torch.zeros(9, 3))
    track.save(tmp_path / "perf.safetensors")
    both = render(str(files / "astronaut.png"), "--checkpoint", str(DEMO), "--mode", "driving",
                  "--driving-video", str(files / "drive.mp4"), "--control-track",
                  str(tmp_path / "perf.safetensors"), "--out", str(tmp_path / "y.mp4"))
    cat = render(str(files / "chelsea.png"), "--checkpoint", str(DEMO), "--mode", "driving",
                 "--driving-video", str(files / "drive.mp4"), "--out", str(tmp_path / "z.mp4"))
    for result, words in ((both, "driving_video is unused"), (cat, "no face found")):
        errors = [line for line in result.stderr.splitlines()
                  if line.startswith("factorportrait-render: error:")]
        assert result.returncode == 2 and len(errors) == 1 and words in errors[0], result.stderr
    assert not (tmp_path / "y.mp4").exists() and not (tmp_path / "z.mp4").exists()


def test_render_size_defaults_to_the_training_size_and_warns_otherwise(files, demo_pipeline,
                                                                       caplog):
    request = demo_pipeline.check_inputs(files / "astronaut.png", mode="camera_only",
                                         camera_trajectory="orbit", num_frames=5)
    assert (request.height, request.width) == (64, 64)
    with caplog.at_level(logging.WARNING):
        demo_pipeline.check_inputs(files / "astronaut.png", mode="camera_only",
                                   camera_trajectory="orbit", num_frames=5, height=128,
                                   width=128)
    assert "rendering at 128 x 128" in caplog.text and "trained at 64 x 64" in caplog.text


def test_paste_back_returns_the_photo_with_the_face_region_replaced(files, demo_pipeline):
    frames = demo_pipeline(files / "astronaut.png", mode="driving",
                           driving_video=files / "drive.mp4", num_frames=5, num_steps=4,
                           paste_back=True, progress=False)
    assert frames.shape == (5, 512, 512, 3)
    photo = astronaut()
    assert torch.equal(frames[:, :16], photo[None, :16].expand(5, -1, -1, -1))  # above the crop
    face = frames[:, 100:200, 180:270].float()
    assert (face - photo[None, 100:200, 180:270].float()).abs().mean() > 5  # generated


def test_the_avatar_is_fitted_to_the_photographed_face():
    with FaceTracker() as tracker:
        face = portrait_reference(astronaut(), 256, 256, tracker)
        crop = ((face.image + 1) * 127.5).round().byte().permute(1, 2, 0)
        tracked = tracker.track_image(crop)
    camera = default_reference_camera(256, 256)
    verts = face.mesh_source.vertices(face.reference)  # (1, V, 3) world
    avatar = face.mesh_source.avatar
    zero = torch.zeros(1, 3)
    from factorportrait.expression.crop import avatar_face_points
    rest = avatar_face_points(avatar, zero, zero)[0]  # (5, 3), head frame
    rotation = axis_angle_to_matrix(face.reference.head_rotation[0])
    world = face.mesh_source.scale * rest @ rotation.T + face.reference.head_translation[0]
    pixels, _ = camera.project(world[None])
    error = (pixels[0] - face_points(tracked.landmarks)[0, :, :2]).norm(dim=1)
    assert float(error.max()) < 6.0, error  # pixels of 256, on points of another tracking
    assert verts.shape[1] == avatar.neutral_vertices.shape[0]
    assert 0.7 < face.mesh_source.scale < 1.5


def test_fit_avatar_is_exact_for_the_avatar_itself():
    from factorportrait.body import AvatarIdentity, HeadAvatar
    from factorportrait.expression.crop import avatar_face_points

    avatar = HeadAvatar(AvatarIdentity.sample(seed=4))
    K = default_reference_camera(256, 256).K[0].double()
    rotation = axis_angle_to_matrix(torch.tensor([0.1, -0.3, 0.05], dtype=torch.float64))
    centre = torch.tensor([0.02, -0.01, 0.7], dtype=torch.float64)
    rest = avatar_face_points(avatar, torch.zeros(1, 3), torch.zeros(1, 3))[0].double()
    cam = 1.2 * rest @ rotation.T + centre
    points = cam[:, :2] / cam[:, 2:] * K.diagonal()[:2] + K[:2, 2]
    scale, fitted = fit_avatar(avatar, points, rotation, K, 0.7)
    assert abs(scale - 1.2) < 1e-9 and torch.allclose(fitted, centre, atol=1e-9)


def test_transfer_motion_carries_relative_turns_and_scaled_moves():
    reference = ControlTrack(cameras=default_reference_camera(64, 64),
                             head_rotation=torch.tensor([[0.0, 0.2, 0.0]]),
                             head_translation=torch.tensor([[0.01, 0.0, 0.0]]))
    turns = torch.tensor([[0.0, 0.0, 0.1], [0.0, 0.3, 0.1], [0.2, 0.0, 0.1]])
    moves = torch.tensor([[0.0, 0.0, 1.2], [0.06, 0.0, 1.2], [0.0, 0.0, 0.6]])
    driving = ControlTrack(head_rotation=turns, head_translation=moves, world="camera",
                           expression_codes=torch.ones(3, 8))
    out = transfer_motion(driving, reference)
    assert out.world == "scene" and torch.equal(out.expression_codes, driving.expression_codes)
    R = axis_angle_to_matrix(out.head_rotation.double())
    D = axis_angle_to_matrix(turns.double())
    assert torch.allclose(out.head_rotation[0], reference.head_rotation[0], atol=1e-6)
    for i in range(3):  # the same turn relative to frame 0, in the camera's frame
        assert float(rotation_angle((R[i] @ R[0].T) @ (D[i] @ D[0].T).T)) < 1e-6
    # the reference head is 0.6 m from its camera, the driving one 1.2 m: moves scale by 1/2
    assert torch.allclose(out.head_translation[1] - out.head_translation[0],
                          torch.tensor([0.03, 0.0, 0.0]), atol=1e-6)
    assert abs(float(out.head_translation[2, 2] + 0.3) < 1e-6)  # half the depth: 0.3 m away
    with pytest.raises(ValueError, match="world 'camera'"):
        transfer_motion(driving.replace(world="scene"), reference)


def test_a_photo_without_a_face_falls_back_to_the_centre_crop(files, demo_pipeline, caplog):
    with caplog.at_level(logging.INFO):
        request = demo_pipeline.check_inputs(files / "chelsea.png", mode="camera_only",
                                             camera_trajectory="orbit", num_frames=5)
        demo_pipeline.faces(request)
    assert request.mesh_source is None and "using the centre crop" in caplog.text


def test_camera_only_on_a_photo_renders_the_fitted_avatar(files, demo_pipeline):
    request = demo_pipeline.check_inputs(files / "astronaut.png", mode="camera_only",
                                         camera_trajectory=("orbit", {"degrees": 40}),
                                         num_frames=5)
    plan = demo_pipeline.plan(request)
    from factorportrait.inference import render_plan_normals
    normals = render_plan_normals(plan, request.mesh_source, 64, 64)
    assert normals is not None and normals.shape == (5, 3, 64, 64)
    mask = normals.sum(1) > 0
    assert 0.2 < float(mask[0].float().mean()) < 0.8  # a head and shoulders, not empty
    assert float((normals[0] - normals[-1]).abs().mean()) > 0.01  # the orbit turns the view


def test_a_tracked_control_track_is_transferred_onto_the_reference(files, demo_pipeline,
                                                                   tmp_path):
    from factorportrait.tracking import track_video

    track, _, _ = track_video(files / "drive.mp4")
    track.save(tmp_path / "drive.safetensors")
    request = demo_pipeline.check_inputs(files / "astronaut.png", mode="pose_only",
                                         control_track=tmp_path / "drive.safetensors",
                                         num_frames=9)
    demo_pipeline.faces(request)
    moved = request.driving
    assert moved.world == "scene" and moved.cameras is None
    assert torch.allclose(moved.head_rotation[0], request.reference.head_rotation[0], atol=1e-5)
    assert torch.allclose(moved.head_translation[0], request.reference.head_translation[0],
                          atol=1e-6)
    R = axis_angle_to_matrix(moved.head_rotation.double())
    D = axis_angle_to_matrix(track.head_rotation.double())
    assert float(rotation_angle((R[8] @ R[0].T) @ (D[8] @ D[0].T).T)) < 1e-5
