"""Benchmark settings: ``FARMHAND_BENCH_SHORT=1`` (what CI sets) runs smaller loops; gates are ratios."""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable

SHORT = os.environ.get("FARMHAND_BENCH_SHORT", "") not in ("", "0")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
