"""Euler sampler for Wan's shifted rectified flow, with batched classifier-free guidance.

Schedule (diffsynth ``FlowMatchScheduler("Wan").set_timesteps``): ``u_k = 1 − k/n`` for
``k = 0 … n−1``, ``σ_k = shift_sigma(u_k)``, and ``σ_n = 0``. Step k (Euler, dx/dσ = v)::

    v_k     = Σ_b w_{k,b} · v_θ(x, 1000·σ_k, c_b)        (branches b and weights: guidance.py)
    x_{k+1} = x_k + (σ_{k+1} − σ_k) · v_k

All branches a step needs go through the model as one batch (``batch_cfg=True``), or one
after another (``batch_cfg=False``: less memory, same result).
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence

import torch
from tqdm.auto import tqdm

from factorportrait.diffusion.flow_matching import (DEFAULT_SHIFT, VelocityModel, shift_sigma,
                                                    timestep_from_sigma)
from factorportrait.diffusion.guidance import Guidance, branch_conditions, combine
from factorportrait.models.conditions import PortraitConditions

StepCallback = Callable[[int, float, torch.Tensor], None]


class NonFiniteLatentsError(ValueError):
    """The sampler's latents became NaN or Inf (a ``ValueError``: the inputs caused it)."""


def check_finite_latents(latents: torch.Tensor, step: int, num_steps: int, sigma: float,
                         guidance: Guidance) -> None:
    """Stop the sampler when ``latents`` hold NaN or Inf after Euler step ``step``, naming
    the likely causes (the weights and conditions are checked before sampling, so what is
    left is the guidance scale or a model that overflows)."""
    if bool(torch.isfinite(latents).all()):
        return
    bad = int((~torch.isfinite(latents)).sum())
    raise NonFiniteLatentsError(
        f"sampling produced non-finite latents at step {step + 1} of {num_steps} "
        f"(σ = {sigma:.3f}; {bad} of {latents.numel()} values NaN/Inf): the guidance scale "
        f"({guidance.mode}, ω = {guidance.scale:g}) may be too large, or the DiT's weights or "
        "dtype overflow (try float32, or check the checkpoint)")


def flow_sigmas(num_steps: int, shift: float = DEFAULT_SHIFT) -> torch.Tensor:
    """Wan's sampling σ from 1 down to 0 -> ``(num_steps + 1,)`` float64, last entry 0.

    The first ``num_steps`` entries equal diffsynth's ``FlowMatchScheduler("Wan")`` sigmas for
    the same ``num_inference_steps`` and ``shift``; the model is evaluated at those.
    """
    if not isinstance(num_steps, int) or isinstance(num_steps, bool) or num_steps < 1:
        raise ValueError(f"num_steps must be an integer >= 1, got {num_steps!r}")
    u = torch.linspace(1.0, 0.0, num_steps + 1, dtype=torch.float64)
    return shift_sigma(u, shift)


def concat_conditions(parts: Sequence[PortraitConditions]) -> PortraitConditions:
    """Concatenate conditions along the batch -> ``PortraitConditions`` with ``Σ B_i`` rows.

    Optional fields must be ``None`` in all parts or in none.
    """
    def cat(name: str) -> Optional[torch.Tensor]:
        values = [getattr(part, name) for part in parts]
        missing = [value is None for value in values]
        if all(missing):
            return None
        if any(missing):
            raise ValueError(f"concat_conditions: {name} is None in some parts but not all")
        return torch.cat(values, dim=0)

    return PortraitConditions(reference_latent=cat("reference_latent"),
                              normal_latents=cat("normal_latents"), rays=cat("rays"),
                              expression=cat("expression"), context=cat("context"),
                              head_pose=cat("head_pose"), landmarks=cat("landmarks"))


def predict_branches(model: VelocityModel, latents: torch.Tensor, sigma: float,
                     variants: Mapping[str, PortraitConditions], branches: Sequence[str],
                     batch_cfg: bool = True,
                     batched_cache: Optional[dict] = None) -> dict[str, torch.Tensor]:
    """Velocity of ``latents`` under each branch's conditions.

    Args:
        latents: ``(B, 16, F_lat, h, w)`` x at noise level ``sigma``.
        variants: ``{branch: PortraitConditions with B rows}``.
        branches: the branches to evaluate.
        batch_cfg: one forward over ``len(branches)·B`` rows, else one forward per branch.
        batched_cache: a dict reused across steps to keep the concatenated conditions.
    Returns:
        ``{branch: (B, 16, F_lat, h, w)}``.
    """
    batch = latents.shape[0]
    timestep = torch.full((batch,), float(timestep_from_sigma(sigma)), dtype=torch.float32,
                          device=latents.device)
    if not batch_cfg or len(branches) == 1:
        return {name: model(latents, timestep, variants[name]) for name in branches}
    key = tuple(branches)
    cache = {} if batched_cache is None else batched_cache
    if key not in cache:
        cache[key] = concat_conditions([variants[name] for name in branches])
    count = len(branches)
    velocity = model(latents.repeat(count, 1, 1, 1, 1), timestep.repeat(count), cache[key])
    return dict(zip(branches, velocity.chunk(count, dim=0)))


