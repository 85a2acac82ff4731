"""Benchmarks of the scheduling core (issue: scheduling core), on the deterministic manual runtime.

Each test's pytest-benchmark row times the work it names and nothing else; the figures are in ``extra_info``.

- steady state: 1000 jobs x 100 tasks, 1000 renders, every render busy. One cycle: a task finishes (the job
  records it and frees the render), the solver decides and dispatches, the job marks the next task running and
  builds its assignment. Row: one cycle (40,000 rounds; short mode 5000). Figures: the median solver decision
  and the median cycle. Gate, a ratio measured in the same run: the median decision in *reference steps*
  (:func:`conftest.reference_seconds`, a fixed piece of plain Python timed between the cycles), at most
  ``STEADY_GATE_STEPS`` (25: about 3x the 8 it measures; the shared machine's speed drifts cancel out of it).
  Full mode also asserts the target itself: >= 100,000 decisions per second.
- scaling: the same cycle at 10,000 jobs and at 100 jobs, on a uniform farm (capacity-1 renders, no
  constraints) and on a mixed one (tags, renders of 1-4 slots, capacity-2 tasks, hosts masks and excludes,
  running caps: ``farmload.CoreFarm(mixed=True)``). The two farms' cycles alternate one by one, so that the
  machine's drift falls on both alike. Row: a cycle at 10,000 jobs. Gate, a ratio measured in the same run:
  the median decision at 10,000 jobs / at 100 jobs <= 2 (the target; short mode, smaller runs, <= 3).
- cold fill: 1000 idle renders come online while 1000 jobs x 100 tasks are ready. Row: the fill alone
  through the core (building and submitting the farm is the untimed setup of each round). Gates: through the
  pykka actors / through the core <= 20, a ratio in the same run; full mode asserts the targets (core
  <= 50 ms, actors <= 1 s); short mode only loose floors (core <= 250 ms, actors <= 5 s).
"""

from __future__ import annotations

import gc
import statistics
import threading
import time
from typing import Any

import pytest
from conftest import SHORT, _reference_work
from farmload import CoreFarm

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.messages import Assign, Message, RenderOnline, SubmitJob, TaskFinished
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address
from farmhand.core.solver import Solver

#: the steady-state gate: a median decision costs at most this many reference steps (measured: about 8)
STEADY_GATE_STEPS = 25.0
TARGET_DECISIONS_PER_S = 100_000
SCALING_GATE = 3.0 if SHORT else 2.0
REFERENCE_CHUNK = 200  # reference steps run between two cycles of the steady-state test


class Cycler:
    """One farm's steady-state cycle, instrumented: the solver's own time in each cycle is kept."""

    def __init__(self, farm: CoreFarm) -> None:
        self.farm = farm
        self.decision_s: list[float] = []  # solver seconds of each cycle in which it made exactly one decision
        self.cycle_s: list[float] = []  # wall seconds of each cycle (when ``timed``)

    def cycle(self, timed: bool = False) -> None:
        """The oldest running task finishes; the messages it causes are delivered until the runtime is quiet."""
        start = time.perf_counter()
        farm = self.farm
        rt = farm.rt
        route = rt._route
        queue = rt.queue
        solver = farm.solver
        before = solver.decisions
        a = farm.running.popleft()
        rt.send(
            job_address(a.job_id),
            TaskFinished(rt.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render, "done"),
        )
        spent = 0.0
        while queue:
            to, msg = queue.popleft()
            if to == SOLVER:
                t = time.perf_counter()
                route(to, msg)
                spent += time.perf_counter() - t
            else:
                route(to, msg)
        if solver.decisions - before == 1:
            self.decision_s.append(spent)
        if timed:
            self.cycle_s.append(time.perf_counter() - start)

    def median_decision(self) -> float:
        """The median solver time of a one-decision cycle."""
        assert self.decision_s, "no cycle made exactly one decision"
        return statistics.median(self.decision_s)


def _busy_farm(jobs: int, tasks: int, renders: int, mixed: bool = False) -> CoreFarm:
    farm = CoreFarm(jobs, tasks, renders, mixed=mixed)
    farm.submit_jobs()
    farm.renders_online()
    assert len(farm.running) >= renders, f"only {len(farm.running)} tasks running on {renders} renders"
    return farm


