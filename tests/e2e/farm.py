"""A farm for end-to-end tests: an in-process server (``start_server``) and real worker processes on loopback.

Everything runs on 127.0.0.1 with an ephemeral port; every wait is bounded; :meth:`Farm.close` stops the
workers (SIGKILL if they do not stop) and the server, whatever happened in the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farmhand.core.messages import JobStateChanged, Message, RunRecord
from farmhand.core.spec import parse_job
from farmhand.transport.serve import ServerHandle, start_server

TOKEN = "e2e-farm-token"


def worker_command() -> list[str]:
    """How a user starts a worker: the ``farmhand`` console script installed beside this interpreter, with
    ``worker``. No fallback: a missing or broken entry point makes every worker test fail."""
    script = Path(sys.executable).parent / "farmhand"
    if not script.is_file():
        raise AssertionError(f"the farmhand console script is not installed beside {sys.executable} ({script})")
    return [str(script), "worker"]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str, step: float = 0.02) -> None:
    """Poll ``predicate`` until true; ``AssertionError`` naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(step)


class Farm:
    """One server and its worker processes."""

    def __init__(self, logs: Path, heartbeat_s: float = 0.3, zombie_s: float = 5.0, policy: str = "fifo",
                 **server: Any) -> None:
        self.logs = logs
        self.lock = threading.Lock()
        self.records: list[RunRecord] = []
        self.job_states: dict[int, str] = {}
        self.changed = threading.Condition(self.lock)
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.server: ServerHandle = start_server(
            "127.0.0.1", 0, TOKEN, policy, heartbeat_s=heartbeat_s, zombie_s=zombie_s, event_sinks=[self._on_event],
            **server,
        )

    def _on_event(self, _to: str, msg: Message) -> None:
        with self.lock:
            if isinstance(msg, RunRecord):
                self.records.append(msg)
            elif isinstance(msg, JobStateChanged):
                self.job_states[msg.job_id] = msg.state
            self.changed.notify_all()

    # ------------------------------------------------------------------------------------------ workers
    def start_worker(
        self, name: str | None, *extra: str, token: str = TOKEN, capacity: int = 1, key: str | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a worker process named ``name`` (None: no ``--name``, it chooses); its log goes to
        ``logs/KEY.log`` (``key``: the name by default). Workers keep their state in ``logs/state``."""
        key = key or name or f"unnamed{len(self.workers)}"
        log = open(self.logs / f"{key}.log", "ab")  # noqa: SIM115 - closed with the process
        env = dict(os.environ, FARMHAND_TOKEN=token, PYTHONUNBUFFERED="1")
        cmd = [
            *worker_command(), "--server", self.server.address, *(("--name", name) if name else ()),
            "--state-dir", str(self.logs / "state"), "--capacity", str(capacity),
            "--kill-grace", "1", "--progress-interval", "0.2", "--reconnect-max", "1", *extra,
        ]
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        log.close()
        self.workers[key] = proc
        return proc

    def wait_connected(self, *names: str, timeout: float = 15.0) -> None:
        """Wait until the workers ``names`` are connected; fail at once, with its log, if one of them exited."""

        def connected() -> bool:
            for name in names:
                proc = self.workers.get(name)
                if proc is not None and proc.poll() is not None and name not in self.server.gateway.by_name:
                    raise AssertionError(f"worker {name} exited with {proc.returncode}:\n{self.log_of(name)[-2000:]}")
            return all(n in self.server.gateway.by_name for n in names)

        wait_until(connected, timeout, f"workers {names}")

    def log_of(self, name: str) -> str:
        """What worker ``name`` logged so far."""
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------------------------------ jobs
    def submit(self, spec: dict[str, Any], user: str = "e2e") -> int:
        """Submit a job spec (a dict as in a job file); returns its id."""
        return self.server.submit(parse_job(spec), user)

    def wait_job(self, job_id: int, timeout: float = 60.0, states: tuple[str, ...] = ("done", "error")) -> str:
        """Wait until job ``job_id`` reaches one of ``states``; returns the state."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while self.job_states.get(job_id) not in states:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"job {job_id} is {self.job_states.get(job_id)!r} after {timeout:g} s")
                self.changed.wait(min(left, 0.2))
            return self.job_states[job_id]

    def runs(self, job_id: int) -> list[RunRecord]:
        """The run records of job ``job_id`` so far."""
        with self.lock:
            return [r for r in self.records if r.job_id == job_id]

    # ------------------------------------------------------------------------------------------ teardown
    def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and the server."""
        try:
            for proc in self.workers.values():
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            for proc in self.workers.values():
                try:
                    proc.wait(8)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        finally:
            self.server.stop()
