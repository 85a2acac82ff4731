"""The worker process: one per machine, one persistent connection to the server, tasks as subprocesses.

``farmhand worker --server HOST:PORT`` connects (farm token, protocol version), says :class:`Hello` with what
the machine offers (name, tags, capacity, max tasks, memory, CPUs) and what it is still running, then
heartbeats at the interval the server's :class:`Welcome` sets. Each :class:`Assign` runs as a
:class:`~farmhand.workers.execute.TaskRun`; the worker reports ``TaskStarted``, throttled ``TaskProgress``
(percent and new output lines) and ``TaskFinished``. It decides nothing about scheduling: it runs what it is
given and kills what it is told to kill.

Failures it survives:

- a task that fails, crashes, times out or cannot start is reported ``error``; the worker goes on;
- a lost connection: it reconnects with exponential backoff and jitter while its tasks keep running; its
  Hello then lists them (and the runs whose finish report is not yet acknowledged), so the server reclaims
  them instead of running them twice;
- a lost finish report: every ``TaskFinished`` is kept until the server's ``FinishAck`` and sent again after
  each reconnection.

SIGINT or SIGTERM stop it within seconds: its tasks' process groups get SIGTERM then SIGKILL, the server a
``Goodbye`` (which requeues those runs elsewhere). A second signal kills the tasks at once. A refusal (a wrong
token or protocol version, a credential of another name, or a name a live worker of another host holds) ends
the worker with exit code 2 and the server's reason in its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from farmhand.core.messages import (
    Assign,
    FinishAck,
    Goodbye,
    HandshakeRefused,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    Rejoin,
    RenderInfo,
    RunningRun,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Welcome,
)
from farmhand.logs import fields
from farmhand.transport.client import Backoff, Connection, ConnectionClosed, HandshakeRefusedError
from farmhand.transport.codec import RENDER_NAME, FrameError

from .execute import ExecOptions, RunResult, TaskRun
from .identity import host_name

log = logging.getLogger("farmhand.worker")

EXIT_OK, EXIT_REFUSED = 0, 2


def memory_mb() -> int:
    """The machine's total memory in MiB (0 if unknown)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (OSError, ValueError, AttributeError):
        return 0


def parse_server(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a pair; ``ValueError`` otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server: expected HOST:PORT (got {text!r})")
    return host.strip("[]"), int(port)


@dataclass
class WorkerOptions:
    """Everything a worker needs to know (the command line fills it)."""

    host: str
    port: int
    token: str
    name: str = field(default_factory=host_name)
    instance: str = ""  # this worker's key for its name (see farmhand.workers.identity)
    tags: frozenset[str] = frozenset()
    capacity: int = 1
    max_tasks: int = 1
    memory_mb: int = field(default_factory=memory_mb)
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)
    heartbeat_s: float = 5.0  # until the server's Welcome says otherwise
    progress_s: float = 1.0  # at most one progress report per run per this many seconds
    connect_timeout: float = 10.0
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    execution: ExecOptions = field(default_factory=ExecOptions)

    def problems(self) -> list[str]:
        """What is wrong with these options (empty when they are usable)."""
        out = []
        if not RENDER_NAME.fullmatch(self.name):
            out.append(f"--name: {self.name!r} must be 1-128 of letters, digits and _.@+- (not starting with .@+-)")
        if self.capacity < 1:
            out.append(f"--capacity: must be >= 1 (got {self.capacity})")
        if self.max_tasks < 1:
            out.append(f"--max-tasks: must be >= 1 (got {self.max_tasks})")
        if not self.token:
            out.append("a farm token is required: --token, --token-file or FARMHAND_TOKEN")
        if self.memory_mb < 0:
            out.append(f"--memory-mb: must be >= 0 (got {self.memory_mb})")
        if self.cpus < 0:
            out.append(f"--cpus: must be >= 0 (got {self.cpus})")
        if self.execution.kill_grace < 0:
            out.append(f"--kill-grace: must be >= 0 (got {self.execution.kill_grace})")
        if self.backoff_max <= 0:
            out.append(f"--reconnect-max: must be > 0 (got {self.backoff_max})")
        return out

    def info(self) -> RenderInfo:
        """What this worker announces in its Hello."""
        return RenderInfo(self.name, self.tags, self.capacity, self.max_tasks, self.memory_mb, self.cpus)


