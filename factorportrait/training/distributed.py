"""Processes, devices and DeepSpeed (with ``sequence_parallel.py``, which wraps DeepSpeed's
Ulysses attention, the only modules of the library that import deepspeed).

Launchers. ``torchrun``, the ``deepspeed`` launcher and ``accelerate launch`` all start one
process per device and set ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``,
``MASTER_PORT``; that is all this module reads (plus accelerate's
``ACCELERATE_DEEPSPEED_CONFIG_FILE``). It then forms the process group itself with
``deepspeed.init_distributed`` — NCCL on GPUs, gloo on CPUs — so a CPU run of several
processes is a real ZeRO group (accelerate 1.x only builds DeepSpeed groups for GPU backends).

One process and no DeepSpeed config: no process group, the :class:`PlainEngine` runs.

Checkpoints under DeepSpeed. ZeRO-1/2: each rank's fp32 master partition and its AdamW
state go through :mod:`factorportrait.training.checkpoint` (safetensors + JSON, nothing
pickled; resume needs the same world size). ZeRO-0/3: DeepSpeed's own ``save_checkpoint``
(torch.save, i.e. pickled files inside ``deepspeed/``, read back only by DeepSpeed).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch

from factorportrait.models.dit import FactorPortraitDiT
from factorportrait.training.engines import Engine

ACCELERATE_CONFIG_ENV = "ACCELERATE_DEEPSPEED_CONFIG_FILE"
FORBIDDEN_SECTIONS = ("optimizer", "scheduler", "fp16")


@dataclass
class Runtime:
    """This process's place in the job and the DeepSpeed config it trains with (if any)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    deepspeed_config: Optional[dict]
    deepspeed_config_path: Optional[str] = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    def barrier(self) -> None:
        if self.distributed and self.world_size > 1:
            torch.distributed.barrier()

    def all_reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        """Mean of a tensor over ranks (itself in one process)."""
        if not (self.distributed and self.world_size > 1):
            return value
        total = value.detach().clone().to(self.device)
        torch.distributed.all_reduce(total)
        return total / self.world_size


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    try:
        return default if value in (None, "") else int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} must be an integer") from None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def deepspeed_config_path(requested: Optional[str]) -> Optional[str]:
    """The recipe's ``distributed.deepspeed_config``, else accelerate's, else ``None``."""
    path = requested or os.environ.get(ACCELERATE_CONFIG_ENV)
    return None if path in (None, "", "none") else str(path)


def init_runtime(requested_config: Optional[str]) -> Runtime:
    """Read the launcher's environment, pick the device, form the process group if needed."""
    world_size, rank = _env_int("WORLD_SIZE", 1), _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    path = deepspeed_config_path(requested_config)
    if world_size > 1 and path is None:
        raise ValueError(f"{world_size} processes were launched but no DeepSpeed config was "
                         f"given: add distributed.deepspeed_config=recipes/deepspeed/zero2.json "
                         f"(or launch with accelerate and a DeepSpeed config)")
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    config = None
    if path is not None:
        if not Path(path).is_file():
            raise FileNotFoundError(f"DeepSpeed config {path} does not exist (paths are "
                                    f"relative to the working directory: {os.getcwd()})")
        config = json.loads(Path(path).read_text())
        init_process_group(device)
    return Runtime(rank, world_size, local_rank, device, config, path)


