"""Classifier-free guidance as per-step linear combinations of model branches.

Every mode is, at each sampling step k, a weighted sum of velocity predictions under three
condition *branches* (:data:`BRANCH_DROPS`, nulls from :func:`null_conditions`):

    full           all conditions c
    no_expression  c_exp: c without expression (zero codes)
    null           ∅: every condition dropped

DeX-Portrait Eq. 4 (CFG):  ε̃(z_t, c) = ω ε̂(z_t, c) + (1 − ω) ε̂(z_t, ∅).
DeX-Portrait Eq. 5 (progressive hybrid CFG), t = 35 … 1 counting down over 35 steps:

    ε̃*(z_t, c) = ε̃(z_t, c_exp)                                      30 < t ≤ 35
                 (t−25)/5 · ε̃(z_t, c_exp) + (30−t)/5 · ε̃(z_t, c)     25 < t ≤ 30
                 ε̃(z_t, c)                                            t ≤ 25

(the paper typesets the blend factors as superscripts; they are the weights of a convex
blend). With step index k = 35 − t and α_k = (30 − t)/5 = (k − 5)/5 on the blend steps, both
ε̃ terms expanded by Eq. 4 give the weights of :func:`guidance_weights`::

    full: ω·α_k     no_expression: ω·(1 − α_k)     null: 1 − ω

See ``docs/guidance.md`` for the schedule at other step counts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

from factorportrait.diffusion.flow_matching import CONDITION_NAMES, null_conditions
from factorportrait.models.conditions import PortraitConditions

GUIDANCE_MODES = ("none", "cfg", "expression", "progressive_hybrid")
BRANCH_DROPS: dict[str, frozenset[str]] = {
    "full": frozenset(),
    "no_expression": frozenset({"expression"}),
    "null": frozenset(CONDITION_NAMES),
}
DEX_STEPS = 35  # DeX-Portrait §3.4: 35 DDIM steps …
DEX_EXCLUDE_FRACTION = 5 / 35  # … no expression for the first 5,
DEX_BLEND_FRACTION = 5 / 35  # … blended in over the next 5, full for the last 25.
DEX_SCALE = 2.5  # DeX-Portrait's ω (Eq. 4)


@dataclass(frozen=True)
class StepGuidance:
    """The guidance of one sampling step.

    Attributes:
        step: index k, 0 = the first (noisiest) step.
        expression_blend: α_k ∈ [0, 1], the share of the full-condition estimate (1 for modes
            other than ``progressive_hybrid``).
        weights: ``{branch: coefficient}``; the coefficients sum to 1.
    """

    step: int
    expression_blend: float
    weights: dict[str, float]

    @property
    def branches(self) -> tuple[str, ...]:
        """The branches with a non-zero weight (the model passes this step needs)."""
        return tuple(name for name in BRANCH_DROPS if self.weights.get(name, 0.0) != 0.0)


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5 + 1e-9))


def _check_fractions(exclude_fraction: float, blend_fraction: float) -> None:
    for name, value in (("exclude_fraction", exclude_fraction),
                        ("blend_fraction", blend_fraction)):
        if not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            raise ValueError(f"{name} must be in [0, 1], got {value!r}")
    if exclude_fraction + blend_fraction > 1.0 + 1e-9:
        raise ValueError(f"exclude_fraction + blend_fraction must be <= 1, got "
                         f"{exclude_fraction} + {blend_fraction}")


def _check_num_steps(num_steps: int) -> None:
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")


def progressive_expression_blend(num_steps: int,
                                 exclude_fraction: float = DEX_EXCLUDE_FRACTION,
                                 blend_fraction: float = DEX_BLEND_FRACTION) -> list[float]:
    """α_k of Eq. 5 for every step k -> ``num_steps`` floats.

    ``E = round(num_steps·exclude_fraction)`` steps with α = 0, then ``N =
    round(num_steps·blend_fraction)`` steps with α = (k − E)/N (0, 1/N, …, (N−1)/N, as Eq. 5's
    (30 − t)/5), then α = 1. Rounding is half-up; 35 steps give 5 / 5 / 25 exactly.
    """
    _check_num_steps(num_steps)
    _check_fractions(exclude_fraction, blend_fraction)
    excluded = min(_round_half_up(num_steps * exclude_fraction), num_steps)
    blended = min(_round_half_up(num_steps * blend_fraction), num_steps - excluded)
    return [0.0 if k < excluded else
            (k - excluded) / blended if k < excluded + blended else 1.0
            for k in range(num_steps)]


def _step_weights(mode: str, scale: float, alpha: float) -> dict[str, float]:
    if mode == "none":
        return {"full": 1.0}
    if mode == "cfg":  # Eq. 4 with ∅ = every condition dropped
        return {"full": scale, "null": 1.0 - scale}
    if mode == "expression":  # Eq. 4 with ∅ = c_exp: guidance on the expression alone
        return {"full": scale, "no_expression": 1.0 - scale}
    # progressive_hybrid, Eq. 5: α·ε̃(c) + (1 − α)·ε̃(c_exp), each ε̃ by Eq. 4
    return {"full": scale * alpha, "no_expression": scale * (1.0 - alpha), "null": 1.0 - scale}


MAX_SCALE = 50.0  # the largest guidance scale accepted (CFG scales in use are 1-15)


def guidance_weights(mode: str, num_steps: int, scale: float = DEX_SCALE,
                     exclude_fraction: float = DEX_EXCLUDE_FRACTION,
                     blend_fraction: float = DEX_BLEND_FRACTION) -> list[StepGuidance]:
    """The per-step branch weights of a guidance mode.

    Args:
        mode: one of :data:`GUIDANCE_MODES`.
        num_steps: sampling steps, >= 1.
        scale: ω >= 0 (ignored by ``none``); ω = 1 is the plain conditional prediction.
        exclude_fraction, blend_fraction: Eq. 5's 5/35 and 5/35 (``progressive_hybrid``).
    Returns:
        ``num_steps`` :class:`StepGuidance`, first (noisiest) step first.
    """
    if mode not in GUIDANCE_MODES:
        raise ValueError(f"mode must be one of {GUIDANCE_MODES}, got {mode!r}")
    if not (isinstance(scale, (int, float)) and math.isfinite(scale)
            and 0 <= scale <= MAX_SCALE):
        raise ValueError(f"guidance scale must be a number in [0, {MAX_SCALE:g}] (DeX-Portrait "
                         f"uses 2.5; beyond a few tens the velocity overflows), got {scale!r}")
    if mode == "progressive_hybrid":
        alphas = progressive_expression_blend(num_steps, exclude_fraction, blend_fraction)
    else:
        _check_num_steps(num_steps)
        alphas = [1.0] * num_steps
    return [StepGuidance(step=k, expression_blend=alpha,
                         weights=_step_weights(mode, float(scale), alpha))
            for k, alpha in enumerate(alphas)]


@dataclass(frozen=True)
class Guidance:
    """A guidance setting for the sampler. Defaults are DeX-Portrait's (ω = 2.5, 5/5/25)."""

    mode: str = "progressive_hybrid"
    scale: float = DEX_SCALE
    exclude_fraction: float = DEX_EXCLUDE_FRACTION
    blend_fraction: float = DEX_BLEND_FRACTION

    def __post_init__(self) -> None:
        guidance_weights(self.mode, 1, self.scale, self.exclude_fraction, self.blend_fraction)

    def schedule(self, num_steps: int) -> list[StepGuidance]:
        """:func:`guidance_weights` for ``num_steps``."""
        return guidance_weights(self.mode, num_steps, self.scale, self.exclude_fraction,
                                self.blend_fraction)


