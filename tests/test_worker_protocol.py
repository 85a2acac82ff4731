"""The worker against a scripted fake server: handshake, Hello, heartbeats, reports, acks, reconnection, stop."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Assign,
    FinishAck,
    Goodbye,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    Rejoin,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Welcome,
)
from farmhand.transport.client import Backoff, Connection
from farmhand.transport.codec import FrameBuffer, server_codec
from farmhand.workers.execute import ExecOptions
from farmhand.workers.worker import Worker, WorkerOptions, parse_server

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
M = TypeVar("M", bound=Message)
TOKEN = "farm-secret"


class Peer:
    """The server's end of one worker connection."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.codec = server_codec()
        self.frames = FrameBuffer(self.codec)
        self.ready: list[Message] = []
        self.ids = 1000

    async def recv(self, timeout: float = 5.0) -> Message:
        while not self.ready:
            data = await asyncio.wait_for(self.reader.read(65536), timeout)
            if not data:
                raise EOFError("worker closed the connection")
            self.ready.extend(self.frames.feed(data))
        return self.ready.pop(0)

    async def expect(self, kind: type[M], timeout: float = 5.0, skip: tuple[type[Message], ...] = ()) -> M:
        """The next message of ``kind``, skipping heartbeats and progress (and ``skip``)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = await self.recv(max(deadline - time.monotonic(), 0.01))
            if isinstance(msg, kind):
                return msg
            if not isinstance(msg, (Heartbeat, TaskProgress, *skip)):
                raise AssertionError(f"expected {kind.__name__}, got {msg!r}")

    def send(self, msg: Message) -> None:
        self.writer.write(self.codec.encode(msg))

    def next_id(self) -> int:
        self.ids += 1
        return self.ids

    async def accept(self, heartbeat_s: float = 5.0) -> Hello:
        """Play the server's part of the handshake and the Hello; returns the Hello."""
        hs = await self.expect(Handshake)
        assert hs.token == TOKEN and hs.version == PROTOCOL_VERSION
        self.send(HandshakeAccepted(self.next_id(), hs.id, PROTOCOL_VERSION, "fake"))
        hello = await self.expect(Hello)
        self.send(Welcome(self.next_id(), hello.id, heartbeat_s, 60.0))
        return hello

    def close(self) -> None:
        self.writer.close()


