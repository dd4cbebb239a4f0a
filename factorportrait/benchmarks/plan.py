"""``tools/benchmark.py plan``: memory and time of a training step per GPU, before renting them.

    python tools/benchmark.py plan --preset wan_14b --frames 81 --size 480x832 --gpus 64 \\
        --zero 3 --sp 4 [--offload-optimizer] [--micro-batch 1] [--json] \
        [--trainable lora --lora-rank 64]

Model states (bf16 training with fp32 master weights and AdamW): parameters 2 B, gradients
2 B, optimizer 12 B (fp32 master, m, v) per parameter, divided over the data-parallel ranks by
ZeRO's stage (1: optimizer; 2: + gradients; 3: + parameters), cross-checked against
DeepSpeed's own estimators (``estimate_zero2/3_model_states_mem_needs``). Activations with
gradient checkpointing (:func:`activation_bytes`): every block's input kept for the backward,
plus one block's working set while it is recomputed, on this GPU's share of the tokens (a
sequence-parallel degree ``--sp`` divides them). FLOPs (:func:`forward_flops`): the linear
layers (2 FLOP per multiply-add), self-attention's ``QKᵀ`` and ``AV`` over all tokens, and
text cross-attention; a checkpointed training step is 4 forwards (forward, recompute,
backward ×2). The activation model is checked against CPU peaks at small sizes
(``tests/test_plan.py``).

``--trainable`` (the recipes' presets, :func:`factorportrait.training.optim.select_trainable`)
changes what is trained, counted on the meta device: all parameters stay resident in bf16
(sharded by ZeRO-3), gradients and optimizer state exist only for the trainable ones, and the
weight-gradient half of the linear layers' backward shrinks to the trainable share (the
input gradients still run through every frozen block). DeepSpeed's estimators assume every
parameter trains; they are the ``full`` reference.
"""

from __future__ import annotations

import argparse
import math

from factorportrait.benchmarks.common import format_table
from factorportrait.config import DiTConfig

BYTES_BF16 = 2
OPTIMIZER_BYTES = 12  # fp32 master + Adam m and v
CONTEXT_TOKENS = 512  # Wan's umT5 context
BLOCK_WORKING_SET = (28, 8)  # words per token while a block is recomputed and backed
# through: 28·dim + 8·ffn_dim (fit to CPU peaks at 1-2k tokens: tests/test_plan.py)
TRAINING_FORWARDS = 4  # forward, recompute, backward (2x)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="wan_1_3b", choices=("tiny", "wan_1_3b", "wan_14b"))
    parser.add_argument("--frames", type=int, default=81)
    parser.add_argument("--size", default="480x832", help="HxW pixels")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs in all")
    parser.add_argument("--gpus-per-node", type=int, default=8)
    parser.add_argument("--zero", type=int, default=2, choices=(0, 1, 2, 3))
    parser.add_argument("--sp", type=int, default=1, help="sequence-parallel degree")
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--offload-optimizer", action="store_true")
    parser.add_argument("--trainable", default="full",
                        choices=("full", "lora", "self_attention_and_new", "new_paths_only"))
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--tflops", type=float, default=790.0,
                        help="sustained bf16 TFLOP/s per GPU for the time estimate (H200 "
                        "dense bf16 ≈ 990 peak)")


