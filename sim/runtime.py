"""The SimPy runtime: hosts the core behaviours inside a SimPy environment, single-threaded and reproducible.

Behaviours are called inline from SimPy events. ``ctx.now`` is ``env.now``; timers are SimPy events scheduled
on the environment's queue like ``simpy.Timeout`` (a replaced or cancelled timer still fires, and is then
ignored); every context draws from its own generator
seeded from the run's seed and its address, so a seed reproduces a run bit for bit and turning one knob
(jitter, say) does not reshuffle the draws of unrelated behaviours.

**The network.** A message between a worker (an address registered with :meth:`SimRuntime.remote`) and the
server crosses the simulated network: it arrives ``latency`` seconds later plus a uniform jitter in
``[0, jitter)``, and with probability ``loss`` it is lost (the runtime then calls the ``on_loss`` hook, which
a host uses to model the broken connection). Messages inside the server take ``internal_latency`` (default 0:
they are delivered at the same simulated time, after the message being handled, in send order). Messages on
one link (sender, receiver) never overtake each other: with jitter, a message is held back until the one sent
before it on its link has arrived.

**The hot path.** There is no SimPy process per message. Messages due at the same simulated time share one
SimPy event (a *batch*); when it fires, its messages join a FIFO queue that is drained in place, so a cascade
of zero-latency messages inside the server costs one event in all. Timers are one lightweight SimPy event each.
Behaviours run only inside :meth:`SimRuntime.drain`; a host feeds the simulation with :meth:`SimRuntime.send`,
:meth:`SimRuntime.send_at` and :meth:`SimRuntime.call_at`, then steps ``env`` as it likes (``env.run()``).
"""

from __future__ import annotations

import itertools
import math
import random
from collections import deque
from collections.abc import Callable, Hashable
from heapq import heappop, heappush
from typing import Any

import simpy
from simpy.events import NORMAL, Event

from farmhand.core.messages import Message
from farmhand.core.runtime import Address, Behaviour, MessageRouter

Sink = Callable[[Address, Message], None]
LossHook = Callable[[Address, Address, Message], None]

__all__ = ["NetworkModel", "SimContext", "SimEnvironment", "SimRuntime"]


class NetworkModel:
    """Latency, jitter and loss of the simulated network (seconds; ``loss`` is a probability)."""

    __slots__ = ("internal_latency", "jitter", "latency", "loss")

    def __init__(
        self, latency: float = 0.0, jitter: float = 0.0, loss: float = 0.0, internal_latency: float = 0.0
    ) -> None:
        for name, value in (("latency", latency), ("jitter", jitter), ("internal_latency", internal_latency)):
            if not value >= 0:
                raise ValueError(f"{name}: must be >= 0 (got {value})")
        if not 0 <= loss < 1:
            raise ValueError(f"loss: must be >= 0 and < 1 (got {loss})")
        self.latency = float(latency)
        self.jitter = float(jitter)
        self.loss = float(loss)
        self.internal_latency = float(internal_latency)

    def as_dict(self) -> dict[str, float]:
        """The model's parameters (for the summary's scenario)."""
        return {
            "latency_s": self.latency,
            "jitter_s": self.jitter,
            "loss": self.loss,
            "internal_latency_s": self.internal_latency,
        }


class SimEnvironment(simpy.Environment):
    """A SimPy environment that can also schedule an event at an absolute time (no rounding of ``now + d``)."""

    def schedule_at(self, event: Event, at: float) -> None:
        """Schedule ``event`` (already triggered) to be processed at time ``at`` (never before now)."""
        now = self._now
        heappush(self._queue, (at if at > now else now, NORMAL, next(self._eid), event))


class _Due(Event):
    """A triggered event that calls one function with its value: a batch of deliveries, or a timer."""

    def __init__(self, env: simpy.Environment, value: Any, fire: Callable[[Event], None]) -> None:
        # the same inlined initialisation as simpy.events.Timeout, without its delay bookkeeping
        self.env = env
        self.callbacks = [fire]
        self._value = value
        self._ok = True