def resolve_guidance(guidance: Guidance | str | None) -> Guidance:
    if guidance is None:
        return Guidance(mode="none")
    if isinstance(guidance, str):
        return Guidance(mode=guidance)
    if not isinstance(guidance, Guidance):
        raise ValueError(f"guidance must be a Guidance, a mode name or None, got "
                         f"{type(guidance).__name__}")
    return guidance


def effective_weights(weights: Mapping[str, float], conditions: PortraitConditions
                       ) -> dict[str, float]:
    """Without expression codes the ``no_expression`` branch *is* ``full``: merge them."""
    merged = dict(weights)
    if conditions.expression is None and "no_expression" in merged:
        merged["full"] = merged.get("full", 0.0) + merged.pop("no_expression")
    return {name: weight for name, weight in merged.items() if weight != 0.0}


def latent_shape(conditions: PortraitConditions) -> tuple[int, int, int, int, int]:
    """``(B, 16, F_lat, h, w)``: the shape of the latents the conditions describe."""
    batch, channels, _, height, width = conditions.reference_latent.shape
    return (batch, channels, conditions.latent_frames, height, width)


def initial_noise(conditions: PortraitConditions, generator: Optional[torch.Generator] = None,
                  noise: Optional[torch.Tensor] = None) -> torch.Tensor:
    """ε ``(B, 16, F_lat, h, w)`` float32: ``noise`` checked, or drawn on the generator's
    device (CPU by default) and moved to the conditions' device, so a seed gives the same
    noise everywhere."""
    shape = latent_shape(conditions)
    if noise is not None:
        if tuple(noise.shape) != shape:
            raise ValueError(f"noise has shape {tuple(noise.shape)}; the conditions need "
                             f"(B, 16, F_lat, h, w) = {shape}")
        return noise.float()
    device = generator.device if generator is not None else torch.device("cpu")
    return torch.randn(shape, generator=generator, device=device).to(
        conditions.reference_latent.device)


@torch.no_grad()
def sample(model: VelocityModel, conditions: PortraitConditions, *,
           noise: Optional[torch.Tensor] = None, generator: Optional[torch.Generator] = None,
           num_steps: int = 50, shift: float = DEFAULT_SHIFT,
           guidance: Guidance | str | None = None, batch_cfg: bool = True,
           progress: bool = True, callback: Optional[StepCallback] = None) -> torch.Tensor:
    """Integrate the flow from noise (σ = 1) to latents (σ = 0) with Euler steps.

    Args:
        model: ``model(x (N,16,F_lat,h,w), timestep (N,), conditions) -> velocity``, e.g. a
            :class:`~factorportrait.models.dit.FactorPortraitDiT` in eval mode.
        conditions: the batch's conditions (B rows); null branches are derived from them.
        noise: ``(B, 16, F_lat, h, w)`` starting point; else drawn from ``generator``.
        num_steps: Euler steps (Wan's default 50; DeX-Portrait used 35).
        shift: Wan's timestep shift.
        guidance: a :class:`Guidance`, a mode name (default scale), or ``None`` (no guidance).
        batch_cfg: evaluate all branches of a step in one batched forward.
        progress: show a tqdm bar over the steps.
        callback: ``callback(step, sigma, latents)`` after each step.
    Returns:
        ``(B, 16, F_lat, h, w)`` float32 denoised latents.
    """
    guidance = resolve_guidance(guidance)
    schedule = guidance.schedule(num_steps)
    sigmas = flow_sigmas(num_steps, shift).tolist()
    latents = initial_noise(conditions, generator, noise)
    variants: dict[str, PortraitConditions] = {}
    batched_cache: dict = {}
    for step in tqdm(schedule, desc="sampling", disable=not progress, leave=False):
        weights = effective_weights(step.weights, conditions)
        for name in weights:
            if name not in variants:
                variants[name] = branch_conditions(conditions, name)
        predictions = predict_branches(model, latents, sigmas[step.step], variants,
                                       list(weights), batch_cfg, batched_cache)
        velocity = combine(predictions, weights)  # float32
        latents = latents + (sigmas[step.step + 1] - sigmas[step.step]) * velocity
        check_finite_latents(latents, step.step, num_steps, sigmas[step.step], guidance)
        if callback is not None:
            callback(step.step, sigmas[step.step], latents)
    return latents
