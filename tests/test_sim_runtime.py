"""The SimPy runtime: delivery after latency and jitter, FIFO per link, loss, timers, determinism, stopping."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from farmhand.core.messages import Message, Tick
from farmhand.core.runtime import MessageRouter
from farmhand.sim.runtime import NetworkModel, SimRuntime


class Recorder:
    """A behaviour that records (time, sender tag, number) of every Tick it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[float, str, int]] = []

    def handle(self, message: Message, ctx: Any) -> None:
        assert isinstance(message, Tick)
        self.got.append((ctx.now, message.name, message.ref))


class Talker:
    """On a 'go' tick, sends ``count`` numbered ticks to each target, then nothing."""

    def __init__(self, targets: list[str], count: int, tag: str) -> None:
        self.targets = targets
        self.count = count
        self.tag = tag

    def handle(self, message: Message, ctx: Any) -> None:
        if isinstance(message, Tick) and message.name == "go":
            for i in range(self.count):
                for target in self.targets:
                    ctx.send(target, Tick(ctx.next_id(), self.tag, i))


class PacedTalker:
    """Sends one numbered tick to ``target`` every ``every`` seconds, ``count`` times."""

    def __init__(self, target: str, count: int, tag: str, every: float) -> None:
        self.target = target
        self.count = count
        self.tag = tag
        self.every = every
        self.sent = 0

    def handle(self, message: Message, ctx: Any) -> None:
        if self.sent < self.count:
            ctx.send(self.target, Tick(ctx.next_id(), self.tag, self.sent))
            self.sent += 1
            ctx.set_timer("next", ctx.now + self.every, Tick(ctx.next_id(), "next"))


def run(rt: SimRuntime) -> None:
    rt.env.run()


def test_zero_latency_delivers_later_in_send_order_at_the_same_time() -> None:
    rt = SimRuntime(seed=1)
    sink = Recorder()
    rt.spawn("sink", sink)
    rt.spawn("talker", Talker(["sink"], 5, "a"))
    rt.send_at(3.0, "talker", Tick(rt.next_id(), "go"))
    run(rt)
    assert sink.got == [(3.0, "a", i) for i in range(5)]


def test_network_latency_applies_to_worker_links_only() -> None:
    rt = SimRuntime(seed=1, network=NetworkModel(latency=0.25, internal_latency=0.0))
    inside, outside = Recorder(), Recorder()
    rt.spawn("inside", inside)
    rt.spawn("worker/w1", outside, remote=True)
    rt.spawn("talker", Talker(["inside", "worker/w1"], 1, "a"))
    rt.send_at(1.0, "talker", Tick(rt.next_id(), "go"))
    run(rt)
    assert inside.got == [(1.0, "a", 0)]
    assert outside.got == [(1.25, "a", 0)]


def test_internal_latency() -> None:
    rt = SimRuntime(seed=1, network=NetworkModel(internal_latency=0.5))
    sink = Recorder()
    rt.spawn("sink", sink)
    rt.spawn("talker", Talker(["sink"], 2, "a"))
    rt.send_at(0.0, "talker", Tick(rt.next_id(), "go"))
    run(rt)
    assert [t for t, _, _ in sink.got] == [0.5, 0.5]


def test_jitter_never_reorders_a_link_but_spreads_arrivals() -> None:
    rt = SimRuntime(seed=7, network=NetworkModel(latency=0.01, jitter=1.0))
    sink = Recorder()
    rt.spawn("worker/w", sink, remote=True)
    rt.spawn("a", PacedTalker("worker/w", 200, "a", 0.2))
    rt.spawn("b", PacedTalker("worker/w", 200, "b", 0.2))
    rt.send_at(0.0, "a", Tick(rt.next_id(), "go"))
    rt.send_at(0.0, "b", Tick(rt.next_id(), "go"))
    run(rt)
    sent_at = {i: i * 0.2 for i in range(200)}
    for tag in ("a", "b"):
        got = [(t, n) for t, g, n in sink.got if g == tag]
        assert [n for _, n in got] == list(range(200)), f"link {tag} reordered"
        # late by the latency plus the jitter, or held behind the message before it
        assert all(sent_at[n] + 0.01 <= t <= sent_at[n] + 1.01 + 1e-9 for t, n in got)
        held = sum(1 for (t0, _), (t1, _) in itertools.pairwise(got) if t0 == t1)
        assert held < 150  # most are not held back: jitter spreads arrivals
    times = [t for t, _, _ in sink.got]
    assert times == sorted(times)
    assert len(set(times)) > 100
    # the two links interleave: b's messages are not all after a's
    tags = [t for _, t, _ in sink.got]
    assert tags != sorted(tags)


