"""Helpers shared by the benchmarks: device synchronisation, a median timer, an alternating timer, and a one-line
machine description."""
from __future__ import annotations

import os
import platform
import statistics
import time
from typing import Callable

import torch


def sync(dev: torch.device | None) -> None:
    "Wait for queued GPU work, so that a timer measures it."
    if dev is not None and torch.device(dev).type == "cuda": torch.cuda.synchronize(dev)


def timed(fn: Callable[[], object], dev: torch.device | None, repeats: int) -> tuple[float, list[float]]:
    "Median and all wall times of `repeats` calls of `fn` (synchronised on `dev`)."
    ts = []
    for _ in range(repeats):
        sync(dev); t0 = time.perf_counter(); fn(); sync(dev); ts.append(time.perf_counter() - t0)
    return statistics.median(ts), ts


def alternating(fns: dict[str, Callable[[], object]], dev: torch.device, repeats: int
                ) -> tuple[dict[str, list[float]], dict[str, int]]:
    """Wall times of `repeats` rounds of every function in `fns`, the order reversed every other round against
    drift; on CUDA also each function's peak allocated memory (bytes). Returns (times, peak)."""
    times, peak = {k: [] for k in fns}, {}
    for r in range(repeats):
        for k in (list(fns) if r % 2 == 0 else list(fns)[::-1]):
            if dev.type == "cuda": torch.cuda.reset_peak_memory_stats(dev)
            sync(dev); t0 = time.perf_counter(); fns[k](); sync(dev)
            times[k].append(time.perf_counter() - t0)
            if dev.type == "cuda": peak[k] = max(peak.get(k, 0), torch.cuda.max_memory_allocated(dev))
    return times, peak


def machine(dev: torch.device) -> str:
    "CPU model, logical CPUs, torch version and threads, GPU name, load average."
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((l.split(":", 1)[1].strip() for l in f if l.startswith("model name")), cpu)
    except OSError: pass
    s = f"{cpu}, {os.cpu_count()} logical CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.device(dev).type == "cuda": s += f", GPU {torch.cuda.get_device_name(dev)}"
    try: s += f", load average {os.getloadavg()[0]:.1f}"
    except OSError: pass
    return s
