"""A load generator that speaks the worker protocol: many fake workers on one asyncio loop, in one process.

Each fake worker opens its own TCP connection, presents the farm token, says Hello, heartbeats at the interval
the server's Welcome sets (phases spread at random), and answers every Assign at once with TaskStarted and a
``done`` TaskFinished: zero-duration tasks, so that what is measured is the server.

    python bench/tcp_load.py --server 127.0.0.1:51000 --token T --workers 1000 --duration 30

It prints JSON lines on stdout: ``{"event": "ready", ...}`` once every worker is welcomed, then
``{"event": "done", ...}`` with its counters when ``--duration`` is over or it gets SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import resource
import signal
import sys
import time
from typing import Any

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Assign,
    FinishAck,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Heartbeat,
    Hello,
    Rejoin,
    RenderInfo,
    TaskFinished,
    TaskStarted,
    Welcome,
)
from farmhand.transport.codec import FrameBuffer, FrameError, worker_codec


class Generator:
    """The fake workers' shared state and counters."""

    def __init__(self, token: str, capacity: int) -> None:
        self.token = token
        self.capacity = capacity
        self.codec = worker_codec()
        self.welcomed = 0
        self.refused = 0
        self.lost = 0
        self.assigned = 0
        self.acked = 0
        self.heartbeats = 0
        self.rejoins = 0  # a render declared lost while its connection stayed up
        self.connect_errors = 0
        self.all_welcomed = asyncio.Event()
        self.expected = 0
        self.ids = 0

    def next_id(self) -> int:
        self.ids += 1
        return self.ids


class FakeWorker(asyncio.Protocol):
    """One fake worker connection."""

    def __init__(self, gen: Generator, name: str) -> None:
        self.gen = gen
        self.name = name
        self.transport: asyncio.Transport | None = None
        self.buffer = FrameBuffer(gen.codec)
        self.heartbeat_s = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.welcomed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.gen.codec.encode(Handshake(self.gen.next_id(), PROTOCOL_VERSION, self.gen.token, "load")))

    def data_received(self, data: bytes) -> None:
        try:
            messages = self.buffer.feed(data)
        except FrameError:
            self.gen.lost += 1
            if self.transport is not None:
                self.transport.close()
            return
        gen = self.gen
        encode = gen.codec.encode
        out: list[bytes] = []
        for msg in messages:
            kind = type(msg)
            if kind is Assign:
                gen.assigned += 1
                a: Assign = msg  # type: ignore[assignment]
                run = (a.run_id, a.job_id, a.block, a.task, a.attempt, self.name)
                out.append(encode(TaskStarted(gen.next_id(), *run)))
                out.append(encode(TaskFinished(gen.next_id(), *run, "done", 0)))
            elif kind is FinishAck:
                gen.acked += 1
            elif kind is Welcome:
                self._on_welcome(msg)  # type: ignore[arg-type]
            elif kind is HandshakeAccepted:
                info = RenderInfo(self.name, frozenset(), gen.capacity, gen.capacity, 0, 1)
                out.append(encode(Hello(gen.next_id(), info)))
            elif kind is Rejoin:
                gen.rejoins += 1
                out.append(encode(Hello(gen.next_id(), RenderInfo(self.name, frozenset(), gen.capacity, gen.capacity))))
            elif kind is HandshakeRefused:
                gen.refused += 1
        if out and self.transport is not None:
            self.transport.write(b"".join(out))

    def _on_welcome(self, msg: Welcome) -> None:
        self.heartbeat_s = msg.heartbeat_s
        if not self.welcomed:
            self.welcomed = True
            self.gen.welcomed += 1
            if self.gen.welcomed >= self.gen.expected:
                self.gen.all_welcomed.set()
            loop = asyncio.get_running_loop()
            self.timer = loop.call_later(random.random() * self.heartbeat_s, self._beat)

    def _beat(self) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(self.gen.codec.encode(Heartbeat(self.gen.next_id(), self.name)))
        self.gen.heartbeats += 1
        self.timer = asyncio.get_running_loop().call_later(self.heartbeat_s, self._beat)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.gen.lost += 1


async def run(args: argparse.Namespace) -> dict[str, Any]:
    host, _, port = args.server.rpartition(":")
    gen = Generator(args.token, args.capacity)
    gen.expected = args.workers
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workers: list[FakeWorker] = []
    gate = asyncio.Semaphore(args.connect_parallel)
    t0 = time.monotonic()

    async def connect(i: int) -> None:
        async with gate:
            worker = FakeWorker(gen, f"{args.prefix}{i:05d}")
            try:
                await loop.create_connection(lambda: worker, host, int(port))
            except OSError:
                gen.connect_errors += 1
                return
            workers.append(worker)

    await asyncio.gather(*(connect(i) for i in range(args.workers)))
    try:
        await asyncio.wait_for(gen.all_welcomed.wait(), args.ready_timeout)
    except TimeoutError:
        counts = {"welcomed": gen.welcomed, "refused": gen.refused, "connect_errors": gen.connect_errors}
        print(json.dumps({"event": "timeout", **counts}), flush=True)
        return {"event": "timeout", **counts}
    ready_s = time.monotonic() - t0
    print(json.dumps({"event": "ready", "workers": gen.welcomed, "connect_s": round(ready_s, 3)}), flush=True)
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), args.duration)
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    still_open = sum(1 for w in workers if w.transport is not None and not w.transport.is_closing())
    lost = gen.lost  # connections that closed before the end (not the ones closed below)
    for w in workers:
        if w.transport is not None:
            w.transport.close()
    await asyncio.sleep(0.1)
    return {
        "event": "done",
        "workers": gen.welcomed,
        "refused": gen.refused,
        "connect_errors": gen.connect_errors,
        "open": still_open,
        "lost": lost,
        "rejoins": gen.rejoins,
        "heartbeats": gen.heartbeats,
        "assigned": gen.assigned,
        "acked": gen.acked,
        "generator_cpu_s": round(cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime, 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True, metavar="HOST:PORT")
    parser.add_argument("--token", required=True)
    parser.add_argument("--workers", type=int, default=100)
    parser.add_argument("--capacity", type=int, default=1, help="capacity and max tasks of each fake worker")
    parser.add_argument("--duration", type=float, default=3600.0, help="seconds to run once all are welcomed")
    parser.add_argument("--prefix", default="load", help="render name prefix")
    parser.add_argument("--connect-parallel", type=int, default=100)
    parser.add_argument("--ready-timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.workers + 256
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    result = asyncio.run(run(args))
    print(json.dumps(result), flush=True)
    return 0 if result.get("event") == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
