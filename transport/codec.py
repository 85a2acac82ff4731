"""The wire codec: length-prefixed msgpack frames of the message catalogue.

A frame is a 4-byte big-endian unsigned length followed by that many bytes of msgpack: one message of
:mod:`farmhand.core.messages`, a map with its fields plus ``"type"``, the class name (msgspec's tag).
Adding a field with a default to a message keeps old peers working; renaming breaks them (and is not done).

Two directions, two unions: what a worker may send (:data:`WORKER_TO_SERVER`) and what the server may send
(:data:`SERVER_TO_WORKER`). Decoding validates the types of every field; a frame that is too long, empty,
not msgpack, nested too deeply, or not one of the expected messages raises :class:`FrameError` (whatever
the decoder itself raised) and the receiver closes that connection. :class:`FrameBuffer` is the sans-IO
part: feed it the bytes as they arrive, get whole messages.
"""

from __future__ import annotations

import re
from typing import Final

import msgspec

from farmhand.core.messages import (
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

HEADER: Final = 4
MAX_FRAME: Final = 1 << 20  # 1 MiB: a task's output travels in bounded pieces, never a whole log
LENGTH_LIMIT: Final = (1 << 32) - 1
#: what a render (worker) name must look like on the wire
RENDER_NAME: Final = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}")

#: the messages a worker sends (the server refuses anything else)
WORKER_TO_SERVER: Final = (Handshake, Hello, Heartbeat, Goodbye, TaskStarted, TaskProgress, TaskFinished)
#: the messages the server sends to a worker
SERVER_TO_WORKER: Final = (HandshakeAccepted, HandshakeRefused, Welcome, Assign, KillRun, FinishAck, Rejoin)

WorkerMessage = Handshake | Hello | Heartbeat | Goodbye | TaskStarted | TaskProgress | TaskFinished
ServerMessage = HandshakeAccepted | HandshakeRefused | Welcome | Assign | KillRun | FinishAck | Rejoin


class FrameError(Exception):
    """A frame that cannot be accepted: the connection it came on must be closed.

    ``messages`` holds the whole, valid messages that arrived before the bad frame in the same
    :meth:`FrameBuffer.feed` (the caller may still deliver them).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.messages: list[Message] = []


class FrameTooLarge(FrameError):
    """The length prefix announces more than the receiver accepts (or the sender tried to send that much)."""


class MalformedFrame(FrameError):
    """The bytes are not a valid message of the expected kinds (or the frame is empty)."""


class Codec:
    """Encoder and decoder for one direction of the wire; ``max_frame`` caps a frame's body in bytes.

    One instance per thread (msgspec's encoder reuses an internal buffer).
    """

    def __init__(self, incoming: type[object] | object, max_frame: int = MAX_FRAME) -> None:
        if not 0 < max_frame <= LENGTH_LIMIT:
            raise ValueError(f"max_frame must be in 1..{LENGTH_LIMIT} (got {max_frame})")
        self.max_frame = max_frame
        self._encoder = msgspec.msgpack.Encoder()
        self._decoder: msgspec.msgpack.Decoder[Message] = msgspec.msgpack.Decoder(incoming)  # type: ignore[arg-type]

    def encode(self, message: Message) -> bytes:
        """One whole frame (header and body) for ``message``."""
        buf = bytearray(HEADER)
        self._encoder.encode_into(message, buf, HEADER)
        size = len(buf) - HEADER
        if size > self.max_frame:
            raise FrameTooLarge(f"{type(message).__name__} needs {size} bytes, the frame limit is {self.max_frame}")
        buf[:HEADER] = size.to_bytes(HEADER, "big")
        return bytes(buf)

    def decode_body(self, body: bytes | memoryview) -> Message:
        """The message in one frame body (without its header)."""
        if not body:
            raise MalformedFrame("empty frame")
        try:
            return self._decoder.decode(body)
        except msgspec.ValidationError as exc:
            raise MalformedFrame(f"invalid message: {exc}") from None
        except msgspec.DecodeError as exc:
            raise MalformedFrame(f"not msgpack: {exc}") from None
        except RecursionError:
            raise MalformedFrame("nested too deeply") from None
        except Exception as exc:  # any other failure of the decoder is a bad frame too, never a crash
            raise MalformedFrame(f"undecodable ({type(exc).__name__}: {exc})") from None

    def decode(self, frame: bytes) -> Message:
        """The message in one whole frame (header included); the frame must be exactly one message."""
        if len(frame) < HEADER:
            raise MalformedFrame(f"a frame needs a {HEADER}-byte header (got {len(frame)} bytes)")
        size = int.from_bytes(frame[:HEADER], "big")
        if size > self.max_frame:
            raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.max_frame}")
        if len(frame) != HEADER + size:
            raise MalformedFrame(f"header says {size} bytes, body has {len(frame) - HEADER}")
        return self.decode_body(memoryview(frame)[HEADER:])


def server_codec(max_frame: int = MAX_FRAME) -> Codec:
    """The codec a server uses: it decodes what workers send."""
    return Codec(WorkerMessage, max_frame)


def worker_codec(max_frame: int = MAX_FRAME) -> Codec:
    """The codec a worker uses: it decodes what the server sends."""
    return Codec(ServerMessage, max_frame)


class FrameBuffer:
    """Reassembles frames from a byte stream (sans-IO): ``feed`` bytes, get the whole messages they complete.

    ``limit`` can be lowered for a while (e.g. before a connection is authenticated) with :meth:`set_limit`.
    After a :class:`FrameError` the stream is out of sync: the caller closes the connection.
    """

    __slots__ = ("_buf", "_codec", "limit")

    def __init__(self, codec: Codec, limit: int | None = None) -> None:
        self._codec = codec
        self._buf = bytearray()
        self.limit = codec.max_frame if limit is None else min(limit, codec.max_frame)

    def set_limit(self, limit: int | None) -> None:
        """Accept frames up to ``limit`` bytes from now on (``None``: the codec's maximum)."""
        self.limit = self._codec.max_frame if limit is None else min(limit, self._codec.max_frame)

    @property
    def pending(self) -> int:
        """Bytes received that do not yet make a whole frame."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Message]:
        """Add received bytes; return every message now complete, in order (raises :class:`FrameError`)."""
        buf = self._buf
        if not buf and isinstance(data, bytes):
            return self._feed_fresh(data)
        buf += data
        out: list[Message] = []
        start = 0
        end = len(buf)
        decode = self._codec.decode_body
        try:
            while end - start >= HEADER:
                size = int.from_bytes(buf[start : start + HEADER], "big")
                if size > self.limit:
                    raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.limit}")
                stop = start + HEADER + size
                if stop > end:
                    break
                with memoryview(buf) as view:
                    out.append(decode(view[start + HEADER : stop]))
                start = stop
        except FrameError as exc:
            exc.messages = out
            raise
        finally:
            if start:
                del buf[:start]
        return out

    def _feed_fresh(self, data: bytes) -> list[Message]:
        """The common case: nothing buffered, so frames are decoded straight from ``data``, the rest kept."""
        out: list[Message] = []
        start = 0
        end = len(data)
        decode = self._codec.decode_body
        view = memoryview(data)
        try:
            while end - start >= HEADER:
                size = int.from_bytes(data[start : start + HEADER], "big")
                if size > self.limit:
                    raise FrameTooLarge(f"frame of {size} bytes exceeds the limit of {self.limit}")
                stop = start + HEADER + size
                if stop > end:
                    break
                out.append(decode(view[start + HEADER : stop]))
                start = stop
        except FrameError as exc:
            exc.messages = out
            raise
        if start < end:
            self._buf += view[start:]
        return out
