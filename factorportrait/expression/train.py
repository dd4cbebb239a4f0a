"""Training the expression encoder on synthetic expression sets (recipe:
``recipes/expression_encoder.yaml``; entry point ``tools/train_expression_encoder.py``).

One step: refresh a few sets of the pool (new renders) -> a batch of augmented positive pairs
-> codes -> :func:`~factorportrait.expression.losses.expression_loss` -> AdamW (warmup, cosine).
Training stops after ``steps`` or ``time_limit_minutes`` (whichever comes first) and writes
the encoder (``save_pretrained``) and ``training.json`` (config, steps, loss history) to
``output_dir``; the weights are also written every ``save_every`` steps.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from factorportrait.expression.augment import AugmentConfig
from factorportrait.expression.batches import SetPool
from factorportrait.expression.losses import LossWeights, expression_loss
from factorportrait.expression.projection import ProjectionConfig, project_encoder
from factorportrait.expression.sets import AvatarPool, SetSampling, identity_seeds
from factorportrait.io.atomic import atomic_write_bytes
from factorportrait.models.expression_encoder import ExpressionEncoder, ExpressionEncoderConfig


@dataclass(frozen=True)
class TrainConfig:
    """Settings of one training run (the keys of ``recipes/expression_encoder.yaml``).

    ``preset`` names an :class:`ExpressionEncoderConfig` preset, built at ``crop_size``; the
    expression sets are rendered with the face box at ``crop_size`` pixels. ``identities``
    training avatars come from ``identity_seeds(identities, "train", identity_seed)``.
    """

    preset: str = "small"
    crop_size: int = 64
    steps: int = 4000
    time_limit_minutes: float | None = None
    batch_sets: int = 32
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_steps: int = 100
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    identities: int = 64
    identity_seed: int = 0
    pool_sets: int = 256
    pool_views: int = 4
    refresh_sets: int = 4
    seed: int = 0
    threads: int | None = None
    log_every: int = 25
    save_every: int = 500
    output_dir: str | None = "outputs/expression_encoder_small"
    loss: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: SetSampling = field(default_factory=SetSampling)
    projection: ProjectionConfig = field(default_factory=ProjectionConfig)

    def __post_init__(self) -> None:
        for name in ("crop_size", "steps", "batch_sets", "identities", "pool_sets",
                     "pool_views", "log_every", "save_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"expression encoder training: {name} must be a positive "
                                 f"integer, got {value!r}")
        if self.batch_sets > self.pool_sets:
            raise ValueError(f"expression encoder training: batch_sets ({self.batch_sets}) "
                             f"must be <= pool_sets ({self.pool_sets})")
        if not self.lr > 0:
            raise ValueError(f"expression encoder training: lr must be > 0, got {self.lr}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TrainConfig:
        """Build from a (recipe) mapping; unknown keys raise ``ValueError`` naming them."""
        nested = {"loss": LossWeights, "augment": AugmentConfig, "sampling": SetSampling,
                  "projection": ProjectionConfig}
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"expression encoder training: unknown keys {unknown}; valid: "
                             f"{sorted(known)}")
        kwargs = dict(values)
        for name, kind in nested.items():
            if name in kwargs:
                sub = dict(kwargs[name] or {})
                valid = {f.name for f in dataclasses.fields(kind)}
                if bad := sorted(set(sub) - valid):
                    raise ValueError(f"expression encoder training: unknown keys "
                                     f"{[f'{name}.{key}' for key in bad]}; "
                                     f"valid: {sorted(valid)}")
                kwargs[name] = kind(**sub)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def encoder_config(self) -> ExpressionEncoderConfig:
        return ExpressionEncoderConfig.preset(self.preset, crop_size=self.crop_size)


@dataclass
class TrainResult:
    """The trained encoder, per-step loss terms, steps done and wall-clock seconds."""

    encoder: ExpressionEncoder
    history: list[dict[str, float]]
    steps: int
    seconds: float


def config_from_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainConfig:
    """A :class:`TrainConfig` from a YAML recipe plus ``key=value`` overrides (dotted keys for
    nested sections, e.g. ``loss.invariance=2``), merged with OmegaConf."""
    from omegaconf import OmegaConf

    recipe = OmegaConf.load(path)
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected key=value")
    merged = OmegaConf.merge(recipe, OmegaConf.from_dotlist(list(overrides)))
    return TrainConfig.from_dict(OmegaConf.to_container(merged, resolve=True))


def learning_rate(config: TrainConfig, step: int, elapsed: float = 0.0) -> float:
    """Linear warmup to ``lr``, then cosine decay to ``min_lr_ratio · lr`` over whichever
    budget runs out first: ``steps``, or ``time_limit_minutes`` given ``elapsed`` seconds (so
    a time-limited run still ends annealed)."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    if config.time_limit_minutes is not None:
        progress = max(progress, elapsed / (60 * config.time_limit_minutes))
    progress = min(1.0, progress)
    floor = config.min_lr_ratio
    return config.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress)))


