"""Sliding windows for long videos: coverage, blend weights, sliced conditions, continuity."""

import pytest
import torch

from factorportrait import DiTConfig, PortraitConditions
from factorportrait.diffusion import Guidance, sample
from factorportrait.geometry import dit_rays, make_trajectory
from factorportrait.inference import plan_windows, sample_windows, window_conditions
from factorportrait.inference.long_video import latent_frames
from tests.conftest import make_conditions
from tests.pipeline_helpers import tiny_dit


@pytest.mark.parametrize("total, window, overlap", [
    (21, 21, 4), (5, 21, 4), (30, 21, 4), (41, 21, 4), (7, 3, 1), (10, 4, 2), (9, 2, 0),
    (12, 5, 4), (100, 21, 8)])
def test_windows_cover_every_frame_with_weights_summing_to_one(total, window, overlap):
    windows = plan_windows(total, window, overlap)
    coverage = torch.zeros(total, dtype=torch.float64)
    for w in windows:
        assert 0 <= w.start < w.stop <= total and w.length == min(window, total)
        assert (w.weights > 0).all()
        coverage[w.start:w.stop] += w.weights
    assert torch.allclose(coverage, torch.ones(total, dtype=torch.float64), atol=1e-12)
    assert windows[0].start == 0 and windows[-1].stop == total
    for before, after in zip(windows, windows[1:]):
        assert before.stop - after.start >= overlap  # overlap at least as asked


def test_overlap_ramps_are_linear():
    first, second = plan_windows(7, 4, 1)  # windows [0, 4) and [3, 7)
    assert (first.start, second.start) == (0, 3)
    assert torch.allclose(first.weights, torch.tensor([1, 1, 1, 0.5], dtype=torch.float64))
    assert torch.allclose(second.weights, torch.tensor([0.5, 1, 1, 1], dtype=torch.float64))
    a, b = plan_windows(8, 5, 2)  # [0, 5) and [3, 8): a 2-frame ramp
    assert torch.allclose(a.weights[3:], torch.tensor([2 / 3, 1 / 3], dtype=torch.float64))
    assert torch.allclose(b.weights[:2], torch.tensor([1 / 3, 2 / 3], dtype=torch.float64))
    starts = [w.start for w in plan_windows(55, 21, 4)]  # 3 windows spaced evenly
    assert starts == [0, 17, 34]


def test_bad_window_settings():
    with pytest.raises(ValueError, match="overlap"):
        plan_windows(30, 21, 21)
    with pytest.raises(ValueError, match="4k"):
        latent_frames(8)


def test_constant_velocity_camera_gives_continuous_windowed_rays():
    frames = 4 * 20 + 1  # 21 latent frames
    cameras = make_trajectory("dolly", frames=frames, distance=0.6, end_distance=0.4,
                              width=32, height=32, dtype=torch.float64)
    reference = make_trajectory("static", frames=1, width=32, height=32, dtype=torch.float64)
    rays = dit_rays(reference, cameras, 32, 32)  # (24, 22, 4, 4)
    per_frame = rays[:, 2:].permute(1, 0, 2, 3).reshape(-1, 6, 4, 4)  # video frames 1..F-1
    second = per_frame[2:] - 2 * per_frame[1:-1] + per_frame[:-2]
    assert second.abs().max() < 1e-12  # linear in time: continuous, constant velocity
    conditions = PortraitConditions(
        reference_latent=torch.zeros(1, 16, 1, 4, 4), normal_latents=torch.zeros(1, 16, 21, 4, 4),
        rays=rays[None], expression=torch.arange(frames, dtype=torch.float64)[None, :, None]
        .expand(1, frames, 128))
    windows = plan_windows(21, 6, 2)
    blended = torch.zeros_like(rays[:, 1:])
    for window in windows:
        part = window_conditions(conditions, window)
        assert torch.equal(part.rays[0, :, 0], rays[:, 0])  # frame 0 = the identity camera
        assert torch.equal(part.rays[0, :, 1:], rays[:, 1 + window.start:1 + window.stop])
        codes = part.expression[0, :, 0]  # the video-frame index stored in every code
        assert torch.equal(codes, torch.arange(4 * window.start, 4 * (window.stop - 1) + 1,
                                               dtype=torch.float64))
        blended[:, window.start:window.stop] += (part.rays[0, :, 1:]
                                                 * window.weights[None, :, None, None])
    assert torch.allclose(blended, rays[:, 1:], atol=1e-12)  # blending reproduces the video


def test_single_window_equals_the_plain_sampler():
    model = tiny_dit()
    _, conditions = make_conditions(DiTConfig.tiny(), batch=1, frames=3, context_length=None)
    guidance = Guidance("progressive_hybrid", 2.5)
    kwargs = dict(num_steps=3, guidance=guidance, progress=False)
    ours = sample_windows(model, conditions, plan_windows(3, 21, 4),
                          generator=torch.Generator().manual_seed(4), **kwargs)
    plain = sample(model, conditions, generator=torch.Generator().manual_seed(4), **kwargs)
    assert torch.equal(ours, plain)


class OracleVelocity(torch.nn.Module):
    """The exact velocity toward the window's slice of a fixed x0, found from the window's
    normal latents (which carry x0 here)."""

    def forward(self, x_t, timestep, conditions):
        sigma = (timestep.double() / 1000.0)[:, None, None, None, None]
        return ((x_t.double() - conditions.normal_latents.double()) / sigma).float()


def test_blended_windows_land_exactly_on_the_target():
    x0 = torch.randn(1, 16, 9, 4, 4, generator=torch.Generator().manual_seed(3))
    conditions = PortraitConditions(
        reference_latent=torch.zeros(1, 16, 1, 4, 4), normal_latents=x0,
        rays=torch.zeros(1, 24, 10, 4, 4), expression=torch.zeros(1, 33, 128))
    windows = plan_windows(9, 4, 2)
    assert len(windows) > 2
    out = sample_windows(OracleVelocity(), conditions, windows, num_steps=4, progress=False,
                         generator=torch.Generator().manual_seed(0), guidance="expression")
    assert torch.allclose(out, x0, atol=1e-5)
