"""Wan's shifted rectified flow: noising, velocity target, training loss, condition dropout.

Rectified flow (DESIGN "Diffusion"; Wan 2.1 §3, as in diffsynth's ``FlowMatchScheduler("Wan")``):

    x_t = (1 − σ) x_0 + σ ε,        ε ~ N(0, I),  σ ∈ [0, 1]      (σ = 0: data, σ = 1: noise)
    v*  = dx_t/dσ = ε − x_0                                         (the DiT's regression target)
    σ'  = shift·σ / (1 + (shift − 1)·σ)                             (shift > 1 favours high noise)
    timestep = 1000·σ                                               (the DiT's input, [0, 1000])

Condition dropout (to make guidance possible) and guidance's "null" branches share one
definition, :func:`null_conditions`, so what the model learns as "no expression" during
training is exactly what the sampler feeds it as "no expression":

| condition  | dropped value                                                                    |
|------------|----------------------------------------------------------------------------------|
| expression | zero codes ``(T, 128)`` — a learned null input, *not* ``expression=None``;       |
|            | zero landmarks ``(T, N, 2)`` for the landmark condition (every form dropped)     |
| pose       | zero normal latents; head poses all equal to the source pose (no head motion:    |
|            | identical source/driving ray maps, the reference warped by the identity)         |
| camera     | every frame gets frame 0's rays (the identity camera): a static camera           |
| reference  | zero reference latent (it fills DiT frame 0's latent and reference slots)         |
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterable, Optional

import torch

from factorportrait.models.conditions import PortraitConditions

DEFAULT_SHIFT = 5.0  # Wan 2.1's default for both training and sampling
NUM_TRAIN_TIMESTEPS = 1000
CONDITION_NAMES = ("expression", "pose", "camera", "reference")
SIGMA_DISTRIBUTIONS = ("uniform", "logit_normal")


# ---------------------------------------------------------------------------- σ and noising

def _check_shift(shift: float) -> None:
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")


def shift_sigma(sigma: torch.Tensor | float, shift: float = DEFAULT_SHIFT
                ) -> torch.Tensor | float:
    """Wan's timestep shift ``σ' = shift·σ / (1 + (shift − 1)·σ)``; fixes 0 and 1.

    Args:
        sigma: any shape (or a float) in [0, 1].
        shift: > 0; 1 is the identity, Wan uses 5.
    Returns:
        The shifted σ, same shape and dtype.
    """
    _check_shift(shift)
    return shift * sigma / (1 + (shift - 1) * sigma)


def _generator_device(generator: Optional[torch.Generator]) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def _draw(kind: str, shape: tuple[int, ...], generator: Optional[torch.Generator],
          device: torch.device | str | None, dtype: torch.dtype = torch.float32
          ) -> torch.Tensor:
    """``torch.rand``/``randn`` drawn on the generator's device, then moved to ``device``, so a
    CPU generator gives the same numbers whatever device the model runs on."""
    draw = torch.rand if kind == "rand" else torch.randn
    values = draw(shape, generator=generator, device=_generator_device(generator), dtype=dtype)
    return values.to(device) if device is not None else values


def sample_training_sigmas(batch: int, generator: Optional[torch.Generator] = None,
                           shift: float = DEFAULT_SHIFT, distribution: str = "uniform",
                           logit_mean: float = 0.0, logit_std: float = 1.0,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """One training σ per sample -> ``(batch,)`` float32 in [0, 1].

    ``uniform`` (default, what diffsynth's Wan training does up to its 1000-step grid):
    ``u ~ U(0, 1)``. ``logit_normal`` (SD3's alternative): ``u = sigmoid(N(logit_mean,
    logit_std²))``. Either way the returned σ is ``shift_sigma(u, shift)``.
    """
    if not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    _check_shift(shift)
    if distribution == "uniform":
        u = _draw("rand", (batch,), generator, device)
    elif distribution == "logit_normal":
        if not logit_std > 0:
            raise ValueError(f"logit_std must be > 0, got {logit_std!r}")
        u = torch.sigmoid(logit_mean + logit_std * _draw("randn", (batch,), generator, device))
    else:
        raise ValueError(f"distribution must be one of {SIGMA_DISTRIBUTIONS}, got "
                         f"{distribution!r}")
    return shift_sigma(u, shift)


def _per_sample(sigma: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``(B,)`` -> ``(B, 1, 1, ...)`` broadcastable against ``like``."""
    sigma = torch.as_tensor(sigma, device=like.device, dtype=like.dtype)
    if sigma.ndim == 0:
        return sigma
    if sigma.shape != (like.shape[0],):
        raise ValueError(f"sigma must be a scalar or have shape (B,) = ({like.shape[0]},), got "
                         f"{tuple(sigma.shape)}")
    return sigma.reshape(-1, *([1] * (like.ndim - 1)))


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor | float
              ) -> torch.Tensor:
    """``x_t = (1 − σ) x_0 + σ ε`` with σ per sample.

    Args:
        x0, noise: ``(B, 16, F_lat, h, w)`` (any shape with batch first).
        sigma: ``(B,)`` or a scalar.
    """
    if x0.shape != noise.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape "
                         f"{tuple(x0.shape)}")
    s = _per_sample(sigma, x0)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity ``v* = dx_t/dσ = ε − x_0``, shape of ``x0``."""
    return noise - x0


def timestep_from_sigma(sigma: torch.Tensor | float) -> torch.Tensor | float:
    """The DiT's timestep ``1000·σ`` in [0, 1000] (Wan's ``num_train_timesteps``)."""
    return NUM_TRAIN_TIMESTEPS * sigma


# ---------------------------------------------------------------------------- condition nulls

def _expand_drop(drop: Iterable[str]) -> frozenset[str]:
    names = frozenset(drop)
    if "all" in names:
        names = (names - {"all"}) | frozenset(CONDITION_NAMES)
    unknown = sorted(names - set(CONDITION_NAMES))
    if unknown:
        raise ValueError(f"drop: unknown conditions {unknown}; choose from "
                         f"{list(CONDITION_NAMES) + ['all']}")
    return names


def _where(mask: Optional[torch.Tensor], dropped: torch.Tensor, kept: torch.Tensor
           ) -> torch.Tensor:
    if mask is None:
        return dropped
    return torch.where(mask.to(kept.device).reshape(-1, *([1] * (kept.ndim - 1))), dropped, kept)


def null_conditions(conditions: PortraitConditions, drop: Iterable[str],
                    mask: Optional[torch.Tensor] = None) -> PortraitConditions:
    """Replace the conditions named in ``drop`` by their null values (table in the module doc).

    Args:
        conditions: the batch; its tensors are not modified.
        drop: names from ``expression, pose, camera, reference``; ``all`` means all four.
        mask: ``(B,)`` bool, the samples to drop; ``None`` drops in every sample.
    Returns:
        A new :class:`PortraitConditions`. ``expression=None`` (already no offset) stays
        ``None``; ``context`` is never touched.
    """
    names = _expand_drop(drop)
    if mask is not None and tuple(mask.shape) != (conditions.batch_size,):
        raise ValueError(f"mask must have shape (B,) = ({conditions.batch_size},), got "
                         f"{tuple(mask.shape)}")
    changes: dict[str, Any] = {}
    if "expression" in names and conditions.expression is not None:
        codes = conditions.expression
        changes["expression"] = _where(mask, torch.zeros_like(codes), codes)
    if "expression" in names and conditions.landmarks is not None:
        landmarks = conditions.landmarks
        changes["landmarks"] = _where(mask, torch.zeros_like(landmarks), landmarks)
    if "pose" in names:
        normals = conditions.normal_latents
        changes["normal_latents"] = _where(mask, torch.zeros_like(normals), normals)
        if conditions.head_pose is not None:  # (B, 1+T, 3, 4); index 0 = the source pose
            poses = conditions.head_pose
            changes["head_pose"] = _where(mask, poses[:, :1].expand_as(poses), poses)
    if "camera" in names:
        rays = conditions.rays  # (B, 24, 1+F_lat, h, w); frame 0 = identity camera
        changes["rays"] = _where(mask, rays[:, :, :1].expand_as(rays), rays)
    if "reference" in names:
        reference = conditions.reference_latent
        changes["reference_latent"] = _where(mask, torch.zeros_like(reference), reference)
    return replace(conditions, **changes)


@dataclass(frozen=True)
class ConditionDropout:
    """Per-sample condition dropout rates for training (enables guidance at sampling).

    A sample drops condition ``c`` when its own draw ``u_c < rate_c`` *or* its ``all`` draw
    ``u_all < all``; so ``c`` is dropped with probability ``1 − (1 − rate_c)(1 − all)`` and
    everything together with probability at least ``all``. Draw order per call: ``all``,
    then ``expression, pose, camera, reference``, each ``(B,)`` from the generator.
    """

    expression: float = 0.1
    pose: float = 0.0
    camera: float = 0.0
    reference: float = 0.0
    all: float = 0.1

    def __post_init__(self) -> None:
        for name in ("all", *CONDITION_NAMES):
            rate = getattr(self, name)
            if not (isinstance(rate, (int, float)) and 0.0 <= rate <= 1.0):
                raise ValueError(f"ConditionDropout.{name} must be a rate in [0, 1], got "
                                 f"{rate!r}")

    def sample_masks(self, batch: int, generator: Optional[torch.Generator] = None,
                     device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """``{condition: (batch,) bool}``, True where that sample's condition is dropped."""
        drop_all = _draw("rand", (batch,), generator, device) < self.all
        return {name: (_draw("rand", (batch,), generator, device) < getattr(self, name))
                | drop_all for name in CONDITION_NAMES}

    def apply(self, conditions: PortraitConditions,
              generator: Optional[torch.Generator] = None
              ) -> tuple[PortraitConditions, dict[str, torch.Tensor]]:
        """Drop conditions per sample -> ``(new conditions, masks)`` (see :meth:`sample_masks`)."""
        masks = self.sample_masks(conditions.batch_size, generator,
                                  conditions.reference_latent.device)
        for name, mask in masks.items():
            conditions = null_conditions(conditions, {name}, mask)
        return conditions, masks


