"""PortraitClipDataset: sample shapes per frame count, cameras and rays, crop/resize geometry,
references, expressions, determinism, and bad clips skipped and counted.

Frame counts 5, 9 and 13 are tested (81 works the same but decodes and encodes 6x more).
"""

from __future__ import annotations

import logging
import os

import pytest
import torch

from factorportrait.data import (
    DrawSampler,
    MixtureSampler,
    PortraitClipDataset,
    TooManyBadClips,
    load_annotations,
    to_training_sample,
)
from factorportrait.geometry import Cameras, plucker_rays
from tests.tiny_dataset import add_clip, make_dataset, orbit

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("portraits"))


def annotation(root, clip_id):
    return load_annotations(root / f"annotations/{clip_id}.safetensors")


@pytest.mark.parametrize("frames", [5, 9, 13])
def test_sample_shapes_follow_design_conventions(root, vae, frames):
    dataset = PortraitClipDataset(root, frames, size=(32, 32))
    latent_frames = (frames - 1) // 4 + 1
    for index in (0, 1):  # with and without normal maps
        sample = dataset[index]
        assert sample["video"].shape == (3, frames, 32, 32)
        assert sample["video"].dtype == torch.float32
        assert -1 <= sample["video"].min() and sample["video"].max() <= 1
        assert sample["reference_image"].shape == (3, 32, 32)
        assert len(sample["cameras"]) == frames and len(sample["reference_camera"]) == 1
        assert sample["head_rotation"].shape == (frames, 3)
        assert ("normals" in sample) == sample["has_normals"]
        batch = torch.utils.data.default_collate([to_training_sample(sample, vae)] * 2)
        assert batch["latents"].shape == (2, 16, latent_frames, 4, 4)
        assert batch["reference_latent"].shape == (2, 16, 1, 4, 4)
        assert batch["normal_latents"].shape == (2, 16, latent_frames, 4, 4)
        assert batch["rays"].shape == (2, 24, 1 + latent_frames, 4, 4)
        assert batch["expression"].shape == (2, frames, 128)
    assert "normals" in dataset[0] and "normals" not in dataset[1]
    assert torch.equal(to_training_sample(dataset[1], vae)["normal_latents"],
                       torch.zeros(16, latent_frames, 4, 4))


def test_rays_use_the_reference_frames_camera(root, vae):
    sample = PortraitClipDataset(root, 5, reference="same_clip")[0]
    rays = to_training_sample(sample, vae)["rays"]  # (24, 3, 4, 4)
    ann = annotation(root, "phone_a")
    ref, frames = sample["reference_frame"], sample["frame_indices"].tolist()
    assert ref not in range(frames[0], frames[-1] + 1)  # another time of the clip
    assert torch.equal(sample["reference_camera"].c2w[0], ann.c2w[ref])
    latent_K = ann.K[0] / 8
    latent_K[2, 2] = 1
    identity = plucker_rays(Cameras.identity(1, latent_K), 4, 4)[0]  # (6, 4, 4)
    assert torch.allclose(rays[:, 0], identity.repeat(4, 1, 1), atol=1e-6)
    relative = torch.linalg.inv(ann.c2w[ref]) @ ann.c2w[frames]  # (5, 4, 4)
    expected = plucker_rays(Cameras(latent_K.expand(5, 3, 3), relative), 4, 4)
    assert torch.allclose(rays[:6, 1], expected[0], atol=1e-5)  # latent frame 1: frame 0 ×4
    assert torch.allclose(rays[18:, 2], expected[4], atol=1e-5)  # last frame of the chunk


def test_crop_and_resize_keep_intrinsics_consistent(tmp_path):
    """A bright dot rendered at a world point's projection lands where the transformed
    cameras project that point after the centre crop (64x48 → 48x48) and resize (→ 32x32)."""
    frames, height, width = 5, 48, 64
    point = torch.tensor([[0.08, -0.05, 0.1]])
    K, c2w = orbit(frames, height, width)
    uv, _ = Cameras(K, c2w, width, height).project(point)  # (F, 1, 2)
    v, u = torch.meshgrid(torch.arange(height) + 0.5, torch.arange(width) + 0.5, indexing="ij")
    video = [torch.exp(-((u - p[0, 0]) ** 2 + (v - p[0, 1]) ** 2) / 8.0) for p in uv]
    video = (torch.stack(video)[..., None].expand(-1, -1, -1, 3) * 255).byte().numpy()
    add_clip(tmp_path, "dot", frames=frames, height=height, width=width, video=video)
    sample = PortraitClipDataset(tmp_path, 5, size=(32, 32))[0]
    expected, _ = sample["cameras"].project(point)  # (F, 1, 2)
    brightness = (sample["video"].mean(0) + 1) / 2  # (F, 32, 32)
    weights = (brightness - 0.05).clamp(min=0)
    grid_v, grid_u = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5,
                                    indexing="ij")
    centroid = torch.stack([(weights * grid_u).sum((1, 2)), (weights * grid_v).sum((1, 2))],
                           -1) / weights.sum((1, 2))[:, None]
    assert sample["cameras"].width == 32 and sample["cameras"].height == 32
    assert torch.allclose(centroid, expected[:, 0], atol=0.25), (centroid, expected[:, 0])
    assert not torch.allclose(expected[:, 0], uv[:, 0])  # the intrinsics did change