def test_steady_state_decisions(benchmark: Any) -> None:
    farm = _busy_farm(1000, 100, 1000)
    cycler = Cycler(farm)
    cycles = 5_000 if SHORT else 40_000
    reference: list[float] = []

    def between() -> None:  # untimed: a slice of the reference workload between two cycles
        t = time.perf_counter()
        _reference_work(REFERENCE_CHUNK)
        reference.append((time.perf_counter() - t) / REFERENCE_CHUNK)

    gc.collect()
    benchmark.pedantic(cycler.cycle, setup=between, rounds=cycles, iterations=1)
    cycle_s = benchmark.stats.stats.median
    decision_s = cycler.median_decision()
    step_s = statistics.median(reference)
    steps = decision_s / step_s
    benchmark.extra_info.update(
        {"cycle_us": cycle_s * 1e6, "decision_us": decision_s * 1e6, "decisions_per_s": 1 / decision_s,
         "cycles_per_s": 1 / cycle_s, "reference_step_us": step_s * 1e6, "decision_in_reference_steps": steps}
    )
    print(f"\nsteady state: solver {1 / decision_s:,.0f} decisions/s ({decision_s * 1e6:.2f} us, {steps:.1f} "
          f"reference steps of {step_s * 1e6:.3f} us); full cycle {1 / cycle_s:,.0f}/s ({cycle_s * 1e6:.2f} us)")
    assert len(cycler.decision_s) >= 0.9 * cycles, f"only {len(cycler.decision_s)} of {cycles} cycles decided"
    assert steps <= STEADY_GATE_STEPS, f"a decision costs {steps:.1f} reference steps (gate: <= {STEADY_GATE_STEPS})"
    if not SHORT:
        assert 1 / decision_s >= TARGET_DECISIONS_PER_S, f"{1 / decision_s:,.0f} decisions/s (target: >= 100,000)"


@pytest.mark.parametrize("farm_kind", ["uniform", "mixed"])
def test_decision_scaling_10000_vs_100_jobs(benchmark: Any, farm_kind: str) -> None:
    mixed = farm_kind == "mixed"
    renders = 500
    cycles = 3_000 if SHORT else 15_000
    small = Cycler(_busy_farm(100, 200, renders, mixed))  # 20,000 tasks: the small farm never runs dry
    large = Cycler(_busy_farm(10_000, 20, renders, mixed))
    for _ in range(200):  # warm both up (caches, the first decisions after the fill)
        small.cycle()
        large.cycle()
    small.decision_s.clear()
    large.decision_s.clear()
    gc.collect()
    benchmark.pedantic(large.cycle, setup=small.cycle, rounds=cycles, iterations=1)
    small_decision, large_decision = small.median_decision(), large.median_decision()
    ratio = large_decision / small_decision
    benchmark.extra_info.update(
        {"farm": farm_kind, "decision_us_100_jobs": small_decision * 1e6,
         "decision_us_10000_jobs": large_decision * 1e6, "decision_ratio": ratio,
         "cycle_us_10000_jobs": benchmark.stats.stats.median * 1e6}
    )
    print(f"\nscaling ({farm_kind} farm): decision {small_decision * 1e6:.2f} us at 100 jobs, "
          f"{large_decision * 1e6:.2f} us at 10,000 jobs: ratio {ratio:.2f}")
    for c in (small, large):
        assert len(c.decision_s) >= 0.9 * cycles, f"only {len(c.decision_s)} of {cycles} cycles decided"
    assert ratio <= SCALING_GATE, (
        f"a decision at 10,000 jobs costs {ratio:.2f}x one at 100 jobs ({farm_kind} farm; gate: <= {SCALING_GATE})"
    )


def _submitted_farm() -> tuple[tuple[CoreFarm], dict[str, Any]]:
    """The cold fill's untimed setup: 1000 jobs x 100 tasks submitted, 1000 renders not yet online."""
    farm = CoreFarm(1000, 100, 1000)
    farm.submit_jobs()
    gc.collect()
    return (farm,), {}


def _fill(farm: CoreFarm) -> None:
    farm.renders_online()
    assert len(farm.running) == 1000


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
    """Seconds from the first RenderOnline to the 1000th assignment, through the pykka actors (submission untimed)."""
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


def test_cold_fill_core_and_actors(benchmark: Any) -> None:
    rounds = 3 if SHORT else 5
    actors: list[float] = []

    def setup() -> tuple[tuple[CoreFarm], dict[str, Any]]:
        if len(actors) < (1 if SHORT else 3):
            actors.append(_pykka_cold_fill())  # the actors' fills alternate with the core's (untimed here)
        return _submitted_farm()

    benchmark.pedantic(_fill, setup=setup, rounds=rounds, iterations=1)
    core_s = benchmark.stats.stats.median
    actors_s = statistics.median(actors)
    ratio = actors_s / core_s
    benchmark.extra_info.update({"core_ms": core_s * 1e3, "actors_ms": actors_s * 1e3, "ratio": ratio,
                                 "core_ms_all": [round(t * 1e3, 2) for t in benchmark.stats.stats.data],
                                 "actors_ms_all": [round(t * 1e3, 2) for t in actors]})
    print(f"\ncold fill of 1000 idle renders (1000 jobs x 100 tasks ready): core {core_s * 1e3:.1f} ms (median of "
          f"{rounds}), pykka actors {actors_s * 1e3:.1f} ms (median of {len(actors)}), ratio {ratio:.1f}")
    assert ratio <= 20.0, f"cold fill through the actors costs {ratio:.1f}x the core (gate: <= 20)"
    core_gate, actors_gate = (0.25, 5.0) if SHORT else (0.05, 1.0)
    assert core_s <= core_gate, f"the core's cold fill took {core_s * 1e3:.1f} ms (gate: <= {core_gate * 1e3:.0f} ms)"
    assert actors_s <= actors_gate, f"the actors' cold fill took {actors_s:.2f} s (gate: <= {actors_gate:g} s)"
