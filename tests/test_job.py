"""The job behaviour driven message by message: task lifecycle, dependencies, retries, user actions, stale runs.

A tiny recording context stands in for the runtime; the test plays the solver (``Dispatch``) and the worker
(``TaskStarted``/``TaskFinished``/``RunLost``) and asserts on what the job sends and on its task states.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from recording import RecordingContext

from farmhand.core.job import JobBehaviour
from farmhand.core.messages import (
    ActionDone,
    ActionRefused,
    Actor,
    Assign,
    AvoidRender,
    BlockReady,
    ClaimRefused,
    Dispatch,
    DispatchDeclined,
    JobAction,
    JobClosed,
    JobDependencyMet,
    JobOpened,
    JobStateChanged,
    JobUpdated,
    KillRun,
    Message,
    ReclaimRun,
    RunClaimed,
    RunEnded,
    RunLost,
    RunningRun,
    RunRecord,
    StartJob,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Tick,
)
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER
from farmhand.core.spec import parse_job

JOB_ID = 7
OWNER = "ann"


class Recorder(RecordingContext):
    """The job's context: records sends and timers on a manual clock."""

    def __init__(self, now: float = 0.0, address: str = f"job/{JOB_ID}") -> None:
        super().__init__(address, now, first_id=10_000)

def block(name: str, first: int = 1, last: int = 4, per_task: int = 1, **extra: Any) -> dict[str, Any]:
    return {"name": name, "command": "run {first}-{last}", "frames": {"first": first, "last": last,
            "per_task": per_task}, **extra}


def make_job(*blocks: dict[str, Any], **job: Any) -> JobBehaviour:
    spec = parse_job({"name": job.pop("name", "shot"), "blocks": list(blocks), **job})
    return JobBehaviour(JOB_ID, spec, OWNER, 0.0)


def started(job: JobBehaviour, ctx: Recorder, waits_on: tuple[int, ...] = ()) -> list[Message]:
    job.handle(StartJob(ctx.next_id(), waits_on), ctx)
    return ctx.take()


_run_ids = itertools.count(1)


def dispatch(job: JobBehaviour, ctx: Recorder, block_index: int = 0, render: str = "r1") -> Assign | DispatchDeclined:
    """Play the solver: dispatch one task of ``block_index`` to ``render``; returns the Assign or the decline."""
    before = len(ctx.sent)
    job.handle(Dispatch(next(_run_ids), JOB_ID, block_index, render), ctx)
    answers = [m for _, m in ctx.sent[before:] if isinstance(m, Assign | DispatchDeclined)]
    assert len(answers) == 1, ctx.sent
    return answers[0]


def assign(job: JobBehaviour, ctx: Recorder, block_index: int = 0, render: str = "r1") -> Assign:
    got = dispatch(job, ctx, block_index, render)
    assert isinstance(got, Assign), got
    return got


def finish(job: JobBehaviour, ctx: Recorder, a: Assign, state: str = "done") -> None:
    job.handle(
        TaskFinished(ctx.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render, state), ctx
    )


def act(job: JobBehaviour, ctx: Recorder, action: str, by: Actor | None = None, **kw: Any) -> Message:
    before = len(ctx.sent)
    job.handle(JobAction(ctx.next_id(), JOB_ID, action, by or Actor(OWNER), "client", **kw), ctx)
    replies = [m for t, m in ctx.sent[before:] if t == "client"]
    assert len(replies) == 1, ctx.sent
    return replies[0]


def states(job: JobBehaviour, block_index: int = 0) -> list[str]:
    return [t.state_name for t in job.blocks[block_index].tasks]


def ready_reports(msgs: list[Message]) -> dict[int, int]:
    """The last BlockReady count per block among ``msgs``."""
    return {m.block: m.ready for m in msgs if isinstance(m, BlockReady)}


# -------------------------------------------------------------------------------------------- start


def test_start_opens_the_job_with_its_needs_and_reports_ready_blocks() -> None:
    job = make_job(
        block("a", tags=["gpu"], capacity=2, memory_mb=512, hosts_mask="r.*", max_running_tasks_per_render=1),
        block("b", depends_on=["a"]),
        priority=150, max_running_tasks_per_render=3,
    )
    ctx = Recorder()
    msgs = started(job, ctx)
    opened = [m for m in msgs if isinstance(m, JobOpened)]
    assert len(opened) == 1
    o = opened[0]
    assert (o.job_id, o.user, o.priority, o.paused, o.max_per_render) == (JOB_ID, OWNER, 150, False, 3)
    a, b = o.blocks
    assert (a.block, a.capacity, a.memory_mb, a.tags, a.hosts_mask, a.max_per_render) == (
        0, 2, 512, frozenset({"gpu"}), "r.*", 1,
    )
    assert b.block == 1 and b.max_per_render == 3  # inherited from the job
    assert msgs.index(o) < min(i for i, m in enumerate(msgs) if isinstance(m, BlockReady))
    # only a is ready; b waits on a whole-block dependency and is never announced with 0
    assert ready_reports(msgs) == {0: 4}
    assert states(job, 0) == ["ready"] * 4 and states(job, 1) == ["waiting"] * 4
    # a second StartJob is ignored
    assert started(job, ctx) == []