class Worker:
    """The worker: connection management, the protocol, and the runs (one asyncio loop)."""

    def __init__(self, options: WorkerOptions) -> None:
        self.options = options
        self.info = options.info()
        self.name = options.name
        self.runs: dict[int, TaskRun] = {}
        self.run_tasks: dict[int, asyncio.Task[None]] = {}
        self.unacked: dict[int, TaskFinished] = {}
        self.heartbeat_s = options.heartbeat_s
        self.exit_code = EXIT_OK
        self.connected = False  # connected and welcomed: reports go out
        self.sessions = 0
        self.completed = 0
        self._ids = itertools.count(1)
        self._hello_id = 0  # the id of the last Hello sent
        self._conn: Connection | None = None
        self._stopping = False
        self._stop_requests = 0
        self._stop: asyncio.Event | None = None
        self._welcomed = asyncio.Event()
        self._backoff = Backoff(options.backoff_initial, max(options.backoff_max, options.backoff_initial))

    # ------------------------------------------------------------------------------------------ control
    def request_stop(self) -> None:
        """Stop the worker (event-loop thread); a second request kills the tasks at once."""
        self._stop_requests += 1
        self._stopping = True
        if self._stop is not None:
            self._stop.set()
        if self._stop_requests > 1:
            log.warning("second stop request: killing tasks now", extra=fields(render=self.name))
            for run in list(self.runs.values()):
                run.kill("worker stopped", silent=True)
                run.kill_now()

    @property
    def stopping(self) -> bool:
        """Whether a stop was requested."""
        return self._stopping

    def _next_id(self) -> int:
        return next(self._ids)

    async def run(self) -> int:
        """Serve until stopped (or refused); returns the exit code."""
        self._stop = asyncio.Event()
        if self._stopping:
            self._stop.set()
        ticker = asyncio.ensure_future(self._progress_loop())
        try:
            while not self._stopping:
                conn = await self._connect()
                if conn is None:
                    continue
                await self._session(conn)
                if not self._stopping:
                    await self._pause(self._backoff.next(), "reconnecting")
        finally:
            await self._shutdown()
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        log.info("worker stopped", extra=fields(render=self.name))
        return self.exit_code

    def _refused(self, reason: str) -> None:
        """The server will not have this worker (token, version, name): stop, exit code 2, the reason said."""
        log.error("server refused this worker", extra=fields(render=self.name, reason=reason))
        self.exit_code = EXIT_REFUSED
        self._stopping = True
        if self._stop is not None:
            self._stop.set()

    async def _pause(self, seconds: float, why: str, **extra: object) -> None:
        log.info(why, extra=fields(render=self.name, delay_s=round(seconds, 2), **extra))
        assert self._stop is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def _connect(self) -> Connection | None:
        o = self.options
        assert self._stop is not None
        opening = asyncio.ensure_future(
            Connection.open(
                o.host, o.port, o.token, agent=f"farmhand-worker/{self.name}", timeout=o.connect_timeout,
                ids=self._ids,
            )
        )
        stopper = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait({opening, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not opening.done():  # a stop while connecting: do not wait for the connection
            opening.cancel()
            with contextlib.suppress(BaseException):
                await opening
            return None
        try:
            conn = opening.result()
        except HandshakeRefusedError as exc:
            self._refused(exc.reason)
            return None
        except (OSError, TimeoutError, FrameError, ConnectionClosed) as exc:
            await self._pause(
                self._backoff.next(), "cannot connect, retrying", server=f"{o.host}:{o.port}", error=repr(exc)
            )
            return None
        return conn

    # ------------------------------------------------------------------------------------------ a session
    async def _session(self, conn: Connection) -> None:
        """One connection's life: Hello, then messages until it ends or a stop is requested."""
        self._conn = conn
        self._welcomed = asyncio.Event()
        self.sessions += 1
        assert self._stop is not None
        heartbeat: asyncio.Task[None] | None = None
        reader = asyncio.ensure_future(self._read_loop(conn))
        stopper = asyncio.ensure_future(self._stop.wait())
        try:
            running = self._running_runs()
            conn.send(self._hello(running))
            log.info("connected", extra=fields(render=self.name, server=conn.peer, running=len(running)))
            welcome_deadline = asyncio.get_running_loop().call_later(self.options.connect_timeout, conn.close)
            heartbeat = asyncio.ensure_future(self._heartbeat_loop(conn, welcome_deadline))
            done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            welcome_deadline.cancel()
            if reader in done and not self._stopping:
                exc = reader.exception()
                log.warning("connection lost", extra=fields(render=self.name, reason=repr(exc)))
        except ConnectionClosed as exc:
            log.warning("connection lost", extra=fields(render=self.name, reason=repr(exc)))
        finally:
            for task in (reader, stopper, heartbeat):
                if task is not None and not task.done():
                    task.cancel()
            if not self._stopping or conn.closed:  # a stopping worker still says Goodbye on a live connection
                self.connected = False
                conn.close()
                self._conn = None

    async def _read_loop(self, conn: Connection) -> None:
        while True:
            msg = await conn.recv()
            kind = type(msg)
            if kind is Assign:
                self._on_assign(msg)  # type: ignore[arg-type]
            elif kind is FinishAck:
                self.unacked.pop(msg.run_id, None)  # type: ignore[attr-defined]
            elif kind is KillRun:
                self._on_kill(msg)  # type: ignore[arg-type]
            elif kind is Welcome:
                self._on_welcome(msg, conn)  # type: ignore[arg-type]
            elif kind is Rejoin:
                self._on_rejoin(msg, conn)  # type: ignore[arg-type]
            elif kind is HandshakeRefused:  # refused at its Hello (its name is another live worker's...)
                self._refused(msg.reason)  # type: ignore[attr-defined]
                return
            else:
                log.debug("ignoring message", extra=fields(render=self.name, message=kind.__name__))

    def _on_welcome(self, msg: Welcome, conn: Connection) -> None:
        self.heartbeat_s = min(max(msg.heartbeat_s, 0.05), 3600.0)
        self.connected = True
        self._welcomed.set()
        self._backoff.reset()
        for run_id in sorted(self.unacked):  # the Hello listed them: the render takes them as its runs
            self._send(self.unacked[run_id])
        log.info("welcomed", extra=fields(render=self.name, heartbeat_s=self.heartbeat_s, resent=len(self.unacked)))

    def _hello(self, running: tuple[RunningRun, ...]) -> Hello:
        self._hello_id = self._next_id()
        return Hello(self._hello_id, self.info, running, instance=self.options.instance)

    def _on_rejoin(self, msg: Rejoin, conn: Connection) -> None:
        if msg.reply_to < self._hello_id:
            # it answers a heartbeat sent before our last Hello, which already rejoins: a second Hello would
            # make the render declare lost whatever it assigned between the two
            log.debug("stale rejoin ignored", extra=fields(render=self.name, reply_to=msg.reply_to))
            return
        running = self._running_runs()
        log.warning("server asks to rejoin", extra=fields(render=self.name, reason=msg.reason, running=len(running)))
        conn.send(self._hello(running))

    async def _heartbeat_loop(self, conn: Connection, welcome_deadline: asyncio.TimerHandle) -> None:
        await self._welcomed.wait()
        welcome_deadline.cancel()
        while True:
            await asyncio.sleep(self.heartbeat_s)
            self._send(Heartbeat(self._next_id(), self.name, tuple(sorted(self.runs))))
            try:
                await conn.drain(max(10.0, 2 * self.heartbeat_s))
            except ConnectionClosed:
                return

    def _send(self, msg: Message) -> bool:
        conn = self._conn
        if conn is None or not self.connected:
            return False
        try:
            conn.send(msg)
        except ConnectionClosed:
            return False
        return True

    def _running_runs(self) -> tuple[RunningRun, ...]:
        """What Hello reports: runs still executing, and finished runs whose report is not acknowledged."""
        out = {}
        for run_id, run in self.runs.items():
            a = run.assign
            out[run_id] = RunningRun(run_id, a.job_id, a.block, a.task, a.attempt, a.capacity, a.memory_mb)
        for run_id, f in self.unacked.items():
            if run_id not in out:
                out[run_id] = RunningRun(run_id, f.job_id, f.block, f.task, f.attempt)
        return tuple(out[k] for k in sorted(out))

    # ------------------------------------------------------------------------------------------ runs
    def _on_assign(self, msg: Assign) -> None:
        if self._stopping:
            log.info("not starting a run while stopping", extra=fields(run=msg.run_id, job=msg.job_id))
            return
        if msg.run_id in self.runs or msg.run_id in self.unacked:
            log.warning("duplicate assignment ignored", extra=fields(run=msg.run_id, job=msg.job_id))
            return
        if not self._welcomed.is_set():
            # sent before the render read this session's Hello, which does not list it: the render declares
            # the run lost when it reads the Hello and the job runs it again elsewhere, so running it here
            # would run the task twice
            log.warning("assignment before Welcome ignored", extra=fields(run=msg.run_id, job=msg.job_id))
            return
        run = TaskRun(msg, self.options.execution)
        self.runs[msg.run_id] = run
        self.run_tasks[msg.run_id] = asyncio.ensure_future(self._run(run))

    def _on_kill(self, msg: KillRun) -> None:
        run = self.runs.get(msg.run_id)
        if run is None:
            return
        log.info("killing run", extra=fields(run=msg.run_id, job=msg.job_id, reason=msg.reason))
        run.kill(msg.reason or "killed by the server")

    async def _run(self, run: TaskRun) -> None:
        a = run.assign
        log.info(
            "starting run",
            extra=fields(run=a.run_id, job=a.job_id, block=a.block, task=a.task, attempt=a.attempt, name=a.task_name),
        )

        def started() -> None:
            self._send(TaskStarted(self._next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, self.name))

        try:
            result = await run.execute(started)
        except asyncio.CancelledError:
            result = RunResult("killed", -1, "worker stopped")
            run.silent = True
        except Exception as exc:  # the worker never dies of a task
            log.exception("run failed in the worker", extra=fields(run=a.run_id, job=a.job_id))
            result = RunResult("error", -1, f"worker error: {exc!r}")
        finally:
            self.run_tasks.pop(a.run_id, None)
        if run.silent:
            self.runs.pop(a.run_id, None)
            return
        finished = TaskFinished(
            self._next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, self.name, result.state,
            result.exit_code, run.take_tail(), result.reason,
        )
        self.unacked[a.run_id] = finished  # before it leaves ``runs``: a Hello always lists it
        self.runs.pop(a.run_id, None)
        self.completed += 1
        log.info(
            "run ended",
            extra=fields(
                run=a.run_id, job=a.job_id, state=result.state, exit_code=result.exit_code, reason=result.reason
            ),
        )
        self._send(finished)

    async def _progress_loop(self) -> None:
        while True:
            await asyncio.sleep(self.options.progress_s)
            if not self.connected:
                continue
            for run in list(self.runs.values()):
                if run.process is None or not run.dirty:
                    continue
                taken = run.take_progress()
                if taken is None:
                    continue
                a = run.assign
                percent, lines = taken
                if not self._send(
                    TaskProgress(self._next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, percent, lines)
                ):
                    run.give_back(lines)  # not sent: keep them for later

    # ------------------------------------------------------------------------------------------ stopping
    async def _shutdown(self) -> None:
        """Kill every run (their ends are not reported), say Goodbye if connected, close."""
        grace = self.options.execution.kill_grace + self.options.execution.drain_s + 1.0
        for run in list(self.runs.values()):
            run.kill("worker stopped", silent=True)
        tasks = list(self.run_tasks.values())
        if tasks:
            log.info("stopping runs", extra=fields(render=self.name, runs=len(tasks)))
            _, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        conn = self._conn
        if conn is not None:
            if self.connected:
                with contextlib.suppress(ConnectionClosed):
                    conn.send(Goodbye(self._next_id(), self.name))
                    await conn.drain(2.0)
            self.connected = False
            conn.close()
            await conn.wait_closed(1.0)
            self._conn = None


async def serve(options: WorkerOptions, install_signals: bool = True) -> int:
    """Run a worker on the current loop until SIGINT/SIGTERM; returns the exit code."""
    worker = Worker(options)
    loop = asyncio.get_running_loop()
    if install_signals:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, worker.request_stop)
    started = time.monotonic()
    code = await worker.run()
    log.debug(
        "worker ran",
        extra=fields(seconds=round(time.monotonic() - started, 1), sessions=worker.sessions, runs=worker.completed),
    )
    return code


def run_worker(options: WorkerOptions) -> int:
    """Run a worker in a fresh event loop (the ``farmhand worker`` command)."""
    return asyncio.run(serve(options))


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m farmhand.workers.worker``: the same as ``farmhand worker``."""
    import argparse

    from farmhand.cli_worker import cmd_worker, configure_worker_parser

    parser = argparse.ArgumentParser(prog="farmhand worker", description="run a farmhand worker")
    configure_worker_parser(parser)
    return cmd_worker(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
