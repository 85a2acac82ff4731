"""The seam between the pure core and the worlds that host it.

A behaviour is an object with state and one entry point, ``handle(message, ctx)``. Everything it does to the
world goes through ``ctx``: the time (``ctx.now``), messages (``ctx.send``), timers, a seeded random generator,
fresh message ids, spawning and stopping behaviours. The pykka runtime, the SimPy runtime and the manual test
runtime each implement :class:`Context`; the behaviours never know which one hosts them.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from .messages import Message

Address = str

SOLVER: Address = "solver"
REGISTRY: Address = "registry"
EVENTS: Address = "events"


_ADDRESSES_KEPT = 65536
_JOB_ADDRESSES: dict[int, Address] = {}
_RENDER_ADDRESSES: dict[str, Address] = {}


def _remembered(made: dict[Any, Address], key: Any, address: str) -> Address:
    """``address`` for ``key``, remembered in ``made`` (up to a bound): the job and render addresses are made
    on every dispatch and forwarded report, and a string made once also keeps its hash for the lookups."""
    if len(made) >= _ADDRESSES_KEPT:
        made.clear()
    made[key] = address
    return address


def job_address(job_id: int) -> Address:
    """The address of the behaviour that owns job ``job_id``."""
    address = _JOB_ADDRESSES.get(job_id)
    return address if address is not None else _remembered(_JOB_ADDRESSES, job_id, f"job/{job_id}")


def render_address(name: str) -> Address:
    """The address of the server-side behaviour of render ``name``."""
    address = _RENDER_ADDRESSES.get(name)
    return address if address is not None else _remembered(_RENDER_ADDRESSES, name, f"render/{name}")


def worker_address(name: str) -> Address:
    """The address of the worker process (real or virtual) behind render ``name``."""
    return f"worker/{name}"


class Context(Protocol):
    """What a behaviour may do to the world; one per hosted behaviour."""

    @property
    def now(self) -> float:
        """Seconds: monotonic or wall time in production, simulated time in a simulation."""
        ...

    @property
    def address(self) -> Address:
        """The address of the behaviour this context belongs to."""
        ...

    @property
    def random(self) -> random.Random:
        """A generator seeded by the runtime: the only source of randomness a behaviour may use."""
        ...

    def send(self, to: Address, message: Message) -> None:
        """Deliver ``message`` to ``to`` later (never synchronously)."""

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        """Deliver ``message`` to this behaviour at time ``at``; replaces a pending timer with the same key."""

    def cancel_timer(self, key: Hashable) -> None:
        """Forget the pending timer ``key`` of this behaviour, if any."""

    def next_id(self) -> int:
        """A fresh message id, unique within the runtime."""
        ...

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        """Host a new behaviour at ``address``."""

    def stop(self) -> None:
        """Stop hosting this behaviour once the current message is handled."""


class Behaviour(Protocol):
    """A piece of the core: state plus one entry point."""

    def handle(self, message: Message, ctx: Context) -> None:
        """React to one message."""


Handler = Callable[[Any, "Context"], None]


class MessageRouter:
    """Base of behaviours that route each kind of message to one method; unknown kinds are ignored.

    A subclass fills ``_handlers`` (message class -> bound method) in its constructor, and never replaces the
    dict afterwards: a runtime may keep a reference to it when it hosts the behaviour and call its handlers
    directly, as :meth:`handle` does. A subclass that overrides :meth:`handle` is always called through it.
    """

    _handlers: dict[type[Message], Handler]

    def handle(self, message: Message, ctx: Context) -> None:
        """React to one message."""
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(message, ctx)
