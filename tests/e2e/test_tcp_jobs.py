"""End to end over TCP: real worker processes run a job to the end, each task exactly once."""

from __future__ import annotations

import collections
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm import Farm, wait_until

pytestmark = pytest.mark.e2e


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path, heartbeat_s=0.3, zombie_s=5.0)
    try:
        yield f
    finally:
        f.close()


def test_a_hundred_tasks_across_four_workers_run_exactly_once(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    names = [f"w{i}" for i in range(1, 5)]
    for name in names:
        farm.start_worker(name)
    farm.wait_connected(*names)
    job = farm.submit(
        {
            "name": "hundred",
            "blocks": [
                {
                    "name": "frames",
                    "command": f"echo rendering {{frame}} 50%; sleep 0.02; "
                    f"echo $FARMHAND_RENDER > {out}/{{frame}}-$FARMHAND_RUN_ID",
                    "frames": {"first": 1, "last": 100},
                }
            ],
        }
    )
    assert farm.wait_job(job, timeout=60) == "done"
    runs = farm.runs(job)
    assert len(runs) == 100
    assert all(r.state == "done" and r.attempt == 1 for r in runs)
    assert sorted(int(r.task) for r in runs) == list(range(1, 101))
    per_frame = collections.Counter(p.name.split("-")[0] for p in out.iterdir())
    assert per_frame == {str(i): 1 for i in range(1, 101)}  # each task's process ran exactly once
    by_render = collections.Counter(r.render for r in runs)
    assert set(by_render) == set(names)  # all four took work
    assert all(proc.poll() is None for proc in farm.workers.values())


def test_a_dropped_connection_reclaims_the_running_task_instead_of_running_it_twice(
    farm: Farm, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    farm.start_worker("solo")
    farm.wait_connected("solo")
    job = farm.submit(
        {
            "name": "reclaim",
            "blocks": [
                {
                    "name": "slow",
                    "command": f"touch {out}/started-{{frame}}-$FARMHAND_RUN_ID; sleep 1.5; touch {out}/done-{{frame}}",
                    "frames": {"first": 1, "last": 2},
                }
            ],
        }
    )
    wait_until(lambda: any(p.name.startswith("started-1-") for p in out.iterdir()), 15, "the first task to start")
    gateway = farm.server.gateway
    conn = gateway.by_name["solo"]
    gateway.loop.call_soon_threadsafe(conn.close, "test drops the connection")
    wait_until(lambda: gateway.by_name.get("solo") not in (None, conn), 15, "the worker to reconnect")
    assert farm.wait_job(job, timeout=30) == "done"
    runs = farm.runs(job)
    assert [(r.task, r.state, r.attempt) for r in sorted(runs, key=lambda r: r.task)] == [
        ("1", "done", 1), ("2", "done", 1),
    ]
    started = sorted(p.name.split("-")[1] for p in out.iterdir() if p.name.startswith("started-"))
    assert started == ["1", "2"]  # reclaimed, not started again
    assert "reconnecting" in farm.log_of("solo")
