"""What trains and how: trainable-parameter selection, AdamW, warmup + decay, EMA."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Optional

import torch
from torch import nn

from factorportrait.models.dit import FactorPortraitDiT
from factorportrait.training.config import TRAINABLE, OptimSpec
from factorportrait.training.lora import LoraSpec, apply_lora, is_lora_key


PRESET_ALIASES = {"all": "full", "conditions": "new_paths_only"}  # the older names


def select_trainable(model: FactorPortraitDiT, mode: str, lora: Optional[LoraSpec] = None
                     ) -> list[nn.Parameter]:
    """Set ``requires_grad`` for the preset ``mode`` and return the trainable parameters.

    ``full`` (alias ``all``): the whole DiT. ``new_paths_only`` (alias ``conditions``): only
    the new condition paths (:meth:`FactorPortraitDiT.condition_parameters`: the widened patch
    embedding, the expression controller, the DeX modules); the Wan blocks stay frozen.
    ``self_attention_and_new``: every block's ``self_attn`` and the new paths (ReCamMaster's
    choice). ``lora``: peft LoRA adapters (``lora``, default :class:`LoraSpec`) injected into
    the block projections, trained with the new paths; the base stays frozen.
    """
    preset = PRESET_ALIASES.get(mode, mode)
    if preset not in ("full", "new_paths_only", "self_attention_and_new", "lora"):
        raise ValueError(f"trainable must be one of {list(TRAINABLE)}, got {mode!r}")
    if preset == "lora":
        apply_lora(model, lora or LoraSpec())
    model.requires_grad_(preset == "full")
    if preset != "full":
        for parameter in model.condition_parameters():
            parameter.requires_grad_(True)
    if preset == "self_attention_and_new":
        for block in model.blocks:
            block.self_attn.requires_grad_(True)
    if preset == "lora":
        for name, parameter in model.named_parameters():
            if is_lora_key(name):
                parameter.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: weight decay on matrices/kernels (ndim >= 2), none on biases, norms,
    modulation vectors. Only parameters with ``requires_grad``; names in model order."""
    decay, no_decay = [], []
    for parameter in model.parameters():
        if parameter.requires_grad:
            (decay if parameter.ndim >= 2 else no_decay).append(parameter)
    groups = [{"params": decay, "weight_decay": weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    return [group for group in groups if group["params"]]


def build_optimizer(model: nn.Module, spec: OptimSpec, lr: float) -> torch.optim.AdamW:
    """``torch.optim.AdamW`` over the trainable parameters (single-tensor implementation, so
    results do not depend on the foreach/fused choice)."""
    groups = parameter_groups(model, spec.weight_decay)
    if not groups:
        raise ValueError("no trainable parameters: check model.trainable")
    return torch.optim.AdamW(groups, lr=lr, betas=spec.betas, eps=spec.eps,
                             weight_decay=spec.weight_decay, foreach=False)


class WarmupDecay:
    """LR multiplier at step ``s``: linear warmup ``(s + 1) / warmup`` for ``s < warmup``,
    then ``cosine`` / ``linear`` decay from 1 to ``min_ratio`` at ``total``, or ``constant``.

    A callable object (not a lambda), so ``LambdaLR.state_dict()`` stores its fields (plain
    numbers) and a checkpoint can hold it as JSON.
    """

    def __init__(self, warmup_steps: int, total_steps: int, schedule: str = "cosine",
                 min_ratio: float = 0.0) -> None:
        if schedule not in ("cosine", "linear", "constant"):
            raise ValueError(f"schedule must be cosine, linear or constant, got {schedule!r}")
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.schedule, self.min_ratio = schedule, float(min_ratio)

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return 1.0
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            shape = 1.0 - progress
        return self.min_ratio + (1.0 - self.min_ratio) * shape


def build_scheduler(optimizer: torch.optim.Optimizer, spec: OptimSpec, total_steps: int
                    ) -> torch.optim.lr_scheduler.LambdaLR:
    rule = WarmupDecay(spec.warmup_steps, total_steps, spec.schedule, spec.min_lr_ratio)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, rule)


class EMA:
    """Exponential moving average of named parameters, kept in float32:
    ``ema ← decay · ema + (1 − decay) · θ`` after every applied optimizer step."""

    def __init__(self, named_parameters: Iterable[tuple[str, torch.Tensor]], decay: float
                 ) -> None:
        if not (0 < decay < 1):
            raise ValueError(f"EMA decay must be in (0, 1), got {decay!r}")
        self.decay = decay
        self.shadow = {name: p.detach().float().clone() for name, p in named_parameters}

    @torch.no_grad()
    def update(self, named_parameters: Iterable[tuple[str, torch.Tensor]]) -> None:
        for name, parameter in named_parameters:
            self.shadow[name].lerp_(parameter.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if set(state) != set(self.shadow):
            missing, extra = sorted(set(self.shadow) - set(state)), sorted(set(state) -
                                                                          set(self.shadow))
            raise ValueError(f"EMA state does not match the trained parameters: missing "
                             f"{missing[:5]}, unexpected {extra[:5]}")
        for name, value in state.items():
            self.shadow[name].copy_(value)
