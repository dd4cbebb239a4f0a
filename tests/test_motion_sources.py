"""The motion trainer's encoders as pipeline sources, and its held-out evaluation: the RTS
inverse (3D head pose from DeX RTS), the crop-to-frame mapping of the pose encoder's RTS,
the expression source's crop against the training's, the pose source through the pipeline's
face step and the CLI, the image-warp baseline, the learning-rate groups."""

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from factorportrait.expression.sets import identity_seeds
from factorportrait.geometry import Cameras
from factorportrait.geometry.head_pose import head_pose_matrices, head_poses_from_matrices
from factorportrait.geometry.rotations import axis_angle_to_matrix, rotation_angle, rotation_z
from factorportrait.geometry.trajectories import orbit_cameras
from factorportrait.motion import MotionTrainer, MotionTrainerConfig
from factorportrait.motion.data import LandmarkPool, MotionSampling, render_motion_batch
from factorportrait.motion.evaluate import (
    NO_AUGMENT,
    evaluate_motion,
    image_warp,
    rotation_errors,
)
from factorportrait.motion.geometry import rts_pose
from factorportrait.motion.sources import (
    MotionExpressionSource,
    MotionPoseSource,
    _to_frame,
    load_motion_sources,
    portrait_boxes,
)
from factorportrait.motion.step import InputSettings, motion_inputs
from factorportrait.motion.train import MotionTrainConfig, build_state
from factorportrait.motion.augment import mask_eyes_and_mouth
from factorportrait.tracking.crop import FaceBoxes, crop_faces
from factorportrait.tracking.video import tracked_codes
from tests.real_faces import astronaut, moved_photo, write_clip

ROOT = Path(__file__).resolve().parents[1]


def _cameras(count: int, width: int, height: int, seed: int = 0) -> Cameras:
    generator = torch.Generator().manual_seed(seed)
    yaw = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * 80
    elevation = (torch.rand(count, generator=generator, dtype=torch.float64) - 0.5) * 30
    distance = 0.5 + torch.rand(count, generator=generator, dtype=torch.float64)
    K = torch.tensor([[1.1 * width, 0, 0.47 * width], [0, 1.1 * width, 0.52 * height],
                      [0, 0, 1]], dtype=torch.float64)
    return orbit_cameras(yaw, elevation, distance, torch.tensor([0.0, 0.05, 0.0],
                                                                dtype=torch.float64),
                         K, width, height)


