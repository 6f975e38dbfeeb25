"""Small timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def synchronize(device: str | torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def median_seconds(fn: Callable[[], object], reps: int, device: str | torch.device = "cpu", setup: Callable[[], object] | None = None) -> float:
    """Median wall time of fn() over reps runs (after one warm-up); setup() runs untimed before each."""
    times = []
    for i in range(reps + 1):
        state = setup() if setup else None
        synchronize(device)
        start = time.perf_counter()
        fn(state) if setup else fn()
        synchronize(device)
        if i:  # the first run warms caches and allocators
            times.append(time.perf_counter() - start)
    return statistics.median(times)
