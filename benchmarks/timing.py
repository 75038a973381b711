"""Shared timing helper of the benchmark scripts (run them from the repo root: python benchmarks/<name>.py)."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def median_seconds(steps: list[Callable[[], object]], repeats: int, warmup: int = 1) -> list[float]:
    """Median wall time of each step over `repeats` rounds after `warmup` rounds.

    The steps alternate within a round so that drifts of a shared machine hit them alike.
    """
    for _ in range(warmup):
        for step in steps:
            step()
    times: list[list[float]] = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times, strict=True):
            start = time.perf_counter()
            step()
            record.append(time.perf_counter() - start)
    return [statistics.median(record) for record in times]
