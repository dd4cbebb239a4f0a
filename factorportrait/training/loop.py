"""The training loop: one stage of the curriculum, from recipe to final weights.

    train(config)
      1. runtime      launcher env -> rank, device, process group (distributed.py)
      2. model        init_from / Wan weights / seeded init; what trains; checkpointing
      3. engine       PlainEngine (one process) or DeepSpeedEngine (ZeRO), AdamW + schedule
      4. data         dataset -> mixture sampler (rank's share) -> DataLoader
      5. resume       latest checkpoint: weights, optimizer, scheduler, EMA, RNG, sampler, step
      6. loop         per step: micro-batches -> flow-matching loss -> backward -> step;
                      bad-step guard; log; validate; checkpoint
      7. export       final/ (and final-ema/) in FactorPortraitDiT.save_pretrained format

Exact resume by construction: every random draw of step ``s`` (σ, noise, condition dropout)
comes from a generator seeded by ``(seed, s, micro-batch, rank)``, the data stream is a pure
function of the number of samples consumed, and optimizer / scheduler states round-trip
bit-exactly through safetensors + JSON. The global RNG states are saved too (per rank).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from factorportrait.diffusion.flow_matching import flow_matching_loss
from factorportrait.models.conditions import check_required
from factorportrait.models.dit import FactorPortraitDiT
from factorportrait.models.weights import WEIGHTS_FILE, WeightReader, read_config
from factorportrait.training import checkpoint as ckpt
from factorportrait.training import lora, sequence_parallel
from factorportrait.training.sequence_parallel import data_parallel_rank
from factorportrait.training.batches import (batch_to_conditions, build_dataset, build_loader,
                                             fixed_batches)
from factorportrait.training.config import TrainConfig
from factorportrait.training.curriculum import (FINAL_EMA_DIR, final_dir, resolve_init_from,
                                                stage_finished)
from factorportrait.training.distributed import (DeepSpeedEngine, Runtime, build_partitioned,
                                                 fill_deepspeed_config, init_runtime)
from factorportrait.training.engines import Engine, PlainEngine
from factorportrait.training.metrics import TrainingLogger
from factorportrait.training.optim import EMA, build_optimizer, build_scheduler, select_trainable
from factorportrait.training.renders import load_vae, render_validation

LOG = logging.getLogger(__name__)
VALIDATION_STREAM = 0x7A11D  # separates validation noise from training noise


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps had a NaN/Inf loss or gradient norm."""


@dataclass
class TrainResult:
    stage_dir: Path
    step: int                 # optimizer steps done (attempted, skipped ones included)
    finished: bool            # reached stage.steps (False: stopped at train.stop_at)
    skipped_steps: int
    final_weights: Optional[Path]


def train(config: TrainConfig) -> TrainResult:
    """Train one stage (module docstring). Returns where the results are."""
    runtime = init_runtime(config.distributed.deepspeed_config)
    if stage_finished(config):
        LOG.warning("%s is already finished (%s exists); nothing to do — use another "
                    "experiment name to retrain", config.stage.name, final_dir(config.stage_dir))
        return TrainResult(Path(config.stage_dir), config.stage.steps, True, 0,
                           final_dir(config.stage_dir))
    with deterministic_algorithms(config.train.deterministic, runtime.device):
        trainer = Trainer(config, runtime)
        try:
            return trainer.run()
        finally:
            trainer.logger.close()


@contextlib.contextmanager
def deterministic_algorithms(enabled: bool, device: torch.device) -> Iterator[None]:
    """``torch.use_deterministic_algorithms`` for the run (warn-only), restored afterwards."""
    previous = (torch.are_deterministic_algorithms_enabled(),
                torch.is_deterministic_algorithms_warn_only_enabled())
    if enabled:
        if device.type == "cuda":
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])


def seeded_generator(*words: int) -> torch.Generator:
    """A CPU generator seeded from ``words`` through numpy's SeedSequence (well mixed)."""
    high, low = np.random.SeedSequence(list(words)).generate_state(2)
    return torch.Generator().manual_seed((int(high) << 32) | int(low))


def restore_threads(threads: Optional[int], path: Path) -> None:
    """Exact resume needs the thread count the run was saved with (reductions split
    differently give losses ~1e-7 apart per step): restore it, saying so."""
    if threads is None or threads == torch.get_num_threads():
        return
    LOG.warning("%s was written with %d torch threads, this process has %d: using %d, so the "
                "resumed run repeats the uninterrupted one exactly", path, threads,
                torch.get_num_threads(), threads)
    torch.set_num_threads(int(threads))


