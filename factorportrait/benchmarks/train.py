"""``tools/benchmark.py train``: training throughput of the real loop on toy latents.

Each case builds a :class:`~factorportrait.training.loop.Trainer` (the same model, engine,
loader and step as ``tools/train.py``; one process, no checkpoints or logs) and times
optimizer steps of ``global_batch`` samples: ``samples_per_second`` (median step), and the
peak memory of the steps (CUDA: allocator peak; CPU: resident-set growth, sampled).

Cases: ``tiny`` (the ``scale=tiny`` recipe: DiTConfig.tiny, 13 frames, 64 px) and ``small``
(dim 256, 4 layers, 13 frames, 128 px).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

from factorportrait.benchmarks.common import PeakMemory, format_table, pick_device, synchronize
from factorportrait.training.config import (CheckpointSpec, DataSpec, LoggingSpec, LoopSpec,
                                            ModelSpec, OptimSpec, StageSpec, TrainConfig,
                                            ValidationSpec)
from factorportrait.training.distributed import Runtime
from factorportrait.training.loop import Trainer

CASES = {
    "tiny": {"model": {}, "size": 64},
    "small": {"model": {"dim": 256, "ffn_dim": 1024, "num_heads": 8, "num_layers": 4,
                        "expression_width": 128, "expression_heads": 4}, "size": 128},
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--frames", type=int, default=13, help="video frames, 4k+1")
    parser.add_argument("--batch", type=int, default=2, help="samples per optimizer step")
    parser.add_argument("--micro-batch", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5, help="timed optimizer steps")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--device", default="auto")


def case_config(name: str, args: argparse.Namespace, directory: str) -> TrainConfig:
    case = CASES[name]
    steps = args.warmup + args.steps
    return TrainConfig(
        model=ModelSpec(preset="tiny", overrides=case["model"],
                        gradient_checkpointing=args.gradient_checkpointing),
        data=DataSpec(source="toy", height=case["size"], width=case["size"],
                      options={"num_items": 16}),
        stage=StageSpec(name="benchmark", mixture={"phone": 1.0}, frames=args.frames, lr=1e-4,
                        steps=steps),
        stage_dir=directory, run_dir=directory, optim=OptimSpec(warmup_steps=1),
        train=LoopSpec(global_batch_size=args.batch, micro_batch_size=args.micro_batch),
        checkpoint=CheckpointSpec(resume="never"), validation=ValidationSpec(every=0),
        logging=LoggingSpec(tensorboard=False, progress_bar=False))


def measure(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    """Median step time and peak memory of ``args.steps`` optimizer steps of case ``name``."""
    with tempfile.TemporaryDirectory() as directory:
        config = case_config(name, args, directory)
        trainer = Trainer(config, Runtime(0, 1, 0, device, None))
        batches = iter(trainer.loader)
        for _ in range(args.warmup):
            trainer.train_step(batches)
            trainer.step += 1
        times = []
        memory = PeakMemory(device)
        with memory.measure():
            for _ in range(args.steps):
                synchronize(device)
                start = time.perf_counter()
                trainer.train_step(batches)
                synchronize(device)
                times.append(time.perf_counter() - start)
                trainer.step += 1
        model = trainer.engine.module
    seconds = statistics.median(times)
    tokens = (1 + (args.frames - 1) // 4 + 1) * (CASES[name]["size"] // 16) ** 2
    return {"case": name, "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
            "tokens_per_sample": tokens, "step_ms": round(seconds * 1e3, 1),
            "samples_per_second": round(args.batch / seconds, 2),
            "peak_mib": round(memory.peak_mib, 1)}


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    rows = [measure(name, args, device) for name in args.cases]
    print(format_table(rows, ["case", "params_m", "tokens_per_sample", "step_ms",
                              "samples_per_second", "peak_mib"]))
    return {"device": str(device), "threads": torch.get_num_threads(), "frames": args.frames,
            "batch": args.batch, "micro_batch": args.micro_batch,
            "gradient_checkpointing": args.gradient_checkpointing,
            "cases": {row.pop("case"): row for row in rows}}
