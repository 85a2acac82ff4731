"""End to end with real processes on loopback: the server killed with SIGKILL mid-job and restarted on the same
store finishes the job with nothing lost (running tasks are reclaimed by their reconnecting workers, not run
twice); SIGINT and SIGTERM stop the server cleanly within seconds with the store checkpointed.

Server and workers are started as a user does, with the installed ``farmhand`` command (``farmhand server``,
``farmhand worker``): the server's store runs with production's settings (``synchronous=FULL``, which no
option changes), so a kill is survived as it would be in production."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from farmhand.client import ApiClient, ApiError

pytestmark = pytest.mark.e2e

TASK = r"""
import os, sys, time
with open(sys.argv[2], "a") as f:
    f.write(f"{sys.argv[1]} {os.environ['FARMHAND_RUN_ID']} {os.environ['FARMHAND_ATTEMPT']}\n")
for i in range(8):
    time.sleep(0.1)
    print(f"{(i + 1) * 100 // 8}%", flush=True)
"""


#: the installed ``farmhand`` command, as a user runs it
FARMHAND = Path(sys.executable).parent / "farmhand"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(ApiError, OSError):
            got = check()
            if got:
                return got
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Procs:
    """Every process a test starts, stopped (SIGKILL as a last resort) at the end."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.all: list[subprocess.Popen[bytes]] = []

    def start(self, name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """Start ``farmhand ARGS`` (the console script beside this interpreter), its output in ``NAME.log``."""
        out = (self.folder / f"{name}.log").open("ab")
        proc = subprocess.Popen([str(FARMHAND), *args], stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                env=env, start_new_session=True)
        out.close()
        self.all.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in self.all:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.all:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    p = Procs(tmp_path)
    try:
        yield p
    finally:
        p.stop_all()


def server_args(db: Path, port: int, http_port: int) -> list[str]:
    return ["server", "--db", str(db), "--port", str(port), "--http-port", str(http_port),
            "--heartbeat", "0.5", "--zombie", "10", "--reclaim", "5", "--log-level", "debug"]


def test_server_killed_mid_job_restarts_and_finishes_with_nothing_lost(tmp_path: Path, procs: Procs) -> None:
    db, marks = tmp_path / "farm.db", tmp_path / "runs.txt"
    port, http_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if k != "FARMHAND_TOKEN"}
    server = procs.start("server", *server_args(db, port, http_port), env=env)
    admin = ApiClient(f"http://127.0.0.1:{http_port}", timeout=5)
    token_file = tmp_path / "admin.token"
    wait_for(lambda: token_file.exists() and token_file.read_text().strip(), 15, "the admin token")
    admin.token = token_file.read_text().strip()
    wait_for(admin.whoami, 15, "the client API")
    for i in range(3):
        procs.start(f"worker{i}", "worker", "--server", f"127.0.0.1:{port}", "--name", f"w{i}",
                    "--state-dir", str(tmp_path / "state"), "--token-file", str(tmp_path / "farm.token"),
                    "--reconnect-max", "0.3", "--progress-interval", "0.2", env=env)
    spec = {
        "name": "restart-me",
        "blocks": [
            {"name": "a", "command": [sys.executable, "-c", TASK, "a{frame}", str(marks)],
             "frames": {"first": 1, "last": 9}},
            {"name": "b", "command": [sys.executable, "-c", TASK, "b{frame}", str(marks)],
             "frames": {"first": 1, "last": 3}, "depends_on": ["a"]},
        ],
    }
    (job_id,) = admin.submit(json.dumps(spec).encode())

    def mid_job() -> bool:
        counts = admin.jobs()[0]["counts"]
        return counts.get("done", 0) >= 3 and counts.get("running", 0) >= 2

    wait_for(mid_job, 30, "the job to be half way")
    server.send_signal(signal.SIGKILL)
    server.wait(5)
    before = {j["id"]: j for j in _read_jobs(db)}
    assert before[job_id]["state"] == "active"
    # the workers notice, and keep running their tasks while they try to reconnect
    wait_for(lambda: all("connection lost" in (tmp_path / f"worker{i}.log").read_text() for i in range(3)), 15,
             "every worker to notice the server is gone")

    procs.start("server2", *server_args(db, port, http_port), env=env)
    wait_for(admin.whoami, 15, "the restarted client API")
    row = wait_for(lambda: next((j for j in admin.jobs() if j["id"] == job_id and j["state"] == "done"), None), 40,
                   "the job to finish after the restart")
    assert row["counts"] == {"done": 12, "pending": 0}
    detail = admin.job(job_id)
    assert [t["state"] for t in detail["tasks"]] == ["done"] * 12
    # nothing lost, nothing run twice: every task ran, and a task ran again only if it finished in the very
    # instant of the kill (then with a new run after the reclaim timeout, never silently dropped)
    lines = marks.read_text().split()
    names = lines[0::3]
    assert sorted(set(names)) == sorted([f"a{i}" for i in range(1, 10)] + [f"b{i}" for i in range(1, 4)])
    assert len(names) - len(set(names)) <= 1, names
    runs = admin.runs(job_id)
    done = {(r["block"], r["task"]) for r in runs if r["state"] == "done"}
    assert len(done) == 12
    assert sum(1 for r in runs if r["state"] == "done" and r["attempt"] == 1) >= 11  # reclaimed, not requeued


def _read_jobs(db: Path) -> list[dict[str, Any]]:
    con = sqlite3.connect(db)
    try:
        return [{"id": i, "state": s} for i, s in con.execute("SELECT id, state FROM jobs")]
    finally:
        con.close()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stops_the_server_cleanly(tmp_path: Path, procs: Procs, sig: signal.Signals) -> None:
    db = tmp_path / "farm.db"
    http_port = free_port()
    server = procs.start("server", *server_args(db, 0, http_port))
    token_file = tmp_path / "admin.token"
    wait_for(lambda: token_file.exists() and token_file.read_text().strip(), 15, "the admin token")
    client = ApiClient(f"http://127.0.0.1:{http_port}", token_file.read_text().strip(), timeout=5)
    wait_for(client.whoami, 15, "the client API")
    started = time.monotonic()
    server.send_signal(sig)
    assert server.wait(10) == 0
    assert time.monotonic() - started < 5
    log = (tmp_path / "server.log").read_text()
    assert "server stopped" in log and "Traceback" not in log
    assert not (tmp_path / "farm.db-wal").exists() or (tmp_path / "farm.db-wal").stat().st_size == 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    con.close()
