"""Benchmarks of the scheduling core (issue: scheduling core). Gates are ratios measured in one run.

- steady state: 1000 jobs x 100 tasks, 1000 renders, every render busy; one cycle = a task finishes (the
  job records it and frees the render), the solver decides and dispatches, the job marks the next task
  running and builds its assignment. Reported: solver decisions per second and full cycles per second.
- scaling: the same cycle with 10,000 jobs vs 100 jobs; gate: cost ratio <= 2.
- cold fill: 1000 idle renders come online while every job has ready tasks; core vs pykka actors;
  gate: pykka / core <= 20 (the targets are 50 ms and 1 s).
"""

from __future__ import annotations

import gc
import statistics
import threading
import time

from conftest import SHORT
from farmload import CoreFarm

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.messages import Assign, Message, RenderOnline, SubmitJob
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER
from farmhand.core.solver import Solver


def _steady(farm: CoreFarm, cycles: int) -> tuple[float, float]:
    """Seconds per full cycle and per solver decision (median of 5 slices) over ``cycles`` cycles."""
    rt = farm.rt
    solver = farm.solver
    solver_route = rt._route
    full: list[float] = []
    decide: list[float] = []
    per_slice = max(cycles // 5, 1)
    for _ in range(5):
        spent = 0.0
        before = solver.decisions
        start = time.perf_counter()
        for _ in range(per_slice):
            farm_cycle_start = time.perf_counter()
            a = farm.running.popleft()
            rt.send(f"job/{a.job_id}", _finished(rt, a))
            queue = rt.queue
            while queue:
                to, msg = queue.popleft()
                if to == SOLVER:
                    t = time.perf_counter()
                    solver_route(to, msg)
                    spent += time.perf_counter() - t
                else:
                    solver_route(to, msg)
            del farm_cycle_start
        full.append((time.perf_counter() - start) / per_slice)
        decide.append(spent / max(solver.decisions - before, 1))
    return statistics.median(full), statistics.median(decide)


def _finished(rt, a: Assign) -> Message:  # type: ignore[no-untyped-def]
    from farmhand.core.messages import TaskFinished

    return TaskFinished(rt.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render, "done")


def _busy_farm(jobs: int, tasks: int, renders: int) -> CoreFarm:
    farm = CoreFarm(jobs, tasks, renders)
    farm.submit_jobs()
    farm.renders_online()
    assert len(farm.running) == renders
    return farm


def test_steady_state_decisions(benchmark) -> None:  # type: ignore[no-untyped-def]
    farm = _busy_farm(1000, 100, 1000)
    cycles = 5_000 if SHORT else 40_000
    gc.collect()
    cycle_s, decision_s = _steady(farm, cycles)
    benchmark.extra_info.update(
        {"cycle_us": cycle_s * 1e6, "decision_us": decision_s * 1e6, "decisions_per_s": 1 / decision_s,
         "cycles_per_s": 1 / cycle_s}
    )
    print(f"\nsteady state: solver {1 / decision_s:,.0f} decisions/s ({decision_s * 1e6:.2f} us); "
          f"full cycle {1 / cycle_s:,.0f}/s ({cycle_s * 1e6:.2f} us)")
    benchmark.pedantic(farm.finish_one, rounds=200 if SHORT else 2000, iterations=1)
    assert farm.solver.decisions > cycles


def test_decision_scaling_10000_vs_100_jobs(benchmark) -> None:  # type: ignore[no-untyped-def]
    tasks = 20
    cycles = 3_000 if SHORT else 20_000
    small = _busy_farm(100, tasks, 1000 if not SHORT else 500)
    small_cycle, small_decision = _steady(small, min(cycles, 100 * tasks - 1000))
    del small
    gc.collect()
    large = _busy_farm(10_000, tasks, 1000 if not SHORT else 500)
    large_cycle, large_decision = _steady(large, cycles)
    ratio = large_decision / small_decision
    cycle_ratio = large_cycle / small_cycle
    benchmark.extra_info.update(
        {"decision_us_100_jobs": small_decision * 1e6, "decision_us_10000_jobs": large_decision * 1e6,
         "decision_ratio": ratio, "cycle_ratio": cycle_ratio}
    )
    print(f"\nscaling: decision {small_decision * 1e6:.2f} us at 100 jobs, {large_decision * 1e6:.2f} us at "
          f"10,000 jobs: ratio {ratio:.2f} (full cycle ratio {cycle_ratio:.2f})")
    benchmark.pedantic(large.finish_one, rounds=200, iterations=1)
    assert ratio <= 2.0, f"a decision at 10,000 jobs costs {ratio:.2f}x one at 100 jobs (gate: <= 2)"


def _core_cold_fill() -> float:
    farm = CoreFarm(1000, 100, 1000)
    farm.submit_jobs()
    gc.collect()
    start = time.perf_counter()
    farm.renders_online()
    elapsed = time.perf_counter() - start
    assert len(farm.running) == 1000
    return elapsed


class _AssignCounter:
    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.count = 0
        self.lock = threading.Lock()
        self.done = threading.Event()

    def __call__(self, _to: str, msg: Message) -> None:
        if type(msg) is Assign:
            with self.lock:
                self.count += 1
                if self.count == self.expected:
                    self.done.set()


def _wait_quiet(runtime: PykkaRuntime, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    last = -1
    while time.monotonic() < deadline:
        time.sleep(0.2)
        if runtime.messages == last:
            return
        last = runtime.messages
    raise AssertionError("the actors never went quiet")


def _pykka_cold_fill() -> float:
    farm = CoreFarm(1000, 100, 1000)  # only for its specs and render infos
    runtime = PykkaRuntime()
    counter = _AssignCounter(1000)
    try:
        runtime.sink("render/", counter)
        runtime.sink(EVENTS, lambda _t, _m: None)
        runtime.spawn(REGISTRY, Registry())
        runtime.spawn(SOLVER, Solver(make_policy("priority")))
        for spec in farm.specs:
            runtime.send(REGISTRY, SubmitJob(runtime.next_id(), spec, spec.user or "user"))
        _wait_quiet(runtime)
        start = time.perf_counter()
        for info in farm.renders:
            runtime.send(SOLVER, RenderOnline(runtime.next_id(), info))
        assert counter.done.wait(60), f"only {counter.count} assignments arrived"
        return time.perf_counter() - start
    finally:
        runtime.stop()


def test_cold_fill_core_and_actors(benchmark) -> None:  # type: ignore[no-untyped-def]
    core_s = statistics.median(_core_cold_fill() for _ in range(3 if SHORT else 5))
    actors_s = statistics.median(_pykka_cold_fill() for _ in range(1 if SHORT else 3))
    ratio = actors_s / core_s
    benchmark.extra_info.update({"core_ms": core_s * 1e3, "actors_ms": actors_s * 1e3, "ratio": ratio})
    print(f"\ncold fill of 1000 idle renders (1000 jobs x 100 tasks ready): core {core_s * 1e3:.1f} ms, "
          f"pykka actors {actors_s * 1e3:.1f} ms, ratio {ratio:.1f}")
    benchmark.pedantic(_core_cold_fill, rounds=1, iterations=1)
    assert ratio <= 20.0, f"cold fill through the actors costs {ratio:.1f}x the core (gate: <= 20)"
