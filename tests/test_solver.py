"""The solver driven message by message: the capacity ledger, eligibility, in-flight counting, renders coming and
going. The test plays the jobs (``JobOpened``, ``BlockReady``, ``DispatchDeclined``, ``RunEnded``) and the renders.
"""

from __future__ import annotations

from recording import RecordingContext

from farmhand.core.messages import (
    AvoidRender,
    BlockNeeds,
    BlockReady,
    ClaimRefused,
    Dispatch,
    DispatchDeclined,
    JobClosed,
    JobOpened,
    JobUpdated,
    Message,
    RenderInfo,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    RunClaimed,
    RunEnded,
    RunningRun,
)
from farmhand.core.policies import make_policy
from farmhand.core.solver import Solver, host_allowed


class Recorder(RecordingContext):
    """A context recording what the solver sends."""

    def __init__(self) -> None:
        super().__init__("solver", strict=True)

class Harness:
    """A solver, its context, and shorthands to play jobs and renders."""

    def __init__(self, policy: str = "fifo", reserve_after_s: float | None = 60.0) -> None:
        self.solver = Solver(make_policy(policy), reserve_after_s=reserve_after_s)
        self.ctx = Recorder()

    def do(self, message: Message) -> list[Dispatch]:
        """Handle ``message``; the dispatches it caused, as (job, block, render) triples are in ``.last``."""
        before = len(self.ctx.sent)
        self.solver.handle(message, self.ctx)
        sent = self.ctx.sent[before:]
        for to, m in sent:
            assert isinstance(m, Dispatch) and to == f"job/{m.job_id}", (to, m)
        self.check_ledger()
        return [m for _, m in sent]

    def online(self, name: str, tags: tuple[str, ...] = (), capacity: int = 1, max_tasks: int = 1,
               memory_mb: int = 0, running: tuple[RunningRun, ...] = ()) -> list[Dispatch]:
        info = RenderInfo(name, frozenset(tags), capacity, max_tasks, memory_mb)
        return self.do(RenderOnline(self.ctx.next_id(), info, running))

    def open(self, job_id: int, *blocks: BlockNeeds, user: str = "ann", priority: int = 99,
             submit_time: float = 0.0, max_per_render: int | None = None, paused: bool = False) -> list[Dispatch]:
        blocks = blocks or (needs(),)
        return self.do(JobOpened(self.ctx.next_id(), job_id, user, priority, submit_time, blocks, paused,
                                 max_per_render))

    def ready(self, job_id: int, count: int, block: int = 0, handled: int = 0) -> list[Dispatch]:
        return self.do(BlockReady(self.ctx.next_id(), job_id, block, count, handled))

    def ended(self, run_id: int, job_id: int) -> list[Dispatch]:
        return self.do(RunEnded(self.ctx.next_id(), run_id, job_id))

    def check_ledger(self) -> None:
        """Free capacity, memory and task slots match the runs held, and stay within 0..size."""
        s = self.solver
        for render in s.renders.values():
            held = [s.runs[r] for r in s.runs_on(render)]
            assert all(run[0] is render for run in held)
            assert render.free_cap == render.capacity - sum(run[2] for run in held)
            assert render.free_mem == render.memory - sum(run[3] for run in held)
            assert render.free_tasks == render.max_tasks - len(held)
            assert 0 <= render.free_cap <= render.capacity
            assert 0 <= render.free_tasks <= render.max_tasks
            assert 0 <= render.free_mem <= render.memory
        assert set(s.runs) == {r for render in s.renders.values() for r in s.runs_on(render)}


def needs(block: int = 0, capacity: int = 1, memory_mb: int = 0, tags: tuple[str, ...] = (),
          hosts_mask: str | None = None, hosts_exclude: str | None = None,
          max_per_render: int | None = None) -> BlockNeeds:
    return BlockNeeds(block, capacity, memory_mb, frozenset(tags), hosts_mask, hosts_exclude, max_per_render)


def where(dispatches: list[Dispatch]) -> list[tuple[int, int, str]]:
    return [(d.job_id, d.block, d.render) for d in dispatches]


# -------------------------------------------------------------------------------------------- ledger


