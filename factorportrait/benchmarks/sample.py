"""``tools/benchmark.py sample``: the inference pipeline end to end, by stage.

Renders one video with random weights (tiny DiT and a reduced-width VAE by default; any DiT
preset with ``--preset``) in mode ``driving_with_camera``, so every condition is live: avatar
normal maps, an orbit, per-frame codes, progressive hybrid guidance. Reports
  - seconds per denoising step (all guidance branches of a step in one batched forward);
  - the share of the render's time in the DiT, the VAE (normal maps and reference encoded,
    video decoded) and condition building (codes, cameras, mesh posing and rendering, rays);
  - batched against unbatched CFG: the denoising loop alone, interleaved, same seed.
"""

from __future__ import annotations

import argparse

import torch

from factorportrait.benchmarks.common import (format_table, interleaved_median_seconds,
                                              pick_device)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="tiny", choices=("tiny", "wan_1_3b", "wan_14b"))
    parser.add_argument("--vae-dim", type=int, default=8, help="VAE width (Wan 2.1: 96)")
    parser.add_argument("--frames", type=int, default=9, help="video frames, 4k+1")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def build_pipeline(args: argparse.Namespace, device: torch.device):
    """Random-weight pipeline with the avatar mesh source, on ``device``."""
    from factorportrait import DiTConfig, FactorPortraitDiT
    from factorportrait.body import AvatarIdentity, HeadAvatar
    from factorportrait.inference import AvatarMeshSource
    from factorportrait.models.vae import VAEConfig, WanVAE
    from factorportrait.pipeline import FactorPortraitPipeline

    torch.manual_seed(0)
    dit = FactorPortraitDiT(DiTConfig.preset(args.preset))
    with torch.no_grad():  # make the zero-initialised condition paths live
        dit.patch_embedding.weight.normal_(std=0.02)
        for param in dit.expression_controller.output.parameters():
            param.normal_(std=0.02)
    vae = WanVAE(VAEConfig(dim=args.vae_dim))
    avatar = HeadAvatar(AvatarIdentity.sample(seed=3), device=device)
    pipe = FactorPortraitPipeline(dit, vae, mesh_source=AvatarMeshSource(avatar),
                                  window_frames=max(81, args.frames))
    return pipe.to(device, getattr(torch, args.dtype))


def _inputs(args: argparse.Namespace) -> dict:
    from factorportrait.inference import ControlTrack

    g = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, args.frames)[:, None]
    track = ControlTrack(fps=16.0, expression_codes=torch.randn(args.frames, 128, generator=g),
                         expression=torch.rand(args.frames, 8, generator=g) * 0.5,
                         head_rotation=t * torch.tensor([0.0, 0.3, 0.1]),
                         head_translation=torch.zeros(args.frames, 3))
    reference = torch.randint(0, 256, (args.height, args.width, 3), dtype=torch.uint8,
                              generator=g)
    return dict(reference_image=reference, mode="driving_with_camera", control_track=track,
                camera_trajectory=("orbit", {"degrees": 30}), num_steps=args.steps,
                reference_crop="center", progress=False)


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    pipe = build_pipeline(args, device)
    inputs = _inputs(args)
    reference = inputs.pop("reference_image")
    pipe(reference, **{**inputs, "num_steps": 1})  # warm-up
    stages = {"conditions": [], "vae": [], "dit": []}
    for _ in range(args.repeats):
        pipe(reference, **inputs)
        for name in stages:
            stages[name].append(pipe.timings[name])
    median = {name: sorted(values)[len(values) // 2] for name, values in stages.items()}
    total = sum(median.values())
    request = pipe.check_inputs(reference, mode=inputs["mode"],
                                control_track=inputs["control_track"],
                                camera_trajectory=inputs["camera_trajectory"])
    conditions = pipe.encode_conditions(request, pipe.plan(request))
    loops = {f"batch_cfg={batched}": (lambda batched=batched: pipe.denoise(
        conditions, num_steps=args.steps, batch_cfg=batched, progress=False))
        for batched in (True, False)}
    loop_seconds = interleaved_median_seconds(loops, device, args.repeats)
    report = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "config": {"preset": args.preset, "vae_dim": args.vae_dim, "frames": args.frames,
                   "height": args.height, "width": args.width, "steps": args.steps,
                   "guidance": "progressive_hybrid 2.5"},
        "seconds_per_step": round(median["dit"] / args.steps, 4),
        "render_seconds": round(total, 3),
        **{f"share_{name}": round(value / total, 3) for name, value in median.items()},
        "batched_cfg_step_seconds": round(loop_seconds["batch_cfg=True"] / args.steps, 4),
        "unbatched_cfg_step_seconds": round(loop_seconds["batch_cfg=False"] / args.steps, 4),
    }
    report["batched_over_unbatched"] = round(
        report["batched_cfg_step_seconds"] / report["unbatched_cfg_step_seconds"], 3)
    rows = [{"stage": name, "seconds": round(value, 3), "share": round(value / total, 3)}
            for name, value in median.items()]
    print(format_table(rows, ["stage", "seconds", "share"]))
    print(f"seconds per denoising step: {report['seconds_per_step']}  "
          f"(batched CFG {report['batched_cfg_step_seconds']} s, unbatched "
          f"{report['unbatched_cfg_step_seconds']} s, ratio "
          f"{report['batched_over_unbatched']})")
    return report
