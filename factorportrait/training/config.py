"""`TrainConfig`: the validated, typed form of a resolved training recipe.

The recipes (``recipes/``, Hydra) are the place where numbers live; this module only checks
them and gives the loop typed access. ``TrainConfig.from_dict`` takes the plain dict of a
resolved recipe (``OmegaConf.to_container(cfg, resolve=True)``) and raises ``ValueError``
naming the bad key. Nothing here reads files or imports Hydra.

Sections (one dataclass each): ``model``, ``data``, ``stage`` (FactorPortrait Table 1 / §5.1),
``optim``, ``diffusion``, ``train`` (batching, precision, robustness), ``checkpoint``,
``validation``, ``logging``, ``distributed``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Optional

from factorportrait.config import DiTConfig
from factorportrait.diffusion.flow_matching import SIGMA_DISTRIBUTIONS, ConditionDropout
from factorportrait.training.lora import LoraSpec

# model.trainable presets (training/optim.py select_trainable); all / conditions are the older
# names of full / new_paths_only.
TRAINABLE = ("full", "lora", "self_attention_and_new", "new_paths_only", "all", "conditions")
SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "bf16", "no")
DATA_SOURCES = ("toy", "synthetic")
# Keys of a recipe that only steer composition or paths (not read by the loop).
RECIPE_ONLY_KEYS = ("experiment", "output_root", "curriculum")


@dataclass(frozen=True)
class ModelSpec:
    """Which DiT to build. ``preset``: tiny | wan_1_3b | wan_14b; ``overrides``: DiTConfig
    fields; ``wan_weights``: official Wan 2.1 T2V DiT weights (``from_wan``), used by a stage
    without ``init_from``; ``"???"`` (the Wan presets) means "required when used".
    ``trainable``: one of :data:`TRAINABLE` (``select_trainable``); ``lora``: rank, alpha,
    dropout and target modules of ``trainable: lora`` (:class:`LoraSpec`)."""

    preset: str = "tiny"
    overrides: dict = field(default_factory=dict)
    wan_weights: Optional[str] = field(default=None, metadata={"missing_ok": True})
    gradient_checkpointing: bool = True
    trainable: str = "full"
    lora: LoraSpec = field(default_factory=LoraSpec)

    def __post_init__(self) -> None:
        _choice("model.trainable", self.trainable, TRAINABLE)
        self.dit_config()  # raises ValueError for a bad preset or override

    def dit_config(self) -> DiTConfig:
        return DiTConfig.preset(self.preset, **self.overrides)


@dataclass(frozen=True)
class DataSpec:
    """Training data. ``source``: ``toy`` (SyntheticLatentDataset) or ``synthetic``
    (``factorportrait.data.build_dataset``); ``height``/``width`` in pixels (latents are /8);
    ``options``: passed to the source (``num_items`` for toy, ``root`` … for real data)."""

    source: str = "toy"
    height: int = 64
    width: int = 64
    num_workers: int = 0
    options: dict = field(default_factory=dict)
    validation_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _choice("data.source", self.source, DATA_SOURCES)
        for name in ("height", "width"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0 and value % 16 == 0):
                raise ValueError(f"data.{name} must be a positive multiple of 16 pixels, got "
                                 f"{value!r}")
        _non_negative("data.num_workers", self.num_workers)


@dataclass(frozen=True)
class StageSpec:
    """One curriculum stage (Table 1, §5.1): mixture ratios per clip kind, video frames
    (``4k + 1``), learning rate, steps, and where its weights start (``init_from``: a previous
    stage's name, a checkpoint directory, or ``None`` for Wan weights / random init)."""

    name: str
    mixture: dict
    frames: int
    lr: float
    steps: int
    init_from: Optional[str] = None

    def __post_init__(self) -> None:
        if not self.name or "/" in self.name:
            raise ValueError(f"stage.name must be a non-empty name without '/', got "
                             f"{self.name!r}")
        if not self.mixture or any(not _is_number(r) or r < 0 for r in self.mixture.values()) \
                or sum(self.mixture.values()) <= 0:
            raise ValueError(f"stage.mixture must map clip kinds to ratios >= 0 with a positive "
                             f"sum, got {self.mixture!r}")
        if not (isinstance(self.frames, int) and self.frames >= 5 and self.frames % 4 == 1):
            raise ValueError(f"stage.frames must be 4k + 1 video frames (k >= 1), got "
                             f"{self.frames!r}")
        _positive("stage.lr", self.lr)
        _positive("stage.steps", self.steps, integer=True)

    @property
    def latent_frames(self) -> int:
        return (self.frames - 1) // 4 + 1


@dataclass(frozen=True)
class OptimSpec:
    """AdamW with linear warmup then ``schedule`` decay to ``min_lr_ratio · lr``;
    ``lr_scale`` multiplies the stage's lr (the ``tiny`` scale raises it); ``ema_decay``
    (e.g. 0.9999) keeps an EMA of the trained weights, ``None`` disables it."""

    lr_scale: float = 1.0
    betas: tuple = (0.9, 0.999)
    eps: float = 1e-8
    weight_decay: float = 0.01
    warmup_steps: int = 500
    schedule: str = "cosine"
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0
    ema_decay: Optional[float] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "betas", tuple(self.betas))
        _positive("optim.lr_scale", self.lr_scale)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"optim.betas must be two numbers in [0, 1), got {self.betas!r}")
        _positive("optim.eps", self.eps)
        _non_negative("optim.weight_decay", self.weight_decay, integer=False)
        _non_negative("optim.warmup_steps", self.warmup_steps)
        _choice("optim.schedule", self.schedule, SCHEDULES)
        if not (0 <= self.min_lr_ratio <= 1):
            raise ValueError(f"optim.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        _non_negative("optim.grad_clip", self.grad_clip, integer=False)
        if self.ema_decay is not None and not (0 < self.ema_decay < 1):
            raise ValueError(f"optim.ema_decay must be in (0, 1) or null, got "
                             f"{self.ema_decay!r}")


@dataclass(frozen=True)
class DiffusionSpec:
    """Wan's shifted rectified flow and condition dropout (``ConditionDropout`` rates)."""

    shift: float = 5.0
    sigma_distribution: str = "uniform"
    dropout: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _positive("diffusion.shift", self.shift)
        _choice("diffusion.sigma_distribution", self.sigma_distribution, SIGMA_DISTRIBUTIONS)
        self.condition_dropout()

    def condition_dropout(self) -> ConditionDropout:
        try:
            return ConditionDropout(**self.dropout)
        except TypeError as error:
            raise ValueError(f"diffusion.dropout: {error}; keys are expression, pose, camera, "
                             f"reference, all") from error


@dataclass(frozen=True)
class LoopSpec:
    """Batching and robustness. ``global_batch_size = micro_batch_size · accumulation ·
    world_size``; ``max_bad_steps``: consecutive non-finite steps before training stops;
    ``stop_at``: stop (with a checkpoint) after this step, as a pre-emption would."""

    global_batch_size: int = 64
    micro_batch_size: int = 1
    mixed_precision: str = "auto"
    deterministic: bool = True
    max_bad_steps: int = 10
    stop_at: Optional[int] = None

    def __post_init__(self) -> None:
        _positive("train.global_batch_size", self.global_batch_size, integer=True)
        _positive("train.micro_batch_size", self.micro_batch_size, integer=True)
        _choice("train.mixed_precision", self.mixed_precision, MIXED_PRECISION)
        _positive("train.max_bad_steps", self.max_bad_steps, integer=True)
        if self.stop_at is not None:
            _positive("train.stop_at", self.stop_at, integer=True)

    def accumulation(self, world_size: int) -> int:
        """Micro-batches per optimizer step on each rank."""
        per_step = self.micro_batch_size * world_size
        if self.global_batch_size % per_step:
            raise ValueError(f"train.global_batch_size ({self.global_batch_size}) must be a "
                             f"multiple of train.micro_batch_size ({self.micro_batch_size}) x "
                             f"world size ({world_size})")
        return self.global_batch_size // per_step


@dataclass(frozen=True)
class CheckpointSpec:
    """``every`` steps, keep the last ``keep_last``; ``resume``: ``auto`` (latest checkpoint
    of this stage, if any), ``never``, or a checkpoint directory."""

    every: int = 1000
    keep_last: int = 3
    resume: str = "auto"

    def __post_init__(self) -> None:
        _positive("checkpoint.every", self.every, integer=True)
        _positive("checkpoint.keep_last", self.keep_last, integer=True)


@dataclass(frozen=True)
class ValidationSpec:
    """Validation loss on held-out data every ``every`` steps (0: never) over ``batches``
    micro-batches, with fixed noise so curves are comparable; and every ``render_every``
    steps (0: never) an mp4 of the first held-out item, sampled with ``render_steps`` Euler
    steps and ``guidance`` and decoded with the VAE at ``vae``."""

    every: int = 1000
    batches: int = 4
    render_every: int = 0
    vae: Optional[str] = None
    render_steps: int = 35
    guidance: Optional[str] = "progressive_hybrid"
    fps: float = 16.0

    def __post_init__(self) -> None:
        _non_negative("validation.every", self.every)
        _positive("validation.batches", self.batches, integer=True)
        _non_negative("validation.render_every", self.render_every)
        _positive("validation.render_steps", self.render_steps, integer=True)
        _positive("validation.fps", self.fps)
        if self.render_every and not self.vae:
            raise ValueError("validation.render_every needs validation.vae (a WanVAE folder or "
                             "the official Wan2.1_VAE.pth) to decode the renders")


@dataclass(frozen=True)
class LoggingSpec:
    every: int = 10
    tensorboard: bool = True
    progress_bar: bool = True

    def __post_init__(self) -> None:
        _positive("logging.every", self.every, integer=True)


@dataclass(frozen=True)
class DistributedSpec:
    """``deepspeed_config``: a JSON file of ``recipes/deepspeed/`` (also taken from
    accelerate's ``ACCELERATE_DEEPSPEED_CONFIG_FILE``); required when more than one process
    trains. ``export_rank_weights``: each rank also writes its local weights (a check).
    ``sequence_parallel``: ranks that split each sample's token sequence (groups of
    consecutive ranks; 1: off), ``sequence_parallel_mode``: ``auto`` (Ulysses where the head
    count divides the degree, else all-gather), ``ulysses`` or ``allgather``
    (``training/sequence_parallel.py``)."""

    deepspeed_config: Optional[str] = None
    export_rank_weights: bool = False
    sequence_parallel: int = 1
    sequence_parallel_mode: str = "auto"

    def __post_init__(self) -> None:
        _positive("distributed.sequence_parallel", self.sequence_parallel, integer=True)
        if self.sequence_parallel_mode not in ("auto", "ulysses", "allgather"):
            raise ValueError(f"distributed.sequence_parallel_mode must be auto, ulysses or "
                             f"allgather, got {self.sequence_parallel_mode!r}")


@dataclass(frozen=True)
class TrainConfig:
    """A whole training run of one stage; see the module docstring."""

    model: ModelSpec
    data: DataSpec
    stage: StageSpec
    stage_dir: str
    run_dir: str
    seed: int = 0
    optim: OptimSpec = field(default_factory=OptimSpec)
    diffusion: DiffusionSpec = field(default_factory=DiffusionSpec)
    train: LoopSpec = field(default_factory=LoopSpec)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    validation: ValidationSpec = field(default_factory=ValidationSpec)
    logging: LoggingSpec = field(default_factory=LoggingSpec)
    distributed: DistributedSpec = field(default_factory=DistributedSpec)

    def __post_init__(self) -> None:
        _non_negative("seed", self.seed)

    @property
    def lr(self) -> float:
        """Peak learning rate: the stage's lr times ``optim.lr_scale``."""
        return self.stage.lr * self.optim.lr_scale

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        """Build from a resolved recipe dict; unknown keys are a ``ValueError``."""
        data = {k: v for k, v in data.items() if k not in RECIPE_ONLY_KEYS}
        return _build(cls, data, "")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- helpers

def _build(cls: type, data: Any, where: str) -> Any:
    """Instantiate dataclass ``cls`` from ``data``, recursing into dataclass-typed fields."""
    if not isinstance(data, dict):
        raise ValueError(f"{where or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"{where or 'config'}: unknown keys {unknown}; known keys are "
                         f"{sorted(known)}")
    values = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{where}.{name}" if where else name
        if dataclasses.is_dataclass(hint):
            value = _build(hint, value, key)
        elif value == "???" and not known[name].metadata.get("missing_ok"):
            raise ValueError(f"{key} is required (the recipe leaves it as ???)")
        values[name] = value
    try:
        return cls(**values)
    except TypeError as error:  # a missing required field
        raise ValueError(f"{where or 'config'}: {error}") from error


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(
        value)


def _positive(name: str, value: Any, integer: bool = False) -> None:
    if not _is_number(value) or value <= 0 or (integer and not isinstance(value, int)):
        kind = "a positive integer" if integer else "a positive number"
        raise ValueError(f"{name} must be {kind}, got {value!r}")


def _non_negative(name: str, value: Any, integer: bool = True) -> None:
    if not _is_number(value) or value < 0 or (integer and not isinstance(value, int)):
        kind = "an integer" if integer else "a number"
        raise ValueError(f"{name} must be {kind} >= 0, got {value!r}")


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {list(choices)}, got {value!r}")


__all__ = ["CheckpointSpec", "DataSpec", "DiffusionSpec", "DistributedSpec", "LoggingSpec",
           "LoopSpec", "ModelSpec", "OptimSpec", "StageSpec", "TrainConfig", "ValidationSpec"]
