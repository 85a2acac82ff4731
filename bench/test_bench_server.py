"""Benchmark of the whole production server with its store: durable dispatch against the same server without it.

The real ``FarmServer`` (SQLite store in WAL mode, ``synchronous=FULL``, the client API, restore) runs in this
process; ``bench/tcp_load.py`` runs 200 protocol-speaking fake workers in another, each answering an assignment
at once (zero-duration tasks). Jobs are submitted through the client API's submission path (each committed
before it is accepted). The figure is tasks per second from the first submission to the last job done.

Durable dispatch holds every assignment until the store has committed the run it starts (``Store.after_commit``),
so a server killed at any moment knows every run a worker may report. The same run is made with the hold
switched off (``gateway.durable = None``) as the baseline in the same sitting.

Row: the durable run's window, from the first submission to the last job done (server start, workers
connecting and the baseline run are outside it). Gates: durable / without the hold >= 0.5, a ratio measured
in the same run (measured about 0.8); full mode also asserts the target, >= 2,000 tasks/s with durable
dispatch (1000 jobs x 100 tasks, 200 workers; measured about 4,500); short mode (CI, 100 jobs x 50 tasks)
a loose floor of 700 tasks/s.

    FARMHAND_BENCH_SHORT=0 .venv/bin/pytest bench/test_bench_server.py -s -p no:cacheprovider
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from conftest import SHORT, run_once
from tcp_harness import TOKEN, Load, cpu_seconds, raise_fd_limit

from farmhand.core.messages import Actor
from farmhand.core.spec import parse_job
from farmhand.server import FarmServer, ServerConfig

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="loopback load test for Linux")

WORKERS = 200
JOBS, TASKS = (100, 50) if SHORT else (1000, 100)

T = TypeVar("T")


def _untimed(fn: Callable[[], T]) -> T:
    return fn()


def _run(
    folder: Path, durable: bool, monkeypatch: pytest.MonkeyPatch, window: Callable[[Callable[[], Any]], Any] = _untimed
) -> dict[str, Any]:
    """One server, one load, every job to done, the submissions and the wait run through ``window``; the figures."""
    monkeypatch.setenv("FARMHAND_TOKEN", TOKEN)
    config = ServerConfig(db=folder / "farm.db", port=0, http_port=0, policy="fifo", heartbeat_s=1.0, zombie_s=60.0)
    server = FarmServer(config).start()
    try:
        if not durable:
            server.handle.gateway.durable = None
        assert server.store is not None and server.http is not None
        admin = Actor("admin", True)
        with Load(server.handle, WORKERS, duration=600, prefix="bench") as load:
            load.ready()
            specs = [
                parse_job({"name": f"zero{j}", "blocks": [
                    {"name": "z", "command": "true", "frames": {"first": 1, "last": TASKS}}]})
                for j in range(JOBS)
            ]
            store, api = server.store, server.http.api
            cpu0, t0 = cpu_seconds(), time.monotonic()

            def submit_and_wait() -> float:
                for start in range(0, JOBS, 50):
                    api.submit(admin, specs[start : start + 50])
                submitted = time.monotonic() - t0
                deadline = t0 + 600
                while True:
                    rows = store.jobs()
                    if sum(1 for r in rows if r.state == "done") == JOBS:
                        return submitted
                    assert time.monotonic() < deadline, "the jobs did not finish in 600 s"
                    assert not [r for r in rows if r.state == "error"], "a job failed"
                    time.sleep(0.1)

            submitted = window(submit_and_wait)
            elapsed = time.monotonic() - t0
            cpu = cpu_seconds() - cpu0
            stats = load.finish()
        runs = len(server.store.runs())
    finally:
        server.stop()
    return {"seconds": elapsed, "submit_s": submitted, "tasks_per_s": JOBS * TASKS / elapsed, "server_cpu_s": cpu,
            "runs": runs, "assigned": stats.get("assigned")}


def test_durable_dispatch_through_the_real_server_and_store(  # type: ignore[no-untyped-def]
    benchmark, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raise_fd_limit(WORKERS + 512)
    plain = _run(tmp_path / "plain", False, monkeypatch)
    durable = _run(tmp_path / "durable", True, monkeypatch, lambda fn: run_once(benchmark, fn))
    ratio = durable["tasks_per_s"] / plain["tasks_per_s"]
    benchmark.extra_info.update({"jobs": JOBS, "tasks": TASKS, "workers": WORKERS, "durable": durable,
                                 "without_hold": plain, "ratio": ratio})
    print(
        f"\n{JOBS} jobs x {TASKS} zero-duration tasks, {WORKERS} workers, store synchronous=FULL:"
        f"\n  durable dispatch: {durable['tasks_per_s']:,.0f} tasks/s ({durable['seconds']:.1f} s, submission"
        f" {durable['submit_s']:.1f} s, server CPU {durable['server_cpu_s']:.1f} s)"
        f"\n  without the hold: {plain['tasks_per_s']:,.0f} tasks/s ({plain['seconds']:.1f} s, submission"
        f" {plain['submit_s']:.1f} s, server CPU {plain['server_cpu_s']:.1f} s)"
        f"\n  ratio {ratio:.2f}"
    )
    for figures in (durable, plain):
        assert figures["runs"] == JOBS * TASKS, figures  # every task ran exactly once
    floor = 700 if SHORT else 2000  # short mode: a loose floor; full mode: the target
    assert durable["tasks_per_s"] >= floor, f"{durable['tasks_per_s']:.0f} tasks/s (gate: >= {floor})"
    assert ratio >= 0.5, f"durable dispatch runs at {ratio:.2f} of the speed without it (gate: >= 0.5)"
