"""Training DeX-Portrait's motion trainer (§3.2) on synthetic avatars (recipe:
``recipes/motion.yaml``; entry point ``tools/train_motion.py``).

One step ``n``: render batch ``n`` (:func:`~factorportrait.motion.data.render_motion_batch`,
seeded by ``(seed, n)`` alone) -> pose and expression inputs
(:func:`~factorportrait.motion.step.motion_inputs`) -> one generator and one discriminator
AdamW step (:func:`~factorportrait.motion.step.train_step`).

Resumable exactly: every ``save_every`` steps (and when the run stops) a checkpoint
``<output_dir>/checkpoints/step-XXXXXXXX/`` is written atomically
(:mod:`factorportrait.training.checkpoint`): ``models`` (generator + discriminator),
``optimizers`` (both AdamW states), ``rng-rank00000`` and ``trainer_state.json`` (step, loss
history, config). A run restarted with the same settings continues from the latest one and —
at the same thread count — produces the loss curve of an uninterrupted run bit for bit.
At the end the generator is written with :meth:`MotionTrainer.save_pretrained` to
``weights_dir`` and ``training.json`` (config, steps, history) to ``output_dir``.

Data parallel: launched by ``torchrun --nproc_per_node N`` (``tools/train_motion.py`` forms
the process group: gloo on CPUs, NCCL on GPUs), every process makes step ``n``'s draws for
the whole batch from ``(seed, n)`` but renders only its ``batch_size / N`` share (the
geometry of every sample is cheap; the pixels are not), and the gradients are averaged over
the processes before clipping (:func:`~factorportrait.motion.step.average_gradients`), so
the processes hold the same weights throughout; the logged losses are their means. Process 0
alone writes checkpoints, the weights and ``training.json``, and decides when to stop (so a
time limit cannot split them). ``accumulation`` cuts each process's share into micro-batches
(the same sums). ``N`` processes equal one process with ``accumulation = N``, as BatchNorm
sees the same micro-batches either way: bit for bit for ``N = 2`` (tested; halving is exact),
to float rounding otherwise (the all-reduce adds in its own order). A run resumes only with
the same number of micro-batches per step (processes × accumulation).
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from factorportrait.expression.augment import AugmentConfig
from factorportrait.expression.sets import identity_seeds
from factorportrait.io.atomic import atomic_write_bytes
from factorportrait.motion.config import MotionTrainerConfig
from factorportrait.motion.data import (
    LandmarkPool,
    MotionSampling,
    render_motion_batch,
    step_generator,
)
from factorportrait.motion.discriminator import PatchDiscriminator
from factorportrait.motion.evaluate import evaluate_motion
from factorportrait.motion.model import MotionTrainer
from factorportrait.motion.step import (
    InputSettings,
    LossWeights,
    average_gradients,
    motion_inputs,
    split_inputs,
    train_step,
)
from factorportrait.training.checkpoint import (
    capture_rng,
    commit,
    latest_checkpoint,
    load_tree,
    prepare_staging,
    rank_stem,
    read_trainer_state,
    restore_rng,
    save_tree,
)
from factorportrait.training.distributed import training_device

# Settings a resumed run may change; any other difference from the checkpoint is refused.
RESUMABLE_CHANGES = ("steps", "time_limit_minutes", "threads", "log_every", "save_every",
                     "keep_last", "output_dir", "weights_dir", "eval_batches", "device",
                     "accumulation")  # with processes × accumulation unchanged (micro_batches)
DEVICES = ("cpu", "cuda", "auto")


@dataclass(frozen=True)
class MotionTrainConfig:
    """Settings of one run (the keys of ``recipes/motion.yaml``).

    ``preset`` names a :class:`MotionTrainerConfig` preset and ``model`` overrides its
    top-level fields. Training avatars: ``identity_seeds(identities, "train", identity_seed)``
    (the ``"heldout"`` split of the same seed is for evaluation). ``lr_pose`` (None =
    ``lr_generator``) is the pose encoder's own rate. All learning rates warm up
    linearly over ``warmup_steps``, then stay constant; the GAN terms start at
    ``adversarial_start``.
    At the end, ``eval_batches`` batches of held-out identities are scored
    (:func:`~factorportrait.motion.evaluate.evaluate_motion`; 0 = skip).
    ``batch_size`` is the whole step's batch over every process and micro-batch: it must
    divide into ``processes × accumulation`` equal parts. ``device``: ``cpu``, ``cuda`` (each
    process its ``LOCAL_RANK``'s GPU) or ``auto``; batches are rendered on the CPU.
    """

    preset: str = "small"
    model: Mapping[str, Any] = field(default_factory=dict)
    steps: int = 2000
    time_limit_minutes: float | None = None
    batch_size: int = 8
    accumulation: int = 1
    device: str = "cpu"
    lr_generator: float = 2e-4
    lr_discriminator: float = 2e-4
    lr_pose: float | None = None
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 0.01
    warmup_steps: int = 50
    grad_clip: float | None = 1.0
    adversarial_start: int = 0
    identities: int = 64
    identity_seed: int = 0
    seed: int = 0
    threads: int | None = None
    cross_view_probability: float = 0.5
    mask_expand: float = 1.5
    face_scale: float = 1.2
    vgg_weights: str | None = None
    eval_batches: int = 4
    log_every: int = 25
    save_every: int = 250
    keep_last: int = 2
    output_dir: str | None = "outputs/motion"
    weights_dir: str | None = None
    loss: LossWeights = field(default_factory=LossWeights)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    sampling: MotionSampling = field(default_factory=MotionSampling)

    def __post_init__(self) -> None:
        object.__setattr__(self, "model", dict(self.model or {}))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        for name in ("steps", "batch_size", "accumulation", "identities", "log_every",
                     "save_every", "keep_last"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"motion training: {name} must be a positive integer, got "
                                 f"{value!r}")
        if isinstance(self.eval_batches, bool) or not isinstance(self.eval_batches, int) or \
                self.eval_batches < 0:
            raise ValueError(f"motion training: eval_batches must be an integer >= 0, got "
                             f"{self.eval_batches!r}")
        for name in ("lr_generator", "lr_discriminator", "lr_pose"):
            if name == "lr_pose" and self.lr_pose is None:
                continue
            if isinstance(getattr(self, name), bool) or not isinstance(
                    getattr(self, name), (int, float)) or not getattr(self, name) > 0:
                raise ValueError(f"motion training: {name} must be > 0, got "
                                 f"{getattr(self, name)}")
        if self.batch_size % self.accumulation:
            raise ValueError(f"motion training: batch_size ({self.batch_size}) must divide "
                             f"into accumulation ({self.accumulation}) equal micro-batches")
        if self.device not in DEVICES:
            raise ValueError(f"motion training: device must be one of {', '.join(DEVICES)}, "
                             f"got {self.device!r}")
        if len(self.betas) != 2:
            raise ValueError(f"motion training: betas must be two numbers, got {self.betas}")
        valid = {f.name for f in dataclasses.fields(MotionTrainerConfig)} - {"expression"}
        if bad := sorted(set(self.model) - valid):
            raise ValueError(f"motion training: unknown keys {[f'model.{key}' for key in bad]}; "
                             f"valid: {sorted(valid)}")
        self.model_config()  # bad sizes fail here
        self.input_settings()

    def peak_learning_rates(self) -> tuple[tuple[float, float], tuple[float]]:
        """The scheduled peaks of each optimizer's parameter groups: the generator's (all but
        the pose encoder, the pose encoder) and the discriminator's."""
        pose = self.lr_generator if self.lr_pose is None else self.lr_pose
        return (self.lr_generator, pose), (self.lr_discriminator,)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MotionTrainConfig:
        """Build from a (recipe) mapping; unknown keys raise ``ValueError`` naming them."""
        nested = {"loss": LossWeights, "augment": AugmentConfig, "sampling": MotionSampling}
        known = {f.name for f in dataclasses.fields(cls)}
        if unknown := sorted(set(values) - known):
            raise ValueError(f"motion training: unknown keys {unknown}; valid: {sorted(known)}")
        kwargs = dict(values)
        for name, kind in nested.items():
            if name in kwargs and not isinstance(kwargs[name], kind):
                sub = dict(kwargs[name] or {})
                valid = {f.name for f in dataclasses.fields(kind)}
                if bad := sorted(set(sub) - valid):
                    raise ValueError(f"motion training: unknown keys "
                                     f"{[f'{name}.{key}' for key in bad]}; valid: {sorted(valid)}")
                kwargs[name] = kind(**sub)
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists

    def model_config(self) -> MotionTrainerConfig:
        overrides = {k: tuple(v) if isinstance(v, (list, tuple)) else v
                     for k, v in self.model.items()}
        return MotionTrainerConfig.preset(self.preset, **overrides)

    def input_settings(self) -> InputSettings:
        return InputSettings(self.cross_view_probability, self.mask_expand, self.face_scale,
                             self.augment)

    def checkpoint_root(self) -> Path | None:
        return None if self.output_dir is None else Path(self.output_dir) / "checkpoints"

    def final_weights_dir(self) -> Path | None:
        if self.weights_dir is not None:
            return Path(self.weights_dir)
        return None if self.output_dir is None else Path(self.output_dir) / "model"


def config_from_recipe(path: str | Path, overrides: Sequence[str] = ()) -> MotionTrainConfig:
    """A :class:`MotionTrainConfig` from a YAML recipe plus ``key=value`` overrides (dotted
    keys for nested sections, e.g. ``loss.adversarial=0.05``), merged with OmegaConf."""
    from omegaconf import OmegaConf

    try:
        recipe = OmegaConf.load(path)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - YAML syntax, unreadable file: one line
        message = " ".join(str(err).split())
        raise ValueError(message if str(path) in message else f"{path}: {message}") from err
    for override in overrides:
        if "=" not in override:
            raise ValueError(f"override {override!r}: expected key=value")
    merged = OmegaConf.merge(recipe, OmegaConf.from_dotlist(list(overrides)))
    values = OmegaConf.to_container(merged, resolve=True)
    if not isinstance(values, dict):
        raise TypeError(f"{path}: a recipe must be a mapping of settings")
    return MotionTrainConfig.from_dict(values)


@dataclass
class MotionTrainResult:
    """The trained generator and discriminator, per-step loss terms, steps done, seconds."""

    model: MotionTrainer
    discriminator: PatchDiscriminator
    history: list[dict[str, float]]
    steps: int
    seconds: float


@dataclass
class TrainingState:
    """What a checkpoint holds: the models, their optimisers, the step and the history."""

    model: MotionTrainer
    discriminator: PatchDiscriminator
    optimizers: tuple[torch.optim.Optimizer, torch.optim.Optimizer]
    step: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


def process_group() -> tuple[int, int]:
    """``(rank, processes)`` of the launched job's default process group; ``(0, 1)``
    without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _check_processes(config: MotionTrainConfig, processes: int) -> None:
    parts = processes * config.accumulation
    if config.batch_size % parts:
        raise ValueError(f"motion training: batch_size ({config.batch_size}) must divide into "
                         f"{processes} process(es) x accumulation ({config.accumulation}) = "
                         f"{parts} equal micro-batches")


def _agree(stop: bool, device: torch.device) -> bool:
    """Process 0's stop decision, on every process (NCCL reduces GPU tensors only)."""
    flag = torch.tensor([float(stop)], device=device)
    torch.distributed.broadcast(flag, 0)
    return bool(flag.item())


def _mean_over_processes(parts: dict[str, float], processes: int, device: torch.device
                         ) -> dict[str, float]:
    names = sorted(parts)
    values = torch.tensor([parts[name] for name in names], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(values)
    return dict(zip(names, (values / processes).tolist()))


def learning_rate(base: float, step: int, warmup_steps: int) -> float:
    """Linear warmup over ``warmup_steps`` to ``base``, then constant (a function of the step
    alone, so a resumed run follows the same schedule)."""
    return base * min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else base


def build_state(config: MotionTrainConfig) -> TrainingState:
    """Fresh models (seeded by ``config.seed``) and their AdamW optimisers."""
    torch.manual_seed(config.seed)
    model_config = config.model_config()
    model = MotionTrainer(model_config).train()
    discriminator = PatchDiscriminator(model_config).train()
    optimizers = tuple(torch.optim.AdamW(groups, betas=config.betas,
                                         weight_decay=config.weight_decay)
                       for groups in (generator_groups(model, config),
                                      [{"params": list(discriminator.parameters()),
                                        "lr": config.lr_discriminator}]))
    return TrainingState(model, discriminator, optimizers)


def generator_groups(model: MotionTrainer, config: MotionTrainConfig) -> list[dict[str, Any]]:
    """The generator's AdamW parameter groups: everything but the pose encoder, then the
    pose encoder (at :meth:`MotionTrainConfig.peak_learning_rates`)."""
    (rest_lr, pose_lr), _ = config.peak_learning_rates()
    pose = list(model.pose.parameters())
    ids = {id(p) for p in pose}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": rest_lr}, {"params": pose, "lr": pose_lr}]


def save_checkpoint(root: Path, state: TrainingState, config: MotionTrainConfig,
                    micro_batches: int | None = None) -> Path:
    """Write checkpoint ``state.step`` under ``root`` atomically (module docstring);
    ``micro_batches`` per step: processes × accumulation (default: one process)."""
    staging = prepare_staging(root, state.step)
    save_tree(staging / "models", {"generator": state.model.state_dict(),
                                   "discriminator": state.discriminator.state_dict()})
    save_tree(staging / "optimizers", {"generator": state.optimizers[0].state_dict(),
                                       "discriminator": state.optimizers[1].state_dict()})
    save_tree(rank_stem(staging, "rng", 0), capture_rng())
    micro_batches = config.accumulation if micro_batches is None else micro_batches
    return commit(root, state.step, {"step": state.step, "history": state.history,
                                     "config": config.to_dict(),
                                     "micro_batches": micro_batches}, config.keep_last)


def load_checkpoint(directory: Path, state: TrainingState, config: MotionTrainConfig,
                    micro_batches: int | None = None) -> None:
    """Restore ``state`` (in place) and the RNGs from a checkpoint written by
    :func:`save_checkpoint`; ``ValueError`` if it was trained with other settings or another
    number of ``micro_batches`` per step (processes × accumulation)."""
    trainer = read_trainer_state(directory)
    micro_batches = config.accumulation if micro_batches is None else micro_batches
    saved_micro = trainer.get("micro_batches", trainer["config"].get("accumulation", 1))
    if saved_micro != micro_batches:
        raise ValueError(f"cannot resume from {directory}: it cut each step's batch into "
                         f"{saved_micro} micro-batch(es) (processes x accumulation), this run "
                         f"into {micro_batches}; BatchNorm would see other samples together")
    saved, current = trainer["config"], config.to_dict()
    defaults = MotionTrainConfig().to_dict()  # keys added since a checkpoint was written
    changed = sorted(k for k in set(saved) | set(current) if k not in RESUMABLE_CHANGES
                     and saved.get(k, defaults.get(k)) != current.get(k))
    if changed:
        raise ValueError(f"cannot resume from {directory}: it was trained with other settings "
                         f"({', '.join(changed)}); use another output_dir or the same settings")
    models = load_tree(directory / "models")
    state.model.load_state_dict(models["generator"])
    state.discriminator.load_state_dict(models["discriminator"])
    optimizers = load_tree(directory / "optimizers")
    groups = len(optimizers["generator"]["param_groups"])
    if groups != len(state.optimizers[0].param_groups):
        raise ValueError(f"cannot resume from {directory}: its generator optimizer has {groups} "
                         "parameter group(s), from before the pose encoder had its own "
                         "(lr_pose); use another output_dir")
    state.optimizers[0].load_state_dict(optimizers["generator"])
    state.optimizers[1].load_state_dict(optimizers["discriminator"])
    restore_rng(load_tree(rank_stem(directory, "rng", 0)))
    state.step, state.history = int(trainer["step"]), list(trainer["history"])


def _log_line(step: int, parts: dict[str, float], elapsed: float) -> str:
    shown = ("generator", "reconstruction", "pyramid", "adversarial", "feature_matching",
             "perceptual", "pose", "discriminator")
    return f"step {step:6d}  " + "  ".join(f"{k} {parts[k]:.4f}" for k in shown if k in parts) \
        + f"  {elapsed:.0f} s"


def train_motion(config: MotionTrainConfig, log: Callable[[str], None] | None = print,
                 resume: bool = True) -> MotionTrainResult:
    """Train (or, with ``resume``, continue from ``output_dir``'s latest checkpoint) until
    ``steps`` or ``time_limit_minutes``; see the module docstring."""
    started = time.monotonic()
    rank, processes = process_group()
    _check_processes(config, processes)
    device = training_device(config.device, "motion training: device")
    log = log if rank == 0 else None
    state = build_state(config)
    state.model.to(device)
    state.discriminator.to(device)
    root = config.checkpoint_root()
    micro_batches = processes * config.accumulation
    if resume and root is not None and (latest := latest_checkpoint(root)) is not None:
        load_checkpoint(latest, state, config, micro_batches)
        if log:
            log(f"resumed from {latest} at step {state.step}")
    perceptual = None
    if config.vgg_weights is not None and config.loss.perceptual:
        from factorportrait.motion.losses import load_vgg_perceptual

        perceptual = load_vgg_perceptual(config.vgg_weights).to(device)
    model_config = config.model_config()
    pool = LandmarkPool(identity_seeds(config.identities, "train", config.identity_seed))
    settings = config.input_settings()
    limit = None if config.time_limit_minutes is None else 60 * config.time_limit_minutes
    per_process = config.batch_size // processes
    share = None if processes == 1 else range(rank * per_process, (rank + 1) * per_process)
    saved_at = state.step
    while True:
        stop = state.step >= config.steps or (limit is not None
                                              and time.monotonic() - started >= limit)
        if stop if processes == 1 else _agree(stop, device):
            break
        # 1. Batch and inputs of this step (seeded by the step alone): every draw is made for
        # the whole batch, only this process's share is rendered and kept.
        generator = step_generator(config.seed, state.step)
        batch = render_motion_batch(pool, config.batch_size, model_config.image_size,
                                    config.sampling, generator, share)
        inputs = motion_inputs(batch, model_config.expression.crop_size, settings, generator)
        if processes > 1:
            inputs = split_inputs(inputs, processes)[rank]
        inputs = {name: value.to(device) for name, value in inputs.items()}
        # 2. Learning rates of this step, then the GAN step.
        for optimizer, peaks in zip(state.optimizers, config.peak_learning_rates()):
            for group, peak in zip(optimizer.param_groups, peaks):
                group["lr"] = learning_rate(peak, state.step, config.warmup_steps)
        parts = train_step(state.model, state.discriminator, state.optimizers, inputs,
                           config.loss, state.step >= config.adversarial_start,
                           config.grad_clip, perceptual, shares=config.accumulation,
                           average=average_gradients if processes > 1 else None)
        if processes > 1:
            parts = _mean_over_processes(parts, processes, device)
        state.step += 1
        state.history.append({"step": state.step, **parts})
        if log and (state.step % config.log_every == 0 or state.step == 1):
            log(_log_line(state.step, parts, time.monotonic() - started))
        # 3. Checkpoint (process 0: the weights are the same on every process).
        if root is not None and rank == 0 and state.step % config.save_every == 0:
            save_checkpoint(root, state, config, micro_batches)
            saved_at = state.step
    if root is not None and rank == 0 and state.step != saved_at:
        save_checkpoint(root, state, config, micro_batches)
    seconds = time.monotonic() - started
    if rank != 0:
        return MotionTrainResult(state.model.cpu().eval(), state.discriminator.cpu().eval(),
                                 state.history, state.step, seconds)
    heldout = None
    if config.eval_batches:
        heldout = evaluate_motion(state.model, batches=config.eval_batches,
                                  batch_size=config.batch_size,
                                  sampling=dataclasses.replace(  # the same-avatar task
                                      config.sampling, other_identity_probability=0.0),
                                  settings=settings, identity_seed=config.identity_seed,
                                  seed=config.seed)
        state.model.train()
        if log:
            log("held-out: " + "  ".join(f"{k} {v:.4f}" for k, v in heldout.items()))
    state.model.cpu()
    state.discriminator.cpu()
    _export(state, config, seconds, heldout)
    if log:
        log(f"stopped at step {state.step} after {seconds:.0f} s"
            + (f"; weights in {config.final_weights_dir()}" if config.final_weights_dir() else ""))
    return MotionTrainResult(state.model.eval(), state.discriminator.eval(), state.history,
                             state.step, seconds)


def _export(state: TrainingState, config: MotionTrainConfig, seconds: float,
            heldout: dict[str, float] | None = None) -> None:
    """The generator's final weights (``save_pretrained``) and ``training.json``."""
    weights = config.final_weights_dir()
    if weights is not None:
        state.model.save_pretrained(weights, trained={"steps": state.step, "heldout": heldout,
                                                      "recipe": config.to_dict()})
    if config.output_dir is not None:
        summary = {"config": config.to_dict(), "steps": state.step,
                   "seconds_this_run": round(seconds, 1), "heldout": heldout,
                   "history": state.history}
        Path(config.output_dir).mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(Path(config.output_dir) / "training.json",
                           json.dumps(summary, indent=1).encode())
