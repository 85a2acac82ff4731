"""The gateway on loopback with hand-driven protocol clients: routing, replacement, limits and refusals."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from farm import TOKEN, Farm, wait_until

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Actor,
    Assign,
    FinishAck,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    RenderInfo,
    TaskFinished,
    TaskStarted,
    Welcome,
)
from farmhand.core.runtime import worker_address
from farmhand.core.spec import parse_job
from farmhand.server import FarmServer, ServerConfig
from farmhand.transport.codec import FrameBuffer, worker_codec
from farmhand.transport.gateway import Gateway

pytestmark = pytest.mark.e2e


class RawWorker:
    """A blocking, hand-driven protocol client."""

    def __init__(self, port: int, name: str, token: str = TOKEN, instance: str = "", welcome: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.codec = worker_codec()
        self.frames = FrameBuffer(self.codec)
        self.ready: list[Message] = []
        self.name = name
        self.send(Handshake(1, PROTOCOL_VERSION, token))
        assert isinstance(self.recv(), HandshakeAccepted)
        self.send(Hello(2, RenderInfo(name), instance=instance))
        self.answer = self.recv()
        if welcome:
            assert isinstance(self.answer, Welcome), self.answer

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.codec.encode(msg))

    def recv(self, timeout: float = 5.0) -> Message:
        self.sock.settimeout(timeout)
        while not self.ready:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.ready.extend(self.frames.feed(data))
        return self.ready.pop(0)

    def expect(self, kind: type[Message], timeout: float = 5.0) -> Message:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(deadline - time.monotonic(), 0.01))
            if isinstance(msg, kind):
                return msg

    def closed(self, timeout: float = 5.0) -> bool:
        try:
            while True:
                self.recv(timeout)
        except EOFError:
            return True
        except (TimeoutError, OSError):
            return False

    def close(self) -> None:
        self.sock.close()


@contextlib.contextmanager
def real_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **config: Any) -> Iterator[FarmServer]:
    """The production server (its store in ``tmp_path``, ephemeral ports, this file's farm token), stopped at the
    end whatever happened; the sockets the test opened close with the server."""
    monkeypatch.setenv("FARMHAND_TOKEN", TOKEN)
    server = FarmServer(ServerConfig(db=tmp_path / "farm.db", port=0, http_port=0, **config)).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path, heartbeat_s=0.5, zombie_s=10.0, max_frame=4096)
    try:
        yield f
    finally:
        f.close()


def test_assignments_travel_on_the_workers_connection_and_finish_reports_are_acked(farm: Farm) -> None:
    raw = RawWorker(farm.server.port, "raw1")
    try:
        job = farm.submit(
            {"name": "j", "blocks": [{"name": "b", "command": "x {frame}", "frames": {"first": 1, "last": 2}}]}
        )
        for _ in range(2):
            a = raw.expect(Assign)
            assert isinstance(a, Assign) and a.render == "raw1" and a.command == f"x {a.task + 1}"
            raw.send(TaskStarted(10 + a.run_id, a.run_id, a.job_id, a.block, a.task, a.attempt, "raw1"))
            raw.send(TaskFinished(20 + a.run_id, a.run_id, a.job_id, a.block, a.task, a.attempt, "raw1", "done"))
            ack = raw.expect(FinishAck)
            assert isinstance(ack, FinishAck) and ack.run_id == a.run_id and ack.reply_to == 20 + a.run_id
        assert farm.wait_job(job, timeout=10) == "done"
    finally:
        raw.close()


def test_the_same_worker_reconnecting_replaces_its_live_connection(farm: Farm) -> None:
    first = RawWorker(farm.server.port, "twin", instance="k" * 32)
    second = RawWorker(farm.server.port, "twin", instance="k" * 32)  # its key: the same worker, back
    try:
        assert first.closed()
        assert farm.server.gateway.by_name["twin"] is not None
        second.send(Heartbeat(3, "twin"))
        job = farm.submit({"name": "j", "blocks": [{"name": "b", "command": "x", "frames": {"first": 1, "last": 1}}]})
        a = second.expect(Assign)
        assert isinstance(a, Assign) and a.job_id == job
    finally:
        first.close()
        second.close()


def test_another_worker_taking_a_live_workers_name_is_refused_and_the_live_one_keeps_it(farm: Farm) -> None:
    live = RawWorker(farm.server.port, "twin", instance="a" * 32)
    try:
        for instance in ("b" * 32, ""):  # another key, or none: not the same worker
            other = RawWorker(farm.server.port, "twin", instance=instance, welcome=False)
            assert isinstance(other.answer, HandshakeRefused)
            assert "in use by a live worker" in other.answer.reason and "--name" in other.answer.reason
            assert other.closed()
            other.close()
        assert farm.server.gateway.by_name["twin"].instance == "a" * 32
        live.send(Heartbeat(3, "twin"))
        job = farm.submit({"name": "j", "blocks": [{"name": "b", "command": "x", "frames": {"first": 1, "last": 1}}]})
        a = live.expect(Assign)
        assert isinstance(a, Assign) and a.job_id == job
    finally:
        live.close()


def test_worker_credentials_bind_a_name_replace_only_their_own_and_can_be_revoked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with real_server(tmp_path, monkeypatch, shared_token=False) as server:
        port = server.handle.port
        assert server.http is not None
        api, admin = server.http.api, Actor("admin", True)
        own = api.add_worker(admin, {"name": "r1"})["token"]
        api.add_worker(admin, {"name": "r2"})
        # the shared farm token is off: it is refused like any unknown token
        with pytest.raises(AssertionError):
            RawWorker(port, "r1", token=TOKEN)
        # a credential is good only for its own name
        wrong = RawWorker(port, "r2", token=own, welcome=False)
        assert isinstance(wrong.answer, HandshakeRefused) and "--name r1" in wrong.answer.reason
        wrong.close()
        first = RawWorker(port, "r1", token=own)
        second = RawWorker(port, "r1", token=own)  # the same credential replaces the live connection
        assert first.closed()
        first.close()
        # revoked: its connection closes and it cannot come back
        assert api.remove_worker(admin, "r1") == "revoked the credential of worker 'r1'"
        assert second.closed()
        second.close()
        with pytest.raises(AssertionError):
            RawWorker(port, "r1", token=own)


def test_frames_over_the_limit_close_the_connection(farm: Farm) -> None:
    raw = RawWorker(farm.server.port, "chatty")
    try:
        raw.sock.sendall((5000).to_bytes(4, "big") + b"\x00" * 10)
        assert raw.closed()
        wait_until(lambda: "chatty" not in farm.server.gateway.by_name, 5, "the connection to be forgotten")
    finally:
        raw.close()


def test_an_assignment_too_large_for_the_wire_fails_the_run_instead_of_hanging(farm: Farm) -> None:
    farm.start_worker("real")
    farm.wait_connected("real")
    job = farm.submit(
        {"name": "huge", "blocks": [{"name": "b", "command": "echo " + "x" * 5000, "frames": {"first": 1, "last": 1},
                                     "retries": 1}]}
    )
    assert farm.wait_job(job, timeout=20) == "error"
    assert [r.state for r in farm.runs(job)] == ["error", "error"]
    assert farm.workers["real"].poll() is None


def test_a_token_or_verifier_is_required() -> None:
    with pytest.raises(ValueError, match="token"):
        Gateway(object(), lambda _n: None)  # type: ignore[arg-type]
    gw = Gateway(object(), lambda _n: None, verify=lambda t: t == "a")  # type: ignore[arg-type]
    assert gw.check_token("a") and not gw.check_token("b")
    gw = Gateway(object(), lambda _n: None, token="s3cret")  # type: ignore[arg-type]
    assert gw.check_token("s3cret") and not gw.check_token("s3cre") and not gw.check_token("")
    assert Gateway(object(), lambda _n: None, allow_anonymous=True).check_token("")  # type: ignore[arg-type]


def test_messages_for_workers_after_the_loop_closed_are_dropped_not_kept() -> None:
    gw = Gateway(object(), lambda _n: None, token="t")  # type: ignore[arg-type]
    loop = asyncio.new_event_loop()
    loop.close()
    gw._loop = loop  # a server that stopped while the actors still send
    for i in range(3):
        gw.deliver("worker/w", Heartbeat(i, "w"))
    assert len(gw._outbox) == 0 and gw.stats["undeliverable"] == 3


def test_deeply_nested_msgpack_closes_only_that_connection_with_the_warning(
    farm: Farm, caplog: pytest.LogCaptureFixture
) -> None:
    bystander = RawWorker(farm.server.port, "bystander")
    sock = socket.create_connection(("127.0.0.1", farm.server.port), timeout=5)
    try:
        codec = worker_codec()
        nested = b"\x82\xa4type\xa9Heartbeat\xa5extra" + b"\x91" * 3000 + b"\x90"  # within this farm's 4 KiB frames
        with caplog.at_level("WARNING"):
            # a valid handshake and the hostile frame in one read: the handshake is still answered
            sock.sendall(codec.encode(Handshake(1, PROTOCOL_VERSION, TOKEN)) + len(nested).to_bytes(4, "big") + nested)
            frames = FrameBuffer(codec)
            got: list[Message] = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                got.extend(frames.feed(data))
            assert [type(m) for m in got] == [HandshakeAccepted]
            wait_until(lambda: any("nested too deeply" in str(vars(r)) for r in caplog.records), 5, "the warning")
        assert not [r for r in caplog.records if "Fatal error" in r.getMessage() or r.exc_info]
        closing = [r for r in caplog.records if r.getMessage().startswith("closing connection")]
        assert len(closing) == 1
        bystander.send(Heartbeat(3, "bystander"))
        job = farm.submit({"name": "j", "blocks": [{"name": "b", "command": "x", "frames": {"first": 1, "last": 1}}]})
        a = bystander.expect(Assign)
        assert isinstance(a, Assign) and a.job_id == job
    finally:
        sock.close()
        bystander.close()


def test_an_assignment_leaves_only_once_the_store_has_its_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Durable dispatch: a server killed right after an Assign left restarts knowing the run (reclaims it)."""
    with real_server(tmp_path, monkeypatch, heartbeat_s=0.5, zombie_s=10.0) as server:
        assert server.store is not None and server.http is not None
        raw = RawWorker(server.handle.port, "w1")
        spec = parse_job({"name": "j", "blocks": [{"name": "b", "command": "x", "frames": {"first": 1, "last": 1}}]})
        held = server.store._lock  # while this thread holds it, the store's writer cannot commit
        held.acquire()
        try:
            server.http.api.submit(Actor("admin", True), [spec])  # (the lock is re-entrant: this commits)
            # the run is not committed: the gateway holds its Assign (the event), and it has not reached the worker
            gateway = server.handle.gateway
            wait_until(lambda: gateway._held_for.get(worker_address("w1"), 0) > 0, 10, "the Assign to be held")
            with pytest.raises(TimeoutError):
                raw.expect(Assign, timeout=0.1)
        finally:
            held.release()
        a = raw.expect(Assign, timeout=5.0)
        assert isinstance(a, Assign)
        with sqlite3.connect(tmp_path / "farm.db") as db:
            row = db.execute("SELECT state, run_id, render FROM tasks WHERE job=? AND block=0 AND task=0",
                             (a.job_id,)).fetchone()
        assert row == ("running", a.run_id, "w1")
        raw.close()


def test_a_silent_connection_holds_no_name_against_a_new_one(tmp_path: Path) -> None:
    farm = Farm(tmp_path, heartbeat_s=0.2, zombie_s=0.8)
    try:
        dead = RawWorker(farm.server.port, "host9", instance="a" * 32)  # its host died: it sends nothing more
        time.sleep(1.2)
        fresh = RawWorker(farm.server.port, "host9", instance="b" * 32)  # a new key (its state folder was lost)
        assert dead.closed() and farm.server.gateway.by_name["host9"].instance == "b" * 32
        fresh.close()
        dead.close()
    finally:
        farm.close()


def test_a_connection_with_a_credential_is_replaced_only_by_that_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with real_server(tmp_path, monkeypatch) as server:
        assert server.http is not None
        own = server.http.api.add_worker(Actor("admin", True), {"name": "r1"})["token"]
        live = RawWorker(server.handle.port, "r1", token=own, instance="k" * 32)
        # the farm token with the same instance key (it travels in the Hello) does not replace it
        other = RawWorker(server.handle.port, "r1", token=TOKEN, instance="k" * 32, welcome=False)
        assert isinstance(other.answer, HandshakeRefused) and other.closed()
        assert server.handle.gateway.by_name["r1"].identity == "r1"
        other.close()
        live.close()


class _Barrier:
    """A store barrier the test commits by hand."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[], None]] = []

    def __call__(self, callback: Callable[[], None]) -> None:
        self.waiting.append(callback)

    def commit(self) -> None:
        waiting, self.waiting = self.waiting, []
        for callback in waiting:
            callback()


def test_durable_dispatch_holds_only_the_frames_of_the_workers_with_an_assignment_waiting(tmp_path: Path) -> None:
    barrier = _Barrier()
    farm = Farm(tmp_path, heartbeat_s=0.5, zombie_s=10.0, durable=barrier)
    a = b = None
    try:
        a, b = RawWorker(farm.server.port, "a"), RawWorker(farm.server.port, "b")
        rt = farm.server.runtime

        def kill(run_id: int, render: str) -> KillRun:
            return KillRun(rt.next_id(), run_id, 1, render, "test")

        rt.send(worker_address("a"), Assign(rt.next_id(), 7, 1, 0, 0, 1, "a", "x"))
        wait_until(lambda: bool(barrier.waiting), 5, "the barrier")
        rt.send(worker_address("a"), kill(7, "a"))  # behind the held Assign: must not overtake it
        rt.send(worker_address("b"), kill(8, "b"))  # another worker: goes at once
        got = b.expect(KillRun, timeout=5)
        assert isinstance(got, KillRun) and got.run_id == 8
        # a's kill reached the gateway before b's (one sender, in order): it is held behind the Assign, not sent;
        # and what a receives once the store commits comes in order (an overtaking kill would come first)
        assert farm.server.gateway._held_for == {worker_address("a"): 2}
        barrier.commit()
        assert isinstance(a.recv(timeout=5), Assign)
        # the kill came after the barrier in flight was asked for: it waits for the next one (kept in order)
        wait_until(lambda: bool(barrier.waiting), 5, "the next barrier")
        barrier.commit()
        assert isinstance(a.recv(timeout=5), KillRun)
        assert not barrier.waiting and farm.server.gateway._held_for == {}
    finally:
        for raw in (a, b):
            if raw is not None:
                raw.close()
        farm.close()