def _head_poses(count: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rotation = (torch.rand(count, 3, generator=generator) - 0.5) * 1.2
    translation = (torch.rand(count, 3, generator=generator) - 0.5) * 0.06
    return rotation, translation


def test_head_poses_from_matrices_inverts_head_pose_matrices():
    rotation, translation = _head_poses(12)
    cameras = _cameras(12, 96, 64)
    poses = head_pose_matrices(rotation, translation, cameras)
    back_r, back_t = head_poses_from_matrices(poses, cameras)
    angle = rotation_angle(axis_angle_to_matrix(back_r.double())
                           @ axis_angle_to_matrix(rotation.double()).transpose(1, 2))
    assert float(angle.max()) < 1e-5
    assert torch.allclose(back_t, translation, atol=1e-5)
    assert torch.allclose(head_pose_matrices(back_r, back_t, cameras), poses, atol=1e-5)


def test_head_poses_from_matrices_refuses_a_reflection():
    poses = head_pose_matrices(*_head_poses(2), _cameras(2, 64, 64))
    poses[1, :, 0] *= -1
    with pytest.raises(ValueError, match="pose 1 has det"):
        head_poses_from_matrices(poses, _cameras(2, 64, 64))


def test_crop_rts_maps_to_the_frame_like_a_cropped_camera():
    # A square crop (corner c, side L) resized to S is the camera K' = [[f S/L, 0, (cx - c) S/L]
    # ...]: RTS seen by K' at S px and mapped to the frame must be the RTS seen by K.
    rotation, translation = _head_poses(6)
    frame = _cameras(6, 120, 90, seed=3)
    center = torch.tensor([[55.0, 40.0], [70.0, 52.0], [60.0, 45.0], [48.0, 50.0],
                           [66.0, 38.0], [59.0, 47.0]])
    side = torch.tensor([50.0, 64.0, 80.0, 42.0, 70.0, 58.0])
    boxes = FaceBoxes(center, side, torch.zeros(6))
    size = 64
    zoom = (size / side).double()
    corner = (center - side[:, None] / 2).double()
    K = frame.K.double().clone()
    K[:, 0, 0], K[:, 1, 1] = K[:, 0, 0] * zoom, K[:, 1, 1] * zoom
    K[:, 0, 2] = (K[:, 0, 2] - corner[:, 0]) * zoom
    K[:, 1, 2] = (K[:, 1, 2] - corner[:, 1]) * zoom
    cropped = Cameras(K, frame.c2w.double(), size, size)
    in_crop = head_pose_matrices(rotation, translation, cropped)
    expected = head_pose_matrices(rotation, translation, frame)
    assert torch.allclose(_to_frame(in_crop, boxes, 90, 120), expected, atol=1e-5)


@pytest.fixture(scope="module")
def rendered():
    """Two held-out samples at 64 px and their views, with landmarks."""
    pool = LandmarkPool(identity_seeds(2, "heldout"))
    return render_motion_batch(pool, 2, 64, MotionSampling(), torch.Generator().manual_seed(5))


def _pixels(landmarks: torch.Tensor, size: int) -> torch.Tensor:
    return (landmarks + 1) / 2 * size  # normalised -> frame pixels


def test_expression_source_cuts_the_training_crop(rendered):
    torch.manual_seed(0)
    model = MotionTrainer(MotionTrainerConfig.tiny()).eval()
    settings = InputSettings(cross_view_probability=0.0, augment=NO_AUGMENT)
    inputs = motion_inputs(rendered, 32, settings, torch.Generator().manual_seed(0))
    source = MotionExpressionSource(model.expression, settings.face_scale)
    codes = source(rendered.driving, _pixels(rendered.driving_landmarks, 64))
    with torch.no_grad():
        expected = model.expression(inputs["expression_input"])
    assert torch.allclose(codes, expected, atol=1e-5)


class _RecordingEncoder(torch.nn.Module):
    """A pose encoder stand-in: records its input, returns a fixed crop RTS."""

    def __init__(self, rts: torch.Tensor):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(()))
        self.rts, self.seen = rts, None

    def forward(self, images):
        self.seen = images
        return self.rts[:len(images)]


def test_pose_source_frames_the_face_masks_it_and_maps_the_rts_back(rendered):
    # Upsampled to 128 px, the frame's portrait box holds the face at the training framing.
    frames = torch.nn.functional.interpolate(rendered.driving, size=128, mode="bilinear",
                                             align_corners=False)
    landmarks = _pixels(rendered.driving_landmarks, 128)
    crop_rts = rts_pose(rotation_z(torch.tensor([0.3, -0.2])).float(),
                        torch.tensor([[0.1, -0.05], [0.0, 0.2]]), torch.tensor([-0.4, -0.6]))
    encoder = _RecordingEncoder(crop_rts)
    poses = MotionPoseSource(encoder, 64)(frames, landmarks)
    assert encoder.seen.shape == (2, 3, 64, 64)
    boxes = portrait_boxes(landmarks)
    # The masks sit on the eyes and mouth: masking the frame first and then cropping puts
    # them where cropping first and masking the crop did.
    masked_first = crop_faces(mask_eyes_and_mouth(frames, landmarks, "pixels", 1.5,
                                                  fill=-5.0), boxes, 64)
    expected, seen = (masked_first < -1.5).all(1), (encoder.seen == -1).all(1)
    assert expected.float().mean() > 0.01
    assert (expected & seen).sum() / (expected | seen).sum() > 0.8
    assert torch.allclose(poses, _to_frame(crop_rts, boxes, 128, 128), atol=1e-6)
    # The face fills the crop as in training: landmark box = POSE_FACE_FRACTION of its side.
    low, high = landmarks.amin(1), landmarks.amax(1)
    assert torch.allclose((high - low).amax(1) / boxes.side, torch.full((2,), 0.48))


