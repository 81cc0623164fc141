"""Helpers shared by the benchmarks: device synchronisation, a median timer, and a one-line machine description."""
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