def test_submitted_paused_job_reports_nothing_until_resumed() -> None:
    job = make_job(block("a"), paused=True)
    ctx = Recorder()
    msgs = started(job, ctx)
    assert [m.paused for m in msgs if isinstance(m, JobOpened)] == [True]
    assert ready_reports(msgs) == {}
    assert isinstance(dispatch(job, ctx), DispatchDeclined)
    ctx.take()
    assert isinstance(act(job, ctx, "resume"), ActionDone)
    assert ready_reports(ctx.take()) == {0: 4}


# -------------------------------------------------------------------------------------------- lifecycle


def test_task_lifecycle_ready_running_done_and_records() -> None:
    job = make_job(block("a", first=10, last=11, env={"K": "v"}, working_dir="/tmp", timeout_s=30))
    ctx = Recorder(now=5.0)
    started(job, ctx)
    ctx.now = 6.0
    a = assign(job, ctx)
    msgs = ctx.take()
    # the run id is the dispatch's id; the Assign message has an id of its own
    assert a.id != a.run_id and a.run_id in job.live and a.attempt == 1 and a.task == 0 and a.render == "r1"
    assert a.command == "run 10-10" and a.job_name == "shot" and a.block_name == "a" and a.task_name == "10"
    assert a.env == (("K", "v"),) and a.working_dir == "/tmp" and a.timeout_s == 30
    assert states(job) == ["running", "ready"]
    # one dispatch handled, one task fewer ready: the solver already counts it, so no report
    assert not [m for m in msgs if isinstance(m, BlockReady)]

    ctx.now = 7.0
    job.handle(TaskStarted(ctx.next_id(), a.run_id, JOB_ID, 0, 0, 1, "r1"), ctx)
    job.handle(TaskProgress(ctx.next_id(), a.run_id, JOB_ID, 0, 0, 1, 40, ("line 1", "40%")), ctx)
    task = job.blocks[0].tasks[0]
    assert task.percent == 40 and task.output == ("line 1", "40%")
    ctx.now = 9.0
    finish(job, ctx, a)
    msgs = ctx.take()
    assert states(job) == ["done", "ready"]
    (record,) = [m for m in msgs if isinstance(m, RunRecord)]
    assert (record.state, record.attempt, record.render, record.task, record.frames) == ("done", 1, "r1", "10", "10")
    assert (record.submission_time, record.ready_time, record.starting_time, record.finish_time) == (0.0, 5.0, 7.0, 9.0)
    assert [m.run_id for m in msgs if isinstance(m, RunEnded)] == [a.run_id]
    assert not [m for m in msgs if isinstance(m, JobStateChanged)]

    b = assign(job, ctx)
    ctx.take()
    finish(job, ctx, b)
    msgs = ctx.sent
    changes = [(t, m.state, m.tasks_done, m.tasks_total) for t, m in msgs if isinstance(m, JobStateChanged)]
    assert changes == [(REGISTRY, "done", 2, 2), (EVENTS, "done", 2, 2)]
    assert job.state == "done" and job.counts()["done"] == 2