def test_tracked_codes_asks_for_landmarks_when_the_source_reads_them():
    source = MotionExpressionSource(MotionTrainer(MotionTrainerConfig.tiny()).expression)
    with pytest.raises(ValueError, match="reads tracked landmarks"):
        tracked_codes(source, torch.zeros(1, 64, 64, 3, dtype=torch.uint8), None)
    from factorportrait.inference.encoders import encode_expressions
    with pytest.raises(ValueError, match="cuts its crop from tracked landmarks"):
        encode_expressions(source, torch.zeros(1, 64, 64, 3, dtype=torch.uint8))


def test_image_warp_is_exact_for_the_identity_and_an_in_plane_turn():
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, 32, 32, generator=generator) * 2 - 1
    pose = rts_pose(torch.eye(3)[None], torch.zeros(1, 2), torch.zeros(1))
    assert torch.allclose(image_warp(image, pose, pose), image, atol=1e-6)
    # A quarter turn in the image plane moves pixel (x, y) to (-y, x) about the centre.
    turned = rts_pose(rotation_z(torch.tensor([math.pi / 2])).float(), torch.zeros(1, 2),
                      torch.zeros(1))
    warped = image_warp(image, pose, turned)
    assert torch.allclose(warped, torch.rot90(image, k=-1, dims=(2, 3)), atol=1e-5)
    assert not torch.allclose(image_warp(image, turned, pose), warped, atol=1e-2)


def test_rotation_errors_separate_absolute_and_relative_error():
    generator = torch.Generator().manual_seed(0)
    truth = axis_angle_to_matrix(torch.rand(8, 3, generator=generator) - 0.5)  # 4 s, 4 d
    offset = axis_angle_to_matrix(torch.tensor([[0.1, -0.2, 0.15]]))
    angle = math.degrees(float(rotation_angle(offset)[0]))
    # A fixed turn of the head frame (another canonical face) cancels in the relative error;
    # the absolute error is that turn.
    absolute, relative = rotation_errors(truth @ offset, truth)
    assert torch.allclose(absolute, torch.full((4,), angle), atol=1e-3)
    assert float(relative.max()) < 1e-2
    # A fixed turn of the camera frame does not cancel: it is seen from each head's pose.
    _, relative = rotation_errors(offset @ truth, truth)
    assert float(relative.min()) > 1
    # Errors on the source alone show in the relative error only.
    predicted = torch.cat([truth[:4] @ offset, truth[4:]])
    absolute, relative = rotation_errors(predicted, truth)
    assert float(absolute.max()) < 1e-2 and torch.allclose(relative, torch.full((4,), angle),
                                                             atol=1e-3)


def test_evaluation_reports_every_method():
    torch.manual_seed(0)
    report = evaluate_motion(MotionTrainer(MotionTrainerConfig.tiny()), identities=2,
                             batches=1, batch_size=2)
    for method in ("model", "gt_pose", "image_warp", "source"):
        assert math.isfinite(report[f"{method}_psnr"]) and -1 < report[f"{method}_ssim"] <= 1
    assert report["reconstruction"] == report["model_l1"]
    assert 0 <= report["relative_rotation_deg"] < 180


def test_the_pose_encoder_has_its_own_learning_rate():
    config = MotionTrainConfig.from_dict({"preset": "tiny", "lr_pose": 1e-3,
                                          "output_dir": None})
    state = build_state(config)
    rest, pose = state.optimizers[0].param_groups
    assert pose["lr"] == 1e-3 and rest["lr"] == config.lr_generator
    assert {id(p) for p in pose["params"]} == {id(p) for p in state.model.pose.parameters()}
    with pytest.raises(ValueError, match="lr_pose must be > 0"):
        MotionTrainConfig.from_dict({"preset": "tiny", "lr_pose": 0})


class _OraclePose:
    """A pose source that answers with the tracker's own pose of each frame (as RTS), or
    with frame 0's for every frame (``hold``)."""

    needs_landmarks = True

    def __init__(self, face, hold: bool = False):
        self.poses = head_pose_matrices(face.head_rotation, face.head_translation,
                                        face.cameras())
        if hold:
            self.poses = self.poses[:1].expand(len(self.poses), 3, 4)

    def __call__(self, frames, landmarks):
        return self.poses[:len(frames)]