def training_device(name: str, key: str = "device") -> torch.device:
    """A trainer's ``device`` setting (``cpu``, ``cuda`` or ``auto``: CUDA when available) as
    a torch device; ``cuda`` is this process's ``LOCAL_RANK`` GPU. ``ValueError`` naming the
    setting ``key`` for another name or for ``cuda`` without a GPU."""
    if name not in ("cpu", "cuda", "auto"):
        raise ValueError(f"{key} must be cpu, cuda or auto, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"{key} is cuda, but CUDA is not available here (cpu or auto)")
    return torch.device("cuda", _env_int("LOCAL_RANK", 0))


def init_process_group(device: torch.device) -> None:
    """Form the process group of a launched job (gloo on CPUs, NCCL on GPUs), once."""
    import deepspeed
    import deepspeed.ops

    if torch.distributed.is_initialized():
        return
    for name, default in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0"),
                          ("MASTER_ADDR", "127.0.0.1")):
        os.environ.setdefault(name, default)
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    if device.type == "cpu":
        # Plain gloo collectives: skip DeepSpeed's shared-memory CPU kernel, which is compiled
        # on first use (over a minute) and faults on CPUs without AVX2.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    deepspeed.init_distributed(dist_backend="gloo" if device.type == "cpu" else "nccl",
                               verbose=False)


def fill_deepspeed_config(raw: dict, micro_batch: int, accumulation: int, world_size: int,
                          grad_clip: float, bf16: bool, source: str = "DeepSpeed config"
                          ) -> dict:
    """Fill the ``"auto"`` values of a DeepSpeed JSON from the recipe (as accelerate does);
    a concrete value that disagrees with the recipe is a ``ValueError`` naming both."""
    config = copy.deepcopy(raw)
    present = [key for key in FORBIDDEN_SECTIONS if key in config]
    if present:
        raise ValueError(f"{source}: remove {present}; the recipe configures the optimizer and "
                         f"schedule (AdamW + warmup/decay), and training is bf16 or fp32")

    def fill(section: dict, key: str, value: Any, name: str) -> None:
        current = section.get(key, "auto")
        if current == "auto":
            section[key] = value
        elif current != value:
            raise ValueError(f"{source}: {name} is {current!r} but the recipe gives {value!r}; "
                             f"set it to \"auto\" or make them agree")

    fill(config, "train_micro_batch_size_per_gpu", micro_batch, "train_micro_batch_size_per_gpu")
    fill(config, "gradient_accumulation_steps", accumulation, "gradient_accumulation_steps")
    fill(config, "train_batch_size", micro_batch * accumulation * world_size, "train_batch_size")
    fill(config, "gradient_clipping", float(grad_clip), "gradient_clipping")
    fill(config.setdefault("bf16", {}), "enabled", bf16, "bf16.enabled")
    config.setdefault("steps_per_print", 2**31 - 1)
    config.setdefault("wall_clock_breakdown", False)
    return config


def build_partitioned(dit_config, ds_config: dict, reader=None) -> FactorPortraitDiT:
    """The DiT built under ``deepspeed.zero.Init`` — each parameter partitioned over the
    ranks as soon as its module is built — then filled from ``reader`` (a
    :class:`~factorportrait.models.weights.WeightReader`) one tensor at a time: each
    parameter is gathered, rank 0 copies the file's tensor in, and it is partitioned again.
    No rank holds more than its partition and one whole tensor. Collective: every rank
    calls it, with the same seed.

    diffsynth is imported first, outside the context: imported inside it, its module-level
    code runs under ``zero.Init``'s patched tensor constructors and registers torch's
    ``_make_subclass`` dispatch rule a second time (``ValueError: Duplicate dispatch rule``).
    """
    import deepspeed

    from factorportrait.models import backbone

    backbone.wan_dit_module()
    _fixed_mmap_threshold()
    with deepspeed.zero.Init(config_dict_or_path=ds_config):
        model = FactorPortraitDiT(dit_config)
    if reader is not None:
        load_partitioned(model, reader)
    return model


