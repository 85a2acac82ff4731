"""Whole simulations: every task done once, determinism, faults through the real lost-render path, network loss,
dependencies, tags and speeds honoured."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pytest

from farmhand.core.messages import Assign, Message, RunRecord, SubmitJob, TaskFinished, Tick, Welcome
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, render_address, worker_address
from farmhand.core.solver import Solver
from farmhand.core.spec import parse_job
from farmhand.output import write_tasks_csv
from farmhand.sim.run import FaultModel, SimResult, run_sim
from farmhand.sim.runtime import NetworkModel, SimRuntime
from farmhand.sim.virtual_render import VirtualWorker
from farmhand.sim.workload import GeneratorOptions, RenderSpec, Workload, WorkloadJob, generate

Key = tuple[int, str, str]


def by_task(records: list[RunRecord]) -> dict[Key, list[RunRecord]]:
    out: dict[Key, list[RunRecord]] = defaultdict(list)
    for r in records:
        out[(r.job_id, r.block, r.task)].append(r)
    for runs in out.values():
        runs.sort(key=lambda r: r.attempt)
    return out


def assert_every_task_done_once(result: SimResult, tasks: int) -> None:
    runs = by_task(result.records)
    assert len(runs) == tasks
    for key, task_runs in runs.items():
        states = [r.state for r in task_runs]
        assert states.count("done") == 1, (key, states)
        assert states[-1] == "done", (key, states)
        assert [r.attempt for r in task_runs] == list(range(1, len(task_runs) + 1)), key
    assert result.summary["tasks_done"] == tasks
    assert all(state == "done" for state in result.job_states.values())


def small(**kw: Any) -> Workload:
    options = {"jobs": 40, "tasks": 10, "renders": 12, "users": 3, **kw}
    return generate(GeneratorOptions(**options), seed=11)


def test_a_small_run_completes_every_task_once() -> None:
    result = run_sim(small(), make_policy("priority"), seed=1)
    assert result.ok and not result.stalled
    assert_every_task_done_once(result, 400)
    s = result.summary
    assert s["task_runs"] == 400 and s["renders"] == 12 and s["policy"] == "priority"
    assert 0 < s["utilization"] <= 1
    assert s["events"] > 400 * 8
    for r in result.records:
        assert r.submission_time <= r.ready_time <= r.starting_time <= r.finish_time


@pytest.mark.parametrize("policy", ["fifo", "priority", "fairshare", "weighted"])
def test_same_seed_gives_a_byte_identical_tasks_csv(tmp_path: Path, policy: str) -> None:
    def once(name: str, seed: int) -> bytes:
        wl = small(blocks=2, deps="frames", capacity=((1, 2.0), (2, 1.0)))
        result = run_sim(
            wl, make_policy(policy), seed=seed, network=NetworkModel(latency=0.01, jitter=0.05),
            faults=FaultModel(failure_probability=0.05, mtbf_s=3000, mttr_s=200, heartbeat_s=5, zombie_s=20),
        )
        write_tasks_csv(tmp_path / name, result.records)
        return (tmp_path / name).read_bytes()

    first = once("a.csv", 3)
    assert first == once("b.csv", 3)
    assert first != once("c.csv", 4)


def test_render_crashes_requeue_tasks_with_new_attempts() -> None:
    wl = small(jobs=30, tasks=10, renders=15, duration=("fixed",), mean=(100.0,))
    faults = FaultModel(mtbf_s=1500, mttr_s=200, heartbeat_s=10, zombie_s=40)
    result = run_sim(wl, make_policy("fifo"), seed=2, faults=faults)
    assert result.crashes > 3
    lost = [r for r in result.records if r.state == "lost"]
    assert lost and result.summary["runs_lost"] == len(lost)
    assert_every_task_done_once(result, 300)
    retried = by_task(result.records)
    for r in lost:
        later = retried[(r.job_id, r.block, r.task)]
        assert later[-1].attempt > r.attempt and later[-1].state == "done"
    assert not result.stalled


def test_task_failures_are_retried_and_can_end_in_error() -> None:
    wl = small(jobs=20, tasks=10)
    result = run_sim(wl, make_policy("fifo"), seed=3, faults=FaultModel(failure_probability=0.6))
    errors = [r for r in result.records if r.state == "error"]
    assert errors
    runs = by_task(result.records)
    in_error = [k for k, rs in runs.items() if all(r.state == "error" for r in rs)]
    assert in_error and all(len(runs[k]) == 4 for k in in_error)  # retries 3: four runs, then error
    assert result.summary["tasks_error"] == len(in_error)
    assert result.summary["tasks_done"] == len(runs) - len(in_error)
    assert not result.ok and not result.stalled
    assert set(result.job_states.values()) <= {"done", "error"}


def test_message_loss_breaks_connections_but_every_task_is_done_once() -> None:
    wl = small(jobs=20, tasks=10)
    result = run_sim(wl, make_policy("fifo"), seed=4, network=NetworkModel(latency=0.005, loss=0.01))
    assert result.summary["messages_lost"] > 5
    assert_every_task_done_once(result, 200)


def test_latency_shifts_start_and_finish_alike() -> None:
    wl = small(jobs=5, tasks=4, renders=4, duration=("fixed",), mean=(30.0,))
    result = run_sim(wl, make_policy("fifo"), seed=1, network=NetworkModel(latency=0.5))
    assert all(r.finish_time - r.starting_time == pytest.approx(30.0) for r in result.records)
    assert min(r.starting_time for r in result.records) >= 1.0  # hello, then assign, then the start report


def test_dependencies_are_honoured() -> None:
    chain = run_sim(small(blocks=2, deps="chain"), make_policy("fifo"), seed=1)
    frames = run_sim(small(blocks=2, deps="frames"), make_policy("fifo"), seed=1)
    for result, whole in ((chain, True), (frames, False)):
        runs = by_task(result.records)
        for (job, block, task), rs in runs.items():
            if block != "b1":
                continue
            if whole:
                ups = [u for (j, b, _), us in runs.items() if j == job and b == "b0" for u in us]
            else:
                ups = runs[(job, "b0", task)]
            assert rs[0].starting_time >= max(u.finish_time for u in ups)


def test_tags_and_speed_are_honoured() -> None:
    job = parse_job({"name": "g", "tags": ["gpu"],
                     "blocks": [{"name": "r", "command": "x", "frames": {"first": 1, "last": 6}}]})
    plain = parse_job({"name": "p", "blocks": [{"name": "r", "command": "x", "frames": {"first": 1, "last": 6}}]})
    wl = Workload(
        [WorkloadJob(0.0, job, (10.0,)), WorkloadJob(0.0, plain, (10.0,))],
        [RenderSpec("fast", frozenset({"gpu"}), 1, 1, 0, 2.0), RenderSpec("slow", frozenset(), 1, 1, 0, 1.0)],
    )
    result = run_sim(wl, make_policy("fifo"), seed=1)
    assert result.ok
    for r in result.records:
        if r.job_name == "g":
            assert r.render == "fast"
        assert r.finish_time - r.starting_time == pytest.approx(5.0 if r.render == "fast" else 10.0)


def test_a_task_no_render_can_run_stalls_the_run_with_and_without_heartbeats() -> None:
    job = parse_job({"name": "g", "tags": ["gpu"],
                     "blocks": [{"name": "r", "command": "x", "frames": {"first": 1, "last": 2}}]})
    wl = Workload([WorkloadJob(0.0, job, (10.0,))], [RenderSpec("cpu", frozenset(), 1, 1, 0, 1.0)])
    quiet = run_sim(wl, make_policy("fifo"), seed=1)
    assert quiet.stalled and not quiet.ok and quiet.summary["tasks_done"] == 0
    watched = run_sim(wl, make_policy("fifo"), seed=1, faults=FaultModel(mtbf_s=1e9, heartbeat_s=5, zombie_s=20))
    assert watched.stalled and watched.sim_time < 10_000


def test_until_stops_the_run() -> None:
    result = run_sim(small(), make_policy("fifo"), seed=1, max_time=200.0)
    assert result.stalled and result.sim_time <= 200.0
    assert 0 < result.summary["tasks_done"] < 400


def test_progress_is_reported() -> None:
    seen: list[tuple[int, int]] = []
    run_sim(small(), make_policy("fifo"), seed=1, on_progress=lambda d, t, _now: seen.append((d, t)), progress_every=50)
    assert seen and seen[0] == (50, 400) and seen == sorted(seen)


class DropHeartbeats:
    """Stands in front of a render behaviour and swallows its worker's heartbeats for a while."""

    def __init__(self, inner: RenderBehaviour, start: float, end: float) -> None:
        self.inner = inner
        self.start = start
        self.end = end

    def handle(self, message: Message, ctx: Any) -> None:
        if type(message).__name__ == "Heartbeat" and self.start <= ctx.now < self.end:
            return
        self.inner.handle(message, ctx)


