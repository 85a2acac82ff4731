"""The pykka runtime: core behaviours inside ``pykka.ThreadingActor``s.

Most behaviours get an actor (a thread) of their own. Behaviours whose actor class is a :class:`ShardActor`
(renders: thousands of them, each woken by every heartbeat of its worker) share a fixed number of *shard*
actors of that class instead (``PykkaRuntime(shards=...)``, 4 by default): the shard of an address is fixed
by a hash of it, a message is queued on the shard together with the behaviour it is for, and the shard hands
it to that behaviour. The behaviour sees no difference: its own context, address, seeded random generator
and timers; one message at a time; the messages of one sender reach it in the order they were sent; after
``ctx.stop()`` no new message is routed to it, and it still handles those already queued for it, as an actor
of its own handles what its inbox held when it stopped.

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
import queue
import random
import threading
import time
import zlib
from collections.abc import Callable, Hashable
from typing import Any

import pykka

from farmhand.core.messages import Message
from farmhand.core.runtime import Address, Behaviour

log = logging.getLogger("farmhand.actors")

Sink = Callable[[Address, Message], None]
DEFAULT_SHARDS = 4


class ActorContext:
    """The context the pykka runtime gives one behaviour (used only on that actor's thread)."""

    __slots__ = ("_address", "_leave", "_random", "_runtime")

    def __init__(self, runtime: PykkaRuntime, address: Address, seed: int, leave: Callable[[], None]) -> None:
        self._runtime = runtime
        self._address = address
        self._leave = leave  # what stop() does: the host forgets the behaviour
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
        self._leave()


class BehaviourActor(pykka.ThreadingActor):
    """A pykka actor hosting one core behaviour; a failing message is logged and the actor goes on."""

    def __init__(self, runtime: PykkaRuntime, address: Address, behaviour: Behaviour, seed: int) -> None:
        super().__init__()
        self.behaviour = behaviour
        self.address = address
        self.ctx = ActorContext(runtime, address, seed, self._leave)
        self.runtime = runtime

    def _leave(self) -> None:
        """``ctx.stop()``: no new message is routed here; the actor stops after what its inbox holds."""
        self.runtime.forget(self.address)
        self.stop()

    def on_receive(self, message: object) -> None:
        if not isinstance(message, Message):
            return
        try:
            self.behaviour.handle(message, self.ctx)
        except Exception:
            log.exception("behaviour at %s failed on %s", self.address, type(message).__name__)
        finally:
            self.runtime.delivered(1)


class Hosted:
    """One behaviour hosted on a shard: its messages are queued on the shard with it."""

    __slots__ = ("address", "behaviour", "ctx", "live", "shard")

    def __init__(self, address: Address, behaviour: Behaviour, shard: Shard) -> None:
        self.address = address
        self.behaviour = behaviour
        self.shard = shard
        self.live = True  # False once its stop is reached in the shard's queue (or the runtime stops)
        self.ctx: ActorContext  # set by the runtime, which builds the context around this record


_DRAIN = object()  # the one message a shard actor is told: handle what is pending
_RETIRE = object()  # queued for a behaviour that stopped, after the messages it still handles


class Shard:
    """A shard: the behaviours it hosts, the messages pending for them, and the actor that handles those.

    Senders append ``(hosted, message)`` to ``pending``, one FIFO for the whole shard, so the messages of one
    sender reach each behaviour in the order they were sent; they tell the actor to drain only when it has not
    been told already, and the actor takes everything pending at once. ``hosted`` changes under the runtime's
    lock; ``closed`` is set when the runtime stops.
    """

    __slots__ = ("closed", "hosted", "lock", "name", "pending", "ref", "told")

    def __init__(self, name: str) -> None:
        self.name = name
        self.hosted: dict[Address, Hosted] = {}
        self.lock = threading.Lock()
        self.pending: list[tuple[Hosted, Message | object]] = []
        self.told = False  # the actor has a drain coming, or is draining: a new message need not tell it
        self.closed = False
        self.ref: pykka.ActorRef[ShardActor]

    def post(self, hosted: Hosted, message: Message | object) -> None:
        """Queue ``message`` for ``hosted`` (any thread); raises ``pykka.ActorDeadError`` once stopped."""
        with self.lock:
            self.pending.append((hosted, message))
            if self.told:
                return
            self.told = True
        self.ref.tell(_DRAIN)

    def take(self) -> list[tuple[Hosted, Message | object]]:
        """Everything pending (the actor's thread); when nothing is, the next message will tell the actor."""
        with self.lock:
            batch = self.pending
            if batch:
                self.pending = []
            else:
                self.told = False
        return batch


class ShardActor(pykka.ThreadingActor):
    """A pykka actor hosting the many behaviours of one :class:`Shard`. Told to drain, it hands each pending
    message to its behaviour, in order, until nothing is pending; a failing message is logged and the shard
    goes on with the next.

    Waking a thread costs more than a render's heartbeat (tens of microseconds of system and GIL hand-over
    against a few of Python), so a shard under load waits ``linger_s`` between two batches and takes what
    gathered meanwhile in one go: under a stream of messages each shard wakes at most about 1/``linger_s``
    times a second, however many behaviours it hosts, at the price of that much delay for messages that
    arrive in the stream. A message that finds the shard idle is handled at once; the shard lingers only
    after a batch of more than one message.
    """

    linger_s = 0.005
    rounds = 100  # batches in a row before the shard lets its inbox's other messages (a stop) in

    def __init__(self, runtime: PykkaRuntime, shard: Shard) -> None:
        super().__init__()
        self.runtime = runtime
        self.shard = shard

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()  # all pykka asks of an inbox (put, get, empty), lighter than a Queue

    def on_receive(self, message: object) -> None:
        if message is not _DRAIN:
            return
        shard = self.shard
        runtime = self.runtime
        for _ in range(self.rounds):
            if shard.closed:
                return
            batch = shard.take()
            if not batch:
                return
            handled = 0
            for hosted, msg in batch:
                if not hosted.live:
                    runtime.dropped += 1
                    continue
                if msg is _RETIRE:
                    hosted.live = False
                    continue
                handled += 1
                try:
                    hosted.behaviour.handle(msg, hosted.ctx)
                except Exception:
                    log.exception("behaviour at %s failed on %s", hosted.address, type(msg).__name__)
            if handled:
                runtime.delivered(handled)
            if len(batch) > 1 and self.linger_s > 0:
                time.sleep(self.linger_s)
        self.actor_ref.tell(_DRAIN)  # still pending: drain again after what else the inbox holds


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
    """Hosts behaviours as pykka actors; ``stop()`` ends every actor and the timer thread.

    ``shards``: how many shard actors each :class:`ShardActor` class gets (started as they are first needed);
    0 gives every behaviour an actor of its own, whatever its actor class.
    """

    def __init__(
        self, seed: int = 0, wall_clock: bool = False, first_id: int = 1, shards: int = DEFAULT_SHARDS
    ) -> None:
        self._t0 = time.monotonic()
        self.clock: Callable[[], float] = time.time if wall_clock else self._monotonic
        self._seed = seed
        self._ids = itertools.count(first_id)  # a restarted server starts above every id it handed out before
        self._id_lock = threading.Lock()
        self._actors: dict[Address, pykka.ActorRef[BehaviourActor]] = {}
        self._hosted: dict[Address, Hosted] = {}
        self._shard_count = max(shards, 0)
        self._shards: dict[type[ShardActor], list[Shard | None]] = {}
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
        """Host ``behaviour`` at ``address``: on its shard, or in an actor of its own."""
        with self._lock:
            if address in self._actors or address in self._hosted:
                raise ValueError(f"address {address!r} is taken")
            self._spawned += 1
            seed = self._seed * 1_000_003 + self._spawned
            from .actors import actor_class_for  # the named actor classes import the core behaviours

            actor_class = actor_class_for(behaviour)
            if issubclass(actor_class, ShardActor) and self._shard_count:
                shard = self._shard_for(actor_class, address)
                hosted = Hosted(address, behaviour, shard)
                hosted.ctx = ActorContext(self, address, seed, lambda: self._unhost(hosted))
                shard.hosted[address] = hosted
                self._hosted[address] = hosted
            else:
                own = actor_class if issubclass(actor_class, BehaviourActor) else BehaviourActor  # shards=0
                self._actors[address] = own.start(self, address, behaviour, seed)
            self._behaviours[address] = behaviour

    def _shard_for(self, actor_class: type[ShardActor], address: Address) -> Shard:
        """The shard of ``address`` among ``actor_class``'s (started now if need be; under the lock)."""
        pool = self._shards.get(actor_class)
        if pool is None:
            pool = self._shards[actor_class] = [None] * self._shard_count
        index = zlib.crc32(address.encode()) % len(pool)
        shard = pool[index]
        if shard is None:
            shard = Shard(f"{actor_class.__name__}/{index}")
            shard.ref = actor_class.start(self, shard)
            pool[index] = shard
        return shard

    def _unhost(self, hosted: Hosted) -> None:
        """``ctx.stop()`` of a behaviour on a shard: no new message is routed to it; it leaves the shard once
        it has handled those already queued (as an actor's stop comes after what its inbox holds)."""
        with self._lock:
            if self._hosted.get(hosted.address) is hosted:
                del self._hosted[hosted.address]
                self._behaviours.pop(hosted.address, None)
            if hosted.shard.hosted.get(hosted.address) is hosted:
                del hosted.shard.hosted[hosted.address]
        with contextlib.suppress(pykka.ActorDeadError):
            hosted.shard.post(hosted, _RETIRE)

    def shard_sizes(self) -> dict[str, int]:
        """How many behaviours each running shard hosts, by shard name (``RenderActor/3``)."""
        with self._lock:
            return {
                shard.name: len(shard.hosted) for pool in self._shards.values() for shard in pool if shard is not None
            }

    def behaviour(self, address: Address) -> Behaviour | None:
        """The behaviour hosted at ``address`` (read it only once the farm is quiet)."""
        with self._lock:
            return self._behaviours.get(address)

    def forget(self, address: Address) -> None:
        """Drop ``address`` from routing (its actor is stopping, or its behaviour leaves its shard)."""
        hosted = self._hosted.get(address)
        if hosted is not None:
            self._unhost(hosted)
            return
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
        """Deliver ``message`` to ``to``: ``tell`` to its shard or its actor, or a call of a sink."""
        hosted = self._hosted.get(to)
        if hosted is not None:
            try:
                hosted.shard.post(hosted, message)
            except pykka.ActorDeadError:
                self.dropped += 1
            return
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
        """Every address hosted now (in actors of their own or on shards)."""
        with self._lock:
            return [*self._actors, *self._hosted]

    def stop(self) -> None:
        """Stop the timer thread and every actor (blocking until they are gone)."""
        self.timers.stop()
        with self._lock:
            refs: list[pykka.ActorRef[Any]] = list(self._actors.values())
            refs += [shard.ref for pool in self._shards.values() for shard in pool if shard is not None]
            for hosted in self._hosted.values():
                hosted.live = False
            for pool in self._shards.values():
                for shard in pool:
                    if shard is not None:
                        shard.closed = True
            self._actors.clear()
            self._hosted.clear()
            self._shards.clear()
        for ref in refs:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=5)
