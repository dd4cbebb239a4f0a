"""Latent cache: served latents equal on-the-fly encoding of the same frames, entries are
skipped when current and invalidated when the VAE weights or the sources change."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from factorportrait import PortraitConditions
from factorportrait.data import (
    DrawSampler,
    LatentCache,
    LatentTrainingDataset,
    MixtureSampler,
    PortraitClipDataset,
    TooManyBadClips,
    load_annotations,
    precompute_latents,
    save_annotations,
    to_training_sample,
)
from factorportrait.data import clip as clip_module
from factorportrait.models.vae import VAEConfig, WanVAE
from tests.tiny_dataset import make_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = {"num_frames": 5, "window_step": 4, "reference_count": 3}
REPO = Path(__file__).resolve().parents[1]
COMPARED = ("latents", "reference_latent", "normal_latents", "rays", "expression")


@pytest.fixture(scope="module")
def cached(tmp_path_factory, vae):
    """A five-clip dataset (9 frames: windows at 0 and 4) with its latents precomputed."""
    root = make_dataset(tmp_path_factory.mktemp("cached"), frames=9)
    report = precompute_latents(PortraitClipDataset(root, **SPEC, split=None), vae)
    assert len(report.written) == 5 and not report.failed
    return root


def test_cache_round_trip_equals_on_the_fly_encoding(cached, vae, monkeypatch):
    pixels = PortraitClipDataset(cached, **SPEC)
    expected = {(i, d): to_training_sample(pixels[i, d], vae)
                for i in range(len(pixels)) for d in range(2)}

    def no_decoding(*args, **kwargs):
        raise AssertionError("latent samples must not decode videos")

    monkeypatch.setattr(clip_module, "read_video", no_decoding)
    monkeypatch.setattr(clip_module, "video_info", no_decoding)
    latents = PortraitClipDataset(cached, **SPEC, latents=True, vae_hash=vae.weights_hash())
    for (index, draw), want in expected.items():
        sample = latents[index, draw]
        assert "video" not in sample and "reference_image" not in sample
        got = to_training_sample(sample)  # no VAE needed
        for key in ("clip_id", "reference_clip_id", "reference_frame"):
            assert got[key] == want[key]
        assert torch.equal(got["frame_indices"], want["frame_indices"])
        for key in COMPARED:
            assert torch.allclose(got[key], want[key], atol=1e-5), (index, draw, key)
    assert {int(s["frame_indices"][0]) for s in expected.values()} == {0, 4}
    assert not latents.bad_clips


def test_up_to_date_entries_are_skipped_and_writes_are_atomic(cached, vae):
    report = precompute_latents(PortraitClipDataset(cached, **SPEC, split=None), vae)
    assert report.written == () and len(report.up_to_date) == 5
    folder = report.folder
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"{clip_id}.safetensors" for clip_id in report.up_to_date)  # no temporary files


def test_loader_batches_cached_samples_for_a_mixture(cached, vae):
    dataset = PortraitClipDataset(cached, **SPEC, latents=True, vae_hash=vae.weights_hash())
    sampler = MixtureSampler(dataset.kind_to_indices(), {"phone": 1, "studio": 1}, seed=0)
    loader = DataLoader(LatentTrainingDataset(dataset), batch_size=3,
                        sampler=DrawSampler(sampler))
    batch = next(iter(loader))
    conditions = PortraitConditions(batch["reference_latent"], batch["normal_latents"],
                                    batch["rays"], batch["expression"])
    conditions.validate(batch["latents"])
    assert set(batch["kind"]) <= {"phone", "studio"} and len(batch["clip_id"]) == 3


def test_changed_vae_weights_invalidate_the_cache(cached, vae):
    changed = WanVAE(VAEConfig.small(dim=8))
    changed.load_state_dict(vae.state_dict())
    with torch.no_grad():
        changed.model.encoder.conv1.weight.mul_(1.01)
    assert changed.weights_hash() != vae.weights_hash()
    record = PortraitClipDataset(cached, **SPEC).records[0]
    dataset = PortraitClipDataset(cached, **SPEC)
    assert LatentCache(cached, vae.weights_hash()).is_current(record, dataset.spec)
    assert not LatentCache(cached, changed.weights_hash()).is_current(record, dataset.spec)
    with pytest.raises(FileNotFoundError, match="caches present"):
        PortraitClipDataset(cached, **SPEC, latents=True, vae_hash=changed.weights_hash())
    # an entry claiming another VAE (e.g. copied between folders) is stale too
    stale = LatentCache(cached, changed.weights_hash())
    stale.path(record.id, dataset.spec).parent.mkdir(parents=True)
    stale.path(record.id, dataset.spec).write_bytes(
        LatentCache(cached, vae.weights_hash()).path(record.id, dataset.spec).read_bytes())
    assert not stale.is_current(record, dataset.spec)
    report = precompute_latents(PortraitClipDataset(cached, **SPEC, kinds=["phone"]), changed)
    assert set(report.written) == {"phone_a", "phone_b"}
    assert stale.is_current(record, dataset.spec)


def test_changed_sources_invalidate_entries(tmp_path, vae):
    root = make_dataset(tmp_path, frames=9)
    phones = {**SPEC, "kinds": ["phone"]}
    precompute_latents(PortraitClipDataset(root, **phones), vae)
    path = root / "annotations/phone_a.safetensors"
    save_annotations(path, load_annotations(path))  # rewritten: new mtime
    auto = PortraitClipDataset(root, **phones, latents="auto", vae_hash=vae.weights_hash())
    assert "video" in auto[0] and "latents" in auto[1]  # pixels where the entry is stale
    strict = PortraitClipDataset(root, **phones, latents=True, vae_hash=vae.weights_hash(),
                                 max_bad_fraction=0.0)
    with pytest.raises(TooManyBadClips, match="phone_a(.|\n)*stale"):
        strict[0]


def test_precompute_tool(tmp_path, vae, capsys):
    root = make_dataset(tmp_path / "data", frames=9)
    vae.save_pretrained(tmp_path / "vae")
    spec = importlib.util.spec_from_file_location("precompute", REPO / "tools/precompute.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    args = [str(root), "--vae", str(tmp_path / "vae"), "--frames", "5", "--size", "32", "32",
            "--window-step", "4", "--references", "2", "--device", "cpu",
            "--kinds", "phone", "viewsweep"]
    assert tool.main(args) == 0
    assert "3 written, 0 up to date, 0 failed" in capsys.readouterr().out
    (root / "videos/sweep_a.mp4").write_bytes(b"not a video")
    assert tool.main(args) == 1
    out = capsys.readouterr().out
    assert "sweep_a: " in out and "0 written, 2 up to date, 1 failed" in out
    dataset = PortraitClipDataset(root, 5, size=(32, 32), window_step=4, reference_count=2,
                                  latents=True, vae_hash=vae.weights_hash())
    assert dataset[0]["latents"].shape == (16, 2, 4, 4)
