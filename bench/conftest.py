"""Benchmark settings and helpers: ``FARMHAND_BENCH_SHORT=1`` (what CI sets) runs smaller loops.

Gates are ratios measured in one run where there is a baseline to measure (a reference workload, the same
code at another size, the same server with a feature off), or a budget per unit of work (CPU per heartbeat
scaled to the target), with loose floors in short mode; each test's docstring says which. The row
pytest-benchmark prints for a test is the wall time of the work the test measures, run once
(:func:`run_once`), never of an empty function.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from typing import Any, TypeVar

SHORT = os.environ.get("FARMHAND_BENCH_SHORT", "") not in ("", "0")

T = TypeVar("T")


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """The median wall time of ``repeats`` calls of ``fn``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_once(benchmark: Any, fn: Callable[[], T]) -> T:
    """Run ``fn`` once as the benchmark's only round, so that its table shows ``fn``'s wall time; its result."""
    result: T = benchmark.pedantic(fn, rounds=1, iterations=1)
    return result


def _reference_work(n: int) -> int:
    """A fixed piece of plain Python of the kind the core does: calls, dict and heap operations, small tuples."""
    import heapq

    table: dict[int, tuple[int, int]] = {}
    heap: list[tuple[int, int]] = []
    total = 0
    for i in range(n):
        key = (i * 7919) % 1024
        item = (key, i)
        table[key] = item
        heapq.heappush(heap, item)
        if len(heap) > 64:
            total += heapq.heappop(heap)[1]
        total += len(table.get(key, ()))
    return total


REFERENCE_STEPS = 20_000


def reference_seconds(repeats: int = 5) -> float:
    """The median wall time of one step of :func:`_reference_work` (about 0.3-0.5 us on this project's machine).

    Costs divided by it are in "reference steps": a speed unit of this machine at this moment, measured in the
    same run, so that a gate on them does not move when the shared machine is a third slower this hour.
    """
    return median_seconds(lambda: _reference_work(REFERENCE_STEPS), repeats) / REFERENCE_STEPS
