"""``tools/benchmark.py parallel``: sequence parallelism and ZeRO-3 loading, measured on 2 CPU
ranks (gloo) against one process.

- ``sequence_parallel_max_abs_diff``: the tiny DiT split over 2 ranks against the whole one on
  the same input — the largest absolute difference of its output, its gradients (averaged
  over the ranks, as a data-parallel engine applies them) and a 3-step sampling run.
- ``zero3_rank_peak_ratio``: the peak host memory one rank adds while building and loading a
  model of ``--dim``/``--layers`` (≥ 100 M parameters by default) from Wan-format weights
  under 2-rank ZeRO-3 (``zero.Init`` + shard-by-shard loading), divided by the same for one
  process without ZeRO (``from_wan``, which now also streams one tensor at a time).

The measurements run in subprocesses (``torchrun``), so each starts from a clean heap; the
``--worker`` entry points are what they run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from factorportrait.io.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[2]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--mode", default="auto", choices=("auto", "ulysses", "allgather"))


def _config(dim: int, layers: int):
    import dataclasses

    from factorportrait import DiTConfig
    return dataclasses.replace(DiTConfig.tiny(), dim=dim, ffn_dim=4 * dim,
                               num_heads=max(1, dim // 128), num_layers=layers)


# DeX conditioning under sequence parallelism: head-pose rays, reference warping (which
# gathers the reference frame's tokens), expression through AdaLN and per-frame cross attention.
DEX_VARIANT = dict(head_pose_rays=True, reference_warp_blocks=(0, 1), expression_injection="both")


def _conditions(config, generator: torch.Generator):
    from factorportrait import PortraitConditions
    from factorportrait.geometry.rays import matrix_from_rts
    from factorportrait.geometry.rotations import axis_angle_to_matrix

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    batch, frames, size = 2, 3, 8
    noisy = randn(batch, 16, frames, size, size)
    poses = batch * (1 + 4 * (frames - 1) + 1)
    head_pose = matrix_from_rts(axis_angle_to_matrix(randn(poses, 3) * 0.3),
                                randn(poses, 3) * 0.1, 0.5 + 0.1 * randn(poses).abs())
    return noisy, PortraitConditions(
        head_pose=head_pose.view(batch, -1, 3, 4),
        reference_latent=randn(batch, 16, 1, size, size),
        normal_latents=randn(batch, 16, frames, size, size),
        rays=randn(batch, 24, 1 + frames, size, size),
        expression=randn(batch, 4 * (frames - 1) + 1, config.expression_dim),
        context=randn(batch, 5, config.text_dim))


def sequence_worker(mode: str, variant: str = "factorportrait") -> dict:
    """(Under torchrun.) The split DiT against the whole one (module docstring)."""
    import copy

    from factorportrait import DiTConfig, FactorPortraitDiT
    from factorportrait.diffusion.sampler import sample
    from factorportrait.training import sequence_parallel
    from factorportrait.training.distributed import init_process_group

    init_process_group(torch.device("cpu"))
    torch.manual_seed(0)
    config = DiTConfig.tiny(**(DEX_VARIANT if variant == "dex" else {}))
    model = FactorPortraitDiT(config)
    with torch.no_grad():  # make every zero-initialised path live
        model.patch_embedding.weight.normal_(std=0.05)
        for p in model.condition_parameters()[2:]:
            p.normal_(std=0.05)
    noisy, conditions = _conditions(config, torch.Generator().manual_seed(1))
    timestep = torch.tensor([300.0, 700.0])
    whole = copy.deepcopy(model)
    expected = whole(noisy, timestep, conditions)
    expected.square().mean().backward()
    split = copy.deepcopy(model)
    installed = sequence_parallel.install(split, mode=mode)
    output = split(noisy, timestep, conditions)
    output.square().mean().backward()
    worst_grad = 0.0
    for p, q in zip(split.parameters(), whole.parameters()):
        if p.grad is not None:
            grad = p.grad.clone()
            torch.distributed.all_reduce(grad)
            worst_grad = max(worst_grad, float((grad / installed.degree - q.grad).abs().max()))
    with torch.no_grad():
        one = sample(whole.eval(), conditions, generator=torch.Generator().manual_seed(3),
                     num_steps=3, guidance="progressive_hybrid", progress=False)
        many = sample(split.eval(), conditions, generator=torch.Generator().manual_seed(3),
                      num_steps=3, guidance="progressive_hybrid", progress=False)
    return {"mode": installed.mode, "degree": installed.degree, "variant": variant,
            "forward_max_abs_diff": float((output - expected).abs().max()),
            "gradient_max_abs_diff": worst_grad,
            "sampling_max_abs_diff": float((many - one).abs().max())}


def zero3_worker(weights: str, dim: int, layers: int) -> dict:
    """(Under torchrun, ZeRO-3.) Peak MiB this rank adds building and loading the model."""
    from factorportrait.benchmarks.common import PeakMemory
    from factorportrait.models.weights import WeightReader
    from factorportrait.training.distributed import build_partitioned, init_process_group

    init_process_group(torch.device("cpu"))
    config = _config(dim, layers)
    ds_config = {"train_micro_batch_size_per_gpu": 1, "zero_optimization": {"stage": 3}}
    from factorportrait.models import backbone
    backbone.wan_dit_module()  # imports are not the model's memory
    meter = PeakMemory(torch.device("cpu"))
    torch.manual_seed(0)
    with meter.measure():
        model = build_partitioned(config, ds_config, WeightReader(weights, config, wan=True))
    held = sum(p.ds_tensor.numel() for p in model.parameters())
    return {"rank": torch.distributed.get_rank(), "peak_mib": meter.peak_mib,
            "partition_parameters": held}


def plain_worker(weights: str, dim: int, layers: int) -> dict:
    """(One process, no ZeRO.) Peak MiB added by ``from_wan``."""
    from factorportrait import FactorPortraitDiT
    from factorportrait.benchmarks.common import PeakMemory
    from factorportrait.models import backbone

    backbone.wan_dit_module()
    config = _config(dim, layers)
    meter = PeakMemory(torch.device("cpu"))
    with meter.measure():
        model = FactorPortraitDiT.from_wan(weights, config)
    return {"peak_mib": meter.peak_mib,
            "parameters": sum(p.numel() for p in model.parameters())}


def _write_wan_weights(path: Path, dim: int, layers: int) -> int:
    """Random Wan 2.1 T2V weights (official key names) of the benchmark's size."""
    from safetensors.torch import save_file

    from factorportrait import FactorPortraitDiT
    from factorportrait.models.weights import NEW_PREFIXES

    config = _config(dim, layers)
    torch.manual_seed(0)
    model = FactorPortraitDiT(config)
    state = {k: v.contiguous() for k, v in model.state_dict().items()
             if not k.startswith(NEW_PREFIXES)}
    state["patch_embedding.weight"] = state["patch_embedding.weight"][
        :, :config.latent_channels].contiguous()
    save_file(state, str(path))
    return sum(v.numel() for v in state.values())


