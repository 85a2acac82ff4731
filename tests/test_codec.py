"""The wire codec: frames round-trip every wire message, arrive in any split, and bad bytes are refused."""

from __future__ import annotations

import contextlib
import random

import msgspec
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
    Rejoin,
    RenderInfo,
    RunningRun,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Welcome,
)
from farmhand.transport.codec import (
    HEADER,
    SERVER_TO_WORKER,
    WORKER_TO_SERVER,
    Codec,
    FrameBuffer,
    FrameError,
    FrameTooLarge,
    MalformedFrame,
    server_codec,
    worker_codec,
)

FROM_WORKER = [
    Handshake(1, PROTOCOL_VERSION, "s3cret", "farmhand-worker/w1"),
    Hello(2, RenderInfo("w1", frozenset({"gpu", "houdini"}), 4, 2, 65536, 16), (RunningRun(7, 1, 0, 3, 2, 1, 512),)),
    Heartbeat(3, "w1", (7, 9)),
    Goodbye(4, "w1"),
    TaskStarted(5, 7, 1, 0, 3, 2, "w1"),
    TaskProgress(6, 7, 1, 0, 3, 2, 42, ("line 1", "ünïcode ✓")),
    TaskFinished(7, 7, 1, 0, 3, 2, "w1", "error", 3, ("boom",), "exit code 3"),
]
FROM_SERVER = [
    HandshakeAccepted(10, 1, PROTOCOL_VERSION, "farmhand"),
    HandshakeRefused(11, 1, "bad farm token"),
    Welcome(12, 2, 5.0, 60.0),
    Assign(
        13, 13, 1, 0, 3, 2, "w1", ("render", "-f", "1-4"), "1-4", "job", "blk", 2, 512, "/tmp", (("A", "1"),), 30.0,
        r"(\d+)%",
    ),
    Assign(14, 14, 1, 0, 4, 1, "w1", "echo hi"),
    KillRun(15, 13, 1, "w1", "restarted"),
    FinishAck(16, 7, 7),
    Rejoin(17, 3, "render was declared lost"),
]


def test_every_wire_message_is_covered() -> None:
    assert {type(m) for m in FROM_WORKER} == set(WORKER_TO_SERVER)
    assert {type(m) for m in FROM_SERVER} == set(SERVER_TO_WORKER)


@pytest.mark.parametrize("msg", FROM_WORKER, ids=lambda m: type(m).__name__)
def test_worker_messages_round_trip(msg: object) -> None:
    sender, receiver = worker_codec(), server_codec()
    frame = sender.encode(msg)  # type: ignore[arg-type]
    assert int.from_bytes(frame[:HEADER], "big") == len(frame) - HEADER
    assert receiver.decode(frame) == msg


@pytest.mark.parametrize("msg", FROM_SERVER, ids=lambda m: type(m).__name__)
def test_server_messages_round_trip(msg: object) -> None:
    frame = server_codec().encode(msg)  # type: ignore[arg-type]
    assert worker_codec().decode(frame) == msg


def test_a_message_of_the_other_direction_is_refused() -> None:
    with pytest.raises(MalformedFrame, match="Assign"):
        server_codec().decode(worker_codec().encode(FROM_SERVER[3]))
    with pytest.raises(MalformedFrame):
        worker_codec().decode(server_codec().encode(FROM_WORKER[2]))


def test_wrong_field_types_are_refused() -> None:
    body = msgspec.msgpack.encode({"type": "Heartbeat", "id": 1, "render": 12})
    with pytest.raises(MalformedFrame, match="render"):
        server_codec().decode(len(body).to_bytes(4, "big") + body)
    body = msgspec.msgpack.encode({"type": "Hello", "id": 1})  # info missing
    with pytest.raises(MalformedFrame, match="info"):
        server_codec().decode(len(body).to_bytes(4, "big") + body)


def test_unknown_fields_are_ignored_so_newer_peers_can_add_fields() -> None:
    body = msgspec.msgpack.encode({"type": "Heartbeat", "id": 1, "render": "w", "load": 0.5})
    assert server_codec().decode(len(body).to_bytes(4, "big") + body) == Heartbeat(1, "w")


