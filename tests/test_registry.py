"""The registry: accepting and refusing jobs, job-on-job dependencies (ids and name masks), routing actions.

The registry runs on a manual runtime with the jobs it spawns; the solver and the client are sinks, so the test
sees what the jobs tell the solver (which blocks become ready, and when).
"""

from __future__ import annotations

from typing import Any

from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import (
    ActionDone,
    ActionRefused,
    Actor,
    BlockReady,
    ClaimRefused,
    JobAccepted,
    JobAction,
    JobDependencyMet,
    JobOpened,
    JobRefused,
    JobStateChanged,
    Message,
    ReclaimRun,
    RunningRun,
    StartJob,
    SubmitJob,
)
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address
from farmhand.core.spec import parse_job


class Desk:
    """A registry on a manual runtime; the solver, the events and the client are recorded."""

    def __init__(self, first_job_id: int = 1) -> None:
        self.rt = ManualRuntime()
        self.registry = Registry(first_job_id)
        self.rt.spawn(REGISTRY, self.registry)
        self.to_solver: list[Message] = []
        self.replies: list[Message] = []
        self.rt.sink(SOLVER, lambda to, m: self.to_solver.append(m))
        self.rt.sink(EVENTS, lambda to, m: None)
        self.rt.sink("client", lambda to, m: self.replies.append(m))
        self.seen: list[tuple[str, Message]] = []
        self.rt.observers.append(lambda to, m: self.seen.append((to, m)))

    def submit(self, name: str, user: str = "ann", **job: Any) -> Message:
        job_id = job.pop("job_id", 0)
        spec = parse_job({"name": name, "blocks": [{"name": "a", "command": "c", "frames": {"first": 1, "last": 2}}],
                          **job})
        before = len(self.replies)
        self.rt.send(REGISTRY, SubmitJob(self.rt.next_id(), spec, user, "client", job_id))
        self.rt.run()
        (reply,) = self.replies[before:]
        return reply

    def accepted(self, name: str, user: str = "ann", **job: Any) -> int:
        reply = self.submit(name, user, **job)
        assert isinstance(reply, JobAccepted), reply
        return reply.job_id

    def waits(self, job_id: int) -> tuple[int, ...]:
        starts = [m for to, m in self.seen if to == job_address(job_id) and isinstance(m, StartJob)]
        assert len(starts) == 1
        return starts[0].waits_on

    def ready(self, job_id: int) -> bool:
        """Whether job ``job_id`` has told the solver it has ready tasks."""
        return any(isinstance(m, BlockReady) and m.job_id == job_id and m.ready > 0 for m in self.to_solver)

    def finish(self, job_id: int, state: str = "done") -> None:
        """Pretend job ``job_id`` reached ``state`` (as it would tell the registry)."""
        self.rt.send(REGISTRY, JobStateChanged(self.rt.next_id(), job_id, state, 2, 0, 2))
        self.rt.run()

    def act(self, job_id: int, action: str, by: Actor | None = None, **kw: Any) -> Message:
        before = len(self.replies)
        self.rt.send(REGISTRY, JobAction(self.rt.next_id(), job_id, action, by or Actor("ann"), "client", **kw))
        self.rt.run()
        (reply,) = self.replies[before:]
        return reply


def test_accepted_jobs_get_consecutive_ids_and_open_to_the_solver() -> None:
    desk = Desk()
    assert [desk.accepted("a"), desk.accepted("b")] == [1, 2]
    accepted = [m for m in desk.replies if isinstance(m, JobAccepted)]
    assert all(isinstance(m, JobAccepted) for m in accepted)
    assert [m.job_id for m in desk.to_solver if isinstance(m, JobOpened)] == [1, 2]
    assert desk.ready(1) and desk.ready(2)
    assert desk.waits(1) == () and desk.waits(2) == ()
    assert desk.rt.behaviour(job_address(1)).user == "ann"


def test_depends_on_an_unknown_job_is_refused_and_leaves_no_trace() -> None:
    desk = Desk()
    reply = desk.submit("a", depends_on_jobs=[5])
    assert isinstance(reply, JobRefused)
    assert reply.problems == ("depends_on_jobs[0]: no job with id 5",)
    assert desk.registry.jobs == {} and job_address(1) not in desk.rt.behaviours
    assert desk.accepted("b") == 1  # the refused job took no id


def test_a_fixed_id_that_is_taken_is_refused() -> None:
    desk = Desk()
    assert desk.accepted("a", job_id=10) == 10
    reply = desk.submit("b", job_id=10)
    assert isinstance(reply, JobRefused) and "already taken" in reply.problems[0]
    assert desk.accepted("c") == 11