def _fixed_mmap_threshold(threshold: int = 128 * 1024) -> None:
    """Have glibc serve allocations above ``threshold`` bytes with ``mmap`` and give them
    back on free. zero.Init allocates every parameter whole and frees it once partitioned;
    under glibc's default *dynamic* threshold those freed buffers stay in the heap (measured:
    +340 MiB per rank for 226 MiB of partitions, +246 MiB with the fixed threshold).
    No-op elsewhere than glibc."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, threshold)  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        pass


def load_partitioned(model: torch.nn.Module, reader) -> None:
    """Copy ``reader``'s tensors into a ``zero.Init`` model (see :func:`build_partitioned`);
    buffers are whole on every rank and read by each."""
    import deepspeed

    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name not in reader.names:
                continue  # a new module absent from Wan's weights: keeps its initialisation
            with deepspeed.zero.GatheredParameters([parameter], modifier_rank=0):
                if rank == 0:
                    parameter.data.copy_(reader.get(name))
        for name, buffer in model.named_buffers():
            if name in reader.names:
                buffer.copy_(reader.get(name))


class DeepSpeedEngine(Engine):
    """``deepspeed.initialize`` around the DiT, our AdamW and LambdaLR (see module docstring).

    DeepSpeed accumulates, clips, steps and schedules; a step whose gradient norm is not
    finite is skipped by DeepSpeed itself (fp32, and bf16 with ``check_grad_overflow``).
    """

    def __init__(self, module: FactorPortraitDiT, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, config: dict) -> None:
        import deepspeed

        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=module, optimizer=optimizer, lr_scheduler=scheduler, config=config)
        self.model, self.module = self.engine, self.engine.module
        self.stage = int(self.engine.zero_optimization_stage())
        self.kind = f"zero{self.stage}"
        self.native = self.stage not in (1, 2)
        self._skipped = self.engine.skipped_steps

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()  # DeepSpeed casts the module itself (bf16)

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss)
        self.engine.step()  # a no-op except at the accumulation boundary

    def step(self, skip: bool) -> tuple[float, bool]:
        applied = self.engine.skipped_steps == self._skipped
        self._skipped = self.engine.skipped_steps
        norm = self.engine.get_global_grad_norm()
        return (float(norm) if norm is not None else math.nan), applied

    def optimizer_state(self) -> Optional[Any]:
        if self.native:
            return None
        zero = self.optimizer
        return {"world_size": torch.distributed.get_world_size(),
                "fp32_partitions": list(zero.single_partition_of_fp32_groups),
                "base": zero.optimizer.state_dict()}

    def load_optimizer_state(self, tree: Any) -> None:
        world_size = torch.distributed.get_world_size()
        if tree["world_size"] != world_size:
            raise ValueError(f"this checkpoint holds ZeRO-{self.stage} optimizer partitions of "
                             f"{tree['world_size']} ranks; resume it with {tree['world_size']} "
                             f"processes (now {world_size})")
        zero = self.optimizer
        with torch.no_grad():
            for current, saved in zip(zero.single_partition_of_fp32_groups,
                                      tree["fp32_partitions"], strict=True):
                current.copy_(saved)
        zero.optimizer.load_state_dict(tree["base"])

    def full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        if self.stage == 3:
            state = self.engine._zero3_consolidated_16bit_state_dict()
        else:
            from deepspeed.utils import safe_get_full_fp32_param

            state = {name: t.detach() for name, t in self.module.state_dict().items()}
            for name, parameter in self.module.named_parameters():
                full = safe_get_full_fp32_param(parameter) if parameter.requires_grad else None
                if full is not None:  # every rank joins this all-reduce, in the same order
                    state[name] = full
        if torch.distributed.get_rank() != 0 or state is None:
            return None
        return {name: t.float() if t.is_floating_point() else t for name, t in state.items()}

    def load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        if self.stage == 3:
            raise RuntimeError("ZeRO-3 weights are restored from DeepSpeed's checkpoint")
        self.module.load_state_dict(state, strict=True)  # writes into ZeRO's flat buffers

    def save_native(self, directory: Path) -> None:
        if self.native:
            self.engine.save_checkpoint(str(directory), tag="deepspeed", save_latest=False)

    def load_native(self, directory: Path) -> None:
        if self.native:
            path, _ = self.engine.load_checkpoint(str(directory), tag="deepspeed",
                                                  load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
            if path is None:
                raise FileNotFoundError(f"{directory}/deepspeed holds no DeepSpeed checkpoint")
