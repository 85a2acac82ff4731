"""The bare SimPy FIFO baseline: the same workload on the same number of slots, with nothing but a queue.

Tasks join one FIFO queue when their job is submitted; ``slots`` servers take them in order; each run is a
SimPy timeout whose completion callback starts the next queued task. No scheduler, no messages, no
dependencies, no records: it bounds how fast any SimPy simulation of the workload can go, and the benchmark
compares ``farmhand sim`` against it in the same run.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import simpy


@dataclass
class BaselineResult:
    """Completed task runs, the simulated end time and the wall-clock (and CPU) seconds of the run loop."""

    runs: int
    sim_time: float
    wall_s: float
    cpu_s: float = 0.0

    @property
    def runs_per_s(self) -> float:
        """Task runs per wall-clock second."""
        return self.runs / self.wall_s if self.wall_s > 0 else float("inf")


def run_fifo(arrivals: Sequence[tuple[float, Sequence[float]]], slots: int) -> BaselineResult:
    """Simulate ``arrivals`` (submission time, task durations) on ``slots`` identical servers, FIFO."""
    env = simpy.Environment()
    queue: deque[float] = deque()
    free = [slots]
    done = [0]

    def start(duration: float) -> None:
        free[0] -= 1
        env.timeout(duration).callbacks.append(finished)

    def finished(_event: simpy.Event) -> None:
        done[0] += 1
        free[0] += 1
        if queue:
            start(queue.popleft())

    def submit(event: simpy.Event) -> None:
        queue.extend(event._value)
        while free[0] and queue:
            start(queue.popleft())

    for at, durations in sorted(arrivals, key=lambda a: a[0]):
        env.timeout(at, value=list(durations)).callbacks.append(submit)
    started = time.perf_counter()
    cpu = time.process_time()
    env.run()
    return BaselineResult(done[0], env.now, time.perf_counter() - started, time.process_time() - cpu)


def arrivals_of(workload: object) -> list[tuple[float, list[float]]]:
    """A :class:`farmhand.sim.workload.Workload` as (submission time, durations of every task)."""
    from farmhand.core.frames import block_task_count

    out: list[tuple[float, list[float]]] = []
    for job in workload.jobs:  # type: ignore[attr-defined]
        durations: list[float] = []
        for block, d in zip(job.spec.blocks, job.durations, strict=True):
            durations.extend([d] * block_task_count(block) if isinstance(d, float) else d)
        out.append((job.submit_at, durations))
    return out