def test_same_seed_same_deliveries_other_seed_other_deliveries() -> None:
    def deliveries(seed: int) -> list[tuple[float, str, int]]:
        rt = SimRuntime(seed=seed, network=NetworkModel(latency=0.01, jitter=0.5, loss=0.1))
        sink = Recorder()
        rt.spawn("worker/w", sink, remote=True)
        rt.spawn("a", Talker(["worker/w"], 100, "a"))
        rt.send_at(0.0, "a", Tick(rt.next_id(), "go"))
        run(rt)
        return sink.got

    assert deliveries(3) == deliveries(3)
    assert deliveries(3) != deliveries(4)


def test_loss_drops_network_messages_and_calls_the_hook() -> None:
    lost: list[tuple[str, str]] = []
    rt = SimRuntime(seed=2, network=NetworkModel(loss=0.3), on_loss=lambda s, t, m: lost.append((s, t)))
    inside, outside = Recorder(), Recorder()
    rt.spawn("inside", inside)
    rt.spawn("worker/w", outside, remote=True)
    rt.spawn("talker", Talker(["inside", "worker/w"], 1000, "a"))
    rt.send_at(0.0, "talker", Tick(rt.next_id(), "go"))
    run(rt)
    assert len(inside.got) == 1000  # messages inside the server are never lost
    assert rt.lost == len(lost) == 1000 - len(outside.got)
    assert 200 < rt.lost < 400
    assert set(lost) == {("talker", "worker/w")}
    assert [n for _, _, n in outside.got] == sorted(n for _, _, n in outside.got)


class Timed:
    """Sets, replaces and cancels timers on command."""

    def __init__(self) -> None:
        self.fired: list[tuple[float, str]] = []

    def handle(self, message: Message, ctx: Any) -> None:
        assert isinstance(message, Tick)
        if message.name == "setup":
            ctx.set_timer("a", 5.0, Tick(ctx.next_id(), "a-first"))
            ctx.set_timer("a", 7.0, Tick(ctx.next_id(), "a-second"))  # replaces
            ctx.set_timer("b", 6.0, Tick(ctx.next_id(), "b"))
            ctx.set_timer("c", 8.0, Tick(ctx.next_id(), "c"))
            ctx.set_timer("past", 0.5, Tick(ctx.next_id(), "past"))  # already due: fires now
        elif message.name == "b":
            self.fired.append((ctx.now, "b"))
            ctx.cancel_timer("c")
        else:
            self.fired.append((ctx.now, message.name))


def test_timers_fire_replace_and_cancel_by_key() -> None:
    rt = SimRuntime()
    timed = Timed()
    rt.spawn("t", timed)
    rt.send_at(1.0, "t", Tick(rt.next_id(), "setup"))
    run(rt)
    assert timed.fired == [(1.0, "past"), (6.0, "b"), (7.0, "a-second")]
    assert rt.pending_timers() == 0


class Stopper:
    def __init__(self) -> None:
        self.seen = 0

    def handle(self, message: Message, ctx: Any) -> None:
        self.seen += 1
        ctx.set_timer("later", ctx.now + 10, Tick(ctx.next_id(), "later"))
        ctx.send(ctx.address, Tick(ctx.next_id(), "again"))
        ctx.stop()


def test_stop_removes_the_behaviour_and_its_timers() -> None:
    rt = SimRuntime()
    stopper = Stopper()
    rt.spawn("s", stopper)
    rt.send_at(0.0, "s", Tick(rt.next_id(), "go"))
    run(rt)
    assert stopper.seen == 1
    assert rt.behaviour("s") is None
    assert rt.dropped == 1  # the message it sent itself found nobody
    assert rt.pending_timers() == 0


def test_spawning_twice_is_refused_and_bad_models_too() -> None:
    rt = SimRuntime()
    rt.spawn("x", Recorder())
    with pytest.raises(ValueError, match="taken"):
        rt.spawn("x", Recorder())
    with pytest.raises(ValueError, match="loss"):
        NetworkModel(loss=1.0)
    with pytest.raises(ValueError, match="latency"):
        NetworkModel(latency=-1)


def test_prefix_sinks_and_host_sends() -> None:
    rt = SimRuntime()
    got: list[tuple[str, int]] = []
    rt.sink("client/", lambda to, m: got.append((to, m.id)))
    rt.send("client/a", Tick(41, "x"))
    rt.send_at(2.0, "client/b", Tick(42, "y"))
    run(rt)
    assert got == [("client/a", 41), ("client/b", 42)]
    assert rt.now == 2.0


class LateStopper:
    """Stops, then sets a timer in the same handler: a stopped behaviour's timers never fire."""

    def __init__(self) -> None:
        self.seen = 0

    def handle(self, message: Message, ctx: Any) -> None:
        self.seen += 1
        ctx.stop()
        ctx.set_timer("after-stop", ctx.now + 5, Tick(ctx.next_id(), "after-stop"))


def test_a_timer_set_after_stop_never_fires() -> None:
    rt = SimRuntime()
    stopper = LateStopper()
    rt.spawn("s", stopper)
    rt.send_at(0.0, "s", Tick(rt.next_id(), "go"))
    assert rt.run() is False
    assert stopper.seen == 1 and rt.dropped == 0 and rt.delivered == 1