def test_dispatch_with_nothing_ready_is_declined_with_a_fresh_summary() -> None:
    job = make_job(block("a", last=1), block("b", last=1, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    job.handle(Dispatch(555, JOB_ID, 1, "r1"), ctx)
    msgs = ctx.take()
    (got,) = [m for m in msgs if isinstance(m, DispatchDeclined)]
    assert (got.reply_to, got.job_id, got.block, got.render) == (555, JOB_ID, 1, "r1")
    assert not [m for m in msgs if isinstance(m, Assign)]
    # the solver counted one in-flight dispatch against a count of 0: the job corrects it first
    reports = [m for m in msgs if isinstance(m, BlockReady)]
    assert [(m.block, m.ready, m.handled) for m in reports] == [(1, 0, 1)]
    assert msgs.index(reports[0]) < msgs.index(got)


@pytest.mark.parametrize(
    ("order", "expected"),
    [
        ("sequential", [0, 1, 2, 3, 4, 5, 6, 7, 8]),
        ("reverse", [8, 7, 6, 5, 4, 3, 2, 1, 0]),
        ("middle", [0, 8, 4, 2, 6, 1, 3, 5, 7]),
        (3, [0, 3, 6, 1, 4, 7, 2, 5, 8]),
    ],
)
def test_block_order_sets_the_dispatch_order(order: str | int, expected: list[int]) -> None:
    job = make_job(block("a", first=1, last=9, order=order))
    ctx = Recorder()
    started(job, ctx)
    got = []
    for _ in range(9):
        got.append(assign(job, ctx).task)
        ctx.take()
    assert got == expected


def test_requeued_task_keeps_its_place_in_the_order() -> None:
    job = make_job(block("a", first=1, last=4, order="reverse"))
    ctx = Recorder()
    started(job, ctx)
    first = assign(job, ctx)
    ctx.take()
    assert first.task == 3
    finish(job, ctx, first, "error")
    ctx.take()
    again = assign(job, ctx)
    assert again.task == 3 and again.attempt == 2


# -------------------------------------------------------------------------------------------- retries


def test_a_failing_task_runs_retries_plus_one_times_then_errors_and_dependents_never_start() -> None:
    job = make_job(block("a", last=1, retries=2, avoid_render_after=100), block("b", last=2, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    attempts = []
    for _ in range(3):
        a = assign(job, ctx)
        attempts.append(a.attempt)
        ctx.take()
        finish(job, ctx, a, "error")
        msgs = ctx.take()
        assert [m.state for m in msgs if isinstance(m, RunRecord)] == ["error"]
        assert 1 not in ready_reports(msgs) or ready_reports(msgs)[1] == 0
    assert attempts == [1, 2, 3]
    assert states(job, 0) == ["error"] and states(job, 1) == ["waiting", "waiting"]
    assert job.state == "error" and job.error_tasks == 1
    # no more runs of a, and b never becomes dispatchable
    assert isinstance(dispatch(job, ctx, 0), DispatchDeclined)
    ctx.take()
    assert isinstance(dispatch(job, ctx, 1), DispatchDeclined)
    assert job.dispatchable(job.blocks[1]) == 0


def test_job_state_change_to_error_is_announced() -> None:
    job = make_job(block("a", last=1, retries=0))
    ctx = Recorder()
    started(job, ctx)
    a = assign(job, ctx)
    ctx.take()
    finish(job, ctx, a, "error")
    changes = [(t, m.state, m.tasks_error, m.tasks_total) for t, m in ctx.sent if isinstance(m, JobStateChanged)]
    assert changes == [(REGISTRY, "error", 1, 1), (EVENTS, "error", 1, 1)]
    assert job.state == "error"


def test_failure_count_is_per_render_and_announces_avoidance_once() -> None:
    job = make_job(block("a", last=4, retries=5, avoid_render_after=2))
    ctx = Recorder()
    started(job, ctx)
    avoid: list[AvoidRender] = []
    for render in ["r1", "r2", "r1", "r1", "r2"]:
        a = assign(job, ctx, render=render)
        ctx.take()
        finish(job, ctx, a, "error")
        avoid += ctx.take(AvoidRender)
    assert [(m.block, m.render) for m in avoid] == [(0, "r1"), (0, "r2")]


def test_killed_and_unknown_finish_states_count_as_failures() -> None:
    job = make_job(block("a", last=1, retries=1))
    ctx = Recorder()
    started(job, ctx)
    a = assign(job, ctx)
    finish(job, ctx, a, "killed")
    assert [m.state for m in ctx.take(RunRecord)] == ["killed"]
    b = assign(job, ctx)
    finish(job, ctx, b, "exploded")
    assert [m.state for m in ctx.take(RunRecord)] == ["error"]
    assert states(job) == ["error"]


# -------------------------------------------------------------------------------------------- dependencies


def test_whole_block_dependency_waits_for_every_task() -> None:
    job = make_job(block("a", last=3), block("b", last=2, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    runs = [assign(job, ctx) for _ in range(3)]
    ctx.take()
    for a in runs[:2]:
        finish(job, ctx, a)
    assert ready_reports(ctx.take()).get(1, 0) == 0
    assert states(job, 1) == ["waiting", "waiting"]
    finish(job, ctx, runs[2])
    assert ready_reports(ctx.take()) == {1: 2}
    assert states(job, 1) == ["ready", "ready"]


def test_skipped_upstream_satisfies_a_dependency() -> None:
    job = make_job(block("a", last=2), block("b", last=1, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    a = assign(job, ctx)
    finish(job, ctx, a)
    ctx.take()
    assert isinstance(act(job, ctx, "skip", block=0, tasks=(1,)), ActionDone)
    assert states(job, 0) == ["done", "skipped"] and states(job, 1) == ["ready"]
    assert ready_reports(ctx.take()) == {0: 0, 1: 1}


def test_frame_by_frame_dependency_across_chunkings() -> None:
    # a: one frame per task (1..6); b: chunks of 3 (1-3, 4-6) waiting frame by frame on a
    job = make_job(block("a", last=6), block("b", last=6, per_task=3, depends_on_frames=["a"]))
    ctx = Recorder()
    started(job, ctx)
    runs = {a.task: a for a in (assign(job, ctx) for _ in range(6))}
    ctx.take()
    for t in (0, 1, 3, 4, 5):
        finish(job, ctx, runs[t])
    # b's second chunk (4-6) is ready; the first (1-3) still waits on frame 3
    assert states(job, 1) == ["waiting", "ready"]
    assert ready_reports(ctx.take()) == {1: 1}
    b = assign(job, ctx, 1)
    assert b.task == 1 and b.command == "run 4-6"
    finish(job, ctx, runs[2])
    assert states(job, 1) == ["ready", "running"]


def test_frame_dependency_to_a_coarser_upstream() -> None:
    # a: chunks of 4 (1-4, 5-8); b: single frames waiting on the chunk covering them
    job = make_job(block("a", last=8, per_task=4), block("b", last=8, depends_on_frames=["a"]))
    ctx = Recorder()
    started(job, ctx)
    first = assign(job, ctx)
    second = assign(job, ctx)
    finish(job, ctx, second)
    assert states(job, 1) == ["waiting"] * 4 + ["ready"] * 4
    finish(job, ctx, first)
    assert states(job, 1) == ["ready"] * 8


def test_wait_until_gates_the_job_until_its_timer() -> None:
    job = make_job(block("a", last=2), wait_until=100.0)
    ctx = Recorder(now=10.0)
    msgs = started(job, ctx)
    assert ready_reports(msgs) == {} and states(job) == ["waiting", "waiting"]
    at, tick = ctx.timers["wait_until"]
    assert at == 100.0 and isinstance(tick, Tick)
    assert isinstance(dispatch(job, ctx), DispatchDeclined)
    ctx.take()
    job.handle(Tick(ctx.next_id(), "other"), ctx)
    assert ctx.take() == []
    ctx.now = 100.0
    job.handle(tick, ctx)
    assert ready_reports(ctx.take()) == {0: 2}
    assert job.blocks[0].tasks[0].ready_time == 100.0


def test_wait_until_in_the_past_does_not_gate() -> None:
    job = make_job(block("a", last=2), wait_until=5.0)
    ctx = Recorder(now=10.0)
    assert ready_reports(started(job, ctx)) == {0: 2}
    assert ctx.timers == {}


def test_job_dependencies_gate_until_every_upstream_is_met() -> None:
    job = make_job(block("a", last=2))
    ctx = Recorder()
    assert ready_reports(started(job, ctx, waits_on=(3, 4))) == {}
    job.handle(JobDependencyMet(ctx.next_id(), JOB_ID, 3), ctx)
    job.handle(JobDependencyMet(ctx.next_id(), JOB_ID, 99), ctx)  # not one we wait on
    assert ctx.take() == [] and job.gated
    job.handle(JobDependencyMet(ctx.next_id(), JOB_ID, 4), ctx)
    assert ready_reports(ctx.take()) == {0: 2}


def test_job_dependency_and_wait_until_both_gate() -> None:
    job = make_job(block("a", last=1), wait_until=50.0)
    ctx = Recorder()
    started(job, ctx, waits_on=(2,))
    ctx.now = 50.0
    job.handle(ctx.timers["wait_until"][1], ctx)
    assert ctx.take() == []
    job.handle(JobDependencyMet(ctx.next_id(), JOB_ID, 2), ctx)
    assert ready_reports(ctx.take()) == {0: 1}


# -------------------------------------------------------------------------------------------- caps


def test_block_max_running_tasks_caps_the_dispatchable_count() -> None:
    job = make_job(block("a", last=5, max_running_tasks=2))
    ctx = Recorder()
    assert ready_reports(started(job, ctx)) == {0: 2}
    a1 = assign(job, ctx)
    assign(job, ctx)
    assert ready_reports(ctx.take()) == {}  # the solver already counted both
    assert isinstance(dispatch(job, ctx), DispatchDeclined)
    ctx.take()
    finish(job, ctx, a1)
    assert ready_reports(ctx.take()) == {0: 1}


def test_job_max_running_tasks_caps_across_blocks() -> None:
    job = make_job(block("a", last=3), block("b", last=3), max_running_tasks=2)
    ctx = Recorder()
    assert ready_reports(started(job, ctx)) == {0: 2, 1: 2}
    a = assign(job, ctx, 0)
    msgs = ctx.take()
    assert ready_reports(msgs) == {1: 1}  # a run of a leaves room for one of b
    assign(job, ctx, 1)
    ctx.take()
    assert isinstance(dispatch(job, ctx, 0), DispatchDeclined)
    ctx.take()
    finish(job, ctx, a)
    assert ready_reports(ctx.take()) == {0: 1, 1: 1}


# -------------------------------------------------------------------------------------------- stale runs


def test_run_lost_requeues_with_a_new_attempt_and_a_late_finish_of_the_old_run_is_ignored() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    old = assign(job, ctx, render="r1")
    ctx.take()
    job.handle(RunLost(ctx.next_id(), old.run_id, JOB_ID, 0, 0, old.attempt, "r1", "zombie"), ctx)
    msgs = ctx.take()
    assert [m.state for m in msgs if isinstance(m, RunRecord)] == ["lost"]
    assert [m.run_id for m in msgs if isinstance(m, RunEnded)] == [old.run_id]
    assert ready_reports(msgs) == {0: 1}
    assert states(job) == ["ready"] and job.blocks[0].tasks[0].failures == 0

    new = assign(job, ctx, render="r2")
    assert new.attempt == 2 and new.run_id != old.run_id
    ctx.take()
    finish(job, ctx, old)  # the old render's late report
    job.handle(RunLost(ctx.next_id(), old.run_id, JOB_ID, 0, 0, old.attempt, "r1"), ctx)
    job.handle(TaskStarted(ctx.next_id(), old.run_id, JOB_ID, 0, 0, old.attempt, "r1"), ctx)
    job.handle(TaskProgress(ctx.next_id(), old.run_id, JOB_ID, 0, 0, old.attempt, 99), ctx)
    assert ctx.take() == []
    assert states(job) == ["running"] and job.blocks[0].tasks[0].percent == -1
    finish(job, ctx, new)
    msgs = ctx.take()
    assert [(m.state, m.attempt) for m in msgs if isinstance(m, RunRecord)] == [("done", 2)]
    assert states(job) == ["done"]


def test_a_report_with_wrong_task_indices_still_ends_the_run_it_names() -> None:
    # regression: such a report closed the run but left its task running for ever
    job = make_job(block("a", last=2))
    ctx = Recorder()
    started(job, ctx)
    a = assign(job, ctx)
    ctx.take()
    # a report naming the run but the wrong task (a confused worker): the run id is what counts
    job.handle(TaskFinished(ctx.next_id(), a.run_id, JOB_ID, 0, 1, 1, "r1", "done"), ctx)
    assert states(job) == ["done", "ready"]
    assert [m.task for m in ctx.take(RunRecord)] == ["1"]
    b = assign(job, ctx)
    ctx.take()
    job.handle(RunLost(ctx.next_id(), b.run_id, JOB_ID, 5, 0, 1, "r1"), ctx)  # no such block
    assert states(job) == ["done", "ready"]
    assert [m.run_id for m in ctx.take(RunEnded)] == [b.run_id]


def test_reclaim_of_the_current_run_is_kept() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    a = assign(job, ctx, render="r1")
    ctx.take()
    run = RunningRun(a.run_id, JOB_ID, 0, 0, a.attempt)
    job.handle(ReclaimRun(ctx.next_id(), run, "r1"), ctx)
    (claimed,) = ctx.take()
    assert isinstance(claimed, RunClaimed)
    assert (claimed.run_id, claimed.job_id, claimed.block, claimed.render) == (a.run_id, JOB_ID, 0, "r1")
    finish(job, ctx, a)
    assert states(job) == ["done"]


def test_reclaim_of_a_replaced_run_is_killed_and_released() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    old = assign(job, ctx, render="r1")
    job.handle(RunLost(ctx.next_id(), old.run_id, JOB_ID, 0, 0, old.attempt, "r1"), ctx)
    new = assign(job, ctx, render="r2")
    ctx.take()
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(old.run_id, JOB_ID, 0, 0, old.attempt), "r1"), ctx)
    sent = ctx.sent
    refusals = [(t, m.run_id, m.render, m.reason) for t, m in sent if isinstance(m, ClaimRefused)]
    assert refusals == [(to, old.run_id, "r1", "stale") for to in ("render/r1", "solver")]
    assert not [m for _, m in sent if isinstance(m, RunClaimed)]
    ctx.take()
    # a reclaim naming an unknown run (or a wrong task) is killed as well
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(424242, JOB_ID, 0, 0, 1), "r3"), ctx)
    job.handle(ReclaimRun(ctx.next_id(), RunningRun(new.run_id, JOB_ID, 0, 0, new.attempt + 1), "r2"), ctx)
    assert [m.run_id for m in ctx.take(ClaimRefused, to="solver")] == [424242, new.run_id]
    assert states(job) == ["running"]


# -------------------------------------------------------------------------------------------- actions


def test_actions_need_the_owner_or_an_admin() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    for action in ("pause", "resume", "delete", "restart", "skip", "priority"):
        refused = act(job, ctx, action, by=Actor("bob"), value=5)
        assert isinstance(refused, ActionRefused)
        assert refused.job_id == JOB_ID and "bob" in refused.reason and OWNER in refused.reason
        assert action in refused.reason
        ctx.take()
    assert not job.paused and not job.deleted and job.priority == 99 and states(job) == ["ready"]
    done = act(job, ctx, "pause", by=Actor("root", admin=True))
    assert isinstance(done, ActionDone) and job.paused


def test_unknown_action_is_refused_and_no_reply_without_address() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    refused = act(job, ctx, "explode")
    assert isinstance(refused, ActionRefused) and "explode" in refused.reason
    ctx.take()
    job.handle(JobAction(ctx.next_id(), JOB_ID, "pause", Actor("bob")), ctx)
    job.handle(JobAction(ctx.next_id(), JOB_ID, "pause", Actor(OWNER)), ctx)
    assert [m for _, m in ctx.sent if isinstance(m, ActionDone | ActionRefused)] == []
    assert job.paused


def test_pause_and_resume() -> None:
    job = make_job(block("a", last=3))
    ctx = Recorder()
    started(job, ctx)
    running = assign(job, ctx)
    ctx.take()
    done = act(job, ctx, "pause")
    assert isinstance(done, ActionDone) and done.detail == "paused"
    msgs = ctx.take()
    assert [(m.paused, m.priority) for m in msgs if isinstance(m, JobUpdated)] == [(True, 99)]
    assert ready_reports(msgs) == {0: 0}
    assert isinstance(dispatch(job, ctx), DispatchDeclined)
    ctx.take()
    # a running task of a paused job runs on and finishes
    finish(job, ctx, running)
    assert states(job)[0] == "done"
    assert ready_reports(ctx.take()) == {}
    assert act(job, ctx, "pause").detail == "already paused"
    ctx.take()
    assert act(job, ctx, "resume").detail == "resumed"
    msgs = ctx.take()
    assert [m.paused for m in msgs if isinstance(m, JobUpdated)] == [False]
    assert ready_reports(msgs) == {0: 2}
    assert act(job, ctx, "resume").detail == "not paused"


def test_priority_action() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    assert act(job, ctx, "priority", value=200).detail == "priority 200"
    assert [(m.priority, m.paused) for m in ctx.take(JobUpdated)] == [(200, False)]
    refused = act(job, ctx, "priority", value=256)
    assert isinstance(refused, ActionRefused) and "0-255" in refused.reason
    assert job.priority == 200
    assert ctx.take(JobUpdated) == []


def test_delete_kills_running_runs_closes_the_job_and_stops() -> None:
    job = make_job(block("a", last=3))
    ctx = Recorder()
    started(job, ctx)
    r1 = assign(job, ctx, render="r1")
    r2 = assign(job, ctx, render="r2")
    finish(job, ctx, r1)
    ctx.take()
    assert act(job, ctx, "delete").detail == "deleted"
    sent = ctx.sent
    assert [(t, m.run_id, m.reason) for t, m in sent if isinstance(m, KillRun)] == [("render/r2", r2.run_id, "deleted")]
    assert [(m.state, m.render) for _, m in sent if isinstance(m, RunRecord)] == [("killed", "r2")]
    assert [t for t, m in sent if isinstance(m, JobClosed)] == [SOLVER]
    assert [(t, m.state, m.tasks_done) for t, m in sent if isinstance(m, JobStateChanged)] == [
        (REGISTRY, "deleted", 1), (EVENTS, "deleted", 1),
    ]
    assert ctx.stopped and job.deleted
    ctx.take()
    # the killed run's report after deletion changes nothing (the solver released everything on JobClosed)
    finish(job, ctx, r2, "killed")
    assert ctx.take(RunEnded) == []
    assert isinstance(act(job, ctx, "resume"), ActionRefused)


def test_restart_a_done_task_puts_its_dependents_back_to_waiting() -> None:
    job = make_job(block("a", last=2), block("b", last=2, depends_on_frames=["a"]), block("c", last=1,
                   depends_on=["b"]))
    ctx = Recorder()
    started(job, ctx)
    a = [assign(job, ctx, 0) for _ in range(2)]
    for r in a:
        finish(job, ctx, r)
    assert states(job, 1) == ["ready", "ready"]
    ctx.take()
    done = act(job, ctx, "restart", block=0, tasks=(1,))
    assert done.detail == "restarted 1 task(s)"
    assert states(job, 0) == ["done", "ready"] and states(job, 1) == ["ready", "waiting"]
    assert ready_reports(ctx.take()) == {0: 1, 1: 1}
    # restarting a task that is not finished does nothing
    assert act(job, ctx, "restart", block=0, tasks=(1,)).detail == "restarted 0 task(s)"


def test_restart_with_downstream_restarts_done_dependents() -> None:
    job = make_job(block("a", last=1), block("b", last=2, depends_on=["a"]), block("c", last=1))
    ctx = Recorder()
    started(job, ctx)
    finish(job, ctx, assign(job, ctx, 0))
    for r in [assign(job, ctx, 1), assign(job, ctx, 1), assign(job, ctx, 2)]:
        finish(job, ctx, r)
    assert job.state == "done"
    ctx.take()
    done = act(job, ctx, "restart", block=0, downstream=True)
    assert done.detail == "restarted 3 task(s)"
    assert states(job, 0) == ["ready"] and states(job, 1) == ["waiting", "waiting"] and states(job, 2) == ["done"]
    changes = ctx.take(JobStateChanged)
    assert [m.state for m in changes] == ["active", "active"]
    assert job.state == "active" and job.finished_tasks == 1


def test_restart_downstream_of_an_upstream_listed_after_its_dependent() -> None:
    # block order does not follow dependency order: b (index 0) depends on a (index 1)
    job = make_job(block("b", last=1, depends_on=["a"]), block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    finish(job, ctx, assign(job, ctx, 1))
    finish(job, ctx, assign(job, ctx, 0))
    ctx.take()
    act(job, ctx, "restart", block=1, downstream=True)
    assert states(job, 1) == ["ready"] and states(job, 0) == ["waiting"]
    assert ready_reports(ctx.take()) == {1: 1}
    assert job.dispatchable(job.blocks[0]) == 0


def test_restart_errors_only() -> None:
    job = make_job(block("a", last=3, retries=0), block("b", last=1, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    runs = [assign(job, ctx) for _ in range(3)]
    finish(job, ctx, runs[0], "error")
    finish(job, ctx, runs[1])
    assert states(job, 0) == ["error", "done", "running"]
    ctx.take()
    done = act(job, ctx, "restart", errors_only=True)
    assert done.detail == "restarted 1 task(s)"
    assert states(job, 0) == ["ready", "done", "running"] and job.error_tasks == 0
    assert ctx.take(KillRun) == []
    again = assign(job, ctx)
    assert again.task == 0 and again.attempt == 2
    finish(job, ctx, again)
    finish(job, ctx, runs[2])
    assert states(job, 1) == ["ready"]


def test_restart_errors_only_with_downstream() -> None:
    job = make_job(block("a", last=2, retries=0), block("b", last=2, depends_on_frames=["a"]))
    ctx = Recorder()
    started(job, ctx)
    ra = [assign(job, ctx, 0) for _ in range(2)]
    finish(job, ctx, ra[0])
    finish(job, ctx, assign(job, ctx, 1))  # b's first task ran after a's first frame
    finish(job, ctx, ra[1], "error")
    assert states(job, 0) == ["done", "error"] and states(job, 1) == ["done", "waiting"]
    ctx.take()
    act(job, ctx, "restart", errors_only=True, downstream=True)
    # only the error task and what hangs on it: b's first task stays done
    assert states(job, 0) == ["done", "ready"] and states(job, 1) == ["done", "waiting"]


def test_restart_a_running_task_kills_it_and_ignores_the_old_run() -> None:
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    old = assign(job, ctx, render="r1")
    ctx.take()
    act(job, ctx, "restart")
    msgs = ctx.take()
    assert [(m.run_id, m.reason) for m in msgs if isinstance(m, KillRun)] == [(old.run_id, "restarted")]
    assert not [m for m in msgs if isinstance(m, RunEnded)]  # the capacity is held until the worker stops
    assert states(job) == ["ready"]
    new = assign(job, ctx, render="r2")
    ctx.take()
    assert new.attempt == 2
    finish(job, ctx, old, "killed")
    msgs = ctx.take()
    assert [(m.state, m.attempt) for m in msgs if isinstance(m, RunRecord)] == [("killed", 1)]
    assert [m.run_id for m in msgs if isinstance(m, RunEnded)] == [old.run_id]
    assert states(job) == ["running"] and job.blocks[0].tasks[0].failures == 0
    finish(job, ctx, new)
    assert states(job) == ["done"]


def test_skip_selected_tasks_including_a_running_one() -> None:
    job = make_job(block("a", last=3), block("b", last=1, depends_on=["a"]))
    ctx = Recorder()
    started(job, ctx)
    running = assign(job, ctx)
    ctx.take()
    done = act(job, ctx, "skip", block=0)
    assert done.detail == "skipped 3 task(s)"
    msgs = ctx.take()
    assert [(m.run_id, m.reason) for m in msgs if isinstance(m, KillRun)] == [(running.run_id, "skipped")]
    assert states(job, 0) == ["skipped"] * 3 and states(job, 1) == ["ready"]
    assert ready_reports(msgs) == {0: 0, 1: 1}
    finish(job, ctx, running, "killed")
    assert [m.state for m in ctx.take(RunRecord)] == ["killed"]
    assert states(job, 0) == ["skipped"] * 3
    assert act(job, ctx, "skip").detail == "skipped 1 task(s)"
    assert job.state == "done"


def test_skip_an_error_task_finishes_the_job() -> None:
    job = make_job(block("a", last=1, retries=0))
    ctx = Recorder()
    started(job, ctx)
    finish(job, ctx, assign(job, ctx), "error")
    assert job.state == "error"
    ctx.take()
    act(job, ctx, "skip")
    assert job.state == "done" and job.error_tasks == 0
    assert [m.state for m in ctx.take(JobStateChanged)] == ["done", "done"]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"block": 5}, "no block 5"),
        ({"block": 0, "tasks": (9,)}, "no task 9"),
        ({"tasks": (0,)}, "needs a block"),
    ],
)
def test_bad_task_selection_is_refused(kw: dict[str, Any], needle: str) -> None:
    job = make_job(block("a", last=2))
    ctx = Recorder()
    started(job, ctx)
    for action in ("restart", "skip"):
        refused = act(job, ctx, action, **kw)
        assert isinstance(refused, ActionRefused) and needle in refused.reason
        ctx.take()
    assert states(job) == ["ready", "ready"]


def test_counts_and_task_states_views() -> None:
    job = make_job(block("a", last=3, retries=0))
    ctx = Recorder()
    started(job, ctx)
    finish(job, ctx, assign(job, ctx))
    finish(job, ctx, assign(job, ctx), "error")
    assert job.counts() == {"waiting": 0, "ready": 1, "running": 0, "done": 1, "error": 1, "skipped": 0}
    assert job.task_states() == {("a", "1"): "done", ("a", "2"): "error", ("a", "3"): "ready"}


def test_job_is_in_error_once_nothing_can_move_without_a_user() -> None:
    # regression: the job used to stay "active" forever when an error task had waiting dependents
    job = make_job(block("a", last=2, retries=0), block("b", last=2, depends_on_frames=["a"]))
    ctx = Recorder()
    started(job, ctx)
    bad, good = assign(job, ctx), assign(job, ctx)
    finish(job, ctx, bad, "error")
    assert job.state == "active"  # a's second task still runs, b may still progress
    finish(job, ctx, good)
    assert job.state == "active"  # b's second task is ready
    finish(job, ctx, assign(job, ctx, 1))
    assert states(job, 1) == ["waiting", "done"]
    assert job.state == "error"
    assert [(t, m.state, m.tasks_done, m.tasks_error) for t, m in ctx.sent if isinstance(m, JobStateChanged)] == [
        (REGISTRY, "error", 2, 1), (EVENTS, "error", 2, 1),
    ]
    ctx.take()
    act(job, ctx, "restart", errors_only=True)
    assert job.state == "active" and [m.state for m in ctx.take(JobStateChanged)] == ["active", "active"]


def test_a_stopped_run_that_finished_before_the_kill_is_recorded_as_killed() -> None:
    # regression: the run was recorded "done" although its result was dropped, so the task had two done runs
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    old = assign(job, ctx)
    act(job, ctx, "restart")
    new = assign(job, ctx)
    ctx.take()
    finish(job, ctx, old, "done")  # it finished before the kill reached the worker
    assert [(m.state, m.attempt) for m in ctx.take(RunRecord)] == [("killed", 1)]
    assert states(job) == ["running"]
    finish(job, ctx, new, "done")
    assert [(m.state, m.attempt) for m in ctx.take(RunRecord)] == [("done", 2)]
    # the same for a skipped task
    job = make_job(block("a", last=1))
    ctx = Recorder()
    started(job, ctx)
    run = assign(job, ctx)
    act(job, ctx, "skip")
    ctx.take()
    finish(job, ctx, run, "done")
    assert [m.state for m in ctx.take(RunRecord)] == ["killed"] and states(job) == ["skipped"]