def test_the_pipeline_takes_the_driving_head_pose_from_a_pose_encoder(tmp_path):
    from factorportrait.inference.faces import resolve_faces
    from factorportrait.inference.inputs import check_render_inputs
    from factorportrait.tracking import FaceTracker

    t = torch.linspace(0, 1, 5)
    frames = moved_photo(astronaut(), (15 * t).tolist(), (1 + 0.1 * t).tolist(), size=256)
    tracker = FaceTracker()

    def driving(pose_encoder):
        request = check_render_inputs(astronaut().numpy(), mode="driving", num_frames=5,
                                      driving_video=frames, expression_codes=torch.zeros(5, 8),
                                      height=64, width=64)
        return resolve_faces(request, tracker, pose_encoder=pose_encoder).driving

    fps = check_render_inputs(astronaut().numpy(), mode="driving", num_frames=5,
                              driving_video=frames, expression_codes=torch.zeros(5, 8)).fps
    face = tracker.track(frames, fps)  # as the pipeline tracks them

    plain, encoded = driving(None), driving(_OraclePose(face))
    assert torch.allclose(encoded.head_rotation, plain.head_rotation, atol=1e-4)
    assert torch.allclose(encoded.head_translation, plain.head_translation, atol=1e-4)
    turn = rotation_angle(axis_angle_to_matrix(encoded.head_rotation[-1:].double())
                          @ axis_angle_to_matrix(encoded.head_rotation[:1].double()).mT)
    assert math.degrees(float(turn[0])) > 5  # the video's turn (15°, smoothed over 5 frames)
    held = driving(_OraclePose(face, hold=True))  # the encoder's pose, not the tracker's
    assert torch.allclose(held.head_rotation, held.head_rotation[:1].expand(5, 3), atol=1e-5)


def test_cli_renders_with_the_motion_trainers_encoders(tmp_path):
    torch.manual_seed(0)
    model = MotionTrainer(MotionTrainerConfig.tiny())
    model.save_pretrained(tmp_path / "motion", trained={"recipe": {"face_scale": 1.2}})
    pose, expression = load_motion_sources(tmp_path / "motion")
    assert isinstance(pose, MotionPoseSource) and expression.face_scale == 1.2
    Image.fromarray(astronaut().numpy()).save(tmp_path / "photo.png")
    t = torch.linspace(0, 1, 5)
    write_clip(tmp_path / "drive.mp4", moved_photo(astronaut(), (10 * t).tolist(),
                                                   [1.0] * 5, size=192))
    command = [sys.executable, str(ROOT / "tools" / "render.py"), str(tmp_path / "photo.png"),
               "--checkpoint", str(ROOT / "checkpoints" / "demo"), "--driving-video",
               str(tmp_path / "drive.mp4"), "--frames", "5", "--steps", "2",
               "--out", str(tmp_path / "out.mp4")]
    result = subprocess.run(command + ["--pose-encoder", str(tmp_path / "motion"),
                                       "--expression-encoder", str(tmp_path / "motion")],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (tmp_path / "out.mp4").is_file()
    bad = subprocess.run(command + ["--pose-encoder", str(tmp_path)], capture_output=True,
                         text=True, cwd=ROOT)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        f"factorportrait-render: error: --pose-encoder {tmp_path}: expected a folder with")


def test_evaluate_motion_tool_prints_both_tables_and_writes_json(tmp_path):
    import json

    torch.manual_seed(0)
    MotionTrainer(MotionTrainerConfig.tiny()).save_pretrained(tmp_path / "motion")
    result = subprocess.run(
        [sys.executable, str(ROOT / "tools" / "evaluate_motion.py"), "--model",
         str(tmp_path / "motion"), "--identities", "2", "--batches", "1", "--tracker-size",
         "256", "--json", str(tmp_path / "m.json")], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "source image warped by the ground-truth pose" in result.stdout
    assert "MediaPipe tracker (256 px)" in result.stdout
    figures = json.loads((tmp_path / "m.json").read_text())
    assert figures["samples"] == 8 and 0 <= figures["tracker"]["detected"] <= 1
    missing = subprocess.run([sys.executable, str(ROOT / "tools" / "evaluate_motion.py"),
                              "--model", str(tmp_path)], capture_output=True, text=True,
                             cwd=ROOT)
    assert missing.returncode == 2 and "motion_trainer.json not found" in missing.stderr
