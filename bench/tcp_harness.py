"""What the TCP benchmarks share: the load generator process, this process's CPU time, the fd limit."""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from farmhand.transport.serve import ServerHandle

LOAD = Path(__file__).with_name("tcp_load.py")
TOKEN = "bench-token"


def cpu_seconds() -> float:
    """CPU time (user + system) of this process so far: the server's, as the load runs in another."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def raise_fd_limit(want: int) -> int:
    """Raise this process's soft limit of open files towards ``want`` (up to the hard limit); the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        soft = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return soft


class Load:
    """The load generator process (stopped, whatever happens, on exit)."""

    def __init__(
        self, server: ServerHandle, workers: int, duration: float, prefix: str = "load", ready_timeout: float = 60.0
    ) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(LOAD), "--server", server.address, "--token", TOKEN, "--workers", str(workers),
             "--duration", str(duration), "--prefix", prefix, "--ready-timeout", str(ready_timeout)],
            stdout=subprocess.PIPE, text=True,
        )

    def ready(self, timeout: float = 120.0) -> dict[str, Any]:
        """Wait for the generator's ``ready`` line (every worker welcomed)."""
        assert self.proc.stdout is not None
        result: dict[str, Any] = {}

        def read() -> None:
            assert self.proc.stdout is not None
            result.update(json.loads(self.proc.stdout.readline() or "{}"))

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        reader.join(timeout)
        assert result.get("event") == "ready", f"the load generator did not get ready: {result}"
        return result

    def finish(self) -> dict[str, Any]:
        """Stop the generator (SIGTERM) and return its final counters."""
        if self.proc.poll() is None:
            self.proc.terminate()
        out, _ = self.proc.communicate(timeout=60)
        lines = [json.loads(line) for line in out.splitlines() if line.strip()]
        return lines[-1] if lines else {}

    def __enter__(self) -> Load:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
