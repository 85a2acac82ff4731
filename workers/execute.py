"""Running one assignment: a subprocess in its own process group, its output, its progress, its end.

A :class:`TaskRun` starts the command (``/bin/sh -c`` for a string, argv for a list) in a new session, so
that the task and everything it spawns share one process group that can be signalled at once, with the
block's working directory and environment (plus ``FARMHAND_*`` variables naming the run; the worker's own
farm token is never passed on). stdout and stderr are read together, split into lines (``\\r`` counts as a
line end, so progress bars read well), bounded in length and number, and parsed for progress.

It ends ``done`` (exit code 0), ``error`` (non-zero exit, killed by a signal, timed out, or could not start)
or ``killed`` (the server asked, or the worker stops): killing sends SIGTERM to the whole group, then SIGKILL
after a grace period. When the main process exits, whatever it left behind in its group is killed too. On
Linux a task also dies with the worker (``PR_SET_PDEATHSIG``), so a worker killed hard leaves no orphan
renders behind to run twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import re
import signal
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from farmhand.core.messages import Assign
from farmhand.logs import fields

from .progress import ProgressParser

log = logging.getLogger("farmhand.worker")

LINE_BREAK = re.compile(rb"\r\n|\r|\n")
SECRET_ENV = ("FARMHAND_TOKEN",)


@dataclass(frozen=True)
class ExecOptions:
    """Limits for running tasks."""

    output_lines: int = 100  # lines kept for reports not yet sent (the final report carries them)
    max_line: int = 2000  # characters of one line (longer lines are cut)
    kill_grace: float = 3.0  # seconds between SIGTERM and SIGKILL
    drain_s: float = 2.0  # seconds to finish reading output after the process ended


@dataclass(frozen=True)
class RunResult:
    """How a run ended: ``state`` (done, error, killed), the exit code and a reason."""

    state: str
    exit_code: int
    reason: str = ""


def _die_with_parent() -> Callable[[], None] | None:
    """A preexec function that makes the child get SIGKILL when the worker dies (Linux), or None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    parent = os.getpid()
    pr_set_pdeathsig = 1
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
        prctl(pr_set_pdeathsig, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the worker died before prctl took effect
            os.kill(os.getpid(), sigkill)

    return preexec


_PREEXEC = _die_with_parent()


def task_environment(assign: Assign, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a task: the worker's (minus its secrets), ``FARMHAND_*`` run names, the block's."""
    env = dict(os.environ if base is None else base)
    for key in SECRET_ENV:
        env.pop(key, None)
    env.update(
        FARMHAND_JOB_ID=str(assign.job_id),
        FARMHAND_JOB_NAME=assign.job_name,
        FARMHAND_BLOCK=str(assign.block),
        FARMHAND_BLOCK_NAME=assign.block_name,
        FARMHAND_TASK=str(assign.task),
        FARMHAND_TASK_NAME=assign.task_name,
        FARMHAND_RUN_ID=str(assign.run_id),
        FARMHAND_ATTEMPT=str(assign.attempt),
        FARMHAND_RENDER=assign.render,
    )
    env.update(assign.env)
    return env


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


class TaskRun:
    """One run of one task on this worker: start it with :meth:`execute`, stop it with :meth:`kill`."""

    def __init__(self, assign: Assign, options: ExecOptions | None = None) -> None:
        self.assign = assign
        self.options = options or ExecOptions()
        self.parser = ProgressParser(assign.progress)
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.percent = -1
        self.fresh: deque[str] = deque(maxlen=self.options.output_lines)  # lines not yet reported
        self.dirty = False  # progress or lines to report
        self.lines_seen = 0
        self.kill_reason: str | None = None
        self.silent = False  # killed because the worker stops: its end is not reported
        self.timed_out = False
        self.ended = asyncio.Event()
        self._killer: asyncio.Task[None] | None = None

    @property
    def run_id(self) -> int:
        """The run id the server gave this run."""
        return self.assign.run_id

    # ------------------------------------------------------------------------------------------ reports
    def take_progress(self) -> tuple[int, tuple[str, ...]] | None:
        """The percentage and the new lines since the last call, or None if nothing changed."""
        if not self.dirty:
            return None
        self.dirty = False
        lines = tuple(self.fresh)
        self.fresh.clear()
        return self.percent, lines

    def give_back(self, lines: tuple[str, ...]) -> None:
        """Keep taken lines that could not be sent, before the newer ones (the oldest dropped beyond the cap)."""
        if lines:
            self.fresh = deque((*lines, *self.fresh), maxlen=self.fresh.maxlen)
            self.dirty = True

    def take_tail(self) -> tuple[str, ...]:
        """The lines not reported yet (for the finish report)."""
        lines = tuple(self.fresh)
        self.fresh.clear()
        self.dirty = False
        return lines

    # ------------------------------------------------------------------------------------------ running
    async def execute(self, on_started: Callable[[], None] | None = None) -> RunResult:
        """Run the task to its end and say how it ended (never raises for a task's own failure)."""
        a = self.assign
        common = {
            "stdin": subprocess.DEVNULL,
            "stdout": subprocess.PIPE,
            "stderr": subprocess.STDOUT,
            "cwd": a.working_dir or None,
            "env": task_environment(a),
            "start_new_session": True,
            "preexec_fn": _PREEXEC,
        }
        try:
            if isinstance(a.command, str):
                if not a.command.strip():
                    raise ValueError("empty command")
                proc = await asyncio.create_subprocess_shell(a.command, **common)  # type: ignore[arg-type]
            else:
                if not a.command:
                    raise ValueError("empty command")
                proc = await asyncio.create_subprocess_exec(*a.command, **common)  # type: ignore[arg-type]
        except (OSError, ValueError, subprocess.SubprocessError) as exc:
            self.ended.set()
            return RunResult("error", -1, f"cannot start: {exc}")
        self.process = proc
        self.started_at = time.monotonic()
        if on_started is not None:
            on_started()
        if self.kill_reason is not None:  # killed while starting
            self._start_killing()
        reader = asyncio.ensure_future(self._read_output(proc.stdout))
        waiter = asyncio.ensure_future(proc.wait())
        try:
            timeout = a.timeout_s
            done, _ = await asyncio.wait({waiter}, timeout=timeout if timeout and timeout > 0 else None)
            if not done:
                self.timed_out = True
                if self.kill_reason is None:
                    log.info("task timed out", extra=fields(run=a.run_id, job=a.job_id, timeout_s=timeout))
                self._start_killing()
            returncode = await waiter
            self._signal_group(signal.SIGKILL)  # whatever it left behind in its group
            try:
                await asyncio.wait_for(asyncio.shield(reader), self.options.drain_s)
            except TimeoutError:
                reader.cancel()
        finally:
            if not waiter.done():  # cancelled from outside: do not leave the process behind
                self._signal_group(signal.SIGKILL)
                waiter.cancel()
                reader.cancel()
            if self._killer is not None and not self._killer.done():
                self._killer.cancel()
            self.ended.set()
        return self._result(returncode)

    def _result(self, returncode: int) -> RunResult:
        if self.kill_reason is not None:
            return RunResult("killed", returncode, self.kill_reason)
        if self.timed_out:
            return RunResult("error", returncode, "timeout")
        if returncode == 0:
            return RunResult("done", 0)
        if returncode < 0:
            return RunResult("error", returncode, f"killed by {_signal_name(-returncode)}")
        return RunResult("error", returncode, f"exit code {returncode}")

    async def _read_output(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        cutoff = self.options.max_line * 4  # bytes: a character takes up to 4 in UTF-8
        partial = b""
        skipping = False  # inside a line already reported cut: drop the rest of it
        while True:
            chunk = await stream.read(65536)
            if not chunk:
                break
            parts = LINE_BREAK.split(partial + chunk)
            partial = parts.pop()
            if skipping:
                if parts:
                    parts.pop(0)
                    skipping = False
                else:
                    partial = b""
            for part in parts:
                self._line(part)
            if len(partial) > cutoff:  # a very long line: report its start, drop the rest
                self._line(partial[:cutoff])
                partial = b""
                skipping = True
        if partial:
            self._line(partial)

    def _line(self, raw: bytes) -> None:
        line = raw.decode("utf-8", "replace").rstrip()
        if not line:
            return
        if len(line) > self.options.max_line:
            line = line[: self.options.max_line - 1] + "\u2026"
        self.lines_seen += 1
        self.fresh.append(line)
        self.dirty = True
        percent = self.parser.parse(line)
        if percent is not None:
            self.percent = percent

    # ------------------------------------------------------------------------------------------ killing
    def kill(self, reason: str, silent: bool = False) -> None:
        """Stop the run: SIGTERM to its group, SIGKILL after the grace period. Its end says ``killed``."""
        if self.kill_reason is None:
            self.kill_reason = reason
        self.silent = self.silent or silent
        if self.process is not None:
            self._start_killing()

    def kill_now(self) -> None:
        """SIGKILL the whole group at once (a second stop request)."""
        self._signal_group(signal.SIGKILL)

    def _start_killing(self) -> None:
        if self._killer is None and self.process is not None and self.process.returncode is None:
            self._killer = asyncio.ensure_future(self._terminate())

    async def _terminate(self) -> None:
        proc = self.process
        assert proc is not None
        self._signal_group(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.options.kill_grace)
        except TimeoutError:
            self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        proc = self.process
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
