"""Benchmark: ``farmhand sim``'s default scenario against the bare SimPy FIFO baseline, in the same run.

The default scenario of ``farmhand sim`` (1000 jobs x 100 tasks, 500 renders, the default generator options and
policy) is simulated with the full core (registry, solver, jobs, render behaviours, virtual workers on the SimPy
runtime); the baseline (:mod:`bench.simpy_baseline`) runs the same tasks on the same number of slots with a queue
and completion callbacks only. Rates are task runs per second of the simulation loop (building the farm and
summarising the records are timed and reported apart). The row pytest-benchmark prints is the simulation
alone (``run_sim``: build, loop, summary), run once; the workload's generation and the baseline runs are
outside it. Checks:

- the simulation's speed relative to the baseline, measured in the same run (target >= 1/10; gated at a
  regression floor, ``GATE_RATIO``: 0.05 in short mode, where 0.065-0.079 is measured, and 0.04 in full mode,
  where 0.050-0.073 is: the baseline gains more from the larger scenario than the simulation does, so the
  full scenario's ratio is lower; either floor fails a regression of about a quarter). The ratio compares CPU
  seconds of the two loops (the baseline's best of three runs around the simulation, the simulation's best of
  three in short mode), so that other load on the machine does not skew it; the wall-clock ratio is reported
  too;
- (full scenario only) task runs per wall-clock second (target >= 30,000, reported);
- peak memory under 1 GiB: the peak resident set (``VmHWM`` on Linux) of a fresh Python process that generates the
  workload and runs the simulation and nothing else (``python bench/test_bench_sim.py --memory``; the pytest
  process's own peak would count everything the suite did before). Its resident set before the simulation
  (interpreter, imports, the generated workload) is reported beside it.

``FARMHAND_BENCH_SHORT=1`` runs a smaller scenario (100 jobs x 100 tasks on 50 renders) and checks the ratio and
the memory only. Run with ``-s`` to see the figures; ``python bench/test_bench_sim.py`` prints them too.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from farmhand.core.policies import make_policy
from farmhand.sim.run import run_sim
from farmhand.sim.workload import GeneratorOptions, generate

# bench/ is on sys.path both under pytest (rootdir-relative test module) and when run as a script
from conftest import run_once  # isort: skip
from simpy_baseline import arrivals_of, run_fifo  # isort: skip

SHORT = os.environ.get("FARMHAND_BENCH_SHORT", "") not in ("", "0")
JOBS, TASKS, RENDERS = (100, 100, 50) if SHORT else (1000, 100, 500)
POLICY = "priority"  # farmhand sim's default
TARGET_RATE = 30_000  # issue target: task runs per wall-clock second, full scenario
TARGET_RATIO = 0.1  # issue target: speed relative to the bare SimPy baseline
# The gate guards against regressions at the level reached so far (short scenario 0.065-0.079, full 0.050-0.073);
# the targets above are reported beside it (``target_met``): see the README's performance section.
GATE_RATIO = 0.05 if SHORT else 0.04
#: simulations of the scenario measured, the best counting (the short one lasts a fifth of a second: once, inside
#: the suite, it measured anywhere from 0.050 to 0.075 of the baseline)
SIM_RUNS = 3 if SHORT else 1
MAX_PEAK_BYTES = 1 << 30


def _proc_status_kib(field: str) -> int | None:
    """A ``/proc/self/status`` figure in KiB (Linux), or None."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def peak_rss_bytes() -> int:
    """This process's peak resident set size so far.

    On Linux ``VmHWM`` (the peak of this process image: ``ru_maxrss`` also keeps the peak of whatever the
    process was before ``exec``, here the parent pytest's); elsewhere ``ru_maxrss`` (macOS reports bytes).
    """
    hwm = _proc_status_kib("VmHWM")
    if hwm is not None:
        return hwm * 1024
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def rss_bytes() -> int:
    """This process's resident set size now (Linux; elsewhere its peak so far)."""
    rss = _proc_status_kib("VmRSS")
    return rss * 1024 if rss is not None else peak_rss_bytes()


def memory() -> dict[str, float]:
    """In this process, which must do nothing else: generate the workload and simulate it; resident sets in MiB."""
    workload = generate(GeneratorOptions(jobs=JOBS, tasks=TASKS, renders=RENDERS), seed=0)
    before = rss_bytes()
    result = run_sim(workload, make_policy(POLICY), seed=0)
    assert result.summary["tasks_done"] == JOBS * TASKS
    return {"rss_before_sim_mib": before / 2**20, "peak_rss_mib": peak_rss_bytes() / 2**20}


