"""``tools/benchmark.py dit``: forward+backward of FactorPortraitDiT against plain Wan.

Three cases on the same token count, in one run:
  (a) FactorPortraitDiT (condition fusion, expression controller, per-frame AdaLN);
  (b) diffsynth's plain Wan T2V DiT of the same size on ``cat([reference, z_t])``;
  (c) (a)'s weights run through diffsynth's per-token modulation path (``t_mod (B,L,6,D)``,
      as its ``seperated_timestep`` models do) — the alternative to per-frame broadcasting.
``overhead_ratio`` = time(a) / time(b); target <= 1.05.

``--variants all`` (or a comma list of VARIANTS) times instead (b), (a) and each DeX-Portrait
conditioning variant (docs/conditioning.md) on the same inputs, round-robin in one run, and
reports per case the time, peak memory, saved activations and counted FLOPs as ratios to (b)
and the parameters added to (b). Reference warping runs before every second block (0, 2, …):
half the blocks. The landmarks case is timed in a round of its own beside (b).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from einops import rearrange
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from factorportrait import DiTConfig, FactorPortraitDiT, PortraitConditions
from factorportrait.benchmarks.common import (
    PeakMemory,
    format_table,
    interleaved_median_seconds,
    pick_device,
    saved_activation_bytes,
)
from factorportrait.geometry.rays import matrix_from_rts
from factorportrait.geometry.rotations import axis_angle_to_matrix
from factorportrait.models import backbone
from factorportrait.models.expression import ZeroLinear

CROSS_ATTENTION = dict(expression_injection="cross_attention")
VARIANTS = {  # DiTConfig overrides; "warp" stands for every second block (warp_blocks)
    "head_pose_rays": dict(head_pose_rays=True),
    "reference_warp": dict(reference_warp_blocks="warp"),
    "dual_branch": dict(head_pose_rays=True, reference_warp_blocks="warp"),
    "cross_attention": CROSS_ATTENTION,
    "both": dict(expression_injection="both"),
    "landmarks": dict(expression_condition="landmarks", **CROSS_ATTENTION),
    "dex": dict(head_pose_rays=True, reference_warp_blocks="warp", **CROSS_ATTENTION),
}
# Timed round-robin beside plain Wan alone: its ~10x larger allocations slowed whichever case
# ran next in a shared round (by 15-25 % on CPU).
TIMED_APART = ("landmarks",)


def variant_names(text: str) -> list[str]:
    """``--variants``: ``all`` or a comma list of :data:`VARIANTS` names."""
    names = list(VARIANTS) if text == "all" else [n.strip() for n in text.split(",") if n]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown variant(s) {unknown or text!r}; choose "
                                         f"'all' or from {', '.join(VARIANTS)}")
    return names


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
    parser.add_argument("--variants", type=variant_names, default=None,
                        help=f"'all' or a comma list of {', '.join(VARIANTS)}: time them "
                             "against plain Wan and FactorPortrait's AdaLN")
    parser.add_argument("--landmark-points", type=int, default=478,
                        help="landmarks per frame of the landmarks variant (FactorPortrait C3)")


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
        expression=randn(args.batch, args.frames, 128),
        head_pose=_head_poses(g, args.batch, 1 + args.frames).to(device, dtype),
        landmarks=(2 * torch.rand(args.batch, args.frames, config.landmark_points, 2,
                                  generator=g) - 1).to(device, dtype))
    timestep = torch.linspace(50, 950, args.batch).to(device)
    return noisy, timestep, conditions


def _head_poses(g: torch.Generator, batch: int, count: int) -> torch.Tensor:
    """``(B, count, 3, 4)`` RTS poses ``[sR | t]``: rotations ~0.3 rad, image shifts ~0.1."""
    rotation = axis_angle_to_matrix(0.3 * torch.randn(batch * count, 3, generator=g))
    translation = 0.1 * torch.randn(batch * count, 3, generator=g)
    translation[:, 2] = 0
    scale = 0.5 + 0.1 * torch.rand(batch * count, generator=g)
    return matrix_from_rts(rotation, translation, scale).view(batch, count, 3, 4)


def make_new_paths_nonzero(model: FactorPortraitDiT) -> FactorPortraitDiT:
    """Give every zero-initialised output layer (``ZeroLinear``: the expression controller's
    output, each expression cross attention's ``o``, each warp projection) weights of std 0.02,
    as training would; the fused patch embedding's new channels stay zero (their compute runs
    either way)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, ZeroLinear):
                for p in module.parameters():
                    p.normal_(std=0.02)
    return model


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def counted_flops(step: Callable[[], object]) -> int:
    """FLOPs of one ``step()`` as torch's ``FlopCounterMode`` counts them: matmuls,
    convolutions and attention (forced onto SDPA's math kernel, which it can count);
    elementwise ops, norms and ``grid_sample`` are not counted. Machine-independent."""
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


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


