"""The prepared GPU check (benchmarks/gpu_check.sh runs it when a GPU is lent).

    python tools/gpu_check.py [--out benchmarks/gpu-check.json]
    python tools/gpu_check.py --preset tiny --frames 5 --size 64x64 --steps 2 --render-steps 2 \\
        --device cpu                     # a smoke run of the same code on a CPU

Measures, with random weights at real sizes (defaults: Wan 2.1 1.3B, 81 frames at 480x832):

1. attention backends: which kernels diffsynth's dispatcher finds (flash-attention 2/3,
   SageAttention, else PyTorch SDPA) and SDPA's own flash / memory-efficient kernels;
2. a bf16 training step (autocast, fp32 master weights, AdamW, gradient checkpointing,
   batch 1): seconds per step, peak memory, and MFU against --peak-tflops from the
   planner's FLOP count (4 forwards per checkpointed step);
3. a render: the DiT denoising ``--render-steps`` steps with classifier-free guidance (two
   branches batched) on the same size — seconds and peak memory; the floor is the planner's
   FLOPs at --peak-tflops (≈ 31 PFLOP, ≈ 39 s at 790 TFLOP/s for the default size);
4. the bf16 forward against fp32 on one step (max relative difference).

Writes one JSON object (``--out``) and prints it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="wan_1_3b", choices=("tiny", "wan_1_3b", "wan_14b"))
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="480x832", help="HxW pixels")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--render-steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--peak-tflops", type=float, default=989.0,
                        help="dense bf16 peak of the GPU (H100/H200 SXM: 989)")
    parser.add_argument("--sustained-tflops", type=float, default=790.0)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", type=Path)
    return parser.parse_args(argv)


def attention_backends() -> dict:
    import torch

    from factorportrait.models import backbone

    wan = backbone.wan_dit_module()
    found = {name: bool(getattr(wan, name, False)) for name in (
        "FLASH_ATTN_3_AVAILABLE", "FLASH_ATTN_2_AVAILABLE", "SAGE_ATTN_AVAILABLE")}
    if torch.cuda.is_available():
        found["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
        found["sdpa_mem_efficient"] = torch.backends.cuda.mem_efficient_sdp_enabled()
    return found


def inputs(config, frames: int, height: int, width: int, device, batch: int = 1):
    import torch

    from factorportrait import PortraitConditions

    g = torch.Generator().manual_seed(0)
    latent_frames = (frames - 1) // 4 + 1
    h, w = height // 8, width // 8

    def randn(*shape: int):
        return torch.randn(*shape, generator=g).to(device)

    noisy = randn(batch, 16, latent_frames, h, w)
    conditions = PortraitConditions(
        reference_latent=randn(batch, 16, 1, h, w),
        normal_latents=randn(batch, 16, latent_frames, h, w),
        rays=randn(batch, 24, 1 + latent_frames, h, w),
        expression=randn(batch, frames, config.expression_dim), context=None)
    return noisy, conditions


def synchronize(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_gib(device) -> float | None:
    import torch
    if device.type != "cuda":
        return None  # host peaks: tools/benchmark.py train / sample
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2)


def reset_peak(device) -> None:
    import torch
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def training_step(config, args, device) -> dict:
    import torch

    from factorportrait import FactorPortraitDiT
    from factorportrait.benchmarks.plan import TRAINING_FORWARDS, forward_flops, tokens
    from factorportrait.diffusion.flow_matching import flow_matching_loss

    height, width = (int(v) for v in args.size.lower().split("x"))
    model = FactorPortraitDiT(config).to(device).train().enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    latents, conditions = inputs(config, args.frames, height, width, device)
    times = []
    reset_peak(device)
    for step in range(args.steps + 1):  # the first step warms up
        synchronize(device)
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss, _ = flow_matching_loss(model, latents, conditions,
                                         torch.Generator().manual_seed(step))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        times.append(time.perf_counter() - start)
    seconds = sorted(times[1:])[len(times[1:]) // 2]
    sequence, _ = tokens(config, args.frames, height, width)
    flops = TRAINING_FORWARDS * forward_flops(config, sequence)["total"]
    return {"seconds_per_step": round(seconds, 3), "peak_gib": peak_gib(device),
            "tflop_per_step": round(flops / 1e12, 1),
            "mfu": round(flops / seconds / (args.peak_tflops * 1e12), 3),
            "loss_finite": bool(torch.isfinite(loss))}


def render(config, args, device) -> dict:
    import torch

    from factorportrait import FactorPortraitDiT
    from factorportrait.benchmarks.plan import forward_flops, tokens
    from factorportrait.diffusion.guidance import Guidance
    from factorportrait.diffusion.sampler import sample

    height, width = (int(v) for v in args.size.lower().split("x"))
    model = FactorPortraitDiT(config).to(device, torch.bfloat16).eval()
    _, conditions = inputs(config, args.frames, height, width, device)
    conditions = conditions.to(device)
    reset_peak(device)
    synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        latents = sample(model, conditions, generator=torch.Generator().manual_seed(0),
                         num_steps=args.render_steps,
                         guidance=Guidance("cfg", args.guidance_scale), progress=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    sequence, _ = tokens(config, args.frames, height, width)
    flops = 2 * args.render_steps * forward_flops(config, sequence)["total"]  # 2 branches
    return {"seconds": round(seconds, 2), "peak_gib": peak_gib(device),
            "pflop": round(flops / 1e15, 2),
            "floor_seconds_at_sustained": round(flops / (args.sustained_tflops * 1e12), 1),
            "latents_finite": bool(torch.isfinite(latents).all())}


def bf16_against_fp32(config, args, device) -> dict:
    import copy

    import torch

    from factorportrait import FactorPortraitDiT

    height, width = (int(v) for v in args.size.lower().split("x"))
    frames = min(args.frames, 17)
    model = FactorPortraitDiT(config).to(device).eval()
    with torch.no_grad():
        model.patch_embedding.weight.normal_(std=0.02)  # live condition paths
    noisy, conditions = inputs(config, frames, height, width, device)
    timestep = torch.tensor([500.0], device=device)
    with torch.no_grad():
        full = model(noisy, timestep, conditions)
        half = copy.deepcopy(model).to(torch.bfloat16)(noisy, timestep, conditions).float()
    return {"frames": frames,
            "max_relative_diff": round(float((half - full).abs().max()
                                             / full.abs().max().clamp_min(1e-12)), 4)}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from factorportrait import DiTConfig

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_check.py: error: no CUDA GPU here (use --device cpu for a smoke run)",
              file=sys.stderr)
        return 2
    config = DiTConfig.preset(args.preset)
    report = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "preset": args.preset, "frames": args.frames,
              "size": args.size, "attention": attention_backends(),
              "bf16_vs_fp32": bf16_against_fp32(config, args, device),
              "training_step_bf16": training_step(config, args, device),
              "render_cfg": render(config, args, device)}
    text = json.dumps(report, indent=1)
    print(text)
    if args.out is not None:
        from factorportrait.io.atomic import atomic_write_bytes
        atomic_write_bytes(args.out, (text + "\n").encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
