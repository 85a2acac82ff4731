"""The pykka runtime: each core behaviour inside its own ``pykka.ThreadingActor``.

``send`` is ``tell``; timers live on one small timer thread that ``tell``s when they are due; ``now`` is
``time.monotonic()`` measured from the runtime's start (or wall time, for a store that persists times).
Actors never ``ask`` each other. Addresses that are not actors (workers on the other end of a connection,
the event sink) are *sinks*: thread-safe callables called on the sender's thread.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import threading
import time
from collections.abc import Callable, Hashable

import pykka

from farmhand.core.messages import Message
from farmhand.core.runtime import Address, Behaviour

log = logging.getLogger("farmhand.actors")

Sink = Callable[[Address, Message], None]


class ActorContext:
    """The context the pykka runtime gives one behaviour (used only on that actor's thread)."""

    __slots__ = ("_actor", "_address", "_random", "_runtime")

    def __init__(self, runtime: PykkaRuntime, address: Address, actor: BehaviourActor, seed: int) -> None:
        self._runtime = runtime
        self._address = address
        self._actor = actor
        self._random = random.Random(seed)

    @property
    def now(self) -> float:
        return self._runtime.clock()

    @property
    def address(self) -> Address:
        return self._address

    @property
    def random(self) -> random.Random:
        return self._random

    def send(self, to: Address, message: Message) -> None:
        self._runtime.send(to, message)

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        self._runtime.timers.set(self._address, key, at, message)

    def cancel_timer(self, key: Hashable) -> None:
        self._runtime.timers.cancel(self._address, key)

    def next_id(self) -> int:
        return self._runtime.next_id()

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        self._runtime.spawn(address, behaviour)

    def stop(self) -> None:
        self._runtime.forget(self._address)
        self._actor.stop()


class BehaviourActor(pykka.ThreadingActor):
    """A pykka actor hosting one core behaviour; a failing message is logged and the actor goes on."""

    def __init__(self, runtime: PykkaRuntime, address: Address, behaviour: Behaviour, seed: int) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.address = address
        self.ctx = ActorContext(runtime, address, self, seed)
        self.runtime = runtime

    def on_receive(self, message: object) -> None:
        if not isinstance(message, Message):
            return
        try:
            self.behaviour.handle(message, self.ctx)
        except Exception:
            log.exception("behaviour at %s failed on %s", self.address, type(message).__name__)
        finally:
            self.runtime.delivered(1)


class TimerThread:
    """One thread holding every actor's timers; a due timer is a ``tell`` to its actor."""

    def __init__(self, runtime: PykkaRuntime) -> None:
        self._runtime = runtime
        self._heap: list[tuple[float, int, Address, Hashable, Message]] = []
        self._live: dict[tuple[Address, Hashable], int] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="farmhand-timers", daemon=True)
        self._thread.start()

    def set(self, address: Address, key: Hashable, at: float, message: Message) -> None:
        with self._cond:
            seq = next(self._seq)
            self._live[(address, key)] = seq
            earliest = not self._heap or at < self._heap[0][0]
            heapq.heappush(self._heap, (at, seq, address, key, message))
            if earliest:  # the thread sleeps until the head: only an earlier timer needs to wake it
                self._cond.notify()

    def cancel(self, address: Address, key: Hashable) -> None:
        with self._cond:
            self._live.pop((address, key), None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                if self._stopped:
                    return
                due: list[tuple[Address, Message]] = []
                now = self._runtime.clock()
                while self._heap and self._heap[0][0] <= now:
                    _, seq, address, key, message = heapq.heappop(self._heap)
                    if self._live.get((address, key)) == seq:
                        del self._live[(address, key)]
                        due.append((address, message))
                if not due:
                    timeout = (self._heap[0][0] - now) if self._heap else 1.0
                    self._cond.wait(timeout=min(max(timeout, 0.0005), 1.0))
                    continue
            for address, message in due:
                self._runtime.send(address, message)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        self._thread.join(timeout=5)


class PykkaRuntime:
    """Hosts behaviours as pykka actors; ``stop()`` ends every actor and the timer thread."""

    def __init__(self, seed: int = 0, wall_clock: bool = False, first_id: int = 1) -> None:
        self._t0 = time.monotonic()
        self.clock: Callable[[], float] = time.time if wall_clock else self._monotonic
        self._seed = seed
        self._ids = itertools.count(first_id)  # a restarted server starts above every id it handed out before
        self._id_lock = threading.Lock()
        self._actors: dict[Address, pykka.ActorRef[BehaviourActor]] = {}
        self._behaviours: dict[Address, Behaviour] = {}
        self._lock = threading.Lock()
        self.sinks: dict[Address, Sink] = {}
        self.prefix_sinks: dict[str, Sink] = {}
        self._count_lock = threading.Lock()
        self.messages = 0
        self.dropped = 0
        self.timers = TimerThread(self)
        self._spawned = 0

    def _monotonic(self) -> float:
        return time.monotonic() - self._t0

    def next_id(self) -> int:
        """A fresh message id, unique within this runtime."""
        with self._id_lock:
            return next(self._ids)

    def delivered(self, count: int) -> None:
        """Count delivered messages (for the summary's ``events``)."""
        with self._count_lock:
            self.messages += count

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        """Start an actor hosting ``behaviour`` at ``address``."""
        with self._lock:
            if address in self._actors:
                raise ValueError(f"address {address!r} is taken")
            self._spawned += 1
            from .actors import actor_class_for  # the named actor classes import the core behaviours

            actor_class = actor_class_for(behaviour)
            ref = actor_class.start(self, address, behaviour, self._seed * 1_000_003 + self._spawned)
            self._actors[address] = ref
            self._behaviours[address] = behaviour

    def behaviour(self, address: Address) -> Behaviour | None:
        """The behaviour hosted at ``address`` (read it only once the farm is quiet)."""
        with self._lock:
            return self._behaviours.get(address)

    def forget(self, address: Address) -> None:
        """Drop ``address`` from routing (its actor is stopping)."""
        with self._lock:
            self._actors.pop(address, None)
            self._behaviours.pop(address, None)

    def sink(self, address: Address, sink: Sink) -> None:
        """Route ``address`` (or every address with the prefix, when it ends in ``/``) to ``sink``."""
        with self._lock:
            if address.endswith("/"):
                self.prefix_sinks[address] = sink
            else:
                self.sinks[address] = sink

    def send(self, to: Address, message: Message) -> None:
        """Deliver ``message`` to ``to``: ``tell`` to an actor, or a call of a sink."""
        ref = self._actors.get(to)
        if ref is not None:
            try:
                ref.tell(message)
            except pykka.ActorDeadError:
                self.dropped += 1
            return
        sink = self.sinks.get(to)
        if sink is None:
            slash = to.find("/")
            sink = self.prefix_sinks.get(to[: slash + 1]) if slash >= 0 else None
        if sink is None:
            self.dropped += 1
            log.debug("no one at %s for %s", to, type(message).__name__)
            return
        sink(to, message)

    def addresses(self) -> list[Address]:
        """Every actor address hosted now."""
        with self._lock:
            return list(self._actors)

    def stop(self) -> None:
        """Stop the timer thread and every actor (blocking until they are gone)."""
        self.timers.stop()
        with self._lock:
            refs = list(self._actors.values())
            self._actors.clear()
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=5)