def test_depends_on_jobs_waits_until_the_upstream_is_done() -> None:
    desk = Desk()
    up = desk.accepted("up")
    down = desk.accepted("down", depends_on_jobs=[up])
    assert desk.waits(down) == (up,) and not desk.ready(down)
    desk.finish(up, "error")
    assert not desk.ready(down)
    desk.finish(up, "done")
    met = [m for to, m in desk.seen if isinstance(m, JobDependencyMet)]
    assert [(m.job_id, m.upstream) for m in met] == [(down, up)]
    assert desk.ready(down)
    # a job submitted after its upstream is done does not wait
    later = desk.accepted("later", depends_on_jobs=[up])
    assert desk.waits(later) == () and desk.ready(later)


def test_a_deleted_upstream_releases_its_dependents() -> None:
    desk = Desk()
    up = desk.accepted("up")
    down = desk.accepted("down", depends_on_jobs=[up])
    assert isinstance(desk.act(up, "delete"), ActionDone)
    assert desk.ready(down) and up not in desk.registry.jobs


def test_depend_mask_waits_on_the_same_users_matching_jobs_only() -> None:
    desk = Desk()
    a1 = desk.accepted("shot_010", "ann")
    desk.accepted("shot_020", "bob")
    desk.accepted("shot_010_comp", "ann")  # does not fully match "shot_0.0"
    a4 = desk.accepted("shot_030", "ann")
    desk.finish(a4)
    down = desk.accepted("final", "ann", depend_mask="shot_0.0")
    assert desk.waits(down) == (a1,)  # bob's job is another user's; a4 is done already
    desk.finish(a1)
    assert desk.ready(down)


def test_depend_mask_global_waits_on_every_users_matching_jobs() -> None:
    desk = Desk()
    a = desk.accepted("sim_a", "ann")
    b = desk.accepted("sim_b", "bob")
    desk.accepted("simx", "bob")
    down = desk.accepted("render", "cy", depend_mask_global="sim_.")
    assert desk.waits(down) == (a, b)
    desk.finish(a)
    assert not desk.ready(down)
    desk.finish(b)
    assert desk.ready(down)


def test_masks_never_match_the_new_job_itself_or_later_jobs() -> None:
    desk = Desk()
    first = desk.accepted("same", depend_mask="same")
    second = desk.accepted("same", depend_mask="same")
    assert desk.waits(first) == () and desk.waits(second) == (first,)


def test_ids_and_masks_combine() -> None:
    desk = Desk()
    a = desk.accepted("a")
    b = desk.accepted("b", "bob")
    down = desk.accepted("c", depends_on_jobs=[a], depend_mask_global="b")
    assert desk.waits(down) == (a, b)


def test_action_on_an_unknown_job_is_refused() -> None:
    desk = Desk()
    reply = desk.act(42, "pause")
    assert isinstance(reply, ActionRefused) and reply.job_id == 42 and reply.reason == "no job 42"
    # without a reply address: nothing, and nothing breaks
    desk.rt.send(REGISTRY, JobAction(desk.rt.next_id(), 42, "pause", Actor("ann")))
    desk.rt.run()
    assert len(desk.replies) == 1 and desk.rt.dropped == []


def test_actions_are_routed_to_the_job_which_checks_rights() -> None:
    desk = Desk()
    job_id = desk.accepted("a", "ann")
    refused = desk.act(job_id, "pause", by=Actor("bob"))
    assert isinstance(refused, ActionRefused) and "bob" in refused.reason
    done = desk.act(job_id, "pause", by=Actor("boss", admin=True))
    assert isinstance(done, ActionDone) and desk.rt.behaviour(job_address(job_id)).paused
    assert isinstance(desk.act(job_id, "delete"), ActionDone)
    assert isinstance(desk.act(job_id, "resume"), ActionRefused)


def test_state_of_an_unknown_job_is_ignored() -> None:
    desk = Desk()
    desk.finish(99)
    assert desk.registry.jobs == {}


def test_actions_right_behind_a_delete_are_answered() -> None:
    # regression: an action queued behind a delete reached a job that had stopped, and no answer ever came
    desk = Desk()
    job_id = desk.accepted("a", "ann")
    for action in ("delete", "pause", "resume"):
        desk.rt.send(REGISTRY, JobAction(desk.rt.next_id(), job_id, action, Actor("ann"), "client"))
    desk.rt.run()
    # the registry answers the two late ones itself, before the job has even handled the delete
    assert [(type(m).__name__, getattr(m, "reason", getattr(m, "detail", ""))) for m in desk.replies[1:]] == [
        ("ActionRefused", f"job {job_id} is being deleted"),
        ("ActionRefused", f"job {job_id} is being deleted"),
        ("ActionDone", "deleted"),
    ]
    assert desk.rt.dropped == []
    assert job_id not in desk.registry.jobs
    assert desk.act(job_id, "pause").reason == f"no job {job_id}"