def test_a_late_report_of_an_old_attempt_is_ignored() -> None:
    """A render whose heartbeats go missing is declared lost while its worker keeps running the task; the task
    runs again elsewhere (attempt 2) and the old attempt's late finish report changes nothing."""
    rt = SimRuntime(seed=1)
    records: list[RunRecord] = []
    rt.sink(EVENTS, lambda _to, m: records.append(m) if isinstance(m, RunRecord) else None)
    rt.spawn(REGISTRY, Registry())
    rt.spawn(SOLVER, Solver(make_policy("fifo")))
    for name, hello_at in (("a", 0.0), ("b", 1.0)):
        spec = RenderSpec(name)
        render = RenderBehaviour(name, heartbeat_s=5.0, zombie_s=20.0, watch=True)
        front = DropHeartbeats(render, 2.0, 100.0) if name == "a" else render
        rt.spawn(render_address(name), front)
        rt.spawn(worker_address(name), VirtualWorker(spec.info(), lambda _a: 60.0, heartbeat=True), remote=True)
        rt.send_at(hello_at, worker_address(name), Tick(rt.next_id(), "hello"))
    job = parse_job({"name": "j", "blocks": [{"name": "r", "command": "x", "frames": {"first": 1, "last": 1}}]})
    rt.send_at(0.5, REGISTRY, SubmitJob(rt.next_id(), job, "ann"))
    rt.env.run(until=200.0)
    assert [(r.render, r.attempt, r.state) for r in records] == [("a", 1, "lost"), ("b", 2, "done")]
    lost, done = records
    assert lost.finish_time == pytest.approx(0.5 + 20.0, abs=5.5)  # declared lost by the zombie timer
    assert done.finish_time == pytest.approx(lost.finish_time + 60.0)
    # worker a finished its (old) run at 60.5 and reported it: nothing was recorded for it
    assert Counter(r.state for r in records) == {"lost": 1, "done": 1}