def test_garbage_empty_and_truncated_frames() -> None:
    codec = server_codec()
    with pytest.raises(MalformedFrame, match="empty"):
        codec.decode(b"\x00\x00\x00\x00")
    with pytest.raises(MalformedFrame, match="not msgpack"):
        codec.decode(b"\x00\x00\x00\x02\xc1\xc1")
    with pytest.raises(MalformedFrame, match="header"):
        codec.decode(b"\x00\x00")
    with pytest.raises(MalformedFrame, match="says"):
        codec.decode(b"\x00\x00\x00\x09abc")


def test_frame_size_cap_both_ways() -> None:
    small = Codec(Heartbeat | Goodbye, max_frame=64)
    with pytest.raises(FrameTooLarge):
        small.encode(Heartbeat(1, "w" * 100))
    big = worker_codec().encode(Heartbeat(1, "w" * 100))
    with pytest.raises(FrameTooLarge):
        small.decode(big)
    buffer = FrameBuffer(small)
    with pytest.raises(FrameTooLarge):
        buffer.feed(b"\x7f\xff\xff\xff")  # refused from the header alone, before any body arrives
    with pytest.raises(ValueError):
        Codec(Heartbeat, max_frame=0)


def test_frame_buffer_reassembles_any_split() -> None:
    sender = worker_codec()
    stream = b"".join(sender.encode(m) for m in FROM_WORKER) * 3
    rng = random.Random(7)
    for _ in range(50):
        buffer = FrameBuffer(server_codec())
        got = []
        pos = 0
        while pos < len(stream):
            step = rng.randint(1, 40)
            got.extend(buffer.feed(stream[pos : pos + step]))
            pos += step
        assert got == FROM_WORKER * 3
        assert buffer.pending == 0
    buffer = FrameBuffer(server_codec())
    assert buffer.feed(stream) == FROM_WORKER * 3  # all at once
    assert buffer.feed(bytearray(stream[:5])) == [] and buffer.pending == 5


def test_frame_buffer_limit_can_be_lowered_and_raised() -> None:
    frame = worker_codec().encode(FROM_WORKER[1])
    buffer = FrameBuffer(server_codec(), limit=16)
    with pytest.raises(FrameTooLarge):
        buffer.feed(frame)
    buffer = FrameBuffer(server_codec(), limit=16)
    buffer.set_limit(None)
    assert buffer.feed(frame) == [FROM_WORKER[1]]


def test_good_frames_before_a_bad_one_are_kept_on_the_error() -> None:
    good = worker_codec().encode(FROM_WORKER[2])
    buffer = FrameBuffer(server_codec())
    with pytest.raises(MalformedFrame) as info:
        buffer.feed(good + good + b"\x00\x00\x00\x01\xc1")
    assert info.value.messages == [FROM_WORKER[2], FROM_WORKER[2]]


def test_random_bytes_raise_only_frame_errors() -> None:
    rng = random.Random(1)
    codec = server_codec()
    for _ in range(2000):
        size = rng.randint(0, 60)
        body = bytes(rng.randrange(256) for _ in range(size))
        buffer = FrameBuffer(codec)
        with contextlib.suppress(FrameError):
            buffer.feed(size.to_bytes(4, "big") + body)


def test_deeply_nested_msgpack_is_a_frame_error_and_the_good_frames_before_it_are_kept() -> None:
    # an unknown field holding 5000 nested arrays: msgspec's decoder raises RecursionError on it
    body = b"\x82\xa4type\xa9Heartbeat\xa5extra" + b"\x91" * 5000 + b"\x90"
    good = worker_codec().encode(FROM_WORKER[2])
    buffer = FrameBuffer(server_codec())
    with pytest.raises(MalformedFrame, match="nested too deeply") as info:
        buffer.feed(good + len(body).to_bytes(4, "big") + body)
    assert info.value.messages == [FROM_WORKER[2]]
    with pytest.raises(MalformedFrame, match="nested too deeply"):
        server_codec().decode_body(body)
