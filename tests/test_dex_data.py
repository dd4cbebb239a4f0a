"""DeX-Portrait's conditions in the training data: head poses ``P = [sR | t]`` of the reference
and driving frames, avatar landmarks of synthetic clips, the toy dataset's stand-ins, and
``batch_to_conditions`` carrying them into ``PortraitConditions``."""

from __future__ import annotations

import math

import pytest
import torch

from factorportrait.body import EXPRESSION_NAMES
from factorportrait.data import (
    LatentTrainingDataset,
    PortraitClipDataset,
    build_dataset,
    load_annotations,
    read_manifest,
    to_training_sample,
)
from factorportrait.data.landmarks import LANDMARK_POINTS
from factorportrait.data.synthetic import SyntheticConfig, avatar_from_annotations, generate_dataset
from factorportrait.expression.crop import avatar_face_points
from factorportrait.geometry.head_pose import (
    HEAD_RADIUS_M,
    head_pose_matrices,
    normalised_landmarks,
)
from factorportrait.geometry.trajectories import static
from factorportrait.tracking.canonical import CHIN, LEFT_EYE, NOSE_TIP, RIGHT_EYE
from factorportrait.training.batches import batch_to_conditions
from factorportrait.training.batches import build_dataset as build_training_dataset
from factorportrait.training.config import DataSpec
from factorportrait.training.toy_data import SyntheticLatentDataset
from tests.tiny_dataset import add_clip

pytestmark = pytest.mark.usefixtures("one_thread")

FRAMES, SIZE = 5, 32


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory, one_thread):
    """One avatar: a phone clip and a two-view studio take of 9 frames at 32 x 32."""
    root = tmp_path_factory.mktemp("dex") / "data"
    generate_dataset(root, SyntheticConfig(identities=1, heldout=0, frames=9, width=SIZE,
                                           height=SIZE, kinds=("phone", "studio"),
                                           studio_views=2, supersample=1, seed=1))
    return root


def _annotations(root, clip_id):
    record = next(r for r in read_manifest(root) if r.id == clip_id)
    return load_annotations(record.resolve(root, "annotations"))


def _with_latents(sample: dict) -> dict:
    """The sample with zero latents, so ``to_training_sample`` needs no VAE."""
    latent_frames = (len(sample["frame_indices"]) - 1) // 4 + 1
    h, w = sample["cameras"].height // 8, sample["cameras"].width // 8
    return {**sample, "latents": torch.zeros(16, latent_frames, h, w),
            "reference_latent": torch.zeros(16, 1, h, w),
            "normal_latents": torch.zeros(16, latent_frames, h, w)}


def _posed_sample(head_rotation, head_translation, reference_rotation, reference_translation,
                  cameras, reference_camera):
    frames = head_rotation.shape[0]
    return _with_latents({
        "clip_id": "made_up", "kind": "phone", "frame_indices": torch.arange(frames),
        "reference_clip_id": "made_up", "reference_frame": 0, "has_normals": False,
        "cameras": cameras, "reference_camera": reference_camera,
        "head_rotation": head_rotation, "head_translation": head_translation,
        "reference_head_rotation": reference_rotation,
        "reference_head_translation": reference_translation})


