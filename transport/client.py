"""The worker's side of the wire: one connection to the server, its handshake, frames both ways, and backoff.

:meth:`Connection.open` connects, presents the protocol version and the farm token, and returns once the
server accepted them (:class:`HandshakeRefused` if it refused: a wrong token or version is not worth
retrying). ``send`` writes a frame at once (no await), ``recv`` returns the next message. :class:`Backoff`
spaces reconnection attempts: exponential, capped, with jitter so that a farm of workers that lost the server
together does not reconnect in one burst.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import socket
from collections import deque

from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Handshake,
    HandshakeAccepted,
    HandshakeRefused,
    Message,
)

from .codec import MAX_FRAME, FrameBuffer, MalformedFrame, worker_codec

READ_CHUNK = 256 * 1024


class ConnectionClosed(Exception):
    """The connection is gone (closed by the server, reset, or closed here)."""


class HandshakeRefusedError(Exception):
    """The server refused the handshake; ``reason`` says why (bad farm token, unsupported version)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Connection:
    """One open, authenticated connection to the server (use on one event loop)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        max_frame: int = MAX_FRAME,
        ids: itertools.count[int] | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.codec = worker_codec(max_frame)
        self._frames = FrameBuffer(self.codec)
        self._ready: deque[Message] = deque()
        self._ids = ids if ids is not None else itertools.count(1)
        self.server_agent = ""
        peer = writer.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) and len(peer) >= 2 else str(peer)
        self._closed = False

    def next_id(self) -> int:
        """A fresh id for a message this side sends."""
        return next(self._ids)

    @classmethod
    async def open(
        cls,
        host: str,
        port: int,
        token: str,
        *,
        agent: str = "farmhand-worker",
        timeout: float = 10.0,
        max_frame: int = MAX_FRAME,
        ids: itertools.count[int] | None = None,
    ) -> Connection:
        """Connect and authenticate; raises ``OSError``/``TimeoutError`` (retry later) or
        :class:`HandshakeRefusedError` (do not)."""
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port, limit=READ_CHUNK), timeout)
        sock = writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(reader, writer, max_frame, ids)
        try:
            hello_id = conn.next_id()
            conn.send(Handshake(hello_id, PROTOCOL_VERSION, token, agent))
            answer = await asyncio.wait_for(conn.recv(), timeout)
            if isinstance(answer, HandshakeRefused):
                raise HandshakeRefusedError(answer.reason)
            if not isinstance(answer, HandshakeAccepted):
                raise MalformedFrame(f"expected HandshakeAccepted, got {type(answer).__name__}")
            conn.server_agent = answer.agent
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def closed(self) -> bool:
        """Whether the connection is closed or closing."""
        return self._closed or self._writer.is_closing()

    def send(self, msg: Message) -> None:
        """Write one message (buffered by the transport); :class:`ConnectionClosed` if the connection is gone."""
        if self.closed:
            raise ConnectionClosed("connection closed")
        self._writer.write(self.codec.encode(msg))

    async def drain(self, timeout: float = 10.0) -> None:
        """Wait until the transport's buffer is flushed enough (``ConnectionClosed`` on failure)."""
        try:
            await asyncio.wait_for(self._writer.drain(), timeout)
        except (TimeoutError, OSError) as exc:
            self.close()
            raise ConnectionClosed(f"cannot write: {exc!r}") from None

    async def recv(self) -> Message:
        """The next message from the server; ``ConnectionClosed`` at the end, ``FrameError`` on a bad frame."""
        while not self._ready:
            if self._closed:
                raise ConnectionClosed("connection closed")
            try:
                data = await self._reader.read(READ_CHUNK)
            except OSError as exc:
                self.close()
                raise ConnectionClosed(f"connection lost: {exc}") from None
            if not data:
                self.close()
                raise ConnectionClosed("closed by the server")
            try:
                self._ready.extend(self._frames.feed(data))
            except Exception:  # FrameError: the stream is out of sync
                self.close()
                raise
        return self._ready.popleft()

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(Exception):
            self._writer.close()

    async def wait_closed(self, timeout: float = 2.0) -> None:
        """Wait (bounded) for the transport to be closed."""
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._writer.wait_closed(), timeout)


class Backoff:
    """Exponential backoff with jitter: ``next()`` is the delay before the next attempt.

    The n-th delay is drawn from ``[d/2, d]`` with ``d = min(maximum, initial * factor**n)`` ("equal jitter":
    never less than half the nominal delay, never in lockstep with other workers). ``reset()`` after a
    connection that worked.
    """

    def __init__(
        self, initial: float = 0.5, maximum: float = 30.0, factor: float = 2.0, rng: random.Random | None = None
    ) -> None:
        if not 0 < initial <= maximum or factor < 1:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.attempts = 0
        self._rng = rng or random.Random()

    def nominal(self) -> float:
        """The nominal (unjittered) delay of the next attempt."""
        return min(self.maximum, self.initial * self.factor ** min(self.attempts, 64))

    def next(self) -> float:
        """The delay before the next attempt; each call counts one more failure."""
        d = self.nominal()
        self.attempts += 1
        return d / 2 + self._rng.random() * d / 2

    def reset(self) -> None:
        """Back to the initial delay."""
        self.attempts = 0