def tokens(config: DiTConfig, frames: int, height: int, width: int) -> tuple[int, int]:
    """``(tokens per sample, tokens per latent frame)``: the reference frame and
    ``(F − 1)/4 + 1`` latent frames of ``(H/8/ph)·(W/8/pw)`` tokens each."""
    per_frame = (height // 8 // config.patch_size[1]) * (width // 8 // config.patch_size[2])
    return (1 + (frames - 1) // 4 + 1) * per_frame, per_frame


def parameter_count(config: DiTConfig, trainable: str = "full", lora_rank: int = 16
                    ) -> tuple[int, int, int]:
    """``(all parameters, the largest module's, the trainable ones)`` under the preset
    ``trainable`` (LoRA adapters of ``lora_rank`` included), counted on the meta device."""
    import torch

    from factorportrait.models.dit import FactorPortraitDiT
    from factorportrait.training.lora import LoraSpec
    from factorportrait.training.optim import select_trainable

    with torch.device("meta"):
        model = FactorPortraitDiT(config)
        spec = LoraSpec(rank=lora_rank, alpha=float(lora_rank)) if trainable == "lora" else None
        chosen = select_trainable(model, trainable, spec)
    largest = max(sum(p.numel() for p in module.parameters(recurse=False))
                  for module in model.modules())
    return (sum(p.numel() for p in model.parameters()), largest,
            sum(p.numel() for p in chosen))


def forward_flops(config: DiTConfig, sequence: int) -> dict[str, float]:
    """FLOPs of one forward over ``sequence`` tokens: ``linear``, ``attention`` (self),
    ``cross`` (text), ``total``."""
    dim, ffn, layers = config.dim, config.ffn_dim, config.num_layers
    linear = 2 * sequence * layers * (6 * dim * dim + 2 * dim * ffn)  # q k v o, cross q o, FFN
    attention = 2 * 2 * sequence * sequence * dim * layers  # QKᵀ and AV
    cross = 2 * 2 * sequence * CONTEXT_TOKENS * dim * layers + 2 * 2 * CONTEXT_TOKENS * dim \
        * dim * layers  # attention to the context, and its k v projections
    return {"linear": linear, "attention": attention, "cross": cross,
            "total": linear + attention + cross}


def activation_bytes(config: DiTConfig, sequence: int, micro_batch: int = 1,
                     bytes_per_value: int = BYTES_BF16, attention_matrix: bool = False,
                     keys: int | None = None) -> float:
    """Activations of one checkpointed forward+backward over ``sequence`` query tokens (this
    GPU's share): every block's input kept, plus one block's working set while it is
    recomputed and backed through; ``attention_matrix``: the attention kernel materialises
    ``heads × queries × keys`` scores and their gradient (PyTorch's math path on CPUs; not
    flash attention). ``keys`` defaults to ``sequence``."""
    words, ffn_words = BLOCK_WORKING_SET
    per_token_block = words * config.dim + ffn_words * config.ffn_dim
    working = sequence * per_token_block * bytes_per_value
    kept = config.num_layers * sequence * config.dim * bytes_per_value
    scores = 0.0
    if attention_matrix:
        scores = 2 * config.num_heads * sequence * (keys or sequence) * bytes_per_value
    return micro_batch * (kept + working + scores)


def plan(config: DiTConfig, frames: int, height: int, width: int, gpus: int, zero: int,
         sp: int = 1, micro_batch: int = 1, offload_optimizer: bool = False,
         gpus_per_node: int = 8, tflops: float = 790.0, name: str | None = None,
         trainable: str = "full", lora_rank: int = 16) -> dict:
    """The per-GPU figures (module docstring) as a dict."""
    from factorportrait.training.sequence_parallel import plan_degree

    if gpus % sp:
        raise ValueError(f"--sp {sp} must divide --gpus {gpus}")
    sequence, per_frame = tokens(config, frames, height, width)
    mode = plan_degree(sp, config.num_heads, per_frame)
    data_parallel = gpus // sp
    gib = 2 ** 30
    params, largest, trained = parameter_count(config, trainable, lora_rank)
    shard = lambda stage: gpus if zero >= stage else 1  # noqa: E731  ZeRO spans every rank
    parameters = params * BYTES_BF16 / shard(3)
    gradients = trained * BYTES_BF16 / shard(2)
    optimizer = 0.0 if offload_optimizer else trained * OPTIMIZER_BYTES / shard(1)
    activations = activation_bytes(config, sequence // sp, micro_batch)
    flops = forward_flops(config, sequence)
    frozen_weight_grads = (1 - min(1.0, trained / params)) * flops["linear"]
    step_flops = (TRAINING_FORWARDS * flops["total"] - frozen_weight_grads) * micro_batch / sp
    nodes = max(1, gpus // gpus_per_node)
    if zero == 3:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        _, deepspeed_gpu, _ = estimate_zero3_model_states_mem_needs(
            params, largest, min(gpus, gpus_per_node), nodes, cpu_offload=offload_optimizer,
            cpu_offload_params=False)
    else:
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
        _, deepspeed_gpu = estimate_zero2_model_states_mem_needs(
            params, min(gpus, gpus_per_node), nodes, cpu_offload=offload_optimizer)
    return {
        "config": {"preset": name or config.describe(), "frames": frames, "size": [height, width],
                   "gpus": gpus, "zero": zero, "sp": sp, "sp_mode": mode,
                   "data_parallel": data_parallel,
                   "micro_batch": micro_batch, "offload_optimizer": offload_optimizer,
                   "trainable": trainable,
                   "lora_rank": lora_rank if trainable == "lora" else None},
        "parameters_b": round(params / 1e9, 3), "trainable_m": round(trained / 1e6, 2),
        "optimizer_state_gib_total": round(trained * OPTIMIZER_BYTES / gib, 2),
        "tokens_per_sample": sequence,
        "tokens_per_gpu": sequence // sp,
        "per_gpu_gib": {"parameters": round(parameters / gib, 2),
                        "gradients": round(gradients / gib, 2),
                        "optimizer": round(optimizer / gib, 2),
                        "activations": round(activations / gib, 2),
                        "total": round((parameters + gradients + optimizer + activations)
                                       / gib, 2)},
        "deepspeed_model_states_gib": round(deepspeed_gpu / gib, 2),
        "forward_tflop_per_sample": round(flops["total"] / 1e12, 1),
        "attention_share": round(flops["attention"] / flops["total"], 3),
        "step_tflop_per_gpu": round(step_flops / 1e12, 1),
        "step_seconds_at_tflops": round(step_flops / (tflops * 1e12), 2),
    }


def run(args: argparse.Namespace) -> dict:
    height, width = (int(v) for v in args.size.lower().split("x"))
    report = plan(DiTConfig.preset(args.preset), args.frames, height, width, args.gpus,
                  args.zero, args.sp, args.micro_batch, args.offload_optimizer,
                  args.gpus_per_node, args.tflops, args.preset, args.trainable, args.lora_rank)
    memory = report["per_gpu_gib"]
    rows = [{"item": key, "GiB per GPU": value} for key, value in memory.items()]
    print(f"{report['config']['preset']}: {report['parameters_b']} B parameters "
          f"({report['trainable_m']} M trainable, {args.trainable}), "
          f"{report['tokens_per_sample']} tokens per sample ({report['tokens_per_gpu']} per "
          f"GPU, sp {args.sp} {report['config']['sp_mode']}), ZeRO-{args.zero} over "
          f"{report['config']['data_parallel']} data-parallel ranks")
    print(format_table(rows, ["item", "GiB per GPU"]))
    print(f"DeepSpeed's model-state estimate: {report['deepspeed_model_states_gib']} GiB per "
          f"GPU; forward {report['forward_tflop_per_sample']} TFLOP per sample "
          f"({100 * report['attention_share']:.0f} % attention); a step "
          f"{report['step_tflop_per_gpu']} TFLOP per GPU ≈ {report['step_seconds_at_tflops']} "
          f"s at {args.tflops:g} TFLOP/s")
    if not math.isfinite(memory["total"]):
        raise ValueError("the plan is not finite")
    return report
