"""End to end over TCP: SIGINT and SIGTERM stop workers (and the development server) cleanly within seconds."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm import TOKEN, Farm, wait_until, worker_command

pytestmark = pytest.mark.e2e


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path, heartbeat_s=0.3, zombie_s=30.0)  # long zombie time: only a Goodbye can be this fast
    try:
        yield f
    finally:
        f.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_a_worker_cleanly_and_its_task_runs_elsewhere(
    farm: Farm, tmp_path: Path, sig: signal.Signals
) -> None:
    pidfile = tmp_path / "task.pid"
    marker = tmp_path / "second-run"
    farm.start_worker("quitter")
    farm.wait_connected("quitter")
    job = farm.submit(
        {
            "name": "interrupted",
            "blocks": [
                {
                    "name": "b",
                    "command": f"if [ -e {pidfile} ]; then touch {marker}; exit 0; fi; "
                    f"echo $$ > {pidfile}; exec sleep 60",
                    "frames": {"first": 1, "last": 1},
                }
            ],
        }
    )
    wait_until(lambda: pidfile.exists() and pidfile.read_text().strip() != "", 15, "the task to start")
    task_pid = int(pidfile.read_text())
    quitter = farm.workers["quitter"]
    start = time.monotonic()
    quitter.send_signal(sig)
    assert quitter.wait(10) == 0
    assert time.monotonic() - start < 6
    wait_until(lambda: not _alive(task_pid), 5, "the task's process to be gone")
    wait_until(lambda: any(r.state == "lost" for r in farm.runs(job)), 5, "the run to be given back (Goodbye)")
    assert "quitter" not in farm.server.gateway.by_name
    log = farm.log_of("quitter")
    assert "worker stopped" in log and "Traceback" not in log

    farm.start_worker("successor")
    assert farm.wait_job(job, timeout=30) == "done"
    assert marker.exists()
    runs = farm.runs(job)
    assert [(r.render, r.state, r.attempt) for r in runs] == [("quitter", "lost", 1), ("successor", "done", 2)]


def test_the_development_server_stops_on_sigint(tmp_path: Path) -> None:
    env = dict(os.environ, FARMHAND_TOKEN=TOKEN, PYTHONUNBUFFERED="1")
    server = subprocess.Popen(
        [sys.executable, "-m", "farmhand.transport.serve", "--port", "0", "--heartbeat", "0.3"],
        stdout=subprocess.PIPE, stderr=open(tmp_path / "server.log", "wb"), env=env, text=True,  # noqa: SIM115
    )
    worker = None
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        assert line.startswith("listening on 127.0.0.1:")
        address = line.split()[-1]
        worker = subprocess.Popen(
            [*worker_command(), "--server", address, "--name", "w", "--reconnect-max", "0.5",
             "--state-dir", str(tmp_path / "state")],
            stdout=open(tmp_path / "worker.log", "wb"), stderr=subprocess.STDOUT, env=env,  # noqa: SIM115
        )
        wait_until(lambda: "welcomed" in (tmp_path / "worker.log").read_text(), 15, "the worker to be welcomed")
        start = time.monotonic()
        server.send_signal(signal.SIGINT)
        assert server.wait(10) == 0
        assert time.monotonic() - start < 6
        wait_until(lambda: "connection lost" in (tmp_path / "worker.log").read_text(), 10, "the worker to notice")
        assert worker.poll() is None  # it keeps trying to reconnect
        worker.send_signal(signal.SIGINT)
        assert worker.wait(10) == 0
    finally:
        for proc in (server, worker):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait(5)
