"""FactorPortraitPipeline end to end on a tiny random-weight model: every mode's output,
determinism, the guidance schedule it runs, long videos, from_pretrained, the mp4."""

import pytest
import torch

from factorportrait.diffusion import Guidance, guidance_weights
from factorportrait.inference import CONTROL_MODES
from factorportrait.io.video import read_video
from factorportrait.pipeline import DEFAULT_GUIDANCE, FactorPortraitPipeline
from tests.pipeline_helpers import (FRAMES, SIZE, MeanColourEncoder, driving_track,
                                    reference_image, tiny_dit, tiny_pipeline, tiny_vae)

TRAJECTORY = ("orbit", {"degrees": 30})


def mode_inputs(mode: str) -> dict:
    """The inputs each mode needs (5 frames, 32x32)."""
    track = driving_track()
    if mode == "camera_only":
        return dict(camera_trajectory=TRAJECTORY, num_frames=FRAMES)
    if mode == "mixed":
        return dict(expression_source=driving_track(seed=1), pose_source=track,
                    camera_trajectory=TRAJECTORY)
    if mode in ("driving_novel_view", "driving_with_camera"):
        return dict(control_track=track, camera_trajectory=TRAJECTORY)
    return dict(control_track=track)


@pytest.mark.parametrize("mode", CONTROL_MODES)
def test_every_mode_gives_uint8_frames(mode):
    pipe = tiny_pipeline()
    frames = pipe(reference_image(), mode=mode, num_steps=2, progress=False, **mode_inputs(mode))
    assert frames.shape == (FRAMES, SIZE, SIZE, 3) and frames.dtype == torch.uint8
    assert set(pipe.timings) == {"faces", "conditions", "vae", "dit"}


def test_same_seed_same_video_and_other_seed_differs():
    pipe = tiny_pipeline()
    kwargs = dict(mode="driving_with_camera", num_steps=2, progress=False,
                  **mode_inputs("driving_with_camera"))
    first = pipe(reference_image(), seed=11, **kwargs)
    again = pipe(reference_image(), seed=11, **kwargs)
    other = pipe(reference_image(), seed=12, **kwargs)
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


class BranchRecorder(torch.nn.Module):
    """Wraps the DiT; records, per forward, which branch each row is (by its conditions)."""

    def __init__(self, model, codes):
        super().__init__()
        self.model, self.codes, self.calls = model, codes, []
        self.config = model.config

    def forward(self, x, timestep, conditions):
        branches = []
        for row in range(x.shape[0]):
            if not conditions.reference_latent[row].any():
                branches.append("null")
            elif not conditions.expression[row].any():
                branches.append("no_expression")
            else:
                assert torch.equal(conditions.expression[row].cpu(), self.codes)
                branches.append("full")
        self.calls.append(tuple(branches))
        return self.model(x, timestep, conditions)


@pytest.mark.parametrize("guidance, steps", [(DEFAULT_GUIDANCE, 14), (Guidance("cfg", 3.0), 3),
                                             (Guidance("expression", 2.0), 2)])
def test_denoising_runs_the_documented_guidance_schedule(guidance, steps):
    pipe = tiny_pipeline()
    track = driving_track()
    request = pipe.check_inputs(reference_image(), mode="driving", control_track=track)
    conditions = pipe.encode_conditions(request, pipe.plan(request))
    recorder = BranchRecorder(tiny_dit(), track.expression_codes)
    pipe.dit = recorder
    try:
        pipe.denoise(conditions, num_steps=steps, guidance=guidance, progress=False)
    finally:
        pipe.dit = tiny_dit()
    expected = [step.branches for step in guidance_weights(
        guidance.mode, steps, guidance.scale, guidance.exclude_fraction, guidance.blend_fraction)]
    assert recorder.calls == expected  # one batched forward per step, branches as documented
    assert DEFAULT_GUIDANCE == Guidance("progressive_hybrid", 2.5)


def test_batched_and_unbatched_guidance_agree():
    pipe = tiny_pipeline()
    kwargs = dict(mode="driving", num_steps=3, progress=False, **mode_inputs("driving"))
    batched = pipe(reference_image(), batch_cfg=True, **kwargs)
    separate = pipe(reference_image(), batch_cfg=False, **kwargs)
    assert (batched.int() - separate.int()).abs().max() <= 1  # float32 reduction order only


