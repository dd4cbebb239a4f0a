"""``tools/benchmark.py dit``: forward+backward of FactorPortraitDiT against plain Wan.

Three cases on the same token count, in one run:
  (a) FactorPortraitDiT (condition fusion, expression controller, per-frame AdaLN);
  (b) diffsynth's plain Wan T2V DiT of the same size on ``cat([reference, z_t])``;
  (c) (a)'s weights run through diffsynth's per-token modulation path (``t_mod (B,L,6,D)``,
      as its ``seperated_timestep`` models do) — the alternative to per-frame broadcasting.
``overhead_ratio`` = time(a) / time(b); target <= 1.05.
"""

from __future__ import annotations

import argparse

import torch
from einops import rearrange

from factorportrait import DiTConfig, FactorPortraitDiT, PortraitConditions
from factorportrait.benchmarks.common import (PeakMemory, format_table,
                                              interleaved_median_seconds, pick_device,
                                              saved_activation_bytes)
from factorportrait.models import backbone


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--frames", type=int, default=13, help="video frames, 4k+1")
    parser.add_argument("--size", type=int, default=128, help="video height = width, pixels")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])


def per_token_forward(model: FactorPortraitDiT, noisy: torch.Tensor, timestep: torch.Tensor,
                      conditions: PortraitConditions) -> torch.Tensor:
    """The same model through diffsynth's per-token modulation: the per-frame embeddings are
    expanded to every token before ``time_projection`` and fed to ``DiTBlock`` / ``Head``."""
    frames = noisy.shape[2]
    tokens = model.patch_embedding(noisy, conditions)
    grid = tokens.shape[2:]
    x = rearrange(tokens, "b d f h w -> b (f h w) d").contiguous()
    per_frame_tokens = grid[1] * grid[2]
    t_frames = model.frame_embeddings(timestep, conditions.expression, frames)
    t_tokens = t_frames.repeat_interleave(per_frame_tokens, dim=1)  # (B, L, D)
    t_mod = model.time_projection(t_tokens).unflatten(2, (6, model.config.dim))  # (B,L,6,D)
    context = model.embed_context(conditions.context, noisy.shape[0])
    freqs = backbone.rope_frequencies(model.config.head_dim, *grid, device=x.device)
    for block in model.blocks:
        x = block(x, context, t_mod, freqs)
    x = model.head(x[:, per_frame_tokens:], t_tokens[:, per_frame_tokens:])
    return rearrange(x, "b (f h w) (ph pw c) -> b c f (h ph) (w pw)", f=frames, h=grid[1],
                     w=grid[2], ph=2, pw=2)


def _inputs(config: DiTConfig, args: argparse.Namespace, device: torch.device,
            dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, PortraitConditions]:
    g = torch.Generator().manual_seed(0)
    frames, side = (args.frames - 1) // 4 + 1, args.size // 8

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(device, dtype)

    noisy = randn(args.batch, 16, frames, side, side)
    conditions = PortraitConditions(
        reference_latent=randn(args.batch, 16, 1, side, side),
        normal_latents=randn(args.batch, 16, frames, side, side),
        rays=randn(args.batch, 24, 1 + frames, side, side),
        expression=randn(args.batch, args.frames, 128))
    timestep = torch.linspace(50, 950, args.batch).to(device)
    return noisy, timestep, conditions


def _measure(steps: dict, device: torch.device, repeats: int) -> dict[str, dict[str, float]]:
    """Per case: median ms (interleaved), peak memory of one step, saved activations."""
    seconds = interleaved_median_seconds(steps, device, repeats)
    results = {}
    for name, step in steps.items():
        with saved_activation_bytes() as saved:
            step()
        memory = PeakMemory(device)
        with memory.measure():
            step()
        results[name] = {"ms": round(seconds[name] * 1e3, 2),
                         "peak_mib": round(memory.peak_mib, 1),
                         "saved_activations_mib": round(saved[0] / 2**20, 3)}
    return results


def run(args: argparse.Namespace) -> dict:
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    config = DiTConfig(dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads,
                       num_layers=args.layers, text_dim=256, context_length=64,
                       expression_width=128, expression_heads=4)
    torch.manual_seed(0)
    ours = FactorPortraitDiT(config).to(device, dtype).train()
    with torch.no_grad():  # make the zero-initialised paths non-trivial
        for p in ours.expression_controller.output.parameters():
            p.normal_(std=0.02)
    wan = backbone.wan_plain_model(config).to(device, dtype).train()
    noisy, timestep, conditions = _inputs(config, args, device, dtype)
    context = ours.null_context.expand(args.batch, -1, -1).to(dtype)
    wan_input = torch.cat([conditions.reference_latent, noisy], dim=2)

    def step_ours():
        ours(noisy, timestep, conditions).square().mean().backward()

    def step_wan():
        backbone.wan_reference_forward(wan, wan_input, timestep, context
                                       ).square().mean().backward()

    def step_per_token():
        per_token_forward(ours, noisy, timestep, conditions).square().mean().backward()

    with torch.no_grad():
        gap = (ours(noisy, timestep, conditions)
               - per_token_forward(ours, noisy, timestep, conditions)).abs().max().item()
    results = _measure({"ours": step_ours, "plain_wan": step_wan,
                        "per_token_adaln": step_per_token}, device, args.repeats)
    tokens = (1 + noisy.shape[2]) * (noisy.shape[3] // 2) * (noisy.shape[4] // 2)
    report = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "config": {"dim": config.dim, "layers": config.num_layers, "heads": config.num_heads,
                   "frames": args.frames, "size": args.size, "batch": args.batch,
                   "tokens_per_sample": tokens},
        **{f"{name}_{key}": value for name, r in results.items() for key, value in r.items()},
        "overhead_ratio": round(results["ours"]["ms"] / results["plain_wan"]["ms"], 3),
        "per_token_over_per_frame_time": round(
            results["per_token_adaln"]["ms"] / results["ours"]["ms"], 3),
        "per_token_over_per_frame_saved_activations": round(
            results["per_token_adaln"]["saved_activations_mib"]
            / results["ours"]["saved_activations_mib"], 3),
        "per_token_max_abs_diff": gap,
    }
    rows = [{"case": name, **r} for name, r in results.items()]
    print(format_table(rows, ["case", "ms", "peak_mib", "saved_activations_mib"]))
    print(f"overhead_ratio (ours / plain Wan): {report['overhead_ratio']}  (target <= 1.05)")
    print(f"per-token / per-frame AdaLN: time x{report['per_token_over_per_frame_time']}, "
          f"saved activations x{report['per_token_over_per_frame_saved_activations']}, "
          f"outputs agree to {gap:.1e}")
    return report
