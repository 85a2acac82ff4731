"""The server's TCP gateway: one persistent connection per worker, frames in, frames out.

The gateway is transport only: it moves messages between worker connections and the core's addresses and
decides nothing about scheduling. Per connection:

1. the worker's first frame is a :class:`~farmhand.core.messages.Handshake`: a protocol version the server
   speaks and a valid farm token (compared in constant time, or checked by a verifier the composition root
   gives), else :class:`~farmhand.core.messages.HandshakeRefused` and the connection closes. Until then a
   frame may not exceed a small limit, and the handshake must come within a deadline;
2. then a :class:`~farmhand.core.messages.Hello` names the render: the composition root's ``ensure_render``
   makes sure a render behaviour is hosted at ``render/NAME``, the gateway routes ``worker/NAME`` to this
   connection and forwards the Hello;
3. from then on every frame the worker sends (heartbeats, task reports, goodbye) goes to ``render/NAME``, and
   whatever the core sends to ``worker/NAME`` is written to the connection, from any thread.

A malformed, oversized, unexpected or unauthenticated frame closes that one connection, with the reason
logged, and touches nothing else. A closed connection is only forgotten: whether its render is lost is the
render behaviour's decision (its zombie timer), so a worker that reconnects in time loses nothing.

Identity: a worker presents either the shared farm token (then it may take any free render name) or its own
credential (``farmhand admin worker add NAME``: then only that name). A second connection for a render name
that is already connected replaces the first only if it is the same worker (a worker reconnecting before the
server noticed its old connection died): one presenting that name's own credential, or a Hello carrying the
same instance key as the live one. Any other is refused with the reason, and the live worker keeps its
connection: two workers that chose the same name never take turns at it. A connection silent for longer than
``silent_s`` (the render's zombie time: its worker heartbeats far more often) holds no name: its peer is
gone, and a new connection takes the name. TCP keepalive finds dead peers of idle connections too.

With a store (``durable``), an assignment is written to its worker only once the store has committed the run
it starts, so a server killed at any moment restarts knowing every run a worker may report: the worker's
Hello reclaims it and the task is never handed out twice (see docs/server.md, recovery).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import socket
import threading
from collections import deque
from collections.abc import Callable, Collection
from typing import Protocol

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Assign,
    Goodbye,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Heartbeat,
    Hello,
    Message,
    TaskFinished,
    TaskProgress,
    TaskStarted,
)
from farmhand.core.runtime import Address, render_address, worker_address
from farmhand.logs import fields

from .codec import MAX_FRAME, RENDER_NAME, FrameBuffer, FrameError, server_codec

log = logging.getLogger("farmhand.gateway")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 51000
SUPPORTED_VERSIONS = frozenset({PROTOCOL_VERSION})
PREAUTH_MAX_FRAME = 64 * 1024
MAX_REPORTED_RUNS = 100_000
WORKER_PREFIX = worker_address("")

Sink = Callable[[Address, Message], None]
TokenCheck = Callable[[str], bool]
#: ``identify(token)``: the render name a worker's own credential is bound to, or None if it is not one
Identify = Callable[[str], str | None]
#: ``durable(callback)``: call ``callback`` (from any thread) once every event the core has sent so far is
#: committed to the store (:meth:`farmhand.store.Store.after_commit`)
Barrier = Callable[[Callable[[], None]], None]


class Host(Protocol):
    """What the gateway needs from the runtime hosting the core (:class:`~farmhand.actors.runtime.PykkaRuntime`)."""

    def send(self, to: Address, message: Message) -> None:
        """Deliver ``message`` to ``to`` (thread-safe)."""

    def sink(self, address: Address, sink: Sink) -> None:
        """Route messages for ``address`` to ``sink`` (called on the sender's thread)."""

    def next_id(self) -> int:
        """A fresh message id."""
        ...


def _keep_alive(sock: socket.socket) -> None:
    """TCP keepalive: a peer whose host died is found out by the kernel within minutes even if nothing is sent."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 60)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 10)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 6)


class _State:
    HANDSHAKE, HELLO, READY, CLOSED = range(4)


def hello_problem(msg: Hello) -> str | None:
    """What makes a Hello unacceptable on the wire (a malformed announcement), or None."""
    info = msg.info
    if not RENDER_NAME.fullmatch(info.name):
        return f"render name {info.name!r} is not 1-128 of letters, digits and _.@+- (not starting with .@+-)"
    if info.capacity < 1 or info.max_tasks < 1 or info.memory_mb < 0 or info.cpus < 0:
        return "capacity and max_tasks must be >= 1, memory_mb and cpus >= 0"
    if len(msg.running) > MAX_REPORTED_RUNS:
        return f"reports {len(msg.running)} running runs"
    return None


class WorkerConnection(asyncio.Protocol):
    """One worker's connection (lives on the gateway's event loop)."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.name = ""
        self.identity: str | None = None  # after the handshake: "" the farm token, else the credential's name
        self.instance = ""  # the instance key of the Hello that attached this connection
        self.last_rx = 0.0  # when it last sent anything (the loop's clock)
        self.state = _State.HANDSHAKE
        self.buffer = FrameBuffer(gateway.codec, PREAUTH_MAX_FRAME)
        self.close_reason = ""
        self._deadline: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------------------------------ asyncio
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            _keep_alive(sock)
        self.last_rx = self.gateway.loop.time()
        self.gateway._opened(self)
        self._deadline = self.gateway.loop.call_later(self.gateway.handshake_timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        if self.state == _State.CLOSED:
            return
        self.last_rx = self.gateway.loop.time()
        try:
            messages = self.buffer.feed(data)
        except FrameError as exc:
            for msg in exc.messages:
                self._on_message(msg)
                if self.state == _State.CLOSED:
                    return
            self.close(f"bad frame: {exc.reason}")
            return
        for msg in messages:
            self._on_message(msg)
            if self.state == _State.CLOSED:
                return

    def eof_received(self) -> bool | None:
        return None  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        if self.state != _State.CLOSED:
            self.state = _State.CLOSED
            self.close_reason = self.close_reason or (f"connection lost: {exc}" if exc else "closed by the worker")
        self._cancel_deadline()
        self.gateway._closed(self)

    # ------------------------------------------------------------------------------------------ frames
    def _on_message(self, msg: Message) -> None:
        state = self.state
        if state == _State.READY:
            self._on_ready(msg)
        elif state == _State.HANDSHAKE:
            self._on_handshake(msg)
        elif state == _State.HELLO:
            if type(msg) is not Hello:
                self.close(f"expected Hello, got {type(msg).__name__}")
                return
            self._on_hello(msg)

    def _on_handshake(self, msg: Message) -> None:
        if type(msg) is not Handshake:
            self.close(f"expected Handshake, got {type(msg).__name__}")
            return
        gateway = self.gateway
        if msg.version not in SUPPORTED_VERSIONS:
            self.refuse(msg.id, f"protocol version {msg.version} is not supported (server speaks {PROTOCOL_VERSION})")
            return
        try:
            identity = gateway.identity_of(msg.token)
        except LookupError:  # the credential could not be looked up now: no refusal, the worker tries again
            self.close("worker credential lookup failed")
            return
        if identity is None:
            self.refuse(msg.id, "bad farm token or worker credential")
            return
        self.identity = identity
        self.state = _State.HELLO
        self.buffer.set_limit(None)
        gateway.stats["handshakes"] += 1
        self.write(HandshakeAccepted(gateway.host.next_id(), msg.id, PROTOCOL_VERSION, gateway.agent))

    def _on_hello(self, msg: Hello) -> None:
        problem = hello_problem(msg)
        if problem is not None:
            self.close(f"bad Hello: {problem}")
            return
        if self.name and msg.info.name != self.name:
            self.close(f"Hello for render {msg.info.name!r} on the connection of {self.name!r}")
            return
        if self.identity and msg.info.name != self.identity:
            self.refuse(
                msg.id, f"this credential belongs to worker {self.identity!r}: start it with --name {self.identity}"
            )
            return
        if not self.name:
            live = self.gateway.by_name.get(msg.info.name)
            silent = self.gateway.silent_s
            if live is not None and live is not self and silent is not None:
                quiet = self.gateway.loop.time() - live.last_rx
                if quiet > silent:  # a dead peer the kernel has not noticed yet: it does not hold the name
                    live.close(f"silent for {quiet:.0f} s; a new connection from {self.peer} takes the name")
                    live = None
            if live is not None and live is not self and not self._same_worker(live, msg):
                self.refuse(
                    msg.id,
                    f"render name {msg.info.name!r} is in use by a live worker connected from {live.peer}:"
                    " give each worker its own --name (without --name, workers on one host choose distinct ones)",
                )
                return
        self._cancel_deadline()
        if not self.name:
            self.name = msg.info.name
            self.instance = msg.instance
            try:
                self.gateway._attach(self)
            except Exception as exc:
                log.exception("render setup failed", extra=fields(render=self.name))
                self.close(f"server could not host render {self.name!r}: {exc}")
                return
            info = msg.info
            log.info(
                "worker connected",
                extra=fields(
                    render=self.name, peer=self.peer, capacity=info.capacity, max_tasks=info.max_tasks,
                    running=len(msg.running),
                ),
            )
        self.state = _State.READY
        self.gateway.host.send(render_address(self.name), msg)

    def _same_worker(self, live: WorkerConnection, hello: Hello) -> bool:
        """Whether this connection is the live one's worker coming back (so it may replace it)."""
        if live.identity:  # it came in with the name's own credential: only that credential replaces it
            return self.identity == live.identity
        if self.identity:  # the name's own credential (checked against the name above)
            return True
        return bool(hello.instance) and hmac.compare_digest(hello.instance.encode(), live.instance.encode())

    def _on_ready(self, msg: Message) -> None:
        kind = type(msg)
        if kind is Heartbeat or kind is TaskStarted or kind is TaskFinished or kind is Goodbye:
            if msg.render != self.name:  # type: ignore[attr-defined]
                self.close(f"{kind.__name__} names render {msg.render!r}")  # type: ignore[attr-defined]
                return
        elif kind is Hello:
            self._on_hello(msg)  # type: ignore[arg-type]
            return
        elif kind is not TaskProgress:
            self.close(f"unexpected {kind.__name__} after Hello")
            return
        self.gateway.stats["frames_in"] += 1
        self.gateway.host.send(render_address(self.name), msg)

    # ------------------------------------------------------------------------------------------ writing
    def write(self, msg: Message) -> None:
        """Write one message now (event-loop thread only)."""
        self.write_bytes(self.gateway.codec.encode(msg))

    def write_bytes(self, data: bytes) -> None:
        """Write encoded frames now (event-loop thread only); a worker that stops reading is disconnected."""
        transport = self.transport
        if transport is None or self.state == _State.CLOSED or transport.is_closing():
            return
        transport.write(data)
        if transport.get_write_buffer_size() > self.gateway.write_buffer_limit:
            self.close(f"worker does not read (over {self.gateway.write_buffer_limit} bytes unsent)", abort=True)

    def refuse(self, reply_to: int, reason: str) -> None:
        """Tell the worker why, then close."""
        self.gateway.stats["refused"] += 1
        self.write(HandshakeRefused(self.gateway.host.next_id(), reply_to, reason, PROTOCOL_VERSION))
        self.close(f"refused: {reason}")

    def close(self, reason: str, abort: bool = False) -> None:
        """Close this connection (after writing what is buffered, unless ``abort``), logging ``reason``."""
        if self.state == _State.CLOSED:
            return
        self.state = _State.CLOSED
        self.close_reason = reason
        self._cancel_deadline()
        log.warning("closing connection", extra=fields(render=self.name or "-", peer=self.peer, reason=reason))
        self.gateway.stats["closed_by_server"] += 1
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()

    def _expire(self) -> None:
        self._deadline = None
        if self.state in (_State.HANDSHAKE, _State.HELLO):
            what = "Handshake" if self.state == _State.HANDSHAKE else "Hello"
            self.close(f"no {what} within {self.gateway.handshake_timeout:g} s")

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None


class Gateway:
    """The asyncio TCP server that connects workers to the core.

    ``host`` is the runtime hosting the core; ``ensure_render(name)`` is the composition root's promise that a
    render behaviour is hosted at ``render_address(name)`` once it returns (it is called on the event loop's
    thread, for every Hello of a newly connected render). Workers authenticate with ``token`` (compared in
    constant time) or through ``verify(token) -> bool``; with neither, ``allow_anonymous`` must be set.
    """

    def __init__(
        self,
        host: Host,
        ensure_render: Callable[[str], None],
        *,
        token: str | None = None,
        verify: TokenCheck | None = None,
        identify: Identify | None = None,
        allow_anonymous: bool = False,
        bind: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        max_frame: int = MAX_FRAME,
        handshake_timeout: float = 10.0,
        write_buffer_limit: int = 64 * MAX_FRAME,
        backlog: int = 1024,
        agent: str = "farmhand",
        durable: Barrier | None = None,
        silent_s: float | None = None,
    ) -> None:
        if token is None and verify is None and identify is None and not allow_anonymous:
            raise ValueError(
                "a farm token, a verifier or worker credentials are required; pass allow_anonymous=True to accept"
                " anyone"
            )
        if token is not None and not token:
            raise ValueError("the farm token must not be empty")
        self.host = host
        self.ensure_render = ensure_render
        self._token = token.encode() if token is not None else None
        self._verify = verify
        self._identify = identify
        self.bind = bind
        self.port = port
        self.codec = server_codec(max_frame)
        self.handshake_timeout = handshake_timeout
        self.write_buffer_limit = write_buffer_limit
        self.backlog = backlog
        self.agent = agent
        self.connections: set[WorkerConnection] = set()
        self.by_name: dict[str, WorkerConnection] = {}
        self.stats: dict[str, int] = {
            "accepted": 0, "handshakes": 0, "refused": 0, "closed_by_server": 0, "frames_in": 0, "frames_out": 0,
            "undeliverable": 0,
        }
        self._sinks: set[str] = set()
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._outbox: deque[tuple[str, Message]] = deque()
        self._flush_scheduled = False
        self.durable = durable
        self.silent_s = silent_s  # a connection silent this long no longer holds its name against a new one
        self._held: deque[list[tuple[str, Message]]] = deque()  # messages waiting for the store, in order
        self._held_for: dict[str, int] = {}  # per worker address: how many of its messages are held
        self._covered = 0  # how many of the held batches the barrier in flight covers (0: none in flight)
        self._out_lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the gateway runs on (set by :meth:`start`)."""
        if self._loop is None:
            raise RuntimeError("the gateway is not started")
        return self._loop

    def check_token(self, token: str) -> bool:
        """Whether ``token`` is the farm token (constant-time) or the verifier accepts it."""
        if self._verify is not None:
            try:
                if self._verify(token):
                    return True
            except Exception:
                log.exception("token verifier failed")
                return False
        if self._token is not None:
            return hmac.compare_digest(token.encode(), self._token)
        return self._verify is None and self._identify is None  # anonymous farm

    def identity_of(self, token: str) -> str | None:
        """Who presents ``token``: "" for the farm token (any name), the render name of a worker credential,
        None if neither. Raises ``LookupError`` if the credential could not be looked up (try again later)."""
        if self.check_token(token):
            return ""
        if self._identify is None:
            return None
        try:
            return self._identify(token) or None
        except Exception as exc:
            log.exception("worker credential lookup failed")
            raise LookupError(str(exc)) from None

    async def start(self) -> None:
        """Listen on ``bind:port`` (port 0: an ephemeral port, then found in ``self.port``)."""
        self._loop = asyncio.get_running_loop()
        self._server = await self._loop.create_server(
            lambda: WorkerConnection(self), self.bind, self.port, backlog=self.backlog, reuse_address=True
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("gateway listening", extra=fields(host=self.bind, port=self.port))

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        held = sum(len(batch) for batch in self._held)
        if held:  # their runs are in the store: after a restart they wait for their workers, then are requeued
            log.warning("messages for workers not sent: the store had not committed them", extra=fields(held=held))
            self.stats["undeliverable"] += held
            self._held.clear()
            self._held_for.clear()
            self._covered = 0
        for conn in list(self.connections):
            if conn.transport is not None:
                conn.state = _State.CLOSED
                conn.close_reason = "server stopping"
                conn.transport.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None
        await asyncio.sleep(0)

    # ------------------------------------------------------------------------------------------ connections
    def _opened(self, conn: WorkerConnection) -> None:
        self.stats["accepted"] += 1
        self.connections.add(conn)
        log.debug("connection opened", extra=fields(peer=conn.peer))

    def _closed(self, conn: WorkerConnection) -> None:
        self.connections.discard(conn)
        if conn.name and self.by_name.get(conn.name) is conn:
            del self.by_name[conn.name]
            log.info("worker disconnected", extra=fields(render=conn.name, peer=conn.peer, reason=conn.close_reason))

    def _attach(self, conn: WorkerConnection) -> None:
        name = conn.name
        old = self.by_name.get(name)
        if old is not None and old is not conn:  # the same worker, back (checked by the connection's Hello)
            old.close(f"replaced by the same worker's new connection from {conn.peer}")
        self.ensure_render(name)
        self.by_name[name] = conn
        if name not in self._sinks:
            self._sinks.add(name)
            self.host.sink(worker_address(name), self.deliver)

    def revoke(self, name: str) -> None:
        """A worker's credential was revoked (any thread): close its connection if it came in with it."""
        def close() -> None:  # attached or not yet (between its handshake and its Hello)
            for conn in [c for c in self.connections if c.identity == name]:
                conn.close("worker credential revoked")

        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(close)

    # ------------------------------------------------------------------------------------------ outbound
    def deliver(self, to: Address, msg: Message) -> None:
        """The sink of ``worker/NAME``: queue ``msg`` for that worker's connection (any thread)."""
        with self._out_lock:
            self._outbox.append((to, msg))
            if self._flush_scheduled:
                return
            self._flush_scheduled = True
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._flush)
        except RuntimeError:  # the loop is closed (the server is stopping): nothing will flush, drop it all
            with self._out_lock:
                dropped = len(self._outbox)
                self._outbox.clear()
                self._flush_scheduled = False
            self.stats["undeliverable"] += dropped

    def _flush(self) -> None:
        with self._out_lock:
            self._flush_scheduled = False
            batch = self._outbox
            self._outbox = deque()
        if self.durable is None:
            self._write_batch(batch)
            return
        # durable dispatch: an assignment leaves only once the store has its run (the job told the store before
        # it sent the Assign); what follows it to the same worker waits behind it, so each worker's frames keep
        # their order, and other workers' frames go at once
        held_for = self._held_for
        hold: list[tuple[str, Message]] = []
        now: list[tuple[str, Message]] = []
        for item in batch:
            to = item[0]
            if type(item[1]) is Assign or to in held_for:
                hold.append(item)
                held_for[to] = held_for.get(to, 0) + 1
            else:
                now.append(item)
        if now:
            self._write_batch(now)
        if hold:
            self._held.append(hold)
            if not self._covered:
                self._await_commit()

    def _await_commit(self) -> None:
        """Ask the store to say when what it has now is committed: that covers every batch held so far (one
        barrier in flight at a time, so a busy gateway costs the store one marker per commit, not per batch)."""
        assert self.durable is not None
        self._covered = len(self._held)
        self.durable(self._committed)

    def _committed(self) -> None:
        """The store committed what came before the barrier (any thread): the loop writes what it covered."""
        loop = self._loop
        if loop is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is stopping
            loop.call_soon_threadsafe(self._release_held)

    def _release_held(self) -> None:
        covered, self._covered = self._covered, 0
        held_for = self._held_for
        for _ in range(min(covered, len(self._held))):
            batch = self._held.popleft()
            for to, _msg in batch:
                left = held_for[to] - 1
                if left:
                    held_for[to] = left
                else:
                    del held_for[to]
            self._write_batch(batch)
        if self._held:
            self._await_commit()

    def _write_batch(self, batch: Collection[tuple[str, Message]]) -> None:
        frames: dict[WorkerConnection, list[bytes]] = {}
        encode = self.codec.encode
        prefix = len(WORKER_PREFIX)
        for to, msg in batch:
            conn = self.by_name.get(to[prefix:])
            if conn is None or conn.state != _State.READY:
                self.stats["undeliverable"] += 1
                continue
            try:
                frame = encode(msg)
            except FrameError as exc:
                self._unsendable(conn, msg, exc.reason)
                continue
            frames.setdefault(conn, []).append(frame)
        self.stats["frames_out"] += len(batch)
        for conn, chunks in frames.items():
            conn.write_bytes(chunks[0] if len(chunks) == 1 else b"".join(chunks))

    def _unsendable(self, conn: WorkerConnection, msg: Message, reason: str) -> None:
        """A message that cannot travel: an assignment is reported failed as the worker would report it."""
        log.error("cannot send", extra=fields(render=conn.name, message=type(msg).__name__, reason=reason))
        if isinstance(msg, Assign):
            self.host.send(
                render_address(conn.name),
                TaskFinished(
                    self.host.next_id(), msg.run_id, msg.job_id, msg.block, msg.task, msg.attempt, msg.render,
                    "error", -1, (), f"cannot send the assignment: {reason}",
                ),
            )