def build_model(config: TrainConfig, partition: Optional[dict] = None,
                load: bool = True) -> FactorPortraitDiT:
    """The DiT at the start of this stage: previous stage / Wan weights / seeded init, read
    one tensor at a time (:class:`~factorportrait.models.weights.WeightReader`).

    ``partition``: a ZeRO-3 DeepSpeed config — the model is built under ``zero.Init`` with
    every parameter partitioned as it is created, and filled shard by shard, so no rank ever
    holds it whole (``training/distributed.py``). ``load=False``: the seeded init only (a
    resume overwrites it)."""
    dit_config = config.model.dit_config()
    torch.manual_seed(config.seed)
    reader = weight_reader(config, dit_config) if load else None
    if partition is not None:
        model = build_partitioned(dit_config, partition, reader)
    else:
        model = FactorPortraitDiT(dit_config)
        if reader is not None:
            reader.load_into(model)
    select_trainable(model, config.model.trainable, config.model.lora)
    model.enable_gradient_checkpointing(config.model.gradient_checkpointing)
    return model.train()


def weight_reader(config: TrainConfig, dit_config) -> Optional[WeightReader]:
    """Where this stage's weights come from: ``stage.init_from`` (our checkpoint, its config
    checked first), ``model.wan_weights`` (official Wan 2.1), or nothing (seeded init)."""
    init_from = resolve_init_from(config)
    if init_from is not None:
        stored = read_config(init_from)  # checked before any weights are allocated
        if stored != dit_config:
            raise ValueError(f"{config.stage.name}: {init_from} holds a "
                             f"{stored.describe()} DiT, but this run trains "
                             f"{dit_config.describe()} (model={config.model.preset})")
        return WeightReader(Path(init_from) / WEIGHTS_FILE, dit_config, wan=False)
    if config.model.wan_weights == "???":
        raise ValueError(f"model.wan_weights is required: {config.stage.name} starts from Wan "
                         f"2.1 T2V weights (stage.init_from is null) and model="
                         f"{config.model.preset} has no default path")
    if config.model.wan_weights:
        return WeightReader(config.model.wan_weights, dit_config, wan=True)
    return None