# ---------------------------------------------------------------------------- loss

VelocityModel = Callable[[torch.Tensor, torch.Tensor, PortraitConditions], torch.Tensor]


def flow_matching_loss(model: VelocityModel, latents: torch.Tensor,
                       conditions: PortraitConditions,
                       generator: Optional[torch.Generator] = None,
                       shift: float = DEFAULT_SHIFT,
                       dropout: Optional[ConditionDropout] = None,
                       distribution: str = "uniform",
                       ) -> tuple[torch.Tensor, dict[str, Any]]:
    """Rectified-flow loss ``E ‖v_θ(x_t, 1000σ, c) − (ε − x_0)‖²`` with one σ per sample.

    Args:
        model: ``model(x_t (B,16,F_lat,h,w), timestep (B,), conditions) -> (B,16,F_lat,h,w)``,
            the velocity of the generated frames (the DiT drops the reference frame itself).
        latents: ``(B, 16, F_lat, h, w)`` clean VAE latents x_0 of the generated frames.
        conditions: the batch's conditions; ``dropout`` (if given) nulls some per sample.
        generator: drives σ, ε and the dropout draws (in that order).
    Returns:
        ``(loss, details)``: the scalar float32 mean MSE, and ``sigma (B,)``, ``timestep (B,)``,
        ``per_sample_loss (B,)`` (detached) and ``dropped`` (``{condition: (B,) bool}``, empty
        without dropout).
    """
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, 16, F_lat, h, w), got shape "
                         f"{tuple(latents.shape)}")
    batch = latents.shape[0]
    sigma = sample_training_sigmas(batch, generator, shift, distribution, device=latents.device)
    noise = _draw("randn", tuple(latents.shape), generator, latents.device, latents.dtype)
    dropped: dict[str, torch.Tensor] = {}
    if dropout is not None:
        conditions, dropped = dropout.apply(conditions, generator)
    noisy = add_noise(latents, noise, sigma.to(latents.dtype))
    timestep = timestep_from_sigma(sigma)
    prediction = model(noisy, timestep, conditions)
    target = velocity_target(latents, noise)
    per_sample = (prediction.float() - target.float()).square().flatten(1).mean(dim=1)  # (B,)
    details = {"sigma": sigma, "timestep": timestep, "per_sample_loss": per_sample.detach(),
               "dropped": dropped}
    return per_sample.mean(), details