def test_a_render_is_filled_up_to_its_max_tasks() -> None:
    h = Harness()
    h.online("r1", capacity=4, max_tasks=2)
    h.open(1)
    got = h.ready(1, 5)
    assert where(got) == [(1, 0, "r1"), (1, 0, "r1")]
    r1 = h.solver.renders["r1"]
    assert (r1.free_cap, r1.free_tasks) == (2, 0)
    assert set(h.solver.runs) == {d.id for d in got}


def test_capacity_and_memory_decide_what_fits() -> None:
    h = Harness()
    h.online("r1", capacity=3, max_tasks=5, memory_mb=1000)
    h.open(1, needs(0, capacity=2, memory_mb=600), needs(1, capacity=1, memory_mb=300), needs(2, capacity=1,
           memory_mb=500))
    assert where(h.ready(1, 3, block=0)) == [(1, 0, "r1")]  # the second would need 4 capacity, 1200 MB
    assert h.ready(1, 3, block=2) == []  # 600 + 500 > 1000
    assert where(h.ready(1, 3, block=1)) == [(1, 1, "r1")]  # 2 + 1 = 3, 600 + 300 = 900
    r1 = h.solver.renders["r1"]
    assert (r1.free_cap, r1.free_mem, r1.free_tasks) == (0, 100, 3)
    assert r1.idle is False  # full: nothing to offer until something ends


def test_dispatches_in_flight_count_against_the_ready_count() -> None:
    h = Harness()
    for name in ("r1", "r2", "r3"):
        h.online(name)
    h.open(1)
    first = h.ready(1, 2)
    assert where(first) == [(1, 0, "r1"), (1, 0, "r2")]
    entry = h.solver.jobs[1].blocks[0]
    assert entry.effective_ready == 0 and entry.item is None
    # the job handled one dispatch and found one more ready task: 1 ready, 1 still in flight -> nothing new
    assert h.ready(1, 1, handled=1) == []
    # two ready as of one handled: one new task for the idle r3
    assert where(h.ready(1, 2, handled=1)) == [(1, 0, "r3")]


def test_declined_dispatch_releases_its_reservation_and_refills() -> None:
    h = Harness()
    h.online("r1")
    h.open(1)
    h.open(2, submit_time=1.0)
    (d,) = h.ready(1, 1)
    h.ready(2, 1)
    # job 1 found nothing after all: its fresh summary first, then the decline
    h.ready(1, 0, handled=1)
    got = h.do(DispatchDeclined(h.ctx.next_id(), d.id, 1, 0, "r1"))
    assert where(got) == [(2, 0, "r1")]
    assert d.id not in h.solver.runs
    # a second decline (or a run end) of the same run changes nothing
    assert h.do(DispatchDeclined(h.ctx.next_id(), d.id, 1, 0, "r1")) == []
    assert h.ended(d.id, 1) == []


def test_run_ended_frees_the_render_and_refills_it() -> None:
    h = Harness()
    h.online("r1", capacity=2, max_tasks=2)
    h.open(1, needs(capacity=2))
    (d,) = h.ready(1, 3)
    got = h.ended(d.id, 1)
    assert where(got) == [(1, 0, "r1")]
    assert h.ended(d.id, 1) == []  # twice: nothing
    assert h.ended(99999, 1) == []  # unknown run: nothing
    assert h.solver.renders["r1"].free_cap == 0


def test_tags_a_block_runs_only_where_all_are_offered() -> None:
    h = Harness()
    h.online("plain", capacity=4, max_tasks=4)
    h.online("gpu", tags=("gpu",), capacity=4, max_tasks=4)
    h.online("both", tags=("gpu", "houdini", "extra"), capacity=4, max_tasks=4)
    h.open(1, needs(0, tags=("gpu", "houdini")), needs(1, tags=("gpu",)))
    assert {d.render for d in h.ready(1, 10, block=0)} == {"both"}
    assert {d.render for d in h.ready(1, 10, block=1)} == {"gpu"}  # "both" is full with block 0
    assert h.solver.renders["plain"].free_tasks == 4


