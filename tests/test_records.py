"""The per-run records and the summary metrics, checked against hand computations."""

from __future__ import annotations

import pytest

from farmhand.core.messages import RunRecord
from farmhand.core.records import CSV_COLUMNS, csv_row, jain_index, percentile, sort_records, summarize


def rec(job: int, user: str, task: str, attempt: int, state: str, submit: float, ready: float, start: float,
        finish: float, block: str = "b") -> RunRecord:
    return RunRecord(0, job, f"j{job}", user, block, task, task, "r1", attempt, state, submit, ready, start, finish)


RECORDS = [
    # job 1 (ann): task 1 fails once, then runs again; task 2 runs once
    rec(1, "ann", "1", 1, "error", 0.0, 0.0, 0.0, 4.0),
    rec(1, "ann", "1", 2, "done", 0.0, 4.0, 6.0, 26.0),
    rec(1, "ann", "2", 1, "done", 0.0, 0.0, 2.0, 12.0),
    # job 2 (bob), submitted later: one short task
    rec(2, "bob", "1", 1, "done", 10.0, 10.0, 14.0, 16.0),
]


def test_csv_rows_follow_the_contract() -> None:
    assert CSV_COLUMNS[:9] == ("job_id", "job_name", "user", "block", "task", "frames", "render", "attempt", "state")
    row = dict(zip(CSV_COLUMNS, csv_row(RECORDS[1]), strict=True))
    assert row["waiting_time"] == "6.0" and row["queue_time"] == "2.0"
    assert row["execution_time"] == "20.0" and row["turnaround_time"] == "26.0"
    ordered = sort_records(reversed(RECORDS))
    assert [r.starting_time for r in ordered] == [0.0, 2.0, 6.0, 14.0]


def test_summary_metrics_by_hand() -> None:
    s = summarize(RECORDS, tasks_total=3, tasks_error=0, farm_capacity=2, policy="fifo", seed=7, renders=2)
    assert (s["tasks_total"], s["task_runs"], s["tasks_done"], s["tasks_error"]) == (3, 4, 3, 0)
    assert s["makespan_s"] == 26.0  # first submission 0 to last finish 26
    assert s["throughput_tasks_per_hour"] == pytest.approx(3 / 26 * 3600)
    used = 4 + 20 + 10 + 2
    assert s["utilization"] == pytest.approx(used / (2 * 26))
    # a task's wait is its first run's start - submission: 0, 2 and 4
    assert s["wait_mean_s"] == pytest.approx(2.0)
    assert (s["wait_p50_s"], s["wait_p95_s"]) == (pytest.approx(2.0), pytest.approx(3.8))
    assert s["queue_mean_s"] == pytest.approx((0 + 2 + 2 + 4) / 4)
    assert s["job_turnaround_mean_s"] == pytest.approx((26 + 6) / 2)
    # bounded slowdown over done runs: max(1, (finish - submit) / max(run, 10))
    assert s["bounded_slowdown_mean"] == pytest.approx((26 / 20 + 12 / 10 + 1.0) / 3)  # bob's 6/10 counts as 1
    shares = {u: v["share"] for u, v in s["per_user"].items()}
    assert shares == {"ann": pytest.approx(34 / 36), "bob": pytest.approx(2 / 36)}
    assert s["per_user"]["ann"]["tasks_done"] == 2 and s["per_user"]["bob"]["wait_mean_s"] == 4.0
    assert s["jain_fairness"] == pytest.approx(jain_index([34.0, 2.0]))
    assert (s["policy"], s["seed"], s["renders"]) == ("fifo", 7, 2)


def test_capacity_weights_usage() -> None:
    s = summarize(RECORDS, tasks_total=3, tasks_error=0, farm_capacity=4, capacity_of={(1, "b"): 3})
    assert s["utilization"] == pytest.approx((3 * 34 + 2) / (4 * 26))


def test_helpers() -> None:
    assert percentile([], 0.5) == 0.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 0.5) == 2.5
    assert jain_index([1.0, 1.0, 1.0]) == 1.0
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)
    empty = summarize([], tasks_total=0, tasks_error=0, farm_capacity=1)
    assert empty["makespan_s"] == 0.0 and empty["utilization"] == 0.0 and empty["jain_fairness"] == 1.0