def branch_conditions(conditions: PortraitConditions, branch: str) -> PortraitConditions:
    """The conditions of a branch (``full``, ``no_expression`` or ``null``)."""
    if branch not in BRANCH_DROPS:
        raise ValueError(f"branch must be one of {tuple(BRANCH_DROPS)}, got {branch!r}")
    drop = BRANCH_DROPS[branch]
    return null_conditions(conditions, drop) if drop else conditions


def combine(predictions: Mapping[str, torch.Tensor], weights: Mapping[str, float]
            ) -> torch.Tensor:
    """``Σ_b w_b · v_b`` over the branches with non-zero weight, in float32.

    Args:
        predictions: ``{branch: (B, 16, F_lat, h, w)}``; needs every non-zero-weight branch.
        weights: ``{branch: w_b}`` from a :class:`StepGuidance`.
    Returns:
        ``(B, 16, F_lat, h, w)`` float32. A lone weight of 1 returns the prediction exactly.
    """
    total = None
    for name, weight in weights.items():
        if weight == 0.0:
            continue
        if name not in predictions:
            raise ValueError(f"predictions lacks branch {name!r} (weight {weight}); got "
                             f"{sorted(predictions)}")
        term = predictions[name].float() * weight
        total = term if total is None else total + term
    if total is None:
        raise ValueError(f"weights has no non-zero entry: {dict(weights)}")
    return total