def _rts(P: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(..., 3, 4)`` -> R, t, s (s from the first column's norm)."""
    scale = P[..., :3, 0].norm(dim=-1)
    return P[..., :3, :3] / scale[..., None, None], P[..., :3, 3], scale


def test_frontal_head_in_the_default_camera_has_identity_rotation():
    cameras = static(FRAMES, width=64, height=48)  # frontal, 0.6 m from the world origin
    centre = torch.tensor([0.03, -0.02, 0.05])  # metres, world
    sample = _posed_sample(torch.zeros(FRAMES, 3), centre.expand(FRAMES, 3), torch.zeros(3),
                           centre, cameras, cameras[0])
    head_pose = to_training_sample(sample)["head_pose"]
    assert head_pose.shape == (1 + FRAMES, 3, 4) and head_pose.dtype == torch.float32
    R, t, s = _rts(head_pose)
    assert torch.allclose(R, torch.eye(3).expand(1 + FRAMES, 3, 3), atol=1e-5)
    pixel, depth = cameras[0].project(centre[None, None])  # (1, 1, 2), (1, 1)
    uv = 2 * pixel[0, 0] / torch.tensor([64.0, 48.0]) - 1
    assert torch.allclose(t, torch.cat([uv, torch.zeros(1)]).expand(1 + FRAMES, 3), atol=1e-5)
    assert math.isclose(float(depth), 0.65, rel_tol=1e-6)
    expected_scale = 2 * float(cameras.K[0, 1, 1]) * HEAD_RADIUS_M / (48 * 0.65)
    assert torch.allclose(s, torch.full((1 + FRAMES,), expected_scale), rtol=1e-5)


def test_a_yaw_of_the_head_shows_up_in_the_rotation():
    cameras = static(FRAMES, width=64, height=64)
    yaw = torch.linspace(0.0, 0.4, FRAMES)  # radians about the world's vertical (y) axis
    rotation = torch.stack([torch.zeros(FRAMES), yaw, torch.zeros(FRAMES)], 1)
    sample = _posed_sample(rotation, torch.zeros(FRAMES, 3), torch.tensor([0.0, -0.3, 0.0]),
                           torch.zeros(3), cameras, cameras[0])
    R, t, _ = _rts(to_training_sample(sample)["head_pose"])
    angles = torch.cat([torch.tensor([-0.3]), yaw])
    cos, sin = angles.cos(), angles.sin()
    zero, one = torch.zeros_like(cos), torch.ones_like(cos)
    expected = torch.stack([torch.stack([cos, zero, sin], -1), torch.stack([zero, one, zero], -1),
                            torch.stack([-sin, zero, cos], -1)], -2)  # (1 + F, 3, 3)
    assert torch.allclose(R, expected, atol=1e-5)
    assert torch.allclose(t, torch.zeros(1 + FRAMES, 3), atol=1e-5)  # the centre stays put


def test_dataset_head_pose_rows_are_the_reference_and_driving_frames(synthetic):
    dataset = PortraitClipDataset(synthetic, FRAMES, size=(SIZE, SIZE), split=None)
    kinds = dataset.kinds()
    for index in (kinds.index("phone"), kinds.index("studio")):
        sample = dataset[index, 3]
        reference = _annotations(synthetic, sample["reference_clip_id"])
        ref = sample["reference_frame"]
        assert torch.equal(sample["reference_head_rotation"], reference.head_rotation[ref].float())
        assert torch.equal(sample["reference_head_translation"],
                           reference.head_translation[ref].float())
        head_pose = to_training_sample(_with_latents(sample))["head_pose"]
        expected_source = head_pose_matrices(reference.head_rotation[[ref]].float(),
                                             reference.head_translation[[ref]].float(),
                                             sample["reference_camera"])
        ann = _annotations(synthetic, sample["clip_id"])
        frames = sample["frame_indices"]
        expected_driving = head_pose_matrices(ann.head_rotation[frames].float(),
                                              ann.head_translation[frames].float(),
                                              sample["cameras"])
        assert torch.allclose(head_pose[:1], expected_source, atol=1e-6)
        assert torch.allclose(head_pose[1:], expected_driving, atol=1e-6)
    # the studio reference is the other camera of the take: its own camera sees the pose
    assert sample["reference_clip_id"] != sample["clip_id"]
    assert not torch.allclose(expected_source, head_pose_matrices(
        reference.head_rotation[[ref]].float(), reference.head_translation[[ref]].float(),
        sample["cameras"][0]), atol=1e-3)


def test_synthetic_landmarks_follow_the_avatar(synthetic):
    dataset = PortraitClipDataset(synthetic, FRAMES, size=(SIZE, SIZE), split=None)
    sample = _with_latents(dataset[dataset.kinds().index("phone")])
    assert sample["betas"].dtype == torch.float64
    landmarks = to_training_sample(sample, landmarks=True)["landmarks"]
    assert landmarks.shape == (FRAMES, LANDMARK_POINTS, 2) and landmarks.dtype == torch.float32
    assert landmarks.abs().max() <= 1
    # the face sits upright: eyes above the nose tip above the chin, right eye on image left
    v = landmarks[..., 1]
    assert bool((v[:, RIGHT_EYE[0]] < v[:, NOSE_TIP]).all() and (v[:, NOSE_TIP] < v[:, CHIN]).all())
    assert bool((landmarks[:, RIGHT_EYE[0], 0] < landmarks[:, LEFT_EYE[0], 0]).all())
    avatar = avatar_from_annotations(_annotations(synthetic, sample["clip_id"]))
    nose = avatar_face_points(avatar, sample["head_rotation"], sample["head_translation"])[:, 2]
    nose = normalised_landmarks(nose[:, None], sample["cameras"])[:, 0]  # (F, 2)
    assert torch.allclose(landmarks[:, NOSE_TIP], nose, atol=0.02)  # the avatar's own nose tip
    jaw = EXPRESSION_NAMES.index("jaw_open")
    closed, opened = sample["expression"].clone(), sample["expression"].clone()
    closed[:, jaw], opened[:, jaw] = 0.0, 1.0
    shut = to_training_sample({**sample, "expression": closed}, landmarks=True)["landmarks"]
    open_ = to_training_sample({**sample, "expression": opened}, landmarks=True)["landmarks"]
    assert bool((open_[:, CHIN, 1] - shut[:, CHIN, 1] > 0.02).all())  # the chin drops
    eyes = list(RIGHT_EYE + LEFT_EYE)
    assert (open_[:, eyes] - shut[:, eyes]).abs().max() < 1e-4  # the eye corners stay


def test_landmarks_refuse_a_clip_without_an_avatar(tmp_path):
    add_clip(tmp_path, "capture", frames=9, normals=False)  # a "real" clip: no betas
    sample = _with_latents(PortraitClipDataset(tmp_path, FRAMES)[0])
    assert "betas" not in sample and "head_pose" in to_training_sample(sample)
    with pytest.raises(ValueError, match="'capture'.*landmarks need synthetic avatars"):
        to_training_sample(sample, landmarks=True)


def test_build_dataset_items_collate_into_conditions(synthetic, vae, tmp_path):
    vae.save_pretrained(tmp_path / "vae")
    items = build_dataset(FRAMES, SIZE, SIZE, split=None, root=synthetic, vae=tmp_path / "vae",
                          latents=False, landmarks=True)
    assert isinstance(items, LatentTrainingDataset) and items.landmarks
    batch = torch.utils.data.default_collate([items[0], items[1]])
    assert batch["head_pose"].shape == (2, 1 + FRAMES, 3, 4)
    assert batch["landmarks"].shape == (2, FRAMES, LANDMARK_POINTS, 2)
    latents, conditions = batch_to_conditions(batch)
    assert latents.shape == (2, 16, 2, 4, 4)
    assert torch.equal(conditions.head_pose, batch["head_pose"])
    assert torch.equal(conditions.landmarks, batch["landmarks"])


def test_toy_items_keep_their_values_and_gain_head_poses():
    plain = SyntheticLatentDataset(3, 9, 4, 4, seed=5)
    marked = SyntheticLatentDataset(3, 9, 4, 4, seed=5, landmark_points=68)
    for index in range(3):
        a, b = plain[index], marked[index]
        assert "landmarks" not in a and b["landmarks"].shape == (9, 68, 2)
        assert set(b) - set(a) == {"landmarks"}
        for key, value in a.items():
            assert (value == b[key]) if isinstance(value, str) else torch.equal(value, b[key])
        # the original fields are still the item generator's first draws
        generator = torch.Generator().manual_seed(5 * 1_000_003 + index)
        assert torch.equal(a["reference_latent"], torch.randn(16, 1, 4, 4, generator=generator))
        R, t, s = _rts(a["head_pose"])
        assert a["head_pose"].shape == (10, 3, 4)
        assert torch.allclose(R @ R.transpose(1, 2), torch.eye(3).expand(10, 3, 3), atol=1e-5)
        assert torch.allclose(torch.linalg.det(R), torch.ones(10), atol=1e-5)
        assert bool(((s > 0.3) & (s < 0.8)).all()) and t[:, 2].abs().max() == 0
        assert t[:, :2].abs().max() < 0.5 and b["landmarks"].abs().max() <= 1
    assert not torch.equal(plain[0]["head_pose"], plain[1]["head_pose"])  # seeded per item
    assert torch.equal(plain[0]["head_pose"], SyntheticLatentDataset(3, 9, 4, 4, seed=5)[0][
        "head_pose"])


def test_toy_batches_carry_head_pose_and_optional_landmarks():
    spec = DataSpec(options={"num_items": 4, "landmark_points": 10})
    dataset = build_training_dataset(spec, frames=5, seed=0)
    batch = torch.utils.data.default_collate([dataset[0], dataset[1]])
    _, conditions = batch_to_conditions(batch)
    assert torch.equal(conditions.head_pose, batch["head_pose"])  # (2, 6, 3, 4)
    assert conditions.landmarks.shape == (2, 5, 10, 2)
    plain = build_training_dataset(DataSpec(options={"num_items": 4}), frames=5, seed=0)
    _, conditions = batch_to_conditions(torch.utils.data.default_collate([plain[0], plain[1]]))
    assert conditions.head_pose.shape == (2, 6, 3, 4) and conditions.landmarks is None
    with pytest.raises(ValueError, match="num_items and landmark_points"):
        build_training_dataset(DataSpec(options={"landmarks": True}), frames=5, seed=0)
    with pytest.raises(ValueError, match="landmark_points must be an integer >= 0"):
        SyntheticLatentDataset(2, 5, 4, 4, landmark_points=-1)
