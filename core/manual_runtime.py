"""A deterministic runtime that delivers queued messages one at a time, for tests and the simplest hosts.

Messages wait in one queue (FIFO unless a test picks another one with :meth:`ManualRuntime.deliver`), timers
in a heap on a manual clock that moves only when the test says so. Addresses that are not behaviours (the
workers, the event sink) go to *sinks*: plain callables a test or a host registers by exact address or by
prefix (``"worker/"``). Nothing here touches the world: it is as pure as the behaviours it hosts.
"""

from __future__ import annotations

import heapq
import itertools
import random
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from .messages import Message
from .runtime import Address, Behaviour, Context

Sink = Callable[[Address, Message], None]


class ManualContext:
    """The context a :class:`ManualRuntime` gives one behaviour."""

    __slots__ = ("_address", "_runtime")

    def __init__(self, runtime: ManualRuntime, address: Address) -> None:
        self._runtime = runtime
        self._address = address

    @property
    def now(self) -> float:
        return self._runtime.now

    @property
    def address(self) -> Address:
        return self._address

    @property
    def random(self) -> random.Random:
        return self._runtime.random

    def send(self, to: Address, message: Message) -> None:
        self._runtime.queue.append((to, message))

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        self._runtime.set_timer(self._address, key, at, message)

    def cancel_timer(self, key: Hashable) -> None:
        self._runtime.cancel_timer(self._address, key)

    def next_id(self) -> int:
        return next(self._runtime.ids)

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        self._runtime.spawn(address, behaviour)

    def stop(self) -> None:
        self._runtime.stop(self._address)


class ManualRuntime:
    """Hosts behaviours on one queue and a manual clock; every run with the same inputs is identical."""

    def __init__(self, seed: int = 0, start: float = 0.0) -> None:
        self.now = start
        self.random = random.Random(seed)
        self.ids = itertools.count(1)
        self.behaviours: dict[Address, Behaviour] = {}
        self.contexts: dict[Address, ManualContext] = {}
        self.queue: deque[tuple[Address, Message]] = deque()
        self.sinks: dict[Address, Sink] = {}
        self.prefix_sinks: dict[str, Sink] = {}
        self.dropped: list[tuple[Address, Message]] = []
        self.delivered = 0
        self._timers: list[tuple[float, int, Address, Hashable, Message]] = []
        self._timer_seq = itertools.count()
        self._live_timers: dict[tuple[Address, Hashable], int] = {}
        self._stopping: set[Address] = set()
        #: called after each delivery with (address, message); tests check invariants here
        self.observers: list[Callable[[Address, Message], None]] = []

    # ---------------------------------------------------------------------------------------- hosting
    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        """Host ``behaviour`` at ``address``."""
        if address in self.behaviours:
            raise ValueError(f"address {address!r} is taken")
        self.behaviours[address] = behaviour
        self.contexts[address] = ManualContext(self, address)

    def stop(self, address: Address) -> None:
        """Stop hosting the behaviour at ``address`` (after its current message)."""
        self._stopping.add(address)

    def sink(self, address: Address, sink: Sink) -> None:
        """Send messages for ``address`` (or, ending in ``/``, every address with that prefix) to ``sink``."""
        if address.endswith("/"):
            self.prefix_sinks[address] = sink
        else:
            self.sinks[address] = sink

    def context(self, address: Address) -> Context:
        """The context of the behaviour at ``address`` (for a test that calls a behaviour directly)."""
        return self.contexts[address]

    def send(self, to: Address, message: Message) -> None:
        """Queue a message from outside (a test, a worker)."""
        self.queue.append((to, message))

    def next_id(self) -> int:
        """A fresh message id (for messages made outside the behaviours)."""
        return next(self.ids)

    # ---------------------------------------------------------------------------------------- timers
    def set_timer(self, address: Address, key: Hashable, at: float, message: Message) -> None:
        """Deliver ``message`` to ``address`` at ``at``, replacing its pending timer ``key``."""
        seq = next(self._timer_seq)
        self._live_timers[(address, key)] = seq
        heapq.heappush(self._timers, (at, seq, address, key, message))

    def cancel_timer(self, address: Address, key: Hashable) -> None:
        """Forget the pending timer ``key`` of ``address``."""
        self._live_timers.pop((address, key), None)

    def next_timer(self) -> float | None:
        """When the next live timer fires, or None."""
        timers = self._timers
        while timers:
            at, seq, address, key, _ = timers[0]
            if self._live_timers.get((address, key)) == seq:
                return at
            heapq.heappop(timers)
        return None

    def fire_next_timer(self) -> bool:
        """Move the clock to the next live timer and queue its message; False if there is none."""
        at = self.next_timer()
        if at is None:
            return False
        _, _seq, address, key, message = heapq.heappop(self._timers)
        del self._live_timers[(address, key)]
        self.now = max(self.now, at)
        self.queue.append((address, message))
        return True

    # ---------------------------------------------------------------------------------------- delivery
    def _route(self, to: Address, message: Message) -> None:
        behaviour = self.behaviours.get(to)
        if behaviour is not None:
            behaviour.handle(message, self.contexts[to])
            if self._stopping and to in self._stopping:
                self._stopping.discard(to)
                del self.behaviours[to]
                del self.contexts[to]
                for timer in [k for k in self._live_timers if k[0] == to]:
                    del self._live_timers[timer]
        else:
            sink = self.sinks.get(to)
            if sink is None:
                slash = to.find("/")
                sink = self.prefix_sinks.get(to[: slash + 1]) if slash >= 0 else None
            if sink is not None:
                sink(to, message)
            else:
                self.dropped.append((to, message))
        self.delivered += 1
        for observe in self.observers:
            observe(to, message)

    def step(self) -> bool:
        """Deliver the oldest queued message; False if the queue is empty."""
        if not self.queue:
            return False
        to, message = self.queue.popleft()
        self._route(to, message)
        return True

    def deliver(self, index: int) -> None:
        """Deliver the queued message at ``index`` now (a test choosing an interleaving)."""
        to, message = self.queue[index]
        del self.queue[index]
        self._route(to, message)

    def run(self, max_steps: int = 10_000_000) -> int:
        """Deliver until the queue is empty (timers do not fire); returns the number delivered."""
        done = 0
        queue = self.queue
        while queue:
            if done >= max_steps:
                raise RuntimeError(f"still busy after {max_steps} messages")
            to, message = queue.popleft()
            self._route(to, message)
            done += 1
        return done

    def advance(self, until: float, max_steps: int = 10_000_000) -> None:
        """Run everything due up to time ``until`` (messages, then timers in time order), then set the clock."""
        self.run(max_steps)
        while True:
            at = self.next_timer()
            if at is None or at > until:
                break
            self.fire_next_timer()
            self.run(max_steps)
        self.now = max(self.now, until)

    def run_all(self, max_steps: int = 10_000_000, max_time: float = float("inf")) -> None:
        """Run messages and timers until nothing is left (or the clock would pass ``max_time``)."""
        self.run(max_steps)
        while True:
            at = self.next_timer()
            if at is None or at > max_time:
                return
            self.fire_next_timer()
            self.run(max_steps)

    def behaviour(self, address: Address) -> Any:
        """The behaviour hosted at ``address`` (for inspection in tests)."""
        return self.behaviours[address]