def test_studio_reference_is_another_view_of_the_take(root):
    dataset = PortraitClipDataset(root, 5, kinds=["studio"])
    for draw in range(3):
        sample = dataset[0, draw]
        assert sample["clip_id"] == "studio_a" and sample["reference_clip_id"] == "studio_b"
        other = annotation(root, "studio_b")
        assert torch.equal(sample["reference_camera"].c2w[0], other.c2w[sample["reference_frame"]])
    same = PortraitClipDataset(root, 5, kinds=["studio"], reference="same_clip")[0]
    assert same["reference_clip_id"] == "studio_a"


def test_expression_codes_parameters_and_fallback(root, vae):
    dataset = PortraitClipDataset(root, 5)
    by_id = {r.id: i for i, r in enumerate(dataset.records)}
    codes = to_training_sample(dataset[by_id["phone_a"]], vae)
    frames = codes["frame_indices"]
    assert codes["expression_source"] == "codes"
    assert torch.equal(codes["expression"], annotation(root, "phone_a").expression_codes[frames])
    params = to_training_sample(dataset[by_id["phone_b"]], vae)
    assert params["expression_source"] == "parameters"
    expected = annotation(root, "phone_b").expression[params["frame_indices"]]
    assert torch.equal(params["expression"][:, :10], expected)
    assert not params["expression"][:, 10:].any()  # zero-padded to 128
    none = to_training_sample(dataset[by_id["sweep_a"]], vae)
    assert none["expression_source"] == "none" and not none["expression"].any()
    with pytest.raises(ValueError, match="pass vae="):
        to_training_sample(dataset[0])


def test_samples_are_deterministic_per_seed_index_and_draw(root):
    first, second = PortraitClipDataset(root, 5, seed=3), PortraitClipDataset(root, 5, seed=3)
    for item in [(0, 0), (2, 5), (4, 7)]:
        a, b = first[item], second[item]
        assert a["clip_id"] == b["clip_id"] and a["reference_frame"] == b["reference_frame"]
        assert torch.equal(a["frame_indices"], b["frame_indices"])
        assert torch.equal(a["video"], b["video"])
    starts = {int(first[0, draw]["frame_indices"][0]) for draw in range(12)}
    assert len(starts) >= 4 and starts <= set(range(13))  # 17 frames, windows of 5
    other_seed = PortraitClipDataset(root, 5, seed=4)
    assert any(not torch.equal(first[0, d]["frame_indices"], other_seed[0, d]["frame_indices"])
               for d in range(4))
    assert first.kind_to_indices() == {"phone": [0, 1], "studio": [2, 3], "viewsweep": [4]}


def test_draw_sampler_pairs_indices_with_stream_positions(root):
    pools = PortraitClipDataset(root, 5).kind_to_indices()
    ratios = {"phone": 0.5, "studio": 0.3, "viewsweep": 0.2}
    iterator = iter(DrawSampler(MixtureSampler(pools, ratios, seed=1)))
    stream = [next(iterator) for _ in range(10)]
    assert [draw for _, draw in stream] == list(range(10))
    rank1 = iter(DrawSampler(MixtureSampler(pools, ratios, seed=1, rank=1, world_size=2)))
    assert [next(rank1) for _ in range(5)] == stream[1::2]  # positions 1, 3, 5, ...
    resumed = DrawSampler(MixtureSampler(pools, ratios, seed=1))
    resumed.load_state_dict({"samples_consumed": 6})
    iterator = iter(resumed)
    assert [next(iterator) for _ in range(4)] == stream[6:]