def test_hosts_mask_and_exclude_are_full_matches() -> None:
    assert host_allowed("r1", "r1", None) and not host_allowed("r10", "r1", None)
    assert not host_allowed("r1", None, "r1") and host_allowed("r10", None, "r1")
    assert not host_allowed("xr1", "r.*", None)
    h = Harness()
    for name in ("r1", "r10", "r2", "s1"):
        h.online(name, capacity=2, max_tasks=2)
    h.open(1, needs(0, hosts_mask="r[0-9]+", hosts_exclude="r1"), needs(1, hosts_mask="r1"))
    assert sorted({d.render for d in h.ready(1, 10, block=0)}) == ["r10", "r2"]
    assert sorted({d.render for d in h.ready(1, 10, block=1)}) == ["r1"]


def test_max_running_tasks_per_render_block_level() -> None:
    h = Harness()
    h.online("r1", capacity=8, max_tasks=8)
    h.online("r2", capacity=8, max_tasks=8)
    h.open(1, needs(0, max_per_render=2), needs(1))
    got = h.ready(1, 10)
    assert where(got) == [(1, 0, "r1")] * 2 + [(1, 0, "r2")] * 2
    assert len(h.ready(1, 3, block=1)) == 3  # the other block is not capped
    # a run of block 0 ends on r1: r1 may take one more of block 0
    assert where(h.ended(got[0].id, 1)) == [(1, 0, "r1")]


def test_max_running_tasks_per_render_job_level() -> None:
    h = Harness()
    h.online("r1", capacity=8, max_tasks=8)
    h.online("r2", capacity=8, max_tasks=8)
    h.open(1, needs(0), needs(1), max_per_render=3)
    h.open(2, submit_time=1.0)
    a = h.ready(1, 2, block=0)
    b = h.ready(1, 10, block=1)
    per_render = {r: sum(1 for d in a + b if d.render == r) for r in ("r1", "r2")}
    assert per_render == {"r1": 3, "r2": 3}
    # the renders still have room: the next job gets it
    assert len(h.ready(2, 20)) == 10


def test_avoided_render_gets_no_more_tasks_of_that_block() -> None:
    h = Harness()
    h.online("r1")
    h.online("r2")
    h.open(1, needs(0), needs(1))
    h.do(AvoidRender(h.ctx.next_id(), 1, 0, "r1"))
    assert where(h.ready(1, 5)) == [(1, 0, "r2")]
    assert where(h.ready(1, 5, block=1)) == [(1, 1, "r1")]


def test_render_offline_releases_its_runs_and_later_reports_are_harmless() -> None:
    h = Harness()
    h.online("r1", capacity=2, max_tasks=2)
    h.online("r2")
    h.open(1, max_per_render=2)
    got = h.ready(1, 3)
    assert sorted(d.render for d in got) == ["r1", "r1", "r2"]
    h.do(RenderOffline(h.ctx.next_id(), "r1", "lost"))
    assert "r1" not in h.solver.renders
    assert set(h.solver.runs) == {d.id for d in got if d.render == "r2"}
    assert h.solver.users["ann"].running_tasks == 1
    for d in got:
        h.ended(d.id, 1)
    assert h.solver.runs == {} and h.solver.users["ann"].running_tasks == 0
    assert h.do(RenderOffline(h.ctx.next_id(), "r1", "again")) == []


def test_reconnect_keeps_every_held_run_until_it_ends() -> None:
    h = Harness()
    h.online("r1", capacity=4, max_tasks=4)
    h.open(1, max_per_render=3)
    kept, dropped, in_flight = h.ready(1, 3)
    running = (RunningRun(kept.id, 1, 0, 0, 1), RunningRun(555, 1, 0, 9, 1))
    assert h.online("r1", capacity=4, max_tasks=4, running=running) == []
    r1 = h.solver.renders["r1"]
    # the worker's unknown run 555 takes capacity; the runs it did not report stay held: one may be a
    # dispatch not yet at the render, the others come back as RunEnded once their jobs hear they are lost
    assert set(h.solver.runs_on(r1)) == {kept.id, dropped.id, in_flight.id, 555}
    assert r1.per_job == {1: 3}  # the unclaimed run counts for no job yet
    assert h.solver.runs[kept.id][1] is h.solver.jobs[1].blocks[0] and h.solver.runs[555][1] is None
    assert r1.free_tasks == 0
    assert h.ended(dropped.id, 1) == [] and dropped.id not in h.solver.runs_on(r1)
    assert where(h.ready(1, 1, handled=3)) == [(1, 0, "r1")]