def test_a_delete_refused_for_rights_does_not_block_later_actions() -> None:
    desk = Desk()
    job_id = desk.accepted("a", "ann")
    assert isinstance(desk.act(job_id, "delete", by=Actor("bob")), ActionRefused)
    assert isinstance(desk.act(job_id, "pause"), ActionDone)


def test_only_an_admin_may_submit_a_job_for_another_user() -> None:
    desk = Desk()
    rt, replies = desk.rt, desk.replies
    spec = parse_job({"name": "theirs", "blocks": [{"name": "b", "command": "x", "tasks": [{"name": "t"}]}]})
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "bob", "client", by=Actor("ann")))
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann", "client", by=Actor("ann")))
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "bob", "client", by=Actor("root", admin=True)))
    rt.run()
    refused, mine, admins = replies
    assert isinstance(refused, JobRefused) and refused.forbidden
    assert refused.problems == ("user 'ann' may not submit job 'theirs' as user 'bob' (admins only)",)
    assert isinstance(mine, JobAccepted) and isinstance(admins, JobAccepted)
    assert (mine.job_id, admins.job_id) == (1, 2)  # the refused job left no trace, not even an id


def test_a_reclaimed_run_goes_to_its_job_or_is_stopped_when_the_job_is_gone() -> None:
    rt = ManualRuntime()
    rt.spawn(REGISTRY, Registry())
    seen: list[tuple[str, Message]] = []
    for prefix in ("job/", "render/", "client", "events"):
        rt.sink(prefix, lambda to, m: seen.append((to, m)))
    rt.sink("solver", lambda to, m: seen.append((to, m)))
    spec = parse_job({"name": "j", "blocks": [{"name": "b", "command": "x", "tasks": [{"name": "t"}]}]})
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann", "client"))
    rt.run()
    seen.clear()
    kept = ReclaimRun(rt.next_id(), RunningRun(7, 1, 0, 0, 1), "r1")
    gone = ReclaimRun(rt.next_id(), RunningRun(8, 99, 0, 0, 1), "r1")
    rt.send(REGISTRY, kept)
    rt.send(REGISTRY, gone)
    rt.run()
    # job 1 exists: it decided (its run 7 is not current, so it stops it and gives the capacity back)
    kills = {m.run_id: m for to, m in seen if to == "render/r1" and isinstance(m, ClaimRefused)}
    assert sorted(kills) == [7, 8] and kills[8].reason == "job gone" and kills[7].reason == "stale"
    refused = sorted((m.run_id, m.render) for to, m in seen if to == "solver" and isinstance(m, ClaimRefused))
    assert refused == [(7, "r1"), (8, "r1")]
    # once a job is being deleted, its runs are stopped by the registry too
    rt.send(REGISTRY, JobAction(rt.next_id(), 1, "delete", Actor("ann"), "client"))
    rt.run()
    seen.clear()
    rt.send(REGISTRY, ReclaimRun(rt.next_id(), RunningRun(9, 1, 0, 0, 1), "r1"))
    rt.run()
    assert [(to, type(m).__name__) for to, m in seen] == [("render/r1", "ClaimRefused"), ("solver", "ClaimRefused")]


def test_a_restored_job_whose_upstream_was_deleted_is_released_not_refused() -> None:
    desk = Desk()
    rt, replies = desk.rt, desk.replies
    spec = parse_job({"name": "after", "depends_on_jobs": [3],
                      "blocks": [{"name": "b", "command": "x", "tasks": [{"name": "t"}]}]})
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann", "client", job_id=5))
    rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann", "client", job_id=6, restoring=True))
    rt.run()
    refused, restored = replies
    assert isinstance(refused, JobRefused) and refused.problems == ("depends_on_jobs[0]: no job with id 3",)
    assert isinstance(restored, JobAccepted) and restored.job_id == 6
    job = rt.behaviour("job/6")
    assert job.waits_on == set() and job.started  # nothing to wait for: it is free to run


def test_job_addresses_are_remembered_within_a_bound() -> None:
    from farmhand.core import runtime

    first = runtime.job_address(7)
    assert first == "job/7" and runtime.job_address(7) is first  # made once
    for job_id in range(1, runtime._ADDRESSES_KEPT + 10):
        assert runtime.job_address(job_id) == f"job/{job_id}"
    assert len(runtime._JOB_ADDRESSES) <= runtime._ADDRESSES_KEPT