class SimContext:
    """The context a :class:`SimRuntime` gives one behaviour.

    ``now`` is a class attribute of a context class made per runtime, which the runtime moves forward before
    it delivers anything: reading the time costs an attribute lookup, not a call. ``next_id`` is the
    runtime's counter itself. Behaviours run only inside :meth:`SimRuntime.drain`, so a send from a
    behaviour never needs to wake the runtime up.
    """

    __slots__ = ("_address", "_append", "_env", "_fire", "_random", "_remote", "_rt", "next_id", "timers")

    now: float = 0.0

    def __init__(self, runtime: SimRuntime, address: Address, remote: bool) -> None:
        self._rt = runtime
        self._env = runtime.env
        self._fire = runtime._fire_timer
        self._address = address
        self._remote = remote
        self._random: random.Random | None = None
        self._append = runtime.queue.append
        self.next_id: Callable[[], int] = runtime.ids.__next__
        #: this behaviour's pending timers: key -> the SimPy event of the live one
        self.timers: dict[Hashable, _Due] = {}

    @property
    def address(self) -> Address:
        return self._address

    @property
    def random(self) -> random.Random:
        rng = self._random
        if rng is None:
            rng = self._random = random.Random(f"{self._rt.seed}/{self._address}")
        return rng

    def send(self, to: Address, message: Message) -> None:
        rt = self._rt
        if self._remote or to in rt.remotes:
            rt.net_send(self._address, to, message)
        elif rt.internal_latency:
            rt.deliver_at(rt.env._now + rt.internal_latency, to, message)
        else:
            self._append((to, message))

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        env = self._env
        due = self.timers[key] = _Due(env, (self, key, message), self._fire)
        now = env._now
        heappush(env._queue, (at if at > now else now, NORMAL, next(env._eid), due))

    def cancel_timer(self, key: Hashable) -> None:
        self.timers.pop(key, None)

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        self._rt.spawn(address, behaviour)

    def stop(self) -> None:
        self._rt.stop(self._address)


class _FlatContext(SimContext):
    """The context when the network takes no time and loses nothing: every send joins the queue due now."""

    __slots__ = ()

    def send(self, to: Address, message: Message) -> None:
        self._append((to, message))


