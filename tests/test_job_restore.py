"""Persistence hooks of the job behaviour, message by message: task events, restore from a store, the detail query.

A job submitted with ``task_events`` tells the event sink each lasting task change (``TaskChanged``); a job
restored from a store gets its tasks back (``RestoreTasks``) before it starts, running tasks wait for their
worker to reclaim them and are requeued after a timeout; a ``JobQuery`` gets a ``JobDetail`` answer.
"""

from __future__ import annotations

import itertools
from typing import Any

from recording import RecordingContext

from farmhand.core.job import JobBehaviour
from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import (
    ActionRefused,
    Actor,
    Assign,
    AvoidRender,
    BlockReady,
    ClaimRefused,
    Dispatch,
    JobAccepted,
    JobAction,
    JobDetail,
    JobQuery,
    JobStateChanged,
    JobUpdated,
    Message,
    ReclaimRun,
    RestoreTasks,
    RunClaimed,
    RunEnded,
    RunLost,
    RunningRun,
    RunRecord,
    StartJob,
    SubmitJob,
    TaskChanged,
    TaskFinished,
    TaskProgress,
    TaskSnapshot,
    Tick,
)
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address
from farmhand.core.spec import parse_job

JOB_ID = 3
OWNER = "ann"


class Recorder(RecordingContext):
    """A context that records sends and timers on a manual clock."""

    def __init__(self, now: float = 100.0) -> None:
        super().__init__(f"job/{JOB_ID}", now, first_id=50_000)

def block(name: str, last: int = 3, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": "run {frame}", "frames": {"first": 1, "last": last}, **extra}


def make_job(*blocks: dict[str, Any], task_events: bool = True, **job: Any) -> JobBehaviour:
    spec = parse_job({"name": "shot", "blocks": list(blocks), **job})
    return JobBehaviour(JOB_ID, spec, OWNER, 10.0, task_events=task_events)


_run_ids = itertools.count(1000)


def assign(job: JobBehaviour, ctx: Recorder, block_index: int = 0, render: str = "r1") -> Assign:
    job.handle(Dispatch(next(_run_ids), JOB_ID, block_index, render), ctx)
    got = [m for _, m in ctx.sent if isinstance(m, Assign)]
    assert got, ctx.sent
    return got[-1]


def finish(job: JobBehaviour, ctx: Recorder, a: Assign, state: str = "done") -> None:
    job.handle(TaskFinished(ctx.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render, state), ctx)


def changes(ctx: Recorder) -> list[tuple[int, int, str, int, int, int, str]]:
    """The TaskChanged events sent since the last take, as (block, task, state, attempt, failures, run, render)."""
    out = []
    for to, m in ctx.sent:
        if isinstance(m, TaskChanged):
            assert to == EVENTS and m.job_id == JOB_ID
            s = m.snapshot
            out.append((s.block, s.task, s.state, s.attempt, s.failures, s.run_id, s.render))
    ctx.sent.clear()
    return out


def states(job: JobBehaviour, block_index: int = 0) -> list[str]:
    return [t.state_name for t in job.blocks[block_index].tasks]


# -------------------------------------------------------------------------------------------- task events


def test_no_task_events_unless_asked() -> None:
    job = make_job(block("a"), task_events=False)
    ctx = Recorder()
    job.handle(StartJob(1), ctx)
    finish(job, ctx, assign(job, ctx))
    assert not [m for _, m in ctx.sent if isinstance(m, TaskChanged)]


def test_task_events_follow_every_lasting_change() -> None:
    job = make_job(block("a", retries=1))
    ctx = Recorder()
    job.handle(StartJob(1), ctx)
    assert changes(ctx) == []  # becoming ready is not a lasting change
    a = assign(job, ctx)
    assert changes(ctx) == [(0, 0, "running", 1, 0, a.run_id, "r1")]
    finish(job, ctx, a, "error")
    assert changes(ctx) == [(0, 0, "ready", 1, 1, 0, "r1")]  # retried: back in the queue, one failure
    b = assign(job, ctx, render="r2")
    changes(ctx)
    finish(job, ctx, b, "error")
    assert changes(ctx) == [(0, 0, "error", 2, 2, 0, "r2")]
    c = assign(job, ctx)
    changes(ctx)
    finish(job, ctx, c)
    assert changes(ctx) == [(0, 1, "done", 1, 0, 0, "r1")]
    job.handle(JobAction(ctx.next_id(), JOB_ID, "skip", Actor(OWNER), "client", block=0, tasks=(2,)), ctx)
    assert changes(ctx) == [(0, 2, "skipped", 0, 0, 0, "")]
    job.handle(JobAction(ctx.next_id(), JOB_ID, "restart", Actor(OWNER), "client", errors_only=True), ctx)
    assert changes(ctx) == [(0, 0, "ready", 2, 0, 0, "r2")]
    job.handle(JobAction(ctx.next_id(), JOB_ID, "priority", Actor(OWNER), "client", value=7), ctx)
    assert [(t, m.priority) for t, m in ctx.sent if isinstance(m, JobUpdated)] == [(SOLVER, 7), (EVENTS, 7)]


# -------------------------------------------------------------------------------------------- restore


def restore(job: JobBehaviour, ctx: Recorder, *snaps: TaskSnapshot, reclaim_s: float = 30.0) -> None:
    job.handle(RestoreTasks(ctx.next_id(), JOB_ID, snaps, reclaim_s), ctx)


def started_with_restored_run() -> tuple[JobBehaviour, Recorder]:
    """A one-task job restored with its task running as run 77 on r1 (attempt 1), then started."""
    job = make_job(block("a", last=1))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(0, 0, "running", 1, run_id=77, render="r1", start_time=90.0))
    job.handle(StartJob(1), ctx)
    ctx.take()
    return job, ctx


