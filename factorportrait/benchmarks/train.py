"""``tools/benchmark.py train``: training throughput of the real loop on toy latents.

Each case builds a :class:`~factorportrait.training.loop.Trainer` (the same model, engine,
loader and step as ``tools/train.py``; one process, no checkpoints or logs) and times
optimizer steps of ``global_batch`` samples: ``samples_per_second`` (median step), and the
peak memory of the steps (CUDA: allocator peak; CPU: resident-set growth, sampled).

Cases: ``tiny`` (the ``scale=tiny`` recipe: DiTConfig.tiny, 13 frames, 64 px) and ``small``
(dim 256, 4 layers, 13 frames, 128 px). ``--presets``: the ``model.trainable`` presets to
compare on every case (``full lora self_attention_and_new``: what fine-tuning on a few GPUs
saves) — each row also reports the trainable parameters and the AdamW state bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile

import torch

from factorportrait.benchmarks.common import (PeakMemory, format_table,
                                              interleaved_median_seconds, pick_device,
                                              synchronize)
from factorportrait.training.config import (TRAINABLE, CheckpointSpec, DataSpec, LoggingSpec,
                                            LoopSpec, ModelSpec, OptimSpec, StageSpec,
                                            TrainConfig, ValidationSpec)
from factorportrait.training.distributed import Runtime
from factorportrait.training.lora import LoraSpec
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
    parser.add_argument("--presets", nargs="+", default=["full"], choices=TRAINABLE,
                        help="model.trainable presets to compare (rows per case and preset)")
    parser.add_argument("--lora-rank", type=int, default=16)


def case_config(name: str, args: argparse.Namespace, directory: str, preset: str = "full"
                ) -> TrainConfig:
    case = CASES[name]
    steps = args.warmup + args.steps
    rank = getattr(args, "lora_rank", 16)
    return TrainConfig(
        model=ModelSpec(preset="tiny", overrides=case["model"],
                        gradient_checkpointing=args.gradient_checkpointing, trainable=preset,
                        lora=LoraSpec(rank=rank, alpha=float(rank))),
        data=DataSpec(source="toy", height=case["size"], width=case["size"],
                      options={"num_items": 16}),
        stage=StageSpec(name="benchmark", mixture={"phone": 1.0}, frames=args.frames, lr=1e-4,
                        steps=steps),
        stage_dir=directory, run_dir=directory, optim=OptimSpec(warmup_steps=1),
        train=LoopSpec(global_batch_size=args.batch, micro_batch_size=args.micro_batch),
        checkpoint=CheckpointSpec(resume="never"), validation=ValidationSpec(every=0),
        logging=LoggingSpec(tensorboard=False, progress_bar=False))


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of every tensor in the optimizer's state (AdamW: both moments and the step)."""
    return sum(value.numel() * value.element_size() for state in optimizer.state.values()
               for value in state.values() if isinstance(value, torch.Tensor))


def measure_case(name: str, args: argparse.Namespace, device: torch.device,
                 presets: list[str]) -> list[dict]:
    """Rows of case ``name``, one per training ``preset``: the peak memory of ``args.steps``
    optimizer steps (each preset alone), then the median step time of ``args.steps`` steps
    timed round-robin across the presets (so background load falls on all of them alike)."""
    with contextlib.ExitStack() as stack:
        trainers, peaks = {}, {}
        for preset in presets:
            directory = stack.enter_context(tempfile.TemporaryDirectory())
            trainer = Trainer(case_config(name, args, directory, preset),
                              Runtime(0, 1, 0, device, None))
            batches = iter(trainer.loader)
            step = _stepper(trainer, batches)
            for _ in range(args.warmup):
                step()
            memory = PeakMemory(device)
            with memory.measure():
                for _ in range(args.steps):
                    step()
                synchronize(device)
            trainers[preset], peaks[preset] = (trainer, step), memory.peak_mib
        seconds = interleaved_median_seconds({p: step for p, (_, step) in trainers.items()},
                                             device, args.steps, warmup=0)
        rows = []
        for preset, (trainer, _) in trainers.items():
            model = trainer.engine.module
            optimizer_bytes = optimizer_state_bytes(trainer.engine.optimizer)
            tokens = (1 + (args.frames - 1) // 4 + 1) * (CASES[name]["size"] // 16) ** 2
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            rows.append({
                "case": name if preset == "full" else f"{name}+{preset}", "preset": preset,
                "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
                "trainable_m": round(trainable / 1e6, 4),
                "optimizer_state_mib": round(optimizer_bytes / 2**20, 3),
                "tokens_per_sample": tokens, "step_ms": round(seconds[preset] * 1e3, 1),
                "step_ratio_to_first": round(seconds[preset] / seconds[presets[0]], 3),
                "samples_per_second": round(args.batch / seconds[preset], 2),
                "peak_mib": round(peaks[preset], 1)})
    return rows


def _stepper(trainer: Trainer, batches):
    def step() -> None:
        trainer.train_step(batches)
        trainer.step += 1
    return step


def run(args: argparse.Namespace) -> dict:
    device = pick_device(args.device)
    rows = [row for name in args.cases for row in measure_case(name, args, device,
                                                                 list(args.presets))]
    print(format_table(rows, ["case", "params_m", "trainable_m", "optimizer_state_mib",
                              "tokens_per_sample", "step_ms", "step_ratio_to_first",
                              "samples_per_second", "peak_mib"]))
    return {"device": str(device), "threads": torch.get_num_threads(), "frames": args.frames,
            "batch": args.batch, "micro_batch": args.micro_batch,
            "gradient_checkpointing": args.gradient_checkpointing,
            "lora_rank": args.lora_rank, "cases": {row.pop("case"): row for row in rows}}
