"""Timing and memory measurement shared by the benchmarks."""

from __future__ import annotations

import ctypes
import gc
import statistics
import time
from contextlib import contextmanager
from typing import Callable, Iterator

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeats: int,
                   warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_median_seconds(steps: dict[str, Callable[[], object]], device: torch.device,
                               repeats: int, warmup: int = 1) -> dict[str, float]:
    """Median wall time of each step, timed round-robin so that background load and
    thermal drift fall on every case alike (ratios stay fair on a shared machine)."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"/proc/self/status has no {field}")


def _reset_peak_rss() -> None:
    """Give freed heap pages back to the kernel (glibc ``malloc_trim``), then reset the
    resident-set high-water mark (VmHWM) to the current RSS (Linux ≥ 4.0)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the peak may read low
        pass
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


class PeakMemory:
    """Peak memory of a region in MiB above its start.

    CUDA: ``torch.cuda.max_memory_allocated`` (exact). CPU: the kernel's resident-set
    high-water mark (``VmHWM``, reset at the start of the region) minus the resident set at
    the start: exact for pages touched, independent of sampling.
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.peak_mib = 0.0

    @contextmanager
    def measure(self) -> Iterator["PeakMemory"]:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            start = torch.cuda.memory_allocated(self.device)
            yield self
            synchronize(self.device)
            self.peak_mib = (torch.cuda.max_memory_allocated(self.device) - start) / 2**20
            return
        _reset_peak_rss()
        start = _status_kib("VmRSS")
        yield self
        self.peak_mib = (_status_kib("VmHWM") - start) / 1024


@contextmanager
def saved_activation_bytes() -> Iterator[list[int]]:
    """Count the bytes of distinct tensors autograd saves for backward inside the block.

    Exact and device-independent: the part of training memory that per-token modulation
    inflates. Yields a one-element list filled in on exit.
    """
    seen: dict[tuple[int, int], int] = {}
    total = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[(storage.data_ptr(), storage.nbytes())] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield total
    total[0] = sum(seen.values())


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def format_table(rows: list[dict[str, object]], columns: list[str]) -> str:
    """A plain fixed-width table."""
    cells = [[str(row.get(col, "")) for col in columns] for row in rows]
    widths = [max(len(col), *(len(r[i]) for r in cells)) for i, col in enumerate(columns)]
    lines = ["  ".join(col.ljust(w) for col, w in zip(columns, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