def sequence_group(runtime: Runtime, degree: int):
    """The process group of this rank's sequence-parallel group (consecutive ranks); every
    rank creates every group, in order, as ``new_group`` requires."""
    if degree == runtime.world_size:
        return None  # the whole world
    groups = [torch.distributed.new_group(list(range(start, start + degree)))
              for start in range(0, runtime.world_size, degree)]
    return groups[runtime.rank // degree]


def training_precision(config: TrainConfig, runtime: Runtime) -> bool:
    """bf16 (True) or float32."""
    precision = config.train.mixed_precision
    return precision == "bf16" or (precision == "auto" and runtime.device.type == "cuda")


def filled_deepspeed_config(config: TrainConfig, runtime: Runtime, accumulation: int) -> dict:
    return fill_deepspeed_config(
        runtime.deepspeed_config, config.train.micro_batch_size, accumulation,
        runtime.world_size, config.optim.grad_clip, training_precision(config, runtime),
        source=runtime.deepspeed_config_path)


def build_engine(model: FactorPortraitDiT, config: TrainConfig, runtime: Runtime,
                 accumulation: int) -> Engine:
    bf16 = training_precision(config, runtime)
    if runtime.deepspeed_config is None:
        model.to(runtime.device)
    optimizer = build_optimizer(model, config.optim, config.lr)
    scheduler = build_scheduler(optimizer, config.optim, config.stage.steps)
    if runtime.deepspeed_config is None:
        return PlainEngine(model, optimizer, scheduler, accumulation, config.optim.grad_clip,
                           runtime.device, torch.bfloat16 if bf16 else None)
    ds_config = filled_deepspeed_config(config, runtime, accumulation)
    return DeepSpeedEngine(model, optimizer, scheduler, ds_config)


class Trainer:
    """State of one stage's training; :meth:`run` is the loop."""

    def __init__(self, config: TrainConfig, runtime: Runtime) -> None:
        self.config, self.runtime = config, runtime
        self.stage_dir = Path(config.stage_dir)
        self.checkpoints = self.stage_dir / "checkpoints"
        degree = config.distributed.sequence_parallel
        self.data_rank, self.data_ranks = data_parallel_rank(runtime.rank, runtime.world_size,
                                                             degree)
        self.accumulation = config.train.accumulation(self.data_ranks)
        self.resume_from = self.find_resume_checkpoint()
        partition = None
        if runtime.deepspeed_config is not None and runtime.deepspeed_config.get(
                "zero_optimization", {}).get("stage") == 3:
            partition = filled_deepspeed_config(config, runtime, self.accumulation)
        model = build_model(config, partition, load=self.resume_from is None)
        self.dit_config = model.config
        if degree > 1:  # each group of `degree` ranks splits every sample's tokens
            sequence_parallel.install(model, sequence_group(runtime, degree),
                                      config.distributed.sequence_parallel_mode)
        self.engine = build_engine(model, config, runtime, self.accumulation)
        if self.engine.kind == "zero3" and (config.optim.ema_decay
                                            or config.validation.render_every):
            raise ValueError("optim.ema_decay and validation.render_every need whole "
                             "parameters on rank 0; ZeRO-3 partitions them (use ZeRO-2)")
        self.ema = (EMA(self.engine.named_trainable(), config.optim.ema_decay)
                    if config.optim.ema_decay and runtime.is_main else None)
        dataset = build_dataset(config.data, config.stage.frames, config.seed)
        self.loader, self.sampler = build_loader(  # a sequence-parallel group shares data
            dataset, config.stage.mixture, config.train.micro_batch_size, config.seed,
            self.data_rank, self.data_ranks, config.data.num_workers,
            pin_memory=runtime.device.type == "cuda")
        self.validation_batches = self._validation_batches()
        self.vae = (load_vae(config.validation.vae).to(runtime.device).eval()
                    if config.validation.render_every and runtime.is_main else None)
        self.dropout = config.diffusion.condition_dropout()
        self.step = self.skipped_steps = self.bad_in_a_row = 0
        self.bad_clips: dict[str, set[str]] = {}  # kind -> the bad clips replaced so far
        self.logger = TrainingLogger(self.stage_dir, config.stage.steps, 0, enabled=False)

    def _validation_batches(self) -> list[dict[str, Any]]:
        spec = self.config.validation
        if not (spec.every or spec.render_every):
            return []
        dataset = build_dataset(self.config.data, self.config.stage.frames, self.config.seed,
                                split="heldout")
        return fixed_batches(dataset, self.config.train.micro_batch_size, spec.batches)

    # ------------------------------------------------------------------ the loop

    def run(self) -> TrainResult:
        config, total = self.config, self.config.stage.steps
        if self.resume_from is not None:
            self.load(self.resume_from)
        self.logger = TrainingLogger(self.stage_dir, total, self.step, self.runtime.is_main,
                                     config.logging.every, config.logging.tensorboard,
                                     config.logging.progress_bar, config.stage.name)
        self.logger.info(f"{config.stage.name}: steps {self.step}->{total}, global batch "
                         f"{config.train.global_batch_size} = {config.train.micro_batch_size} x "
                         f"{self.accumulation} accumulation x {self.runtime.world_size} "
                         f"processes, engine {self.engine.kind}, device {self.runtime.device}")
        batches = iter(self.loader)  # after load(): the sampler continues where it stopped
        while self.step < total:
            metrics = self.train_step(batches)
            self.step += 1
            self.logger.log_step(self.step, metrics, config.train.global_batch_size)
            if self.due(config.validation.every):
                self.logger.log_validation(self.step, self.validate())
            if self.due(config.validation.render_every):
                self.render()
            stopping = self.step == config.train.stop_at and self.step < total
            if self.step % config.checkpoint.every == 0 or stopping or self.step == total:
                self.save()
            if stopping:
                self.logger.info(f"stopped after step {self.step} (train.stop_at)")
                return TrainResult(self.stage_dir, self.step, False, self.skipped_steps, None)
        self.export_final()
        return TrainResult(self.stage_dir, self.step, True, self.skipped_steps,
                           final_dir(self.stage_dir))

    def due(self, every: int) -> bool:
        """Whether a periodic action (every ``every`` steps and at the end; 0: never) is due."""
        return bool(every) and (self.step % every == 0 or self.step == self.config.stage.steps)

    def train_step(self, batches: Iterator[dict[str, Any]]) -> dict[str, Any]:
        """One optimizer step over ``accumulation`` micro-batches of this rank."""
        config, engine = self.config, self.engine
        lr = engine.lr  # the lr of this step (DeepSpeed steps its scheduler inside backward)
        losses = []
        for micro in range(self.accumulation):
            batch = next(batches)
            self.record_bad_clips(batch)
            latents, conditions = batch_to_conditions(batch, self.runtime.device)
            check_required(conditions, self.dit_config, "the training batch")
            generator = seeded_generator(config.seed, self.step, micro, self.data_rank)
            with engine.autocast():
                loss, _ = flow_matching_loss(engine.model, latents, conditions, generator,
                                             shift=config.diffusion.shift, dropout=self.dropout,
                                             distribution=config.diffusion.sigma_distribution)
            engine.backward(loss)
            losses.append(loss.detach().float())
        local_loss = torch.stack(losses).mean()
        loss = float(self.runtime.all_reduce_mean(local_loss))
        grad_norm, applied = engine.step(skip=not bool(torch.isfinite(local_loss)))
        self.check_step(loss, grad_norm, applied)
        return {"loss": loss, "grad_norm": grad_norm, "lr": lr, "applied": applied,
                "skipped_steps": self.skipped_steps,
                "bad_clips": {kind: len(ids) for kind, ids in sorted(self.bad_clips.items())}}

    def record_bad_clips(self, batch: dict[str, Any]) -> None:
        """Remember, per kind, the bad clips this rank's samples stood in for (the dataset
        names them in ``replaced``); they go to ``metrics.jsonl`` and the trainer state."""
        for kind, replaced in zip(batch.get("kind", ()), batch.get("replaced", ())):
            if replaced:
                self.bad_clips.setdefault(kind, set()).add(str(replaced))

    def check_step(self, loss: float, grad_norm: float, applied: bool) -> None:
        """Count a step whose loss or gradient was not finite; stop after too many in a row."""
        if applied and math.isfinite(loss):
            self.bad_in_a_row = 0
            if self.ema is not None:
                self.ema.update(self.engine.named_trainable())
            return
        self.skipped_steps += 1
        self.bad_in_a_row += 1
        LOG.warning("step %d: non-finite loss (%s) or gradient norm (%s); optimizer step "
                    "skipped (%d skipped in total, %d in a row)", self.step + 1, loss, grad_norm,
                    self.skipped_steps, self.bad_in_a_row)
        limit = self.config.train.max_bad_steps
        if self.bad_in_a_row >= limit:
            raise NonFiniteLossError(
                f"training stopped at step {self.step + 1}: {limit} consecutive steps had a "
                f"non-finite loss or gradient norm (train.max_bad_steps={limit}). Check the "
                f"data for NaN/Inf, lower the learning rate (now {self.engine.lr:.3g}), or "
                f"resume from the last checkpoint in {self.checkpoints}")

    @torch.no_grad()
    def validate(self) -> float:
        """Mean flow-matching loss on the fixed validation batches with fixed noise."""
        config, engine = self.config, self.engine
        engine.model.eval()
        losses = []
        for index, batch in enumerate(self.validation_batches):
            latents, conditions = batch_to_conditions(batch, self.runtime.device)
            generator = seeded_generator(config.seed, VALIDATION_STREAM, index)
            with engine.autocast():
                loss, _ = flow_matching_loss(engine.model, latents, conditions, generator,
                                             shift=config.diffusion.shift,
                                             distribution=config.diffusion.sigma_distribution)
            losses.append(loss.float())
        engine.model.train()
        return float(torch.stack(losses).mean())

    def render(self) -> None:
        """Rank 0 writes ``validation/step-XXXXXXXX.mp4`` (see renders.py)."""
        if self.vae is not None:
            spec = self.config.validation
            path = self.stage_dir / "validation" / f"step-{self.step:08d}.mp4"
            render_validation(self.engine.module, self.vae, self.validation_batches[0], path,
                              num_steps=spec.render_steps, guidance=spec.guidance,
                              seed=self.config.seed, fps=spec.fps)
            self.engine.module.train()
            self.logger.info(f"validation render: {path}")
        self.runtime.barrier()

    # ------------------------------------------------------------------ checkpoints

    def find_resume_checkpoint(self) -> Optional[Path]:
        resume = self.config.checkpoint.resume
        if resume in ("never", "", None):
            return None
        if resume == "auto":
            return ckpt.latest_checkpoint(self.checkpoints)
        ckpt.read_trainer_state(resume)  # raises a clear error if it is not a checkpoint
        return Path(resume)

    def trainer_state(self) -> dict[str, Any]:
        consumed = self.step * self.config.train.global_batch_size
        return {"step": self.step, "stage": self.config.stage.name,
                "frames": self.config.stage.frames, "engine": self.engine.kind,
                "world_size": self.runtime.world_size, "seed": self.config.seed,
                "global_batch_size": self.config.train.global_batch_size,
                "sampler": {**self.sampler.state_dict(), "samples_consumed": consumed},
                "skipped_steps": self.skipped_steps, "bad_steps_in_a_row": self.bad_in_a_row,
                "bad_clips": {kind: sorted(ids) for kind, ids in sorted(self.bad_clips.items())},
                "torch_threads": torch.get_num_threads()}

    def save(self) -> None:
        """Write checkpoint ``self.step`` atomically (collective; see checkpoint.py)."""
        runtime, engine = self.runtime, self.engine
        if runtime.is_main:
            ckpt.prepare_staging(self.checkpoints, self.step)
        runtime.barrier()
        staging = ckpt.staging_path(self.checkpoints, self.step)
        weights = engine.full_state_dict()
        optimizer = engine.optimizer_state()
        if optimizer is not None:
            ckpt.save_tree(ckpt.rank_stem(staging, "optimizer", runtime.rank), optimizer)
        ckpt.save_tree(ckpt.rank_stem(staging, "rng", runtime.rank), ckpt.capture_rng())
        engine.save_native(staging)
        if runtime.is_main:
            ckpt.save_weights(staging, weights, engine.module.config)
            ckpt.save_tree(staging / "scheduler", engine.scheduler.state_dict())
            if self.ema is not None:
                ckpt.write_safetensors(staging / "ema.safetensors", self.ema.state_dict())
        runtime.barrier()
        if runtime.is_main:
            state = self.trainer_state()
            state["native_digests"] = ckpt.digest_folder(staging / ckpt.NATIVE_FOLDER)
            ckpt.commit(self.checkpoints, self.step, state, self.config.checkpoint.keep_last)
        runtime.barrier()

    def load(self, path: Path) -> None:
        """Restore everything :meth:`save` wrote (collective)."""
        state = ckpt.read_trainer_state(path)
        for key, mine in (("stage", self.config.stage.name), ("engine", self.engine.kind)):
            if state[key] != mine:
                raise ValueError(f"cannot resume from {path}: it was written with {key} "
                                 f"{state[key]!r}, this run has {mine!r}")
        device, rank = self.runtime.device, self.runtime.rank
        if not self.engine.native:
            self.engine.load_module_state(ckpt.load_weights(path, device))
            self.engine.load_optimizer_state(
                ckpt.load_tree(ckpt.rank_stem(path, "optimizer", rank), device))
        if self.engine.native:  # DeepSpeed unpickles these: only what we wrote and recorded
            ckpt.verify_folder(path / ckpt.NATIVE_FOLDER, state.get("native_digests"))
        self.engine.load_native(path)
        self.engine.scheduler.load_state_dict(ckpt.load_tree(path / "scheduler"))
        if self.ema is not None:
            self._load_ema(path)
        ckpt.restore_rng(ckpt.load_tree(ckpt.rank_stem(path, "rng", rank)))
        self.sampler.load_state_dict(state["sampler"])
        self.step, self.skipped_steps = state["step"], state["skipped_steps"]
        self.bad_in_a_row = state["bad_steps_in_a_row"]
        self.bad_clips = {kind: set(ids) for kind, ids in state.get("bad_clips", {}).items()}
        restore_threads(state.get("torch_threads"), path)
        LOG.info("resumed %s from %s at step %d", self.config.stage.name, path, self.step)

    def _load_ema(self, path: Path) -> None:
        from safetensors.torch import load_file

        file = path / "ema.safetensors"
        if file.is_file():
            self.ema.load_state_dict(load_file(str(file)))
        else:
            LOG.warning("%s has no EMA weights; the EMA restarts from the current weights",
                        path)
            self.ema = EMA(self.engine.named_trainable(), self.config.optim.ema_decay)

    def export_final(self) -> None:
        """``final/`` (and ``final-ema/``): consolidated weights for inference (collective)."""
        weights = self.engine.full_state_dict()
        config = self.engine.module.config
        trained = {"height": self.config.data.height, "width": self.config.data.width,
                   "frames": self.config.stage.frames}
        export = ckpt.export_weights  # LoRA: merged weights + adapter.safetensors
        if lora.has_lora(self.engine.module):
            export = functools.partial(lora.export_merged, self.engine.module)
        if self.runtime.is_main:
            export(final_dir(self.stage_dir), weights, config, trained)
            if self.ema is not None:
                export(self.stage_dir / FINAL_EMA_DIR, {**weights, **self.ema.state_dict()},
                       config, trained)
        if self.config.distributed.export_rank_weights:
            directory = self.stage_dir / "rank_weights"
            directory.mkdir(parents=True, exist_ok=True)
            ckpt.write_safetensors(directory / f"rank{self.runtime.rank}.safetensors",
                                   self.engine.module.state_dict())
        self.runtime.barrier()
