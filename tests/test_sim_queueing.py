"""Validity against queueing theory: M/M/c under fifo.

Poisson arrivals (rate lambda) of one-task jobs with exponential durations (rate mu) on c identical renders
under ``fifo`` form an M/M/c queue, whose mean wait in queue is given by the Erlang C formula:

    Wq = C(c, a) / (c mu - lambda),  a = lambda / mu,
    C(c, a) = (a^c / c! * c / (c - a)) / (sum_{k<c} a^k / k! + a^c / c! * c / (c - a)).

Three checks, all on ``tasks.csv`` as written:

1. *Exactness*: each task's start equals the first-come-first-served recursion on the same arrival times and
   durations (a job starts at max(its arrival, the earliest time a render is free)), to 1e-9 s.
2. *Erlang C*: the mean wait over 3 seeds x 12,000 jobs (the first 500 of each run dropped as warm-up)
   matches Wq within 4 standard errors, the standard error estimated by batch means (20 batches per seed, 60
   in all; waits are autocorrelated, so the naive i.i.d. error would be too small). With a 4-sigma tolerance a
   correct simulator fails this with probability about 6e-5; the seeds are fixed, so the test is deterministic.
3. *Little's law*: over the middle 80 % of the run, the time-average number of jobs in the system (and in the
   queue), integrated exactly from the records, equals the arrival rate times the mean time in system (in
   queue) of the jobs that arrived in that window, within 3 % (the only gap is jobs straddling the window's
   edges).
"""

from __future__ import annotations

import csv
import heapq
import math
import statistics
from pathlib import Path

import pytest

from farmhand.core.policies import make_policy
from farmhand.output import write_tasks_csv
from farmhand.sim.run import run_sim
from farmhand.sim.workload import GeneratorOptions, Workload, generate

C, MU, LAMBDA = 5, 1.0, 3.5  # rho = 0.7
JOBS = 12_000
WARM_UP = 500
SEEDS = (1, 2, 3)
BATCHES = 20


def erlang_c_wait(c: int, lam: float, mu: float) -> float:
    """The mean wait in queue of M/M/c (Erlang C)."""
    a = lam / mu
    top = a**c / math.factorial(c) * c / (c - a)
    probability_of_waiting = top / (sum(a**k / math.factorial(k) for k in range(c)) + top)
    return probability_of_waiting / (c * mu - lam)


def mmc_workload(seed: int) -> Workload:
    return generate(
        GeneratorOptions(jobs=JOBS, tasks=1, users=1, renders=C, arrival="poisson", rate=LAMBDA,
                         duration=("exp",), mean=(1.0 / MU,)),
        seed=seed,
    )


def fcfs_starts(arrivals: list[float], durations: list[float], servers: int) -> list[float]:
    """First come, first served on ``servers`` identical servers: the start time of each job."""
    free = [0.0] * servers
    starts = []
    for at, d in zip(arrivals, durations, strict=True):
        start = max(at, heapq.heappop(free))
        starts.append(start)
        heapq.heappush(free, start + d)
    return starts


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[tuple[Workload, list[dict[str, str]]]]:
    out = []
    for seed in SEEDS:
        wl = mmc_workload(seed)
        result = run_sim(wl, make_policy("fifo"), seed=seed)
        assert result.ok
        path = tmp_path_factory.mktemp(f"mmc{seed}") / "tasks.csv"
        write_tasks_csv(path, result.records)
        out.append((wl, read_rows(path)))
    return out


def test_fifo_starts_are_exactly_first_come_first_served(runs: list[tuple[Workload, list[dict[str, str]]]]) -> None:
    for wl, rows in runs:
        by_job = {int(r["job_id"]): r for r in rows}
        assert len(by_job) == len(rows) == JOBS  # one run per job
        arrivals = [j.submit_at for j in wl.jobs]
        durations = [j.durations[0][0] for j in wl.jobs]  # type: ignore[index]
        expected = fcfs_starts(arrivals, durations, C)
        got = [float(by_job[i + 1]["starting_time"]) for i in range(JOBS)]
        assert max(abs(g - e) for g, e in zip(got, expected, strict=True)) < 1e-9


def test_mean_wait_matches_erlang_c(runs: list[tuple[Workload, list[dict[str, str]]]]) -> None:
    theory = erlang_c_wait(C, LAMBDA, MU)
    batch_means = []
    for _, rows in runs:
        waits = [float(r["waiting_time"]) for r in sorted(rows, key=lambda r: int(r["job_id"]))][WARM_UP:]
        size = len(waits) // BATCHES
        batch_means.extend(statistics.fmean(waits[i * size:(i + 1) * size]) for i in range(BATCHES))
    mean = statistics.fmean(batch_means)
    stderr = statistics.stdev(batch_means) / math.sqrt(len(batch_means))
    assert stderr < 0.1 * theory, "too few jobs for a meaningful comparison"
    assert abs(mean - theory) <= 4 * stderr, f"mean wait {mean:.4f} s vs Erlang C {theory:.4f} s (se {stderr:.4f})"


def _time_average(intervals: list[tuple[float, float]], lo: float, hi: float) -> float:
    """The time average over [lo, hi] of how many intervals [a, b) cover t."""
    covered = sum(max(0.0, min(b, hi) - max(a, lo)) for a, b in intervals)
    return covered / (hi - lo)


def test_littles_law_holds_in_the_records(runs: list[tuple[Workload, list[dict[str, str]]]]) -> None:
    for _, rows in runs:
        submit = [float(r["submission_time"]) for r in rows]
        start = [float(r["starting_time"]) for r in rows]
        finish = [float(r["finish_time"]) for r in rows]
        end = max(finish)
        lo, hi = 0.1 * end, 0.9 * end
        inside = [i for i, s in enumerate(submit) if lo <= s < hi]
        lam = len(inside) / (hi - lo)
        in_system = _time_average(list(zip(submit, finish, strict=True)), lo, hi)
        in_queue = _time_average(list(zip(submit, start, strict=True)), lo, hi)
        sojourn = statistics.fmean(float(rows[i]["turnaround_time"]) for i in inside)
        wait = statistics.fmean(float(rows[i]["waiting_time"]) for i in inside)
        assert in_system == pytest.approx(lam * sojourn, rel=0.03)
        assert in_queue == pytest.approx(lam * wait, rel=0.03)
        # and the system matches M/M/c: L = lambda (Wq + 1/mu), within the run-to-run spread
        assert in_system == pytest.approx(LAMBDA * (erlang_c_wait(C, LAMBDA, MU) + 1 / MU), rel=0.08)