def test_restore_brings_back_finished_tasks_and_releases_dependents_at_start() -> None:
    job = make_job(block("a", last=2), block("b", last=2, depends_on=["a"]), block("c", last=2,
                   depends_on_frames=["b"]))
    ctx = Recorder()
    restore(
        job, ctx,
        TaskSnapshot(0, 0, "done", 1), TaskSnapshot(0, 1, "skipped"), TaskSnapshot(1, 0, "done", 2, 1, render="r9"),
        TaskSnapshot(1, 1, "ready", 1, 1),
    )
    assert ctx.sent == []  # nothing is said before the start
    assert states(job, 0) == ["done", "skipped"] and states(job, 1) == ["done", "waiting"]
    job.handle(StartJob(1), ctx)
    assert states(job, 1) == ["done", "ready"] and states(job, 2) == ["ready", "waiting"]
    assert {m.block: m.ready for m in ctx.take(BlockReady)} == {1: 1, 2: 1}
    b = assign(job, ctx, 1)
    assert b.attempt == 2  # attempts go on from the restored count
    assert job.blocks[1].tasks[1].failures == 1


def test_restored_done_job_says_done_at_start_and_stuck_one_says_error() -> None:
    job = make_job(block("a", last=2))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(0, 0, "done", 1), TaskSnapshot(0, 1, "done", 1))
    job.handle(StartJob(1), ctx)
    assert [(t, m.state, m.tasks_done) for t, m in ctx.sent if isinstance(m, JobStateChanged)] == [
        (REGISTRY, "done", 2), (EVENTS, "done", 2),
    ]
    job = make_job(block("a", last=2), block("b", last=1, depends_on=["a"]))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(0, 0, "done", 1), TaskSnapshot(0, 1, "error", 4, 4))
    job.handle(StartJob(1), ctx)
    assert [m.state for m in ctx.take(JobStateChanged)] == ["error", "error"]
    assert job.error_tasks == 1 and states(job, 1) == ["waiting"]


def test_restored_running_task_is_reclaimed_by_its_worker() -> None:
    job = make_job(block("a", last=2))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(0, 0, "running", 2, 1, run_id=77, render="r1", start_time=90.0))
    assert ("reclaim", 77) in ctx.timers and ctx.timers[("reclaim", 77)][0] == 130.0
    job.handle(StartJob(1), ctx)
    assert {m.block: m.ready for m in ctx.take(BlockReady)} == {0: 1}  # the running one is not offered
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(77, JOB_ID, 0, 0, 2), "r1"), ctx)
    assert [(m.run_id, m.render) for m in ctx.take(RunClaimed)] == [(77, "r1")]
    assert ("reclaim", 77) not in ctx.timers and job.unclaimed == set()
    job.handle(TaskProgress(ctx.next_id(), 77, JOB_ID, 0, 0, 2, 40, ("40%",)), ctx)
    job.handle(TaskFinished(ctx.next_id(), 77, JOB_ID, 0, 0, 2, "r1", "done"), ctx)
    records = [m for _, m in ctx.sent if isinstance(m, RunRecord)]
    assert [(r.task, r.attempt, r.render, r.state, r.starting_time, r.submission_time) for r in records] == [
        ("1", 2, "r1", "done", 90.0, 10.0),
    ]
    assert states(job) == ["done", "ready"]