def _config(args: argparse.Namespace, **overrides) -> DiTConfig:
    return DiTConfig(dim=args.dim, ffn_dim=4 * args.dim, num_heads=args.heads,
                     num_layers=args.layers, text_dim=256, context_length=64,
                     expression_width=128, expression_heads=4,
                     landmark_points=args.landmark_points, **overrides)


def variant_config(args: argparse.Namespace, name: str) -> DiTConfig:
    """The DiTConfig of variant ``name`` (``"factorportrait"``: the AdaLN default)."""
    overrides = dict(VARIANTS.get(name, {}))
    if overrides.get("reference_warp_blocks") == "warp":
        overrides["reference_warp_blocks"] = tuple(range(0, args.layers, 2))
    return _config(args, **overrides)


def run(args: argparse.Namespace) -> dict:
    if args.variants:
        return run_variants(args)
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    config = _config(args)
    torch.manual_seed(0)
    ours = make_new_paths_nonzero(FactorPortraitDiT(config)).to(device, dtype).train()
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


def run_variants(args: argparse.Namespace) -> dict:
    """Plain Wan, FactorPortrait's AdaLN and each of ``args.variants`` on the same inputs."""
    device, dtype = pick_device(args.device), getattr(torch, args.dtype)
    configs = {name: variant_config(args, name) for name in ["factorportrait", *args.variants]}
    base = configs["factorportrait"]
    models = {}
    for name, config in configs.items():
        torch.manual_seed(0)
        models[name] = make_new_paths_nonzero(FactorPortraitDiT(config)).to(device, dtype).train()
    wan = backbone.wan_plain_model(base).to(device, dtype).train()
    noisy, timestep, conditions = _inputs(base, args, device, dtype)
    context = models["factorportrait"].null_context.expand(args.batch, -1, -1).to(dtype)
    wan_input = torch.cat([conditions.reference_latent, noisy], dim=2)

    def step_wan():
        backbone.wan_reference_forward(wan, wan_input, timestep, context
                                       ).square().mean().backward()

    def step_of(model: FactorPortraitDiT):
        return lambda: model(noisy, timestep, conditions).square().mean().backward()

    steps = {"plain_wan": step_wan, **{name: step_of(m) for name, m in models.items()}}
    results = _measure({n: s for n, s in steps.items() if n not in TIMED_APART}, device,
                       args.repeats)
    baselines = {name: results["plain_wan"] for name in results}
    for name in TIMED_APART:
        if name in steps:
            apart = _measure({"plain_wan": step_wan, name: steps[name]}, device, args.repeats)
            results[name], baselines[name] = apart[name], apart["plain_wan"]
            results[name]["plain_wan_ms_beside"] = apart["plain_wan"]["ms"]
    for name, step in steps.items():
        results[name]["gflop"] = round(counted_flops(step) / 1e9, 3)
    counts = {"plain_wan": _parameters(wan), **{n: _parameters(m) for n, m in models.items()}}

    def ratio(name: str, key: str) -> float:
        return round(results[name][key] / baselines[name][key], 3)

    rows = {name: {**results[name], "time_ratio": ratio(name, "ms"),
                   "peak_ratio": ratio(name, "peak_mib"),
                   "saved_activations_ratio": ratio(name, "saved_activations_mib"),
                   "flop_ratio": round(results[name]["gflop"] / results["plain_wan"]["gflop"],
                                       3),
                   "parameters": counts[name],
                   "added_parameters": counts[name] - counts["plain_wan"],
                   "overrides": _differences(configs[name], base) if name in configs else {}}
            for name in steps}
    tokens = (1 + noisy.shape[2]) * (noisy.shape[3] // 2) * (noisy.shape[4] // 2)
    report = {
        "device": str(device), "dtype": args.dtype, "threads": torch.get_num_threads(),
        "config": {"dim": args.dim, "layers": args.layers, "heads": args.heads,
                   "frames": args.frames, "size": args.size, "batch": args.batch,
                   "tokens_per_sample": tokens, "repeats": args.repeats,
                   "landmark_points": args.landmark_points},
        "cases": rows,
    }
    if "cross_attention" in rows:  # FactorPortrait §4.2: AdaLN costs less than cross attention
        adaln, cross = rows["factorportrait"], rows["cross_attention"]
        report["adaln_over_cross_attention"] = {
            "time": round(adaln["ms"] / cross["ms"], 3),
            "flops": round(adaln["gflop"] / cross["gflop"], 3),
            "added_parameters": round(adaln["added_parameters"] / cross["added_parameters"], 3)}
    columns = ["case", "ms", "time_ratio", "gflop", "flop_ratio", "peak_ratio",
               "saved_activations_ratio", "added_parameters"]
    print(format_table([{"case": n, **r} for n, r in rows.items()], columns))
    print("ratios: to plain Wan, timed round-robin in this run (landmarks: in a round of its "
          "own beside plain Wan)")
    return report


def _differences(config: DiTConfig, base: DiTConfig) -> dict:
    """The DiTConfig fields where ``config`` differs from ``base`` (JSON-ready)."""
    data, reference = config.to_dict(), base.to_dict()
    return {key: value for key, value in data.items() if value != reference[key]}