@pytest.fixture
def damaged(tmp_path):
    """Six phone clips: four readable, a truncated mp4, a missing annotation file — and a
    seventh with a frame-count mismatch is added by the test that wants it."""
    for i in range(4):
        add_clip(tmp_path, f"good{i}", frames=9, normals=False, seed=i)
    add_clip(tmp_path, "truncated", frames=9, normals=False, seed=10)
    path = tmp_path / "videos/truncated.mp4"
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    add_clip(tmp_path, "no_annotations", frames=9, normals=False, seed=11)
    os.remove(tmp_path / "annotations/no_annotations.safetensors")
    return tmp_path


def test_bad_clips_are_skipped_and_counted(damaged, caplog):
    dataset = PortraitClipDataset(damaged, 5, max_bad_fraction=0.4)
    with caplog.at_level(logging.WARNING, logger="factorportrait.data.dataset"):
        samples = [dataset[i] for i in range(len(dataset))] + [dataset[4], dataset[5]]
    assert set(dataset.bad_clips) == {"truncated", "no_annotations"}
    assert "unreadable" in dataset.bad_clips["truncated"]
    assert "no_annotations.safetensors" in dataset.bad_clips["no_annotations"]
    assert len([r for r in caplog.records if "skipping unreadable clip" in r.message]) == 2
    assert [s["clip_id"] for s in samples[:4]] == [f"good{i}" for i in range(4)]
    good = {f"good{i}" for i in range(4)}
    assert all(s["clip_id"] in good for s in samples[4:])
    assert [s["replaced"] for s in samples] == [""] * 4 + ["truncated", "no_annotations"] * 2
    again = PortraitClipDataset(damaged, 5, max_bad_fraction=0.4)[4]  # a fresh loader
    assert again["clip_id"] == samples[4]["clip_id"]  # the replacement is the draw's own
    assert torch.equal(again["video"], samples[4]["video"])


def test_too_many_bad_clips_raise_with_the_list(damaged):
    dataset = PortraitClipDataset(damaged, 5, max_bad_fraction=0.2)
    assert dataset[0]["clip_id"] == "good0"
    with pytest.raises(TooManyBadClips, match=r"2 of 6 clips(.|\n)*truncated(.|\n)*"
                                               r"no_annotations"):
        dataset[4]  # truncated: 1 of 6 is tolerated
        dataset[5]  # no_annotations: 2 are not


def test_frame_count_mismatch_is_a_bad_clip(damaged):
    add_clip(damaged, "short_video", frames=9, normals=False, seed=12)
    add_clip(damaged / "other", "short_video", frames=7, normals=False, seed=12)
    os.replace(damaged / "other/videos/short_video.mp4", damaged / "videos/short_video.mp4")
    dataset = PortraitClipDataset(damaged, 5, max_bad_fraction=0.5)
    sample = dataset[6]
    assert sample["clip_id"].startswith("good") and sample["replaced"] == "short_video"
    assert "frame-count mismatch" in dataset.bad_clips["short_video"]


def test_invalid_arguments_are_named(root):
    with pytest.raises(ValueError, match="4k \\+ 1"):
        PortraitClipDataset(root, 12)
    with pytest.raises(ValueError, match="multiples of 16"):
        PortraitClipDataset(root, 5, size=(30, 32))
    with pytest.raises(ValueError, match="unknown kind"):
        PortraitClipDataset(root, 5, kinds=["selfie"])
    with pytest.raises(ValueError, match="vae_hash"):
        PortraitClipDataset(root, 5, latents=True)
    with pytest.raises(ValueError, match="no clips"):
        PortraitClipDataset(root, 5, split="heldout")
    with pytest.raises(ValueError, match="no clips"):  # every clip is shorter than 21 frames
        PortraitClipDataset(root, 21)
    assert len(PortraitClipDataset(root, 17)) == 5


@pytest.mark.slow
def test_curriculum_frame_counts_give_design_shapes(tmp_path, vae):
    """The paper's 13 / 25 / 49 / 81-frame windows (Table 1) from one 81-frame clip."""
    add_clip(tmp_path, "long", frames=81, seed=9)
    for frames in (13, 25, 49, 81):
        sample = PortraitClipDataset(tmp_path, frames, size=(32, 32))[0]
        latent_frames = (frames - 1) // 4 + 1
        assert sample["video"].shape == sample["normals"].shape == (3, frames, 32, 32)
        item = to_training_sample(sample, vae)
        assert item["latents"].shape == item["normal_latents"].shape == (16, latent_frames, 4, 4)
        assert item["rays"].shape == (24, 1 + latent_frames, 4, 4)
        assert item["expression"].shape == (frames, 128)