def _save(encoder: ExpressionEncoder, config: TrainConfig, history: list[dict[str, float]],
          steps: int, seconds: float) -> None:
    if config.output_dir is None:
        return
    directory = Path(config.output_dir)
    encoder.save_pretrained(directory)
    summary = {"config": config.to_dict(), "steps": steps, "seconds": round(seconds, 1),
               "history": history}
    atomic_write_bytes(directory / "training.json", json.dumps(summary, indent=1).encode())


def train_expression_encoder(config: TrainConfig, log: Callable[[str], None] | None = print
                             ) -> TrainResult:
    """Train an encoder from scratch (see the module docstring); deterministic given
    ``config.seed`` and the torch build (and thread count)."""
    started = time.monotonic()
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    encoder = ExpressionEncoder(config.encoder_config()).train()
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    avatars = AvatarPool(identity_seeds(config.identities, "train", config.identity_seed))
    pool = SetPool(avatars, config.pool_sets, config.pool_views, config.crop_size,
                   config.sampling, generator)
    if log:
        log(f"pool of {config.pool_sets} sets x {config.pool_views} views rendered in "
            f"{time.monotonic() - started:.1f} s")
    limit = None if config.time_limit_minutes is None else 60 * config.time_limit_minutes
    history: list[dict[str, float]] = []
    step = 0
    while step < config.steps and (limit is None or time.monotonic() - started < limit):
        lr = learning_rate(config, step, time.monotonic() - started)
        for group in optimizer.param_groups:
            group["lr"] = lr
        pool.refresh(config.refresh_sets)
        batch = pool.sample(config.batch_sets, config.augment, config.crop_size)
        loss, parts = expression_loss(encoder, batch.crops, batch.expression, config.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(encoder.parameters(), config.grad_clip)
        optimizer.step()
        step += 1
        history.append({"step": step, **{k: round(v, 6) for k, v in parts.items()}})
        if log and (step % config.log_every == 0 or step == 1):
            log(f"step {step:5d}  " + "  ".join(f"{k} {v:.4f}" for k, v in parts.items())
                + f"  lr {lr:.2e}  {time.monotonic() - started:.0f} s")
        if step % config.save_every == 0:
            _save(encoder.eval(), config, history, step, time.monotonic() - started)
            encoder.train()
    encoder.eval()
    if config.projection.dim:
        encoder = project_trained(encoder, config, log)
    seconds = time.monotonic() - started
    _save(encoder, config, history, step, seconds)
    if log:
        log(f"trained {step} steps in {seconds:.0f} s"
            + (f"; saved to {config.output_dir}" if config.output_dir else ""))
    return TrainResult(encoder, history, step, seconds)


def project_trained(encoder: ExpressionEncoder, config: TrainConfig,
                    log: Callable[[str], None] | None = None) -> ExpressionEncoder:
    """``encoder`` with the expression-discriminant projection of ``config.projection`` folded
    in, fit on fresh renders of the training identities (deterministic from
    ``projection.seed``; :mod:`factorportrait.expression.projection`)."""
    from factorportrait.expression.evaluate import synthetic_set

    settings = config.projection
    fit = synthetic_set("train", settings.sets, settings.views, config.identities,
                        config.crop_size, settings.seed, config.identity_seed, config.sampling,
                        config.augment.roll_normalise)
    projected, projection = project_encoder(encoder, fit.crops, fit.group, fit.expression,
                                            settings.dim, settings.ridge)
    if log:
        ratios = ", ".join(f"{r:.1f}" for r in projection.ratios.tolist())
        log(f"projected the codes onto {settings.dim} expression-discriminant directions "
            f"(between/within variance {ratios})")
    return projected