def test_reconnect_with_a_run_of_an_unknown_job_holds_it_until_it_ends() -> None:
    h = Harness()
    h.open(1)
    h.ctx.sent.clear()
    h.solver.handle(RenderOnline(h.ctx.next_id(), RenderInfo("r1"), (RunningRun(9, 42, 0, 0, 1),)), h.ctx)
    assert h.ctx.sent == []  # the registry answers for runs of jobs that are gone (KillRun + RunEnded)
    assert h.solver.runs[9][1] is None and h.solver.renders["r1"].free_cap == 0
    h.solver.handle(RunEnded(h.ctx.next_id(), 9, 42), h.ctx)
    assert h.solver.runs == {} and h.solver.renders["r1"].free_cap == 1


def test_a_smaller_render_back_without_its_runs_frees_them_at_once_and_never_goes_negative() -> None:
    h = Harness()
    h.open(1)
    h.ready(1, 5)
    first = h.online("r1", capacity=2, max_tasks=2)
    assert len(first) == 2
    # the worker restarted with capacity 1 and none of its runs: the render reports both lost
    info = RenderInfo("r1", capacity=1, max_tasks=1)
    again = h.do(RenderOnline(h.ctx.next_id(), info, (), False, tuple(d.id for d in first)))
    r1 = h.solver.renders["r1"]
    assert len(again) == 1 and r1.free_cap == 0 and r1.free_tasks == 0  # checked >= 0 after every message
    for d in first:  # the jobs' RunEnded, later, release nothing twice
        assert h.ended(d.id, 1) == []
    assert r1.free_cap == 0 and set(h.solver.runs_on(r1)) == {again[0].id}


def test_render_online_paused_gets_nothing() -> None:
    h = Harness()
    h.open(1)
    h.ready(1, 3)
    assert h.do(RenderOnline(h.ctx.next_id(), RenderInfo("r1"), (), True)) == []
    assert h.solver.renders["r1"].paused
    assert len(h.do(RenderPaused(h.ctx.next_id(), "r1", False))) == 1


def test_run_claimed_attaches_an_unclaimed_run_to_its_job() -> None:
    h = Harness()
    h.open(1, needs(0, max_per_render=1), max_per_render=5)
    h.ready(1, 2)
    got = h.online("r1", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 3, 2, capacity=1),))
    r1 = h.solver.renders["r1"]
    # the unclaimed run takes capacity but counts for no job yet: block 0 may still run once here
    assert where(got) == [(1, 0, "r1")]
    assert h.solver.runs[777][1] is None and r1.free_tasks == 0
    h.ended(got[0].id, 1)  # gives room back but the per-render cap of block 0 is free again too
    h.do(RunClaimed(h.ctx.next_id(), 777, 1, 0, "r1"))
    assert h.solver.runs[777][1] is h.solver.jobs[1].blocks[0]
    assert r1.per_block.get((1, 0)) == 1 + sum(1 for r in h.solver.runs_on(r1) if r != 777)
    assert h.solver.users["ann"].running_tasks == len(h.solver.runs_on(r1))
    # a claim for a run already counted, or for a render not online, changes nothing
    before = dict(r1.per_block)
    h.do(RunClaimed(h.ctx.next_id(), 777, 1, 0, "r1"))
    h.do(RunClaimed(h.ctx.next_id(), 888, 1, 0, "gone"))
    assert r1.per_block == before and 888 not in h.solver.runs