def test_only_the_render_a_run_was_assigned_to_may_reclaim_it() -> None:
    job, ctx = started_with_restored_run()
    # another name reporting the run (an impostor with the farm token): its copy is stopped, its capacity given back
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(77, JOB_ID, 0, 0, 1), "imp"), ctx)
    sent = list(ctx.sent)
    ctx.take()
    refusals = [(to, m.run_id, m.render, m.reason) for to, m in sent if isinstance(m, ClaimRefused)]
    assert refusals == [(to, 77, "imp", "assigned to r1") for to in ("render/imp", "solver")]
    assert not [m for _, m in sent if isinstance(m, RunClaimed | RunEnded | TaskChanged)]
    assert job.unclaimed == {77} and ("reclaim", 77) in ctx.timers
    # the impostor's report of the run's end, or of losing it, changes nothing either
    job.handle(TaskFinished(ctx.next_id(), 77, JOB_ID, 0, 0, 1, "imp", "error"), ctx)
    job.handle(RunLost(ctx.next_id(), 77, JOB_ID, 0, 0, 1, "imp", "worker left"), ctx)
    assert states(job) == ["running"] and ctx.sent == []
    # the real render still reclaims it, and its result counts
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(77, JOB_ID, 0, 0, 1), "r1"), ctx)
    assert [(m.run_id, m.render) for m in ctx.take(RunClaimed)] == [(77, "r1")]
    job.handle(TaskFinished(ctx.next_id(), 77, JOB_ID, 0, 0, 1, "r1", "done"), ctx)
    assert states(job) == ["done"]


def test_a_restored_run_that_ends_before_its_reclaim_timer_leaves_no_timer_behind() -> None:
    # a task that finished while the server was down: its worker reports the end on reconnection
    job, ctx = started_with_restored_run()
    job.handle(TaskFinished(ctx.next_id(), 77, JOB_ID, 0, 0, 1, "r1", "done"), ctx)
    assert states(job) == ["done"] and job.unclaimed == set() and ("reclaim", 77) not in ctx.timers
    assert [m.run_id for m in ctx.take(RunEnded)] == [77]
    # a wake-up already on its way does nothing: no KeyError, no second RunEnded, no stale KillRun
    job.handle(Tick(ctx.next_id(), "reclaim", 77), ctx)
    assert ctx.sent == []


def test_restored_running_task_not_reclaimed_in_time_is_requeued() -> None:
    job, ctx = started_with_restored_run()
    at, wake = ctx.timers.pop(("reclaim", 77))
    ctx.now = at
    job.handle(wake, ctx)
    sent = ctx.take()
    assert [(m.state, m.attempt) for m in sent if isinstance(m, RunRecord)] == [("lost", 1)]
    assert [m.run_id for m in sent if isinstance(m, RunEnded)] == [77]
    assert [m.ready for m in sent if isinstance(m, BlockReady)] == [1]
    assert states(job) == ["ready"]
    # a worker coming back too late is told to stop
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(77, JOB_ID, 0, 0, 1), "r1"), ctx)
    assert [(to, m.run_id) for to, m in ctx.sent if isinstance(m, ClaimRefused)] == [("render/r1", 77), ("solver", 77)]
    ctx.take()
    assert assign(job, ctx).attempt == 2
    # a stale wake-up does nothing
    ctx.take()
    job.handle(Tick(ctx.next_id(), "reclaim", 77), ctx)
    assert ctx.sent == []


def test_restore_after_start_and_bad_indices_are_ignored() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(5, 0, "done"), TaskSnapshot(0, 9, "done"))
    job.handle(StartJob(1), ctx)
    restore(job, ctx, TaskSnapshot(0, 0, "done"))
    assert states(job) == ["ready"]


def test_renders_a_job_had_come_to_avoid_stay_avoided_after_a_restore() -> None:
    job = make_job(block("a", last=2, avoid_render_after=2), block("b", last=1))
    ctx = Recorder()
    job.handle(RestoreTasks(ctx.next_id(), JOB_ID, (), 30.0, ((0, "r9"), (7, "nowhere"))), ctx)
    job.handle(StartJob(1), ctx)
    sent = ctx.take(to="solver")
    kinds = [type(m).__name__ for m in sent]
    assert kinds.index("JobOpened") < kinds.index("AvoidRender")  # the solver knows the job first
    avoids = [m for m in sent if isinstance(m, AvoidRender)]
    assert [(m.block, m.render) for m in avoids] == [(0, "r9")]  # an unknown block is ignored
    assert job.blocks[0].avoided == {"r9"} and job.blocks[0].render_failures == {"r9": 2}