def test_expression_encoder_fills_driving_and_reference_codes():
    encoder = MeanColourEncoder()
    pipe = tiny_pipeline(expression_encoder=encoder)
    video = torch.randint(0, 256, (FRAMES, SIZE, SIZE, 3), dtype=torch.uint8,
                          generator=torch.Generator().manual_seed(0))
    request = pipe.check_inputs(reference_image(), mode="pose_only",
                                control_track=driving_track().replace(expression_codes=None))
    plan = pipe.plan(request)
    reference_code = encoder(torch.as_tensor(reference_image()).permute(2, 0, 1)[None].float()
                             / 127.5 - 1)
    assert torch.allclose(plan.expression_codes, reference_code.expand(FRAMES, -1), atol=1e-5)
    request = pipe.check_inputs(reference_image(), mode="expression_only", driving_video=video)
    codes = pipe.plan(request).expression_codes
    assert torch.allclose(codes, encoder(video.permute(0, 3, 1, 2).float() / 127.5 - 1),
                          atol=1e-5)  # a plain encoder: whole frames, no tracking
    with pytest.raises(ValueError, match="driving_video is unused: mode 'pose_only' takes the "
                       "driving head pose, and the control track already has them"):
        pipe.check_inputs(reference_image(), mode="pose_only", driving_video=video,
                          control_track=driving_track())


@pytest.mark.slow
def test_long_video_by_windows(tmp_path):
    pipe = tiny_pipeline(window_frames=5, window_overlap=4)
    track = driving_track(frames=13)
    frames = pipe(reference_image(), mode="driving_with_camera", control_track=track,
                  camera_trajectory=("orbit", {"degrees": 40}), num_steps=2, progress=False,
                  output_path=tmp_path / "long.mp4")
    assert frames.shape == (13, SIZE, SIZE, 3)
    assert read_video(tmp_path / "long.mp4").shape == (13, SIZE, SIZE, 3)


def test_from_pretrained_reproduces_the_components(tmp_path):
    tiny_dit().save_pretrained(tmp_path / "ckpt")
    tiny_vae().save_pretrained(tmp_path / "ckpt")
    loaded = FactorPortraitPipeline.from_pretrained(tmp_path / "ckpt", preset="tiny",
                                                    mesh_source=tiny_pipeline().mesh_source)
    kwargs = dict(mode="driving", num_steps=2, progress=False, **mode_inputs("driving"))
    assert torch.equal(loaded(reference_image(), **kwargs),
                       tiny_pipeline()(reference_image(), **kwargs))


def test_writes_an_mp4_and_a_failed_render_leaves_none(tmp_path):
    pipe = tiny_pipeline()
    out = tmp_path / "video.mp4"
    frames = pipe(reference_image(), num_steps=2, progress=False, output_path=out,
                  **mode_inputs("driving"))
    assert read_video(out).shape == frames.shape
    exact = tmp_path / "exact.mp4"
    frames = pipe(reference_image(), num_steps=2, progress=False, output_path=exact,
                  lossless=True, **mode_inputs("driving"))
    assert torch.equal(read_video(exact), frames)  # lossless: the frames, bit for bit
    exact.unlink()

    class Broken(torch.nn.Module):
        config = tiny_dit().config

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, *args):
            raise RuntimeError("out of memory (simulated)")

    pipe.dit = Broken()
    failed = tmp_path / "failed.mp4"
    try:
        with pytest.raises(RuntimeError, match="simulated"):
            pipe(reference_image(), num_steps=2, progress=False, output_path=failed,
                 **mode_inputs("driving"))
    finally:
        pipe.dit = tiny_dit()
    assert not failed.exists() and list(tmp_path.iterdir()) == [out]


@pytest.mark.slow
def test_sample_benchmark_reports_its_figures():
    import argparse

    from factorportrait.benchmarks import sample as bench

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    report = bench.run(parser.parse_args(["--frames", "5", "--height", "32", "--width", "32",
                                          "--steps", "2", "--repeats", "1"]))
    shares = report["share_dit"] + report["share_vae"] + report["share_conditions"]
    assert abs(shares - 1) < 0.01 and report["seconds_per_step"] > 0
    assert report["batched_over_unbatched"] > 0