def test_a_run_reported_by_an_impostor_first_ends_up_counted_on_its_own_render_only() -> None:
    for claim_first in (False, True):
        h = Harness()
        h.open(1, needs(0))
        h.online("real", capacity=2, max_tasks=2)
        h.online("imp", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 0, 1),))
        assert h.solver.runs[777][0].name == "imp"
        # the real render reports it too: until the job answers, the real render gets nothing more (it may be
        # running it), the impostor keeps its reservation
        h.online("real", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 0, 1),))
        real, imp = h.solver.renders["real"], h.solver.renders["imp"]
        assert real.contested == 1
        h.open(2, needs(0))
        assert where(h.ready(2, 3)) == [(2, 0, "imp")]
        refused = ClaimRefused(h.ctx.next_id(), 777, 1, "imp")
        claimed = RunClaimed(h.ctx.next_id(), 777, 1, 0, "real")
        sent = [where(h.do(m)) for m in ((claimed, refused) if claim_first else (refused, claimed))]
        # settled: the real render holds the run and is filled with one more; the impostor is refilled too
        assert 777 in h.solver.runs_on(real) and real.contested == 0 and not h.solver.contested
        assert sorted(d for batch in sent for d in batch) == [(2, 0, "imp"), (2, 0, "real")]
        assert (real.free_tasks, imp.free_tasks) == (0, 0)
        assert h.solver.users["ann"].running_tasks == 4
        # a refusal naming a render that does not hold the run frees nothing
        h.do(ClaimRefused(h.ctx.next_id(), 777, 1, "imp"))
        assert 777 in h.solver.runs_on(real)


def test_only_an_answer_naming_the_contesting_render_settles_its_contest() -> None:
    h = Harness()
    h.open(1, needs(0))
    h.online("imp", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 0, 1),))
    h.online("real", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 0, 1),))
    real = h.solver.renders["real"]
    assert real.contested == 1
    h.open(2, needs(0))
    assert where(h.ready(2, 3)) == [(2, 0, "imp")]
    # the job refuses the impostor's claim: that answers the impostor, not the real render, which may still be
    # running the run: it gets nothing until its own claim is answered
    assert where(h.do(ClaimRefused(h.ctx.next_id(), 777, 1, "imp"))) == [(2, 0, "imp")]
    assert real.contested == 1 and real.free_tasks == 2
    assert where(h.do(RunClaimed(h.ctx.next_id(), 777, 1, 0, "real"))) == [(2, 0, "real")]
    assert real.contested == 0 and not h.solver.contested


def test_a_contest_ends_with_the_run_or_the_render() -> None:
    h = Harness()
    h.open(1, needs(0))
    h.online("imp", running=(RunningRun(777, 1, 0, 0, 1),))
    h.online("real", capacity=2, max_tasks=2, running=(RunningRun(777, 1, 0, 0, 1),))
    assert h.solver.renders["real"].contested == 1
    h.ended(777, 1)  # the run ended before anyone answered: the contest is over
    assert h.solver.renders["real"].contested == 0 and not h.solver.contested
    h.online("real", capacity=2, max_tasks=2, running=(RunningRun(888, 1, 0, 1, 1),))
    h.online("imp2", running=(RunningRun(888, 1, 0, 1, 1),))
    assert h.solver.renders["imp2"].contested == 1
    h.do(RenderOffline(h.ctx.next_id(), "imp2", "gone"))
    assert not h.solver.contested

def test_job_closed_releases_its_runs_and_gives_the_renders_to_others() -> None:
    h = Harness()
    h.online("r1")
    h.online("r2")
    h.open(1)
    h.open(2, submit_time=1.0)
    h.ready(1, 5)
    h.ready(2, 5)
    got = h.do(JobClosed(h.ctx.next_id(), 1))
    assert where(got) == [(2, 0, "r1"), (2, 0, "r2")]
    assert 1 not in h.solver.jobs and h.solver.users["ann"].running_tasks == 2
    assert h.ready(1, 5) == [] and h.do(JobClosed(h.ctx.next_id(), 1)) == []


def test_paused_render_gets_nothing_until_resumed() -> None:
    h = Harness()
    h.online("r1")
    h.do(RenderPaused(h.ctx.next_id(), "r1", True))
    h.open(1)
    assert h.ready(1, 2) == []
    assert where(h.do(RenderPaused(h.ctx.next_id(), "r1", False))) == [(1, 0, "r1")]
    assert h.do(RenderPaused(h.ctx.next_id(), "nobody", False)) == []


