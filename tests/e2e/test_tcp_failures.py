"""End to end over TCP: workers that die, tasks that fail, and connections that misbehave."""

from __future__ import annotations

import collections
import os
import signal
import socket
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm import TOKEN, Farm, wait_until

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Hello,
    Message,
    RenderInfo,
    TaskFinished,
)
from farmhand.transport.codec import FrameBuffer, worker_codec

pytestmark = pytest.mark.e2e


@pytest.fixture
def farm(tmp_path: Path) -> Iterator[Farm]:
    f = Farm(tmp_path, heartbeat_s=0.25, zombie_s=1.5, handshake_timeout=2.0)
    try:
        yield f
    finally:
        f.close()


def test_a_worker_killed_mid_task_has_its_task_requeued_and_done_elsewhere(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    farm.start_worker("doomed")
    farm.wait_connected("doomed")
    job = farm.submit(
        {
            "name": "survive",
            "blocks": [
                {
                    "name": "slow",
                    "command": f"echo $FARMHAND_RENDER > {out}/{{frame}}-$FARMHAND_RUN_ID; sleep 1; echo ok",
                    "frames": {"first": 1, "last": 4},
                }
            ],
        }
    )
    wait_until(lambda: any(out.iterdir()), 15, "a task to start on the doomed worker")
    farm.workers["doomed"].send_signal(signal.SIGKILL)
    farm.workers["doomed"].wait(5)
    killed_at = time.monotonic()
    farm.start_worker("rescuer")
    assert farm.wait_job(job, timeout=40) == "done"
    runs = farm.runs(job)
    lost = [r for r in runs if r.state == "lost"]
    assert lost and all(r.render == "doomed" for r in lost)
    done = [r for r in runs if r.state == "done"]
    assert sorted(int(r.task) for r in done) == [1, 2, 3, 4]  # every task done exactly once
    for r in lost:
        redo = next(d for d in done if d.task == r.task)
        assert redo.render == "rescuer" and redo.attempt == r.attempt + 1
    assert time.monotonic() - killed_at < 30


def test_a_failing_task_is_retried_then_in_error_and_the_worker_keeps_serving(farm: Farm) -> None:
    farm.start_worker("steady")
    farm.wait_connected("steady")
    job = farm.submit(
        {
            "name": "flaky",
            "blocks": [
                {"name": "bad", "command": "echo broken >&2; exit 3", "frames": {"first": 1, "last": 1}, "retries": 2},
                {"name": "good", "command": "echo fine", "frames": {"first": 1, "last": 3}},
            ],
        }
    )
    assert farm.wait_job(job, timeout=30) == "error"
    runs = farm.runs(job)
    bad = sorted((r for r in runs if r.block == "bad"), key=lambda r: r.attempt)
    assert [(r.state, r.attempt) for r in bad] == [("error", 1), ("error", 2), ("error", 3)]
    assert sorted(r.state for r in runs if r.block == "good") == ["done"] * 3
    assert farm.workers["steady"].poll() is None
    again = farm.submit(
        {"name": "after", "blocks": [{"name": "b", "command": ["true"], "frames": {"first": 1, "last": 2}}]}
    )
    assert farm.wait_job(again, timeout=20) == "done"
    assert {r.render for r in farm.runs(again)} == {"steady"}


def _recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    chunks = []
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            break
        if not data:
            break
        chunks.append(data)
    return b"".join(chunks)


def _connect(farm: Farm) -> socket.socket:
    return socket.create_connection(("127.0.0.1", farm.server.port), timeout=5)


def _decode(data: bytes) -> list[Message]:
    return FrameBuffer(worker_codec()).feed(data)


def test_malformed_frames_and_wrong_tokens_are_refused_while_others_keep_working(farm: Farm, tmp_path: Path) -> None:
    for name in ("good1", "good2"):
        farm.start_worker(name)
    farm.wait_connected("good1", "good2")
    job = farm.submit(
        {"name": "busy", "blocks": [{"name": "b", "command": "sleep 0.1", "frames": {"first": 1, "last": 30}}]}
    )
    codec = worker_codec()
    refused_before = farm.server.gateway.stats["refused"]

    # 1. garbage instead of a frame: closed, nothing answered
    with _connect(farm) as s:
        s.sendall(b"\x00\x00\x00\x05hello")
        assert _recv_all(s) == b""
    # 2. a frame length over the limit before authentication: closed at once
    with _connect(farm) as s:
        s.sendall(b"\x7f\x00\x00\x00")
        assert _recv_all(s) == b""
    # 3. a wrong token: told why, then closed
    with _connect(farm) as s:
        s.sendall(codec.encode(Handshake(1, PROTOCOL_VERSION, "not-the-token")))
        answer = _decode(_recv_all(s))
        assert len(answer) == 1 and isinstance(answer[0], HandshakeRefused)
        assert answer[0].reason == "bad farm token or worker credential" and "not-the-token" not in answer[0].reason
    # 4. an unsupported protocol version
    with _connect(farm) as s:
        s.sendall(codec.encode(Handshake(1, PROTOCOL_VERSION + 99, TOKEN)))
        answer = _decode(_recv_all(s))
        assert isinstance(answer[0], HandshakeRefused) and "version" in answer[0].reason
    # 5. anything but a Handshake first (a Hello straight away): closed
    with _connect(farm) as s:
        s.sendall(codec.encode(Hello(1, RenderInfo("sneaky"))))
        assert _recv_all(s) == b""
    # 6. authenticated, then a report in another render's name: closed
    with _connect(farm) as s:
        s.sendall(codec.encode(Handshake(1, PROTOCOL_VERSION, TOKEN)))
        s.settimeout(5)
        assert isinstance(_decode(s.recv(65536))[0], HandshakeAccepted)
        s.sendall(codec.encode(Hello(2, RenderInfo("intruder"))))
        s.sendall(codec.encode(TaskFinished(3, 1, job, 0, 0, 1, "good1", "done")))
        rest = _decode(_recv_all(s))
        assert all(not isinstance(m, HandshakeRefused) for m in rest)
    # 7. a silent connection: closed after the handshake deadline
    with _connect(farm) as s:
        start = time.monotonic()
        assert _recv_all(s, timeout=10) == b""
        assert time.monotonic() - start < 6
    # 8. a worker process with the wrong token gives up with exit code 2
    liar = farm.start_worker("liar", token="wrong")
    assert liar.wait(15) == 2
    assert "bad farm token" in farm.log_of("liar")
    assert "wrong" not in farm.log_of("liar").replace("--token", "")

    assert farm.wait_job(job, timeout=40) == "done"
    runs = farm.runs(job)
    done = [r for r in runs if r.state == "done"]
    assert sorted(int(r.task) for r in done) == list(range(1, 31))
    assert collections.Counter(r.render for r in done).keys() <= {"good1", "good2"}
    # the intruder authenticated and said hello, so it may have been given a task before it misbehaved: that
    # run is lost (its render's zombie timer) and the task done by a good worker
    assert all(r.state == "lost" and r.render == "intruder" for r in runs if r.state != "done")
    assert farm.server.gateway.stats["refused"] - refused_before == 3
    assert "intruder" not in farm.server.gateway.by_name
    assert all(farm.workers[n].poll() is None for n in ("good1", "good2"))


def _render_asks_lost_workers_to_rejoin() -> bool:
    """Whether the core's render answers a heartbeat it does not count (offline) with ``Rejoin``."""
    from farmhand.core.manual_runtime import ManualRuntime
    from farmhand.core.messages import Heartbeat, Rejoin
    from farmhand.core.render import RenderBehaviour

    rt = ManualRuntime()
    got: list[Message] = []
    rt.sink("worker/", lambda _to, msg: got.append(msg))
    rt.sink("solver", lambda _to, _msg: None)
    rt.spawn("render/probe", RenderBehaviour("probe", 1.0, 2.0))
    rt.send("render/probe", Heartbeat(1, "probe"))
    rt.run()
    return any(isinstance(m, Rejoin) for m in got)


@pytest.mark.skipif(not _render_asks_lost_workers_to_rejoin(), reason="the render does not send Rejoin yet")
def test_a_worker_frozen_past_its_zombie_time_rejoins_and_serves_again(farm: Farm, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    sleepy = farm.start_worker("sleepy")
    farm.wait_connected("sleepy")
    job = farm.submit(
        {"name": "frozen", "blocks": [{"name": "b", "command": f"touch {out}/{{frame}}-$FARMHAND_RUN_ID; sleep 0.5",
                                       "frames": {"first": 1, "last": 1}}]}
    )
    wait_until(lambda: any(out.iterdir()), 15, "the task to start")
    sleepy.send_signal(signal.SIGSTOP)  # frozen: no heartbeat, while its connection stays open
    try:
        wait_until(lambda: any(r.state == "lost" for r in farm.runs(job)), 15, "the render to be declared lost")
    finally:
        sleepy.send_signal(signal.SIGCONT)
    assert farm.wait_job(job, timeout=30) == "done"
    runs = farm.runs(job)
    assert [(r.state, r.attempt) for r in runs] == [("lost", 1), ("done", 2)]
    assert "server asks to rejoin" in farm.log_of("sleepy")
    again = farm.submit(
        {"name": "after", "blocks": [{"name": "b", "command": "true", "frames": {"first": 1, "last": 3}}]}
    )
    assert farm.wait_job(again, timeout=20) == "done"
    assert {r.render for r in farm.runs(again)} == {"sleepy"}


def test_workers_started_without_a_name_on_one_host_take_distinct_stable_names(farm: Farm) -> None:
    from farmhand.workers.identity import host_name

    host = host_name()
    first = farm.start_worker(None, key="a")
    farm.wait_connected(host)
    farm.start_worker(None, key="b")
    farm.wait_connected(host, f"{host}-2")
    job = farm.submit({"name": "pair", "blocks": [{"name": "b", "command": f"{sys.executable} -c pass",
                                                  "frames": {"first": 1, "last": 6}}]})
    assert farm.wait_job(job, timeout=60) == "done"
    runs = farm.runs(job)
    assert {r.render for r in runs} == {host, f"{host}-2"}
    assert all(r.state == "done" and r.attempt == 1 for r in runs) and len(runs) == 6
    assert farm.server.gateway.stats["closed_by_server"] == 0  # no replacement loop
    # the first one, killed and started again, takes its name (and its key) back
    key = farm.server.gateway.by_name[host].instance
    assert len(key) == 32 and key != farm.server.gateway.by_name[f"{host}-2"].instance
    os.killpg(first.pid, signal.SIGKILL)
    first.wait(5)
    wait_until(lambda: host not in farm.server.gateway.by_name, 10, "the killed worker's connection to close")
    farm.start_worker(None, key="a2")
    farm.wait_connected(host)
    assert farm.server.gateway.by_name[host].instance == key
    # asking for a name another worker of this host holds stops at once, saying so
    clash = farm.start_worker(f"{host}-2", key="clash")
    assert clash.wait(15) == 2
    assert "already runs as" in farm.log_of("clash")


def test_a_worker_of_another_host_taking_a_live_workers_name_is_told_and_exits(farm: Farm, tmp_path: Path) -> None:
    farm.start_worker("shared")
    farm.wait_connected("shared")
    # another state folder: another host, as far as names go (its instance key differs)
    other = farm.start_worker("shared", "--state-dir", str(tmp_path / "elsewhere"), key="other")
    assert other.wait(15) == 2
    assert "in use by a live worker" in farm.log_of("other")
    assert farm.workers["shared"].poll() is None and "shared" in farm.server.gateway.by_name