def memory_in_subprocess() -> dict[str, float]:
    """:func:`memory` in a fresh Python process (the same scenario: ``FARMHAND_BENCH_SHORT`` is inherited)."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory"], capture_output=True, text=True, timeout=600,
        check=True,
    ).stdout
    figures: dict[str, float] = json.loads(out.strip().splitlines()[-1])
    return figures


def measure(simulate: Any = None) -> dict[str, Any]:
    """Run the scenario ``SIM_RUNS`` times (the first through ``simulate``, which calls what it is given) and the
    baseline three times (the best of each counts); every figure of the benchmark but memory."""
    started = time.perf_counter()
    workload = generate(GeneratorOptions(jobs=JOBS, tasks=TASKS, renders=RENDERS), seed=0)
    generated = time.perf_counter() - started
    arrivals = arrivals_of(workload)
    slots = sum(r.max_tasks for r in workload.renders or ())
    baselines = [run_fifo(arrivals, slots)]
    result = (simulate or (lambda fn: fn()))(lambda: run_sim(workload, make_policy(POLICY), seed=0))
    for _ in range(SIM_RUNS - 1):  # the best of several, as for the baseline: one short run is at a pause's mercy
        again = run_sim(workload, make_policy(POLICY), seed=0)
        if again.timings["run_cpu_s"] < result.timings["run_cpu_s"]:
            result = again
    baselines += [run_fifo(arrivals, slots) for _ in range(2)]
    runs = result.summary["task_runs"]
    t = result.timings
    base_wall = min(b.wall_s for b in baselines)
    base_cpu = min(b.cpu_s for b in baselines)
    return {
        "scenario": f"{JOBS} jobs x {TASKS} tasks, {RENDERS} renders, policy {POLICY}" + (" (short)" if SHORT else ""),
        "task_runs": runs,
        "tasks_done": result.summary["tasks_done"],
        "generate_s": generated,
        **t,
        "sim_runs_per_s": runs / t["run_s"],
        "sim_runs_per_cpu_s": runs / t["run_cpu_s"],
        "sim_end_to_end_runs_per_s": runs / (t["build_s"] + t["run_s"] + t["summary_s"]),
        "baseline_runs": baselines[0].runs,
        "baseline_s": base_wall,
        "baseline_runs_per_s": baselines[0].runs / base_wall,
        "baseline_runs_per_cpu_s": baselines[0].runs / base_cpu,
        "ratio_to_baseline": (runs / t["run_cpu_s"]) / (baselines[0].runs / base_cpu),
        "ratio_to_baseline_wall": (runs / t["run_s"]) / (baselines[0].runs / base_wall),
        "messages": result.summary["events"],
    }


def report(figures: dict[str, Any]) -> str:
    """The figures, one a line."""
    return "\n".join(
        f"  {k:28s} {v:,.3f}" if isinstance(v, float) else f"  {k:28s} {v}" for k, v in figures.items()
    )


def test_sim_against_the_simpy_baseline(benchmark: Any) -> None:
    figures = measure(lambda fn: run_once(benchmark, fn))
    figures.update(memory_in_subprocess())
    figures["target_ratio_met"] = figures["ratio_to_baseline"] >= TARGET_RATIO
    if not SHORT:
        figures["target_rate_met"] = figures["sim_runs_per_s"] >= TARGET_RATE
    benchmark.extra_info.update(figures)
    print("\nfarmhand sim benchmark\n" + report(figures))
    assert figures["tasks_done"] == JOBS * TASKS
    assert figures["baseline_runs"] == JOBS * TASKS
    assert figures["peak_rss_mib"] * 2**20 < MAX_PEAK_BYTES, f"peak memory {figures['peak_rss_mib']:.0f} MiB"
    assert figures["ratio_to_baseline"] >= GATE_RATIO, (
        f"{figures['sim_runs_per_cpu_s']:,.0f} task runs per CPU second is {figures['ratio_to_baseline']:.3f} of the "
        f"bare SimPy baseline's {figures['baseline_runs_per_cpu_s']:,.0f} (regression gate: >= {GATE_RATIO})"
    )


if __name__ == "__main__":
    if sys.argv[1:] == ["--memory"]:
        print(json.dumps(memory()))
    else:
        print(report({**measure(), **memory_in_subprocess()}))