def chatter(rt: SimRuntime) -> Recorder:
    """Two paced talkers and a batch talker into one recorder, on a jittery network."""
    sink = Recorder()
    rt.spawn("sink", sink)
    rt.spawn("p1", PacedTalker("sink", 5, "p1", 1.5), remote=True)
    rt.spawn("p2", PacedTalker("sink", 5, "p2", 2.0))
    rt.spawn("t", Talker(["sink"], 4, "t"), remote=True)
    rt.send_at(0.0, "p1", Tick(rt.next_id(), "go"))
    rt.send_at(0.25, "p2", Tick(rt.next_id(), "go"))
    rt.send_at(1.0, "t", Tick(rt.next_id(), "go"))
    return sink


def test_the_runtime_loop_delivers_as_stepping_the_environment_does() -> None:
    stepped = SimRuntime(seed=3, network=NetworkModel(latency=0.1, jitter=0.3))
    by_steps = chatter(stepped)
    stepped.env.run()
    looped = SimRuntime(seed=3, network=NetworkModel(latency=0.1, jitter=0.3))
    by_loop = chatter(looped)
    assert looped.run() is False
    assert by_loop.got == by_steps.got and len(by_loop.got) == 14
    assert looped.delivered == stepped.delivered and looped.now == stepped.now


def test_the_runtime_loop_stops_at_its_bound_and_when_halted() -> None:
    rt = SimRuntime()
    sink = chatter(rt)
    assert rt.run(until=4.0) is False  # stops before the first event beyond 4 s; the rest waits
    assert rt.now <= 4.0 and sink.got and all(at <= 4.0 for at, _, _ in sink.got)
    seen = len(sink.got)
    rt.call_at(6.0, rt.halt)
    assert rt.run() is True  # halted after the event at 6 s
    assert rt.now == 6.0 and seen < len(sink.got)
    assert rt.run() is False  # and it goes on to the end when run again
    assert len(sink.got) == 14


class Faulty:
    """A behaviour whose handler raises KeyError: the runtime must not take it for a missing handler."""

    def handle(self, message: Message, ctx: Any) -> None:
        raise KeyError("inside the handler")


def test_an_error_in_a_handler_or_a_failed_event_propagates() -> None:
    rt = SimRuntime()
    rt.spawn("f", Faulty())
    rt.send_at(1.0, "f", Tick(rt.next_id(), "go"))
    with pytest.raises(KeyError, match="inside the handler"):
        rt.run()
    rt = SimRuntime()
    failed = rt.env.event()
    failed.fail(ValueError("a failed SimPy event"))
    with pytest.raises(ValueError, match="a failed SimPy event"):
        rt.run()


def test_messages_without_a_handler_are_ignored_and_unknown_addresses_dropped() -> None:
    rt = SimRuntime()
    rt.spawn("router", _TickOnly())
    rt.send_at(0.0, "router", Message(rt.next_id()))  # no handler for this kind: ignored, not dropped
    rt.send_at(0.0, "nobody", Tick(rt.next_id(), "x"))  # nobody there: dropped
    rt.run()
    assert rt.delivered == 2 and rt.dropped == 1



class _TickOnly(MessageRouter):
    def __init__(self) -> None:
        self._handlers = {Tick: lambda message, ctx: None}


class Echo(Recorder):
    """A recorder that answers 'h' with a 'c' to itself."""

    def handle(self, message: Message, ctx: Any) -> None:
        super().handle(message, ctx)
        if isinstance(message, Tick) and message.name == "h":
            ctx.send(ctx.address, Tick(ctx.next_id(), "c"))


def host_and_cascade(rt: SimRuntime) -> Echo:
    """At t=1 a host callback sends 'h' straight in, and a delivery batch brings 'b', both due at once."""
    echo = Echo()
    rt.spawn("echo", echo)
    rt.call_at(1.0, lambda: rt.send("echo", Tick(rt.next_id(), "h")))
    rt.send_at(1.0, "echo", Tick(rt.next_id(), "b"))
    return echo


def test_a_host_send_from_a_callback_keeps_the_order_of_stepping() -> None:
    stepped = SimRuntime()
    by_steps = host_and_cascade(stepped)
    stepped.env.run()
    looped = SimRuntime()
    by_loop = host_and_cascade(looped)
    looped.run()
    assert [name for _, name, _ in by_loop.got] == [name for _, name, _ in by_steps.got]
    assert [name for _, name, _ in by_loop.got] == ["h", "b", "c"]


def test_timers_belong_to_hosted_behaviours() -> None:
    rt = SimRuntime()
    rt.sink("client/", lambda to, m: None)
    with pytest.raises(KeyError, match="no behaviour is hosted at 'client/a'"):
        rt.set_timer("client/a", "k", 1.0, Tick(rt.next_id(), "x"))
