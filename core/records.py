"""Per-run records (``tasks.csv``) and the summary metrics computed from them: one implementation for
simulations, local runs and the production export.

Definitions (seconds throughout):

- a task's *wait* is the ``waiting_time`` (start - job submission, as Batsim) of its first run;
- ``queue_mean_s`` averages ``queue_time`` (start - ready) over all runs;
- ``utilization`` is capacity-seconds used by runs over capacity-seconds offered by the farm during the
  makespan (first submission to last finish);
- ``bounded_slowdown_mean`` averages, over done runs, ``max(1, (finish - submission) / max(execution, tau))``
  with tau = 10 s (Feitelson's bounded slowdown, as Batsim: turnaround over run time, short runs counted as
  tau);
- ``jain_fairness`` is Jain's index over the users' shares of used capacity-seconds (1 = equal shares);
- ``per_user.share`` is that user's fraction of used capacity-seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .messages import RunRecord

CSV_COLUMNS = (
    "job_id", "job_name", "user", "block", "task", "frames", "render", "attempt", "state", "submission_time",
    "ready_time", "starting_time", "finish_time", "waiting_time", "queue_time", "execution_time",
    "turnaround_time",
)
SLOWDOWN_TAU_S = 10.0


def sort_records(records: Iterable[RunRecord]) -> list[RunRecord]:
    """Records in ``tasks.csv`` order: by starting time, then job id, block, task, attempt."""
    return sorted(records, key=lambda r: (r.starting_time, r.job_id, r.block, r.task, r.attempt))


def _number(value: float) -> str:
    """A float as text that reads back exactly and never depends on the platform (repr round-trips)."""
    return repr(float(value))


def csv_row(r: RunRecord) -> list[str]:
    """One record as the ``tasks.csv`` cells, in :data:`CSV_COLUMNS` order."""
    return [
        str(r.job_id), r.job_name, r.user, r.block, r.task, r.frames, r.render, str(r.attempt), r.state,
        _number(r.submission_time), _number(r.ready_time), _number(r.starting_time), _number(r.finish_time),
        _number(r.starting_time - r.submission_time), _number(r.starting_time - r.ready_time),
        _number(r.finish_time - r.starting_time), _number(r.finish_time - r.submission_time),
    ]


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values, by linear interpolation; 0 for no values."""
    if not sorted_values:
        return 0.0
    pos = q * (len(sorted_values) - 1)
    low = math.floor(pos)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (pos - low)


def _mean(values: Sequence[float]) -> float:
    return math.fsum(values) / len(values) if values else 0.0


def jain_index(values: Sequence[float]) -> float:
    """Jain's fairness index of ``values``: 1 when all are equal, 1/n when one has everything."""
    total = math.fsum(values)
    squares = math.fsum(v * v for v in values)
    if not values or squares == 0:
        return 1.0
    return total * total / (len(values) * squares)


def summarize(
    records: Sequence[RunRecord],
    *,
    tasks_total: int,
    tasks_error: int,
    farm_capacity: int,
    capacity_of: Mapping[tuple[int, str], int] | None = None,
    policy: str = "",
    seed: int | None = None,
    scenario: Mapping[str, Any] | None = None,
    renders: int = 0,
    wall_s: float = 0.0,
    events: int = 0,
) -> dict[str, Any]:
    """The ``summary.json`` mapping computed from the per-run records.

    ``capacity_of`` gives the capacity a task of (job id, block name) takes (1 when absent);
    ``farm_capacity`` is the sum of the renders' capacities.
    """
    capacity_of = capacity_of or {}
    first_runs: dict[tuple[int, str, str], RunRecord] = {}
    done_tasks: set[tuple[int, str, str]] = set()
    user_used: dict[str, float] = {}
    user_done: dict[str, int] = {}
    user_waits: dict[str, list[float]] = {}
    job_span: dict[int, tuple[float, float]] = {}
    queue: list[float] = []
    slowdowns: list[float] = []
    used = 0.0
    for r in records:
        key = (r.job_id, r.block, r.task)
        first = first_runs.get(key)
        if first is None or r.attempt < first.attempt:
            first_runs[key] = r
        execution = r.finish_time - r.starting_time
        weight = capacity_of.get((r.job_id, r.block), 1)
        used += execution * weight
        user_used[r.user] = user_used.get(r.user, 0.0) + execution * weight
        queue.append(r.starting_time - r.ready_time)
        if r.state == "done":
            done_tasks.add(key)
            user_done[r.user] = user_done.get(r.user, 0) + 1
            slowdowns.append(max(1.0, (r.finish_time - r.submission_time) / max(execution, SLOWDOWN_TAU_S)))
        submit, finish = job_span.get(r.job_id, (r.submission_time, r.finish_time))
        job_span[r.job_id] = (min(submit, r.submission_time), max(finish, r.finish_time))
    waits = sorted(r.starting_time - r.submission_time for r in first_runs.values())
    for r in first_runs.values():
        user_waits.setdefault(r.user, []).append(r.starting_time - r.submission_time)
    if records:
        start = min(r.submission_time for r in records)
        end = max(r.finish_time for r in records)
        makespan = end - start
    else:
        makespan = 0.0
    total_used = math.fsum(user_used.values())
    users = sorted(set(user_used) | set(user_waits))
    return {
        "policy": policy,
        "seed": seed,
        "scenario": dict(scenario or {}),
        "renders": renders,
        "tasks_total": tasks_total,
        "task_runs": len(records),
        "tasks_done": len(done_tasks),
        "tasks_error": tasks_error,
        "makespan_s": makespan,
        "throughput_tasks_per_hour": len(done_tasks) / makespan * 3600.0 if makespan > 0 else 0.0,
        "utilization": used / (farm_capacity * makespan) if farm_capacity > 0 and makespan > 0 else 0.0,
        "wait_mean_s": _mean(waits),
        "wait_p50_s": percentile(waits, 0.50),
        "wait_p95_s": percentile(waits, 0.95),
        "wait_p99_s": percentile(waits, 0.99),
        "queue_mean_s": _mean(queue),
        "job_turnaround_mean_s": _mean([finish - submit for submit, finish in job_span.values()]),
        "bounded_slowdown_mean": _mean(slowdowns),
        "jain_fairness": jain_index([user_used.get(u, 0.0) for u in users]),
        "per_user": {
            u: {
                "share": user_used.get(u, 0.0) / total_used if total_used > 0 else 0.0,
                "tasks_done": user_done.get(u, 0),
                "wait_mean_s": _mean(user_waits.get(u, [])),
            }
            for u in users
        },
        "wall_s": wall_s,
        "events": events,
    }