def test_avoiding_a_render_is_a_lasting_change_the_store_hears_of() -> None:
    job = make_job(block("a", last=1, avoid_render_after=1, retries=2))
    ctx = Recorder()
    job.handle(StartJob(1), ctx)
    a = assign(job, ctx)
    ctx.take()
    job.handle(TaskFinished(ctx.next_id(), a.run_id, JOB_ID, 0, 0, 1, "r1", "error", 1), ctx)
    to_events = ctx.take(AvoidRender, "events")
    assert [(m.block, m.render) for m in to_events] == [(0, "r1")]


def test_a_restored_task_shows_its_last_output_lines_again() -> None:
    job = make_job(block("a", last=2))
    ctx = Recorder()
    restore(job, ctx, TaskSnapshot(0, 0, "error", 4, 4, render="r2", output=("frame 1", "Segmentation fault")))
    job.handle(StartJob(1), ctx)
    ctx.take()
    job.handle(JobQuery(9, JOB_ID, "client", block=0, task=0, lines=5), ctx)
    (detail,) = ctx.take(JobDetail, "client")
    assert detail.output == ("frame 1", "Segmentation fault")


# -------------------------------------------------------------------------------------------- detail query


def test_query_answers_the_detail_with_the_chosen_task_output() -> None:
    job = make_job(block("a", last=2), block("b", last=1, depends_on=["a"]), paused=False)
    ctx = Recorder()
    job.handle(StartJob(1), ctx)
    a = assign(job, ctx)
    job.handle(TaskProgress(ctx.next_id(), a.run_id, JOB_ID, 0, 0, 1, 55, ("line 1", "line 2", "55%")), ctx)
    ctx.take()
    job.handle(JobQuery(9, JOB_ID, "client", block=0, task=0, lines=2), ctx)
    (detail,) = ctx.take(JobDetail, "client")
    assert (detail.reply_to, detail.job_id, detail.name, detail.user, detail.state, detail.priority) == (
        9, JOB_ID, "shot", OWNER, "active", 99,
    )
    assert detail.output == ("line 2", "55%") and (detail.output_block, detail.output_task) == (0, 0)
    assert [(b.name, dict(b.counts)) for b in detail.blocks] == [
        ("a", {"ready": 1, "running": 1}), ("b", {"waiting": 1}),
    ]
    t0 = detail.tasks[0]
    assert (t0.state, t0.percent, t0.render, t0.attempt, t0.run_id) == ("running", 55, "r1", 1, a.run_id)
    job.handle(JobQuery(10, JOB_ID, "client"), ctx)
    (detail,) = ctx.take(JobDetail)
    assert detail.output == () and len(detail.tasks) == 3


# -------------------------------------------------------------------------------------------- registry


def test_registry_restores_a_job_under_its_id_time_and_states() -> None:
    rt = ManualRuntime(start=500.0)
    replies: list[Message] = []
    events: list[Message] = []
    rt.sink("client", lambda _to, m: replies.append(m))
    rt.sink(EVENTS, lambda _to, m: events.append(m))
    rt.sink(SOLVER, lambda _to, m: None)
    rt.spawn(REGISTRY, Registry())
    spec = parse_job({"name": "shot", "blocks": [block("a", last=2)]})
    rt.send(REGISTRY, SubmitJob(1, spec, OWNER, "client", job_id=41, submit_time=123.0, task_events=True,
                                restore=(TaskSnapshot(0, 0, "done", 1),)))
    rt.run()
    assert [(type(m).__name__, getattr(m, "job_id", None)) for m in replies] == [("JobAccepted", 41)]
    job = rt.behaviour(job_address(41))
    assert job.submit_time == 123.0 and job.task_events and states(job) == ["done", "ready"]
    # the registry hands out ids after restored ones
    rt.send(REGISTRY, SubmitJob(2, spec, OWNER, "client"))
    rt.send(REGISTRY, JobQuery(3, 41, "client"))
    rt.send(REGISTRY, JobQuery(4, 99, "client"))
    rt.run()
    accepted = [m for m in replies if isinstance(m, JobAccepted)]
    assert accepted[-1].job_id == 42 and rt.behaviour(job_address(42)).submit_time == 500.0
    assert [m.job_id for m in replies if isinstance(m, JobDetail)] == [41]
    assert [m.reason for m in replies if isinstance(m, ActionRefused)] == ["no job 99"]
