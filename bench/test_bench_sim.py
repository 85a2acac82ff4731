"""Benchmark: ``farmhand sim``'s default scenario against the bare SimPy FIFO baseline, in the same run.

The default scenario of ``farmhand sim`` (1000 jobs x 100 tasks, 500 renders, the default generator options and
policy) is simulated with the full core (registry, solver, jobs, render behaviours, virtual workers on the SimPy
runtime); the baseline (:mod:`bench.simpy_baseline`) runs the same tasks on the same number of slots with a queue
and completion callbacks only. Both rates are task runs per wall-clock second of the simulation loop (building
the farm and summarising the records are timed and reported apart). Checks:

- the simulation runs at >= 1/10 of the baseline's speed, measured in the same run;
- (full scenario only) >= 30,000 task runs per second;
- peak memory (the process's peak resident set, ``ru_maxrss``: an upper bound for the run) under 1 GiB.

``FARMHAND_BENCH_SHORT=1`` runs a smaller scenario (100 jobs x 100 tasks on 50 renders) and checks the ratio and
the memory only. Run with ``-s`` to see the figures; ``python bench/test_bench_sim.py`` prints them too.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from typing import Any

from farmhand.core.policies import make_policy
from farmhand.sim.run import run_sim
from farmhand.sim.workload import GeneratorOptions, generate

# bench/ is on sys.path both under pytest (rootdir-relative test module) and when run as a script
from simpy_baseline import arrivals_of, run_fifo  # isort: skip

SHORT = os.environ.get("FARMHAND_BENCH_SHORT", "") not in ("", "0")
JOBS, TASKS, RENDERS = (100, 100, 50) if SHORT else (1000, 100, 500)
POLICY = "priority"  # farmhand sim's default
MIN_RATE = 30_000
MIN_RATIO = 0.1
MAX_PEAK_BYTES = 1 << 30


def peak_rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports kilobytes, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def measure() -> dict[str, Any]:
    """Run the scenario and the baseline once each; every figure of the benchmark."""
    started = time.perf_counter()
    workload = generate(GeneratorOptions(jobs=JOBS, tasks=TASKS, renders=RENDERS), seed=0)
    generated = time.perf_counter() - started
    baseline = run_fifo(arrivals_of(workload), sum(r.max_tasks for r in workload.renders or ()))
    result = run_sim(workload, make_policy(POLICY), seed=0)
    runs = result.summary["task_runs"]
    loop_rate = runs / result.timings["run_s"]
    return {
        "scenario": f"{JOBS} jobs x {TASKS} tasks, {RENDERS} renders, policy {POLICY}" + (" (short)" if SHORT else ""),
        "task_runs": runs,
        "tasks_done": result.summary["tasks_done"],
        "generate_s": generated,
        **result.timings,
        "sim_runs_per_s": loop_rate,
        "sim_end_to_end_runs_per_s": runs / (result.summary["wall_s"]),
        "baseline_runs": baseline.runs,
        "baseline_s": baseline.wall_s,
        "baseline_runs_per_s": baseline.runs_per_s,
        "ratio_to_baseline": loop_rate / baseline.runs_per_s,
        "messages": result.summary["events"],
        "peak_rss_mib": peak_rss_bytes() / 2**20,
    }


def report(figures: dict[str, Any]) -> str:
    return "\n".join(
        f"  {k:28s} {v:,.3f}" if isinstance(v, float) else f"  {k:28s} {v}" for k, v in figures.items()
    )


def test_sim_against_the_simpy_baseline(benchmark: Any) -> None:
    figures: dict[str, Any] = {}

    def once() -> None:
        figures.update(measure())

    benchmark.pedantic(once, rounds=1, iterations=1)
    benchmark.extra_info.update(figures)
    print("\nfarmhand sim benchmark\n" + report(figures))
    assert figures["tasks_done"] == JOBS * TASKS
    assert figures["baseline_runs"] == JOBS * TASKS
    assert figures["peak_rss_mib"] * 2**20 < MAX_PEAK_BYTES, f"peak memory {figures['peak_rss_mib']:.0f} MiB"
    assert figures["ratio_to_baseline"] >= MIN_RATIO, (
        f"{figures['sim_runs_per_s']:,.0f} task runs/s is {figures['ratio_to_baseline']:.3f} of the bare SimPy "
        f"baseline's {figures['baseline_runs_per_s']:,.0f}/s (need >= {MIN_RATIO})"
    )
    if not SHORT:
        assert figures["sim_runs_per_s"] >= MIN_RATE, f"{figures['sim_runs_per_s']:,.0f} task runs/s < {MIN_RATE:,}"


if __name__ == "__main__":
    print(report(measure()))
