"""Training telemetry on rank 0: ``metrics.jsonl``, TensorBoard scalars, a tqdm bar.

``metrics.jsonl`` has one JSON object per optimizer step (``{"step", "loss", "grad_norm",
"lr", "applied", "skipped_steps", "samples_per_second"}``) and per validation
(``{"step", "validation_loss"}``); floats are written with ``repr`` precision, so curves read
back bit-exactly (the exact-resume test compares them with ``==``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"


class TrainingLogger:
    """Writes metrics when ``enabled`` (rank 0); a no-op elsewhere.

    Args:
        directory: the stage's output folder (``metrics.jsonl``, ``tensorboard/``).
        total_steps, start_step: for the progress bar (``start_step`` > 0 after a resume).
        every: TensorBoard / progress-bar cadence in steps (``metrics.jsonl`` gets every step).
    """

    def __init__(self, directory: str | Path, total_steps: int, start_step: int,
                 enabled: bool, every: int = 10, tensorboard: bool = True,
                 progress_bar: bool = True, description: str = "train") -> None:
        self.enabled, self.every = enabled, every
        self.writer = self.bar = self.file = None
        if not enabled:
            return
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.file = open(directory / METRICS_FILE, "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(directory / "tensorboard"), purge_step=start_step)
        if progress_bar:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=description,
                            dynamic_ncols=True)
        self._last_time = time.perf_counter()

    def log_step(self, step: int, metrics: dict[str, Any], samples: int) -> None:
        """Record optimizer step ``step`` (1-based) that trained on ``samples`` samples."""
        if not self.enabled:
            return
        now = time.perf_counter()
        metrics = {"step": step, **metrics,
                   "samples_per_second": samples / max(now - self._last_time, 1e-9)}
        self._last_time = now
        self.file.write(json.dumps(metrics) + "\n")
        if self.bar is not None:
            self.bar.update(1)
            if step % self.every == 0:
                self.bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}")
        if self.writer is not None and step % self.every == 0:
            for key in ("loss", "grad_norm", "lr", "skipped_steps", "samples_per_second"):
                self.writer.add_scalar(f"train/{key}", metrics[key], step)

    def log_validation(self, step: int, loss: float) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"step": step, "validation_loss": loss}) + "\n")
        if self.writer is not None:
            self.writer.add_scalar("validation/loss", loss, step)
        self._last_time = time.perf_counter()  # do not bill validation to the next step

    def info(self, message: str) -> None:
        if self.enabled:
            (self.bar.write if self.bar is not None else print)(message)

    def close(self) -> None:
        for resource in (self.bar, self.writer, self.file):
            if resource is not None:
                resource.close()


def read_metrics(directory: str | Path) -> list[dict[str, Any]]:
    """All records of a stage's ``metrics.jsonl`` (later records of a step win in
    :func:`loss_curve`, as a resumed run repeats steps after its last checkpoint)."""
    path = Path(directory) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def loss_curve(directory: str | Path, key: str = "loss") -> dict[int, float]:
    """``{step: value}`` of ``key`` from ``metrics.jsonl``."""
    curve: dict[int, float] = {}
    for record in read_metrics(directory):
        if key in record:
            curve[record["step"]] = record[key]
    return curve
