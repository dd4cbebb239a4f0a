"""How one optimizer step is executed: the single-process engine and the engine interface.

The loop (:mod:`factorportrait.training.loop`) only talks to an :class:`Engine`:

    with engine.autocast(): loss = flow_matching_loss(engine.model, ...)   # per micro-batch
    engine.backward(loss)                                                  # per micro-batch
    grad_norm, applied = engine.step(skip=...)                             # per optimizer step

:class:`PlainEngine` (here) runs a plain torch model and optimizer in one process.
``DeepSpeedEngine`` (:mod:`factorportrait.training.distributed`, the only DeepSpeed import
site) wraps ``deepspeed.initialize`` for ZeRO data parallelism.
"""

from __future__ import annotations

import contextlib
import math
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from factorportrait.models.dit import FactorPortraitDiT


class Engine:
    """Interface of an execution engine (see the module docstring)."""

    kind: str            # "plain", "zero0" … "zero3": recorded in checkpoints
    native: bool = False  # weights and optimizer live in the engine's own checkpoint format
    model: nn.Module     # what forward is called on
    module: FactorPortraitDiT
    scheduler: torch.optim.lr_scheduler.LRScheduler

    def autocast(self) -> contextlib.AbstractContextManager:
        raise NotImplementedError

    def backward(self, loss: torch.Tensor) -> None:
        raise NotImplementedError

    def step(self, skip: bool) -> tuple[float, bool]:
        """Finish the optimizer step -> ``(grad_norm, applied)``; ``skip`` asks to drop it."""
        raise NotImplementedError

    def optimizer_state(self) -> Optional[Any]:
        """This rank's optimizer state as a storable tree, ``None`` if it keeps none."""
        raise NotImplementedError

    def load_optimizer_state(self, tree: Any) -> None:
        raise NotImplementedError

    def full_state_dict(self) -> Optional[dict[str, torch.Tensor]]:
        """Consolidated weights (fp32 master values where kept) on rank 0; collective."""
        raise NotImplementedError

    def load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        raise NotImplementedError

    def save_native(self, directory: Path) -> None:
        """Engine-specific extra state (ZeRO-3: DeepSpeed's checkpoint); collective."""

    def load_native(self, directory: Path) -> None:
        """Inverse of :meth:`save_native`; collective."""

    def named_trainable(self) -> list[tuple[str, torch.Tensor]]:
        return [(name, p) for name, p in self.module.named_parameters() if p.requires_grad]

    @property
    def lr(self) -> float:
        return float(self.scheduler.get_last_lr()[0])


class PlainEngine(Engine):
    """One process, no DeepSpeed: manual gradient accumulation, clipping and stepping.

    Args:
        module: the DiT, already on ``device``.
        optimizer, scheduler: AdamW and its LambdaLR.
        accumulation: micro-batches per optimizer step (each loss is divided by it).
        grad_clip: max global gradient norm (0: no clipping; the norm is still measured).
        autocast_dtype: ``torch.bfloat16`` for mixed precision, ``None`` for full precision.
    """

    kind = "plain"

    def __init__(self, module: FactorPortraitDiT, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, accumulation: int,
                 grad_clip: float, device: torch.device,
                 autocast_dtype: Optional[torch.dtype] = None) -> None:
        self.model = self.module = module
        self.optimizer, self.scheduler = optimizer, scheduler
        self.accumulation, self.grad_clip = accumulation, grad_clip
        self.device, self.autocast_dtype = device, autocast_dtype
        self._parameters = [p for p in module.parameters() if p.requires_grad]

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (loss / self.accumulation).backward()

    def step(self, skip: bool) -> tuple[float, bool]:
        max_norm = self.grad_clip if self.grad_clip > 0 else math.inf
        norm = float(torch.nn.utils.clip_grad_norm_(self._parameters, max_norm))
        if skip or not math.isfinite(norm):
            self.optimizer.zero_grad(set_to_none=True)
            return norm, False
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return norm, True

    def optimizer_state(self) -> Any:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, tree: Any) -> None:
        self.optimizer.load_state_dict(tree)

    def full_state_dict(self) -> dict[str, torch.Tensor]:
        return {name: t.detach() for name, t in self.module.state_dict().items()}

    def load_module_state(self, state: dict[str, torch.Tensor]) -> None:
        self.module.load_state_dict(state, strict=True)