class SimRuntime:
    """Hosts behaviours on a SimPy environment; see the module docstring for the network and the hot path."""

    def __init__(
        self,
        env: SimEnvironment | None = None,
        seed: int = 0,
        network: NetworkModel | None = None,
        on_loss: LossHook | None = None,
    ) -> None:
        self.env = env if env is not None else SimEnvironment()
        self.seed = seed
        self.network = network or NetworkModel()
        self.latency = self.network.latency
        self.jitter = self.network.jitter
        self.loss = self.network.loss
        self.internal_latency = self.network.internal_latency
        self.flat = not (self.latency or self.jitter or self.loss or self.internal_latency)
        self.on_loss = on_loss
        self.net_random = random.Random(f"{seed}/network")
        self.ids = itertools.count(1)
        #: this runtime's context class: its ``now`` is the simulated time of the current delivery
        base = _FlatContext if self.flat else SimContext
        self._context_class: type[SimContext] = type("SimContext", (base,), {"__slots__": ()})
        #: what is hosted at each address: (its handlers by message class, its context); see :func:`_handlers_of`
        self.hosted: dict[Address, tuple[Any, SimContext | None]] = {}
        self.behaviours: dict[Address, Behaviour] = {}
        #: addresses on the far side of the network (the workers)
        self.remotes: set[Address] = set()
        self.prefix_sinks: dict[str, Sink] = {}
        #: messages due now, drained in order
        self.queue: deque[tuple[Address, Message]] = deque()
        self.draining = False
        self._batches: dict[float, list[tuple[Address, Message]]] = {}
        self._link_clock: dict[tuple[Address, Address], float] = {}
        self._kicked = False
        self._halted = False
        #: messages and timer firings handled (behaviours and sinks)
        self.delivered = 0
        self.lost = 0
        self.dropped = 0

    # ---------------------------------------------------------------------------------------- hosting
    @property
    def now(self) -> float:
        """The simulated time (seconds)."""
        return self.env._now  # type: ignore[no-any-return]

    def spawn(self, address: Address, behaviour: Behaviour, remote: bool = False) -> None:
        """Host ``behaviour`` at ``address``; ``remote`` puts it across the network (a worker)."""
        if address in self.hosted:
            raise ValueError(f"address {address!r} is taken")
        if remote:
            self.remotes.add(address)
        ctx = self._context_class(self, address, address in self.remotes)
        self.behaviours[address] = behaviour
        self.hosted[address] = (_handlers_of(behaviour), ctx)

    def remote(self, address: Address) -> None:
        """Put ``address`` across the network (call before spawning it there)."""
        self.remotes.add(address)

    def stop(self, address: Address) -> None:
        """Stop hosting the behaviour at ``address``: the message it is handling is its last, and its timers,
        pending or set before that message's handler returns, never fire."""
        self.behaviours.pop(address, None)
        entry = self.hosted.pop(address, None)
        if entry is not None and entry[1] is not None:
            entry[1].timers = _NoTimers()

    def sink(self, address: Address, sink: Sink) -> None:
        """Send messages for ``address`` (or, ending in ``/``, any address with that prefix) to ``sink``."""
        if address.endswith("/"):
            self.prefix_sinks[address] = sink
        else:
            self.hosted[address] = (_EveryKind(lambda message, _ctx: sink(address, message)), None)

    def context(self, address: Address) -> SimContext | None:
        """The context of the behaviour at ``address``."""
        entry = self.hosted.get(address)
        return entry[1] if entry is not None else None

    def behaviour(self, address: Address) -> Any:
        """The behaviour hosted at ``address`` (None if there is none)."""
        return self.behaviours.get(address)

    def next_id(self) -> int:
        """A fresh message id."""
        return next(self.ids)

    # ---------------------------------------------------------------------------------------- sending
    def send(self, to: Address, message: Message, sender: Address = "") -> None:
        """Send from outside the behaviours (a host): like ``ctx.send`` from ``sender``."""
        if sender in self.remotes or to in self.remotes:
            self.net_send(sender, to, message)
        elif self.internal_latency:
            self.deliver_at(self.env._now + self.internal_latency, to, message)
        else:
            self.queue.append((to, message))
            if not self.draining:
                self.kick()

    def send_at(self, at: float, to: Address, message: Message) -> None:
        """Deliver ``message`` to ``to`` at time ``at`` (a host's scheduled input: a submission, a fault)."""
        self.deliver_at(at, to, message)

    def net_send(self, sender: Address, to: Address, message: Message) -> None:
        """A message across the network: loss, then latency plus jitter, FIFO on its link."""
        rng = self.net_random
        if self.loss and rng.random() < self.loss:
            self.lost += 1
            if self.on_loss is not None:
                self.on_loss(sender, to, message)
            return
        now = self.env._now
        at = now + self.latency
        if self.jitter:
            at += self.jitter * rng.random()
            link = (sender, to)
            before = self._link_clock.get(link, 0.0)
            if at < before:
                at = before  # never overtake the message sent before on this link
            self._link_clock[link] = at
        if at == now:
            self.queue.append((to, message))
            if not self.draining:
                self.kick()
        else:
            self.deliver_at(at, to, message)

    def deliver_at(self, at: float, to: Address, message: Message) -> None:
        """Queue a delivery for time ``at``; deliveries due at the same time share one SimPy event."""
        batch = self._batches.get(at)
        if batch is None:
            self._batches[at] = [(to, message)]
            self.env.schedule_at(_Due(self.env, at, self._fire_batch), at)
        else:
            batch.append((to, message))

    def kick(self) -> None:
        """Make sure the queue of messages due now gets drained (from outside a drain)."""
        if not self._kicked:
            self._kicked = True
            self.env.schedule_at(_Due(self.env, None, self._fire_kick), self.env._now)

    def _fire_kick(self, event: Event) -> None:
        self._kicked = False
        if not self.draining:
            self.drain()

    def _fire_batch(self, event: Event) -> None:
        batch = self._batches.pop(event._value)
        self.queue.extend(batch)
        if not self.draining:
            self.drain()

    # ---------------------------------------------------------------------------------------- timers
    def set_timer(self, address: Address, key: Hashable, at: float, message: Message) -> None:
        """Deliver ``message`` to the behaviour at ``address`` at ``at``, replacing its pending timer ``key``.

        Timers belong to a hosted behaviour (KeyError otherwise); a host's own input for any address, a sink's
        included, is :meth:`send_at`."""
        ctx = self.context(address)
        if ctx is None:
            raise KeyError(f"no behaviour is hosted at {address!r}")
        ctx.set_timer(key, at, message)

    def cancel_timer(self, address: Address, key: Hashable) -> None:
        """Forget the pending timer ``key`` of ``address``."""
        ctx = self.context(address)
        if ctx is not None:
            ctx.cancel_timer(key)

    def _fire_timer(self, event: Event) -> None:
        ctx, key, message = event._value
        timers = ctx.timers
        if timers.get(key) is not event:
            return  # replaced or cancelled
        del timers[key]
        self.queue.append((ctx._address, message))
        if not self.draining:
            self.drain()

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        """Call ``fn()`` at time ``at`` (a host's own wake-up, e.g. a fault; not seen by behaviours)."""
        self.env.schedule_at(_Due(self.env, fn, _call), at)

    def pending_timers(self, name_filter: Callable[[Hashable], bool] | None = None) -> int:
        """How many timers are pending (optionally only those whose key passes ``name_filter``)."""
        contexts = [ctx for _, ctx in self.hosted.values() if ctx is not None]
        if name_filter is None:
            return sum(len(ctx.timers) for ctx in contexts)
        return sum(1 for ctx in contexts for key in ctx.timers if name_filter(key))

    # ---------------------------------------------------------------------------------------- running
    def run(self, until: float = math.inf) -> bool:
        """Process the environment's events in time order until none is left, the next lies beyond ``until``,
        or :meth:`halt` is called; True if it was halted.

        Exactly what stepping ``env`` does (``env.run()``), event by event and in the same order, minus a call
        and the bookkeeping of ``env.step`` per event: the simulator's loop.
        """
        env = self.env
        heap = env._queue
        self._halted = False
        while heap and not self._halted:
            if heap[0][0] > until:
                break
            env._now, _, _, event = heappop(heap)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
            if not event._ok and not hasattr(event, "_defused"):
                raise event._value
        return self._halted

    def halt(self) -> None:
        """Make :meth:`run` return after the event it is processing."""
        self._halted = True

    # ---------------------------------------------------------------------------------------- delivery
    def drain(self) -> None:
        """Deliver every message due now, including those sent while delivering, in FIFO order."""
        queue = self.queue
        hosted = self.hosted
        popleft = queue.popleft
        handled = 0
        self._context_class.now = self.env._now
        self.draining = True
        try:
            while queue:
                to, message = popleft()
                handled += 1
                try:  # free when nothing is missing (the usual case): cheaper than two lookups and two checks
                    entry = hosted[to]
                    handler = entry[0][message.__class__]
                except KeyError:
                    if to not in hosted:
                        self._to_prefix_sink(to, message)
                    continue  # a message the behaviour has no handler for is ignored
                handler(message, entry[1])
        finally:
            self.draining = False
            self.delivered += handled

    def _to_prefix_sink(self, to: Address, message: Message) -> None:
        slash = to.find("/")
        sink = self.prefix_sinks.get(to[: slash + 1]) if slash >= 0 else None
        if sink is not None:
            sink(to, message)
        else:
            self.dropped += 1

class _NoTimers(dict):  # type: ignore[type-arg]
    """The timers of a stopped behaviour: whatever it sets is forgotten at once."""

    def __setitem__(self, key: Hashable, value: Any) -> None:
        pass


class _EveryKind(dict):  # type: ignore[type-arg]
    """A handler table that gives the same handler for every message class (a behaviour's own ``handle``):
    each class is looked up once, then found like in any other table."""

    def __init__(self, handler: Callable[[Message, Any], None]) -> None:
        super().__init__()
        self._handler = handler

    def __missing__(self, kind: type) -> Callable[[Message, Any], None]:
        self[kind] = self._handler
        return self._handler


def _handlers_of(behaviour: Behaviour) -> Any:
    """How the runtime calls ``behaviour``: a :class:`MessageRouter` that keeps the base ``handle`` is called
    through its handler table directly (one call per message instead of two); any other behaviour through
    its ``handle``. The behaviour sees the same calls either way."""
    if isinstance(behaviour, MessageRouter) and type(behaviour).handle is MessageRouter.handle:
        return behaviour._handlers
    return _EveryKind(behaviour.handle)


def _call(event: Event) -> None:
    event._value()