def test_paused_job_is_skipped_and_resumed_job_is_offered_to_idle_renders() -> None:
    h = Harness()
    h.online("r1")
    h.open(1, paused=True)
    assert h.ready(1, 2) == []
    assert h.solver.renders["r1"].idle
    assert where(h.do(JobUpdated(h.ctx.next_id(), 1, 99, False))) == [(1, 0, "r1")]
    h.do(JobUpdated(h.ctx.next_id(), 1, 99, True))
    assert h.solver.jobs[1].blocks[0].item is None


def test_new_work_is_offered_to_idle_renders_that_can_take_it() -> None:
    h = Harness()
    h.online("cpu")
    h.online("gpu", tags=("gpu",))
    assert h.solver.renders["cpu"].idle and h.solver.renders["gpu"].idle
    h.open(1, needs(0, tags=("gpu",)), needs(1))
    assert where(h.ready(1, 5)) == [(1, 0, "gpu")]
    assert h.solver.renders["cpu"].idle
    assert where(h.ready(1, 5, block=1)) == [(1, 1, "cpu")]


def test_messages_about_unknown_jobs_and_renders_are_ignored() -> None:
    h = Harness()
    assert h.ready(5, 3) == []
    assert h.do(JobUpdated(h.ctx.next_id(), 5, 1, False)) == []
    assert h.do(AvoidRender(h.ctx.next_id(), 5, 0, "r1")) == []
    assert h.do(DispatchDeclined(h.ctx.next_id(), 1, 5, 0, "r1")) == []
    assert h.do(RunClaimed(h.ctx.next_id(), 1, 5, 0, "r1")) == []
    h.open(1)
    h.open(1, priority=200)  # a second opening is ignored
    assert h.solver.jobs[1].priority == 99


def test_a_render_kept_for_a_block_that_started_elsewhere_is_filled_at_once() -> None:
    # regression: a render the starvation guard kept for a big block stayed part-empty after that block had
    # been dispatched elsewhere, until one of the render's own runs ended
    h = Harness("priority", reserve_after_s=50.0)
    h.online("r1", capacity=4, max_tasks=4)
    h.open(1, needs(0, capacity=1), priority=10)
    small = h.ready(1, 100)
    assert len(small) == 4
    h.open(2, needs(0, capacity=4), priority=200, submit_time=1.0)
    h.ready(2, 1)
    h.ctx.now = 100.0
    assert where(h.ended(small[0].id, 1)) == [(1, 0, "r1")]  # the big block starts waiting now
    h.ctx.now = 200.0
    assert h.ended(small[1].id, 1) == []  # it has waited long enough: r1 is kept for it
    r1 = h.solver.renders["r1"]
    assert r1.held_for is h.solver.jobs[2].blocks[0] and r1.free_cap == 1
    # a new empty render takes the big task: r1 is no longer kept and gets a small one at once
    got = h.online("r2", capacity=4, max_tasks=4)
    assert where(got) == [(2, 0, "r2"), (1, 0, "r1")]
    assert r1.held_for is None and r1.free_cap == 0


def test_the_guard_keeps_no_more_renders_for_a_block_than_it_has_ready_tasks() -> None:
    h = Harness("priority", reserve_after_s=0.0)
    h.open(2, needs(0), priority=10)
    h.ready(2, 10)
    small = h.online("r1", capacity=2, max_tasks=2) + h.online("r2", capacity=2, max_tasks=2)
    h.open(1, needs(0, capacity=2), priority=200)
    h.ready(1, 2)
    by_render = {d.render: d for d in small}
    for name in ("r1", "r2"):  # a small run ends on each: the big block ranks first and does not fit: kept
        assert h.ended(by_render[name].id, 2) == []
    r1, r2 = h.solver.renders["r1"], h.solver.renders["r2"]
    assert r1.held_for is r2.held_for is not None and r1.held_for.holds == 2
    # one of its tasks is no longer ready (skipped, say): one render is let go and filled with small work
    got = h.ready(1, 1)
    assert [d.job_id for d in got] == [2]
    assert sum(r.held_for is not None for r in (r1, r2)) == 1