def _run(command: list[str]) -> list[dict]:
    """Run a worker command; its reports, one JSON file per reporting rank (ranks share one
    stdout, where their lines could interleave)."""
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as reports:
        result = subprocess.run([*command, "--reports", reports], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=900)
        if result.returncode != 0:
            raise RuntimeError(f"{' '.join(command[:6])} failed: {result.stderr[-3000:]}")
        return [json.loads(path.read_text()) for path in sorted(Path(reports).glob("*.json"))]


def _torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
            "2", "-m", "factorportrait.benchmarks.parallel", *args]


def run(args: argparse.Namespace) -> dict:
    sequence = _run(_torchrun("--worker", "sequence", "--mode", args.mode))[0]
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "wan.safetensors"
        count = _write_wan_weights(weights, args.dim, args.layers)
        sizes = ["--dim", str(args.dim), "--layers", str(args.layers), "--weights", str(weights)]
        ranks = _run(_torchrun("--worker", "zero3", *sizes))
        plain = _run([sys.executable, "-m", "factorportrait.benchmarks.parallel", "--worker",
                      "plain", *sizes])[0]
    rank_peak = max(rank["peak_mib"] for rank in ranks)
    report = {
        "sequence_parallel": sequence,
        "sequence_parallel_max_abs_diff": max(sequence[k] for k in (
            "forward_max_abs_diff", "gradient_max_abs_diff", "sampling_max_abs_diff")),
        "zero3": {"parameters": plain["parameters"], "wan_file_parameters": count,
                  "rank_peak_mib": [round(r["peak_mib"], 1) for r in ranks],
                  "rank_partition_parameters": [r["partition_parameters"] for r in ranks],
                  "one_process_peak_mib": round(plain["peak_mib"], 1)},
        "zero3_rank_peak_ratio": round(rank_peak / plain["peak_mib"], 3),
    }
    print(f"sequence parallel (2 ranks, {sequence['mode']}): max |split − whole| = "
          f"{report['sequence_parallel_max_abs_diff']:.2e} (forward, gradients, sampling)")
    print(f"ZeRO-3 build + load of {plain['parameters'] / 1e6:.0f} M parameters: "
          f"{rank_peak:.0f} MiB per rank (2 ranks) against {plain['peak_mib']:.0f} MiB in one "
          f"process: ratio {report['zero3_rank_peak_ratio']}")
    return report


def _worker_main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--worker", required=True, choices=("sequence", "zero3", "plain"))
    parser.add_argument("--mode", default="auto")
    parser.add_argument("--variant", default="factorportrait", choices=("factorportrait", "dex"))
    parser.add_argument("--weights")
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--reports", type=Path, required=True, help="folder for the reports")
    args = parser.parse_args()
    if args.worker == "sequence":
        report = sequence_worker(args.mode, args.variant)
    elif args.worker == "zero3":
        report = zero3_worker(args.weights, args.dim, args.layers)
    else:
        report = plain_worker(args.weights, args.dim, args.layers)
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    if args.worker == "zero3" or rank == 0:
        atomic_write_bytes(args.reports / f"rank{rank:05d}.json", json.dumps(report).encode())


if __name__ == "__main__":
    _worker_main()