class FakeServer:
    """Accepts connections and hands each one to the test as a :class:`Peer`."""

    def __init__(self) -> None:
        self.peers: asyncio.Queue[Peer] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await self.peers.put(Peer(reader, writer))

        self.server = await asyncio.start_server(handle, "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def next_peer(self, timeout: float = 5.0) -> Peer:
        return await asyncio.wait_for(self.peers.get(), timeout)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()


def options(port: int, **kw: Any) -> WorkerOptions:
    base: dict[str, Any] = {
        "host": "127.0.0.1", "port": port, "token": TOKEN, "name": "w1", "tags": frozenset({"gpu"}), "capacity": 2,
        "max_tasks": 2, "memory_mb": 2048, "cpus": 8, "progress_s": 0.05, "backoff_initial": 0.05,
        "backoff_max": 0.2, "execution": ExecOptions(kill_grace=1.0),
    }
    base.update(kw)
    return WorkerOptions(**base)


Scenario = Callable[[FakeServer, Worker], Awaitable[None]]


def scenario(body: Scenario, timeout: float = 30.0, **kw: Any) -> Worker:
    """Run a fake server and a worker on one loop; ``body`` drives the server side, then the worker stops."""

    async def main() -> Worker:
        server = FakeServer()
        await server.start()
        worker = Worker(options(server.port, **kw))
        running = asyncio.ensure_future(worker.run())
        try:
            await asyncio.wait_for(body(server, worker), timeout)
        finally:
            worker.request_stop()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait_for(running, 10)
            await server.stop()
        return worker

    return asyncio.run(main())


async def until(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    """Poll ``predicate`` (yielding to the loop) until true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(0.01)


def assign(run_id: int, command: str | tuple[str, ...], **kw: Any) -> Assign:
    return Assign(run_id, run_id, 1, 0, run_id % 100, 1, "w1", command, **kw)


def test_hello_announces_the_machine_and_heartbeats_follow_the_welcome_interval() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        hello = await peer.accept(heartbeat_s=0.05)
        info = hello.info
        assert (info.name, info.tags, info.capacity, info.max_tasks, info.memory_mb, info.cpus) == (
            "w1", frozenset({"gpu"}), 2, 2, 2048, 8,
        )
        assert hello.running == ()
        start = time.monotonic()
        beats = [await peer.expect(Heartbeat) for _ in range(5)]
        assert 0.15 < time.monotonic() - start < 2.0
        assert all(b.render == "w1" and b.running == () for b in beats)

    scenario(body)


def test_runs_an_assignment_and_reports_start_progress_and_finish() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(7, "echo 25%; sleep 0.3; echo 75%; sleep 0.3; echo bye"))
        started = await peer.expect(TaskStarted)
        assert (started.run_id, started.job_id, started.task, started.attempt, started.render) == (7, 1, 7, 1, "w1")
        progress: list[TaskProgress] = []
        while True:
            msg = await peer.recv()
            if isinstance(msg, TaskProgress):
                progress.append(msg)
            elif isinstance(msg, TaskFinished):
                break
        assert [p.percent for p in progress][:2] == [25, 75]
        lines = [line for p in progress for line in p.lines] + list(msg.output_tail)
        assert lines == ["25%", "75%", "bye"]  # every line exactly once, across progress and finish
        assert (msg.state, msg.exit_code, msg.run_id, msg.render) == ("done", 0, 7, "w1")
        peer.send(FinishAck(peer.next_id(), msg.id, 7))
        await until(lambda: worker.unacked == {}, "the ack to be read")

    scenario(body)


def test_failures_are_reported_and_the_worker_keeps_serving() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(1, "echo oops; exit 4"))
        peer.send(assign(2, ("/no/such/binary",)))
        peer.send(assign(3, "sleep 10", timeout_s=0.3))
        ends: dict[int, TaskFinished] = {}
        while len(ends) < 3:
            msg = await peer.expect(TaskFinished, skip=(TaskStarted,))
            ends[msg.run_id] = msg
        assert (ends[1].state, ends[1].exit_code, ends[1].reason, ends[1].output_tail) == (
            "error", 4, "exit code 4", ("oops",),
        )
        assert ends[2].state == "error" and ends[2].reason.startswith("cannot start")
        assert ends[3].state == "error" and ends[3].reason == "timeout"
        peer.send(assign(4, "true"))
        assert (await peer.expect(TaskFinished, skip=(TaskStarted,))).state == "done"

    scenario(body)


def test_kill_run_kills_the_task_and_reports_killed() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(5, "sleep 30"))
        await peer.expect(TaskStarted)
        peer.send(KillRun(peer.next_id(), 5, 1, "w1", "restarted"))
        peer.send(KillRun(peer.next_id(), 99, 1, "w1", "unknown run: ignored"))
        start = time.monotonic()
        end = await peer.expect(TaskFinished)
        assert time.monotonic() - start < 3
        assert (end.state, end.reason) == ("killed", "restarted")

    scenario(body)


def test_rejoin_makes_the_worker_say_hello_again_with_its_runs() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept(heartbeat_s=0.1)
        peer.send(assign(12, "sleep 0.5"))
        await peer.expect(TaskStarted)
        beat = await peer.expect(Heartbeat)
        assert beat.running == (12,)
        peer.send(Rejoin(peer.next_id(), beat.id, "render was declared lost"))
        hello = await peer.expect(Hello)
        assert [r.run_id for r in hello.running] == [12]
        peer.send(Welcome(peer.next_id(), hello.id, 0.1, 60.0))
        end = await peer.expect(TaskFinished)
        assert end.state == "done" and worker.sessions == 1  # the same connection throughout

    scenario(body)


def test_a_rejoin_answering_a_heartbeat_older_than_the_last_hello_is_ignored() -> None:
    # the render may answer several heartbeats with Rejoin before it reads the Hello the first one caused; a
    # second Hello would make it declare lost what it assigned in between, while the worker runs it
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept(heartbeat_s=0.05)
        old = await peer.expect(Heartbeat)
        peer.send(Rejoin(peer.next_id(), old.id, "render was declared lost"))
        hello = await peer.expect(Hello)
        peer.send(Rejoin(peer.next_id(), old.id, "render was declared lost"))  # stale: answers ``old`` again
        peer.send(Welcome(peer.next_id(), hello.id, 0.05, 60.0))
        for _ in range(5):
            await peer.expect(Heartbeat)  # fails on a second Hello
        beat = await peer.expect(Heartbeat)
        peer.send(Rejoin(peer.next_id(), beat.id, "render was declared lost"))  # a fresh one is obeyed
        await peer.expect(Hello)

    scenario(body)


def test_duplicate_assignment_is_ignored() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(6, "sleep 0.2"))
        peer.send(assign(6, "sleep 0.2"))
        assert (await peer.expect(TaskStarted)).run_id == 6
        assert (await peer.expect(TaskFinished)).run_id == 6  # expect() fails on a second TaskStarted first
        # then the next assignment's reports come next: the duplicate was not run late either
        peer.send(assign(7, "true"))
        assert (await peer.expect(TaskStarted)).run_id == 7
        assert (await peer.expect(TaskFinished)).run_id == 7

    scenario(body)


def test_an_assignment_before_the_welcome_is_not_run() -> None:
    # an Assign that reaches a reconnecting worker before the Welcome was sent before the render read the
    # Hello (which does not list it): the render declares that run lost, so running it would run it twice
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        hs = await peer.expect(Handshake)
        peer.send(HandshakeAccepted(peer.next_id(), hs.id, PROTOCOL_VERSION, "fake"))
        hello = await peer.expect(Hello)
        peer.send(assign(9, "echo ran"))
        peer.send(Welcome(peer.next_id(), hello.id, 0.05, 60.0))
        beats = [await peer.expect(Heartbeat) for _ in range(3)]
        assert all(b.running == () for b in beats) and worker.runs == {} and worker.unacked == {}
        peer.send(assign(10, "true"))  # after the Welcome: run
        assert (await peer.expect(TaskFinished, skip=(TaskStarted,))).run_id == 10

    scenario(body)


def test_reconnect_reclaims_running_runs_and_resends_unacked_finishes() -> None:
    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(8, "sleep 0.6; echo finished"))
        await peer.expect(TaskStarted)
        peer.close()  # the connection breaks while the task runs

        peer = await server.next_peer()
        hello = await peer.accept()
        assert [(r.run_id, r.job_id, r.task, r.attempt) for r in hello.running] == [(8, 1, 8, 1)]
        first = await peer.expect(TaskFinished)
        assert first.state == "done" and first.output_tail == ("finished",)
        peer.close()  # ... and breaks again before the server acknowledged the finish

        peer = await server.next_peer()
        hello = await peer.accept()
        assert [r.run_id for r in hello.running] == [8]  # still reported, so the server keeps the run
        again = await peer.expect(TaskFinished)
        assert again == first  # the very same report, sent again
        peer.send(FinishAck(peer.next_id(), again.id, 8))
        await until(lambda: worker.unacked == {}, "the ack to be read")
        peer.close()

        peer = await server.next_peer()
        hello = await peer.accept()
        assert hello.running == ()
        peer.send(assign(11, "true"))  # the acknowledged finish is not sent again: the next report is run 11's
        assert (await peer.expect(TaskFinished, skip=(TaskStarted,))).run_id == 11
        assert worker.sessions == 4

    scenario(body)


def test_worker_retries_until_the_server_comes_up(monkeypatch: pytest.MonkeyPatch) -> None:
    attempts: list[str] = []  # each attempt to connect, as it ends: "refused" or "connected"
    real_open = Connection.open

    async def counted(*args: Any, **kwargs: Any) -> Connection:
        try:
            conn = await real_open(*args, **kwargs)
        except OSError:
            attempts.append("refused")
            raise
        attempts.append("connected")
        return conn

    monkeypatch.setattr(Connection, "open", counted)

    async def main() -> None:
        probe = FakeServer()
        await probe.start()
        port = probe.port
        await probe.stop()  # nothing listens on ``port`` now
        worker = Worker(options(port))
        running = asyncio.ensure_future(worker.run())
        await until(lambda: len(attempts) >= 3, "three attempts to connect")  # it keeps trying, with backoff
        assert set(attempts) == {"refused"} and worker.sessions == 0
        server = FakeServer()
        await server.start(port)
        peer = await server.next_peer()
        await peer.accept()
        worker.request_stop()
        await asyncio.wait_for(running, 10)
        await server.stop()

    asyncio.run(asyncio.wait_for(main(), 30))


def test_a_stop_while_the_handshake_hangs_is_prompt() -> None:
    async def main() -> float:
        server = FakeServer()
        await server.start()
        worker = Worker(options(server.port, connect_timeout=30.0))
        running = asyncio.ensure_future(worker.run())
        peer = await server.next_peer()
        await peer.expect(Handshake)  # ... and never answered
        start = time.monotonic()
        worker.request_stop()
        assert await asyncio.wait_for(running, 10) == 0
        await server.stop()
        return time.monotonic() - start

    assert asyncio.run(main()) < 2.0


def test_a_refused_handshake_ends_the_worker_with_exit_code_2() -> None:
    async def main() -> int:
        server = FakeServer()
        await server.start()
        worker = Worker(options(server.port))
        running = asyncio.ensure_future(worker.run())
        peer = await server.next_peer()
        hs = await peer.expect(Handshake)
        peer.send(HandshakeRefused(peer.next_id(), hs.id, "bad farm token"))
        peer.close()
        code = await asyncio.wait_for(running, 10)
        await server.stop()
        return code

    assert asyncio.run(main()) == 2


def test_stop_kills_tasks_says_goodbye_and_does_not_report_them(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"

    async def body(server: FakeServer, worker: Worker) -> None:
        peer = await server.next_peer()
        await peer.accept()
        peer.send(assign(9, f"echo $$ > {pidfile}; exec sleep 30"))
        await peer.expect(TaskStarted)
        for _ in range(100):  # the shell writes its pid a moment after the start is reported
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        start = time.monotonic()
        worker.request_stop()
        bye = await peer.expect(Goodbye)  # no TaskFinished before it: the run is requeued by the server
        assert bye.render == "w1"
        assert time.monotonic() - start < 5
        with pytest.raises(EOFError):
            await peer.recv()

    worker = scenario(body)
    assert worker.runs == {} and worker.unacked == {}
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_backoff_grows_with_jitter_up_to_the_cap_and_resets() -> None:
    backoff = Backoff(0.5, 8.0, rng=random.Random(3))
    delays = [backoff.next() for _ in range(8)]
    nominal = [0.5, 1, 2, 4, 8, 8, 8, 8]
    assert all(n / 2 <= d <= n for d, n in zip(delays, nominal, strict=True))
    assert len(set(delays)) == len(delays)
    backoff.reset()
    assert backoff.next() <= 0.5
    with pytest.raises(ValueError):
        Backoff(2.0, 1.0)


def test_parse_server() -> None:
    assert parse_server("render-srv:51000") == ("render-srv", 51000)
    assert parse_server("[::1]:7") == ("::1", 7)
    for bad in ("nohost", ":80", "h:0", "h:99999", "h:x"):
        with pytest.raises(ValueError):
            parse_server(bad)


def test_options_problems() -> None:
    assert options(1).problems() == []
    bad = options(1, name=".bad name", capacity=0, max_tasks=0, token="")
    assert len(bad.problems()) == 4
