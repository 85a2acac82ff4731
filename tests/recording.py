"""A context for driving one behaviour by hand: it records what the behaviour sends and the timers it sets.

Tests move ``now`` themselves. With ``strict=True`` (a solver, which keeps no timers and never stops) any
timer, spawn or stop is an error; otherwise timers are recorded and ``stop`` sets ``stopped``.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable
from typing import Any

from farmhand.core.messages import Message


class RecordingContext:
    """Implements the core's Context protocol by recording; see the module docstring."""

    def __init__(self, address: str, now: float = 0.0, first_id: int = 1, strict: bool = False) -> None:
        self.address = address
        self.now = now
        self.strict = strict
        self.random = random.Random(0)
        self.sent: list[tuple[str, Message]] = []
        self.timers: dict[Hashable, tuple[float, Message]] = {}
        self.stopped = False
        self._ids = itertools.count(first_id)

    def send(self, to: str, message: Message) -> None:
        self.sent.append((to, message))

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        if self.strict:
            raise AssertionError(f"{self.address} sets no timers")
        self.timers[key] = (at, message)

    def cancel_timer(self, key: Hashable) -> None:
        if self.strict:
            raise AssertionError(f"{self.address} sets no timers")
        self.timers.pop(key, None)

    def next_id(self) -> int:
        return next(self._ids)

    def spawn(self, address: str, behaviour: Any) -> None:
        raise AssertionError(f"{self.address} spawns nothing")

    def stop(self) -> None:
        if self.strict:
            raise AssertionError(f"{self.address} never stops")
        self.stopped = True

    def take(self, kind: type | None = None, to: str | None = None) -> list[Any]:
        """Messages sent since the last take (of ``kind``/to ``to`` if given); forgets all of them."""
        out = [m for t, m in self.sent if (kind is None or isinstance(m, kind)) and (to is None or t == to)]
        self.sent.clear()
        return out