def test_a_virtual_worker_runs_nothing_sent_before_the_render_welcomed_its_hello() -> None:
    """As a real worker: an assignment that crossed a (re)connection's hello is not run (the render declares
    it lost on reading the hello, and its job runs it elsewhere)."""
    rt = SimRuntime(seed=1)
    sent: list[Message] = []
    rt.sink("render/w", lambda _to, m: sent.append(m))
    worker = VirtualWorker(RenderSpec("w").info(), lambda _a: 5.0)
    rt.spawn(worker_address("w"), worker, remote=True)
    assign = Assign(rt.next_id(), 7, 1, 0, 0, 1, "w", "x")
    rt.send_at(0.0, worker_address("w"), Tick(rt.next_id(), "hello"))
    rt.send_at(1.0, worker_address("w"), assign)  # before the Welcome: dropped
    stale = Welcome(rt.next_id(), 10**9, 5.0, 60.0)  # answers another Hello: ignored
    rt.call_at(1.5, lambda: rt.send(worker_address("w"), stale))
    rt.send_at(1.6, worker_address("w"), Assign(rt.next_id(), 6, 1, 0, 2, 1, "w", "x"))  # still not welcomed
    rt.call_at(2.0, lambda: rt.send(worker_address("w"), Welcome(rt.next_id(), worker.hello_id, 5.0, 60.0)))
    rt.send_at(3.0, worker_address("w"), Assign(rt.next_id(), 8, 1, 0, 1, 1, "w", "x"))
    rt.env.run(until=20.0)
    finished = [m for m in sent if isinstance(m, TaskFinished)]
    assert [m.run_id for m in finished] == [8] and worker.running == {}


def test_a_worker_declared_lost_while_it_kept_talking_rejoins() -> None:
    """Heartbeats jittered past a tight zombie time: the render declares its worker lost though it still talks,
    answers its next heartbeat with Rejoin, and the worker says hello again (as a real worker does), so the
    run finishes instead of stalling with renders that stay offline."""
    faults = FaultModel(heartbeat_s=30.0, zombie_s=31.0, mtbf_s=1e12)
    result = run_sim(small(jobs=3, tasks=10, renders=3), make_policy("fifo"), network=NetworkModel(jitter=5.0),
                     faults=faults, seed=2)
    assert not result.stalled and result.summary["tasks_done"] == 30
    assert result.summary["runs_lost"] > 0  # it did flap
