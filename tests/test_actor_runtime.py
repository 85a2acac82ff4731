"""The pykka runtime's render shards: many behaviours share a few shard actors, and each still gets its own
context, timers, stop and per-link message order."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from farmhand.actors import actors
from farmhand.actors.runtime import PykkaRuntime, ShardActor
from farmhand.core.job import JobBehaviour
from farmhand.core.messages import Message, Tick
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import Context, render_address
from farmhand.core.spec import parse_job

Seen = list[tuple[str, str, int]]


class Probe:
    """A test behaviour: records every Tick it handles as (its address, name, ref), and obeys a few names."""

    def __init__(self, seen: Seen, lock: threading.Lock) -> None:
        self.seen = seen
        self.lock = lock

    def handle(self, message: Message, ctx: Context) -> None:
        assert isinstance(message, Tick)
        with self.lock:
            self.seen.append((ctx.address, message.name, message.ref))
        name, _, arg = message.name.partition(":")
        if name == "stop":  # a message to itself first: queued before the stop, so still handled
            ctx.send(ctx.address, Tick(ctx.next_id(), "queued-before-stop", 0))
            ctx.stop()
        elif name == "timer":  # a timer keyed "t" due in ref milliseconds, firing "fired" with the same ref
            ctx.set_timer("t", ctx.now + message.ref / 1000, Tick(ctx.next_id(), "fired", message.ref))
        elif name == "cancel":
            ctx.cancel_timer("t")
        elif name == "forward":
            ctx.send(arg, Tick(ctx.next_id(), f"from:{ctx.address}", message.ref))
        elif name == "spawn":
            ctx.spawn(arg, Probe(self.seen, self.lock))
            ctx.send(arg, Tick(ctx.next_id(), "hello", 0))
        elif name == "fail":
            raise RuntimeError("a probe was told to fail")


class ProbeShard(ShardActor):
    """The shard actor class of probes in these tests."""


class Farm:
    """A runtime hosting probes on shards, and what they saw."""

    def __init__(self, shards: int) -> None:
        self.rt = PykkaRuntime(shards=shards)
        self.seen: Seen = []
        self.lock = threading.Lock()

    def probe(self, address: str) -> None:
        self.rt.spawn(address, Probe(self.seen, self.lock))

    def tell(self, to: str, name: str, ref: int = 0) -> None:
        self.rt.send(to, Tick(self.rt.next_id(), name, ref))

    def of(self, address: str) -> list[tuple[str, int]]:
        with self.lock:
            return [(name, ref) for a, name, ref in self.seen if a == address]

    def wait(self, done: Callable[[], bool], timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.005)

    def count(self) -> int:
        with self.lock:
            return len(self.seen)


@pytest.fixture
def farm(monkeypatch: pytest.MonkeyPatch) -> Iterator[Farm]:
    monkeypatch.setitem(actors.ACTOR_CLASSES, Probe, ProbeShard)
    f = Farm(shards=3)
    try:
        yield f
    finally:
        f.rt.stop()


def _shard_threads() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("ProbeShard-"))


def test_many_behaviours_share_a_few_shards_each_with_its_own_context(farm: Farm) -> None:
    before = threading.active_count()
    names = [f"p/{i}" for i in range(300)]
    for name in names:
        farm.probe(name)
    sizes = farm.rt.shard_sizes()
    assert sorted(sizes) == ["ProbeShard/0", "ProbeShard/1", "ProbeShard/2"]
    assert sum(sizes.values()) == 300 and min(sizes.values()) > 50  # spread by a hash of the address
    assert threading.active_count() - before == 3 and _shard_threads() == 3
    for i, name in enumerate(names):
        farm.tell(name, "ping", i)
    farm.wait(lambda: farm.count() == 300)
    for i, name in enumerate(names):
        assert farm.of(name) == [("ping", i)]  # ctx.address is the behaviour's own
    assert farm.rt.messages == 300
    assert sorted(farm.rt.addresses()) == sorted(names)
    assert isinstance(farm.rt.behaviour("p/7"), Probe) and farm.rt.behaviour("p/7") is not farm.rt.behaviour("p/8")
    with pytest.raises(ValueError, match="taken"):
        farm.probe("p/7")


def test_timers_belong_to_each_behaviour_on_a_shard(farm: Farm) -> None:
    for name in ("a", "b", "c"):
        farm.probe(name)
    farm.tell("a", "timer", 30)
    farm.tell("b", "timer", 60)  # the same key on another behaviour of maybe the same shard: its own timer
    farm.tell("c", "timer", 40)
    farm.tell("c", "cancel")
    farm.wait(lambda: ("fired", 60) in farm.of("b"))
    # the timer thread posts in due order, and a shard handles what is posted to it in order: a mark posted now
    # comes after anything due before b's timer (a's at 30 ms, c's at 40 ms had it not been cancelled)
    farm.tell("a", "mark")
    farm.tell("c", "mark")
    farm.wait(lambda: ("mark", 0) in farm.of("a") and ("mark", 0) in farm.of("c"))
    assert farm.of("a") == [("timer", 30), ("fired", 30), ("mark", 0)]
    assert farm.of("b") == [("timer", 60), ("fired", 60)]
    assert farm.of("c") == [("timer", 40), ("cancel", 0), ("mark", 0)]


def test_stop_of_one_behaviour_leaves_the_others_on_its_shard(farm: Farm) -> None:
    farm.rt.stop()
    farm.rt = PykkaRuntime(shards=1)  # everyone on one shard
    for name in ("x", "y", "z"):
        farm.probe(name)
    farm.tell("x", "timer", 50)
    farm.tell("x", "stop")
    farm.wait(lambda: len(farm.of("x")) == 3)
    assert farm.rt.behaviour("x") is None and "x" not in farm.rt.addresses()
    farm.tell("x", "too-late")  # no longer routed
    farm.tell("y", "still-here")
    farm.tell("z", "still-here")
    farm.wait(lambda: farm.of("y") and farm.of("z"))
    farm.tell("y", "timer", 100)  # due after x's: once it has fired, x's timer has come due, with nobody there
    farm.wait(lambda: ("fired", 100) in farm.of("y"))
    assert farm.of("x") == [("timer", 50), ("stop", 0), ("queued-before-stop", 0)]
    assert farm.of("y") == [("still-here", 0), ("timer", 100), ("fired", 100)]
    assert farm.of("z") == [("still-here", 0)]
    assert farm.rt.shard_sizes() == {"ProbeShard/0": 2}
    farm.probe("x")  # the address is free again: a new behaviour, which gets only what is sent from now on
    farm.tell("x", "new")
    farm.wait(lambda: ("new", 0) in farm.of("x"))
    assert farm.of("x")[3:] == [("new", 0)]


def test_per_link_fifo_from_threads_and_behaviours(farm: Farm) -> None:
    receivers = [f"r/{i}" for i in range(12)]
    for name in [*receivers, "relay/0", "relay/1"]:
        farm.probe(name)
    per_link = 300

    def sender(tag: int) -> None:
        for seq in range(per_link):
            for to in receivers:
                farm.rt.send(to, Tick(farm.rt.next_id(), f"t{tag}", seq))

    threads = [threading.Thread(target=sender, args=(tag,)) for tag in range(3)]
    for t in threads:
        t.start()
    for seq in range(per_link):  # behaviour-to-behaviour links: relay/N forwards to r/0 and r/5
        farm.tell("relay/0", "forward:r/0", seq)
        farm.tell("relay/1", "forward:r/5", seq)
    for t in threads:
        t.join(30)
    total = len(receivers) * 3 * per_link + 4 * per_link
    farm.wait(lambda: farm.count() == total, timeout=30)
    for to in receivers:
        got = farm.of(to)
        for link in ("t0", "t1", "t2", "from:relay/0", "from:relay/1"):
            seqs = [ref for name, ref in got if name == link]
            if link.startswith("from:") and (to, link) not in (("r/0", "from:relay/0"), ("r/5", "from:relay/1")):
                assert seqs == []
            else:
                assert seqs == list(range(per_link)), f"{link} -> {to} out of order"


def test_spawn_from_a_behaviour_on_a_shard_and_a_failing_message(farm: Farm) -> None:
    farm.probe("parent")
    farm.tell("parent", "spawn:child")
    farm.wait(lambda: farm.of("child") == [("hello", 0)])
    assert isinstance(farm.rt.behaviour("child"), Probe)
    farm.tell("child", "fail")
    farm.tell("child", "after-fail")  # the failure is logged; the shard and the behaviour go on
    farm.wait(lambda: ("after-fail", 0) in farm.of("child"))
    assert sum(farm.rt.shard_sizes().values()) == 2


def test_stop_ends_every_shard_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(actors.ACTOR_CLASSES, Probe, ProbeShard)
    f = Farm(shards=4)
    for i in range(40):
        f.probe(f"s/{i}")
        f.tell(f"s/{i}", "ping")
    f.wait(lambda: f.count() == 40)
    assert _shard_threads() == 4
    f.rt.stop()
    assert _shard_threads() == 0
    f.tell("s/1", "after-stop")  # routed nowhere, no error
    assert f.count() == 40


def test_renders_share_shards_jobs_keep_their_own_actor_and_zero_shards_means_one_actor_each() -> None:
    rt = PykkaRuntime()
    try:
        for i in range(20):
            rt.spawn(render_address(f"r{i}"), RenderBehaviour(f"r{i}", watch=False))
        spec = parse_job({"name": "j", "blocks": [{"name": "b", "command": "x", "tasks": [{"name": "t"}]}]})
        rt.spawn("job/1", JobBehaviour(1, spec, "ann", 0.0))
        sizes = rt.shard_sizes()
        assert sum(sizes.values()) == 20 and all(name.startswith("RenderActor/") for name in sizes)
        assert sum(1 for t in threading.enumerate() if t.name.startswith("JobActor-")) >= 1
    finally:
        rt.stop()
    own = PykkaRuntime(shards=0)
    try:
        own.spawn(render_address("solo"), RenderBehaviour("solo", watch=False))
        assert own.shard_sizes() == {} and own.addresses() == [render_address("solo")]
    finally:
        own.stop()


def test_the_servers_recorded_renders_are_hosted_on_render_shards() -> None:
    from farmhand.server import RecordedRender

    rt = PykkaRuntime()
    try:
        rt.spawn(render_address("rec"), RecordedRender(RenderBehaviour("rec", watch=False)))
        assert sum(rt.shard_sizes().values()) == 1
    finally:
        rt.stop()
