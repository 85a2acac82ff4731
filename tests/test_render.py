"""The render behaviour: hello, heartbeats and the zombie timer, forwarding both ways, reconnection and reclaim.

First message by message on a manual runtime whose other addresses are sinks, then whole scenarios on a small
farm (registry, solver, renders, virtual workers) on the manual runtime.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import (
    Actor,
    Assign,
    ClaimRefused,
    Dispatch,
    FinishAck,
    Goodbye,
    Heartbeat,
    Hello,
    JobAccepted,
    JobAction,
    KillRun,
    Message,
    ReclaimRun,
    RenderInfo,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    RunLost,
    RunningRun,
    RunRecord,
    SubmitJob,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Tick,
    Welcome,
)
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.render import OFFLINE, ONLINE, PAUSED, RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address, render_address, worker_address
from farmhand.core.solver import Solver
from farmhand.core.spec import parse_job
from farmhand.sim.virtual_render import VirtualWorker

# -------------------------------------------------------------------------------------------- unit


class Bench:
    """One render behaviour on a manual runtime; everything it sends lands in ``self.out``."""

    def __init__(self, zombie_s: float = 30.0, watch: bool = True, paused: bool = False) -> None:
        self.rt = ManualRuntime()
        self.render = RenderBehaviour("r1", heartbeat_s=5.0, zombie_s=zombie_s, watch=watch, paused=paused)
        self.rt.spawn("render/r1", self.render)
        self.out: list[tuple[str, Message]] = []
        for prefix in ("worker/", "job/"):
            self.rt.sink(prefix, lambda to, m: self.out.append((to, m)))
        for address in (SOLVER, REGISTRY):
            self.rt.sink(address, lambda to, m: self.out.append((to, m)))

    def do(self, message: Message) -> list[tuple[str, Message]]:
        self.out.clear()
        self.rt.send("render/r1", message)
        self.rt.run()
        return list(self.out)

    def hello(self, *running: RunningRun, capacity: int = 2) -> list[tuple[str, Message]]:
        return self.do(Hello(self.rt.next_id(), RenderInfo("r1", capacity=capacity, max_tasks=capacity), running))

    def assign(self, run_id: int, job_id: int = 1, task: int = 0) -> list[tuple[str, Message]]:
        return self.do(Assign(self.rt.next_id(), run_id, job_id, 0, task, 1, "r1", "cmd"))


def kinds(out: list[tuple[str, Message]]) -> list[tuple[str, str]]:
    return [(to, type(m).__name__) for to, m in out]


def test_hello_registers_with_the_solver_welcomes_the_worker_and_arms_the_zombie_timer() -> None:
    b = Bench()
    out = b.hello()
    assert kinds(out) == [(SOLVER, "RenderOnline"), ("worker/r1", "Welcome")]
    online, welcome = out[0][1], out[1][1]
    assert isinstance(online, RenderOnline) and online.info.capacity == 2
    assert isinstance(welcome, Welcome) and (welcome.heartbeat_s, welcome.zombie_s) == (5.0, 30.0)
    assert b.render.state == ONLINE and b.rt.next_timer() == 30.0


def test_assign_progress_and_finish_are_forwarded_and_acknowledged() -> None:
    b = Bench()
    b.hello()
    out = b.assign(11, job_id=3)
    assert kinds(out) == [("worker/r1", "Assign")] and 11 in b.render.runs
    assert kinds(b.do(TaskStarted(b.rt.next_id(), 11, 3, 0, 0, 1, "r1"))) == [("job/3", "TaskStarted")]
    assert kinds(b.do(TaskProgress(b.rt.next_id(), 11, 3, 0, 0, 1, 50))) == [("job/3", "TaskProgress")]
    fin = TaskFinished(b.rt.next_id(), 11, 3, 0, 0, 1, "r1", "done")
    out = b.do(fin)
    assert kinds(out) == [("worker/r1", "FinishAck"), ("job/3", "TaskFinished")]
    ack = out[0][1]
    assert isinstance(ack, FinishAck) and (ack.reply_to, ack.run_id) == (fin.id, 11)
    assert 11 not in b.render.runs
    # a repeated finish report (the worker did not get the ack) is acknowledged again but not forwarded twice
    assert kinds(b.do(fin)) == [("worker/r1", "FinishAck")]
    # reports of runs this render does not hold are not forwarded
    assert b.do(TaskStarted(b.rt.next_id(), 99, 3, 0, 0, 1, "r1")) == []


def test_reports_go_to_the_job_the_run_was_given_for_whatever_job_they_name() -> None:
    b = Bench()
    b.hello()
    b.assign(12, job_id=4)
    assert kinds(b.do(TaskProgress(b.rt.next_id(), 12, 9, 0, 0, 1, 50))) == [("job/4", "TaskProgress")]
    out = b.do(TaskFinished(b.rt.next_id(), 12, 9, 0, 0, 1, "r1", "done"))
    assert kinds(out) == [("worker/r1", "FinishAck"), ("job/4", "TaskFinished")]


def test_silent_render_is_declared_lost_and_its_runs_come_back_as_lost() -> None:
    b = Bench(zombie_s=30.0)
    b.hello()
    b.assign(11, job_id=1)
    b.assign(12, job_id=2, task=4)
    b.rt.now = 20.0
    b.do(Heartbeat(b.rt.next_id(), "r1", (11, 12)))
    assert b.rt.next_timer() == 30.0  # the heartbeat moved the deadline, not the timer
    b.rt.advance(30.0)
    assert b.render.state == ONLINE and b.rt.next_timer() == 50.0  # heard from at 20: wait until 50
    b.out.clear()
    b.rt.advance(50.0)
    out = list(b.out)
    assert kinds(out) == [(SOLVER, "RenderOffline"), ("job/1", "RunLost"), ("job/2", "RunLost")]
    lost = out[2][1]
    assert isinstance(lost, RunLost) and (lost.run_id, lost.task, lost.attempt, lost.render) == (12, 4, 1, "r1")
    assert b.render.state == OFFLINE and b.render.runs == {} and b.render.lost_count == 1
    # a heartbeat from a lost render is ignored: it must say hello again
    # a heartbeat from a render declared lost (its connection stayed up) asks the worker to say hello again
    rejoin = b.do(Heartbeat(b.rt.next_id(), "r1"))
    assert [(to, type(m).__name__) for to, m in rejoin] == [("worker/r1", "Rejoin")]
    assert b.rt.next_timer() is None
    # an assignment that reaches a lost render comes straight back as lost
    assert kinds(b.assign(13, job_id=5)) == [("job/5", "RunLost")]
    # kills are not forwarded to a lost render's worker
    assert b.do(KillRun(b.rt.next_id(), 13, 5, "r1")) == []


def test_a_render_paused_by_an_admin_before_a_restart_comes_back_paused() -> None:
    b = Bench(paused=True)
    online = b.hello()[0][1]
    assert isinstance(online, RenderOnline) and online.paused and b.render.state == PAUSED


def test_a_clock_that_steps_back_does_not_delay_finding_a_silent_render() -> None:
    b = Bench(zombie_s=30.0)
    b.rt.now = 1000.0
    b.hello()
    assert b.rt.next_timer() == 1030.0
    b.rt.now = 100.0  # the server's wall clock stepped back by 900 s
    b.do(Heartbeat(b.rt.next_id(), "r1"))
    assert b.rt.next_timer() == 130.0
    b.rt.advance(130.0)
    assert b.render.state == OFFLINE


def test_unwatched_render_never_goes_offline_by_itself() -> None:
    b = Bench(watch=False)
    b.hello()
    assert b.rt.next_timer() is None


def test_goodbye_takes_the_render_offline() -> None:
    b = Bench()
    b.hello()
    b.assign(11)
    out = b.do(Goodbye(b.rt.next_id(), "r1"))
    assert kinds(out) == [(SOLVER, "RenderOffline"), ("job/1", "RunLost")]
    assert b.rt.next_timer() is None
    assert b.do(Goodbye(b.rt.next_id(), "r1")) == []


def test_reconnecting_worker_keeps_reported_runs_loses_the_rest_and_offers_unknown_ones_back() -> None:
    b = Bench()
    b.hello()
    b.assign(11, job_id=1)
    b.assign(12, job_id=2)
    kept = RunningRun(11, 1, 0, 0, 1)
    unknown = RunningRun(40, 4, 0, 2, 3)
    out = b.hello(kept, unknown)
    assert kinds(out) == [
        ("job/2", "RunLost"), (SOLVER, "RenderOnline"), ("registry", "ReclaimRun"), ("worker/r1", "Welcome"),
    ]
    online = out[1][1]
    assert isinstance(online, RenderOnline) and online.running == (kept, unknown)
    reclaim = out[2][1]
    assert isinstance(reclaim, ReclaimRun) and reclaim.run == unknown and reclaim.render == "r1"
    assert set(b.render.runs) == {11, 40}


def test_a_refused_claim_makes_the_render_forget_the_run_and_stop_it() -> None:
    b = Bench()
    b.hello(RunningRun(40, 4, 0, 2, 3))
    out = b.do(ClaimRefused(b.rt.next_id(), 40, 4, "r1", "assigned to r7"))
    assert kinds(out) == [("worker/r1", "KillRun")]
    kill = out[0][1]
    assert isinstance(kill, KillRun) and (kill.run_id, kill.reason) == (40, "assigned to r7")
    assert 40 not in b.render.runs
    # what its worker still says of that run reaches no job (its output cannot land in the real run's task)
    assert b.do(TaskProgress(b.rt.next_id(), 40, 4, 0, 2, 3, 50, ("impostor line",))) == []
    assert kinds(b.do(TaskFinished(b.rt.next_id(), 40, 4, 0, 2, 3, "r1", "killed"))) == [("worker/r1", "FinishAck")]
    assert b.do(ClaimRefused(b.rt.next_id(), 40, 4, "r1")) == []  # once is enough


def test_kill_is_forwarded_and_pause_goes_to_the_solver() -> None:
    b = Bench()
    b.hello()
    assert kinds(b.do(KillRun(b.rt.next_id(), 11, 1, "r1"))) == [("worker/r1", "KillRun")]
    assert kinds(b.do(RenderPaused(b.rt.next_id(), "r1", True))) == [(SOLVER, "RenderPaused")]
    assert b.render.state == PAUSED
    assert kinds(b.do(RenderPaused(b.rt.next_id(), "r1", False))) == [(SOLVER, "RenderPaused")]
    assert b.render.state == ONLINE


def test_a_paused_render_says_so_when_it_comes_back() -> None:
    b = Bench()
    b.hello()
    b.do(Goodbye(b.rt.next_id(), "r1"))
    assert b.do(RenderPaused(b.rt.next_id(), "r1", True)) == []  # offline: nothing to tell the solver yet
    out = b.hello()
    # the pause travels with the registration, so the solver never sees the render unpaused in between
    assert kinds(out) == [(SOLVER, "RenderOnline"), ("worker/r1", "Welcome")]
    online = out[0][1]
    assert isinstance(online, RenderOnline) and online.paused and b.render.state == PAUSED


# -------------------------------------------------------------------------------------------- scenarios


class Farm:
    """Registry, solver, renders with virtual workers, on a manual runtime."""

    def __init__(self, policy: str = "fifo") -> None:
        self.rt = ManualRuntime(seed=3)
        self.solver = Solver(make_policy(policy))
        self.rt.spawn(REGISTRY, Registry())
        self.rt.spawn(SOLVER, self.solver)
        self.records: list[RunRecord] = []
        self.events: list[Message] = []
        self.rt.sink(EVENTS, lambda to, m: self.events.append(m))
        self.replies: list[Message] = []
        self.rt.sink("client", lambda to, m: self.replies.append(m))
        self.rt.observers.append(self._observe)
        self.assigns: list[Assign] = []

    def _observe(self, to: str, m: Message) -> None:
        if isinstance(m, RunRecord):
            self.records.append(m)
        elif isinstance(m, Assign) and to.startswith("render/"):
            self.assigns.append(m)
        self.check_ledger()

    def check_ledger(self) -> None:
        for render in self.solver.renders.values():
            assert 0 <= render.free_cap <= render.capacity
            assert 0 <= render.free_tasks <= render.max_tasks
            assert render.free_cap == render.capacity - sum(self.solver.runs[r][2] for r in self.solver.runs_on(render))

    def add_render(self, name: str, seconds: float = 10.0, watch: bool = False, zombie_s: float = 60.0,
                   **info: Any) -> VirtualWorker:
        self.rt.spawn(render_address(name), RenderBehaviour(name, 5.0, zombie_s, watch))
        worker = VirtualWorker(RenderInfo(name, **info), lambda a: seconds)
        self.rt.spawn(worker_address(name), worker)
        self.rt.send(worker_address(name), Tick(self.rt.next_id(), "hello"))
        self.rt.run()
        return worker

    def submit(self, spec: dict[str, Any], user: str = "ann") -> int:
        self.rt.send(REGISTRY, SubmitJob(self.rt.next_id(), parse_job(spec), user, "client"))
        self.rt.run()
        accepted = [m for m in self.replies if isinstance(m, JobAccepted)]
        return accepted[-1].job_id

    def job(self, job_id: int) -> Any:
        return self.rt.behaviour(job_address(job_id))


def one_block(name: str = "j", last: int = 1, **block: Any) -> dict[str, Any]:
    return {"name": name, "blocks": [{"name": "a", "command": "c {frame}", "frames": {"first": 1, "last": last},
                                      **block}]}


def test_zombie_render_runs_are_requeued_with_a_new_attempt_elsewhere() -> None:
    farm = Farm()
    farm.add_render("r1", seconds=100.0, watch=True, zombie_s=30.0)
    job_id = farm.submit(one_block())
    assert [(a.render, a.attempt) for a in farm.assigns] == [("r1", 1)]
    farm.add_render("r2", seconds=100.0)
    farm.rt.advance(30.0)  # r1 never heartbeats
    assert "r1" not in farm.solver.renders
    assert [(a.render, a.attempt) for a in farm.assigns] == [("r1", 1), ("r2", 2)]
    farm.rt.run_all()
    # r1's worker still finished its copy at t=100; the report of the old attempt is ignored
    assert [(r.render, r.attempt, r.state) for r in farm.records] == [("r1", 1, "lost"), ("r2", 2, "done")]
    assert farm.job(job_id).task_states() == {("a", "1"): "done"}
    assert farm.rt.now == 130.0
    assert farm.solver.runs == {}


def test_reconnect_reporting_a_replaced_run_gets_it_killed_and_its_capacity_back() -> None:
    farm = Farm()
    w1 = farm.add_render("r1", seconds=100.0, watch=True, zombie_s=30.0)
    job_id = farm.submit(one_block())
    old = farm.assigns[0]
    farm.add_render("r2", seconds=100.0)
    farm.rt.advance(30.0)
    # r1's worker comes back and reports the run it still has
    assert old.run_id in w1.running
    info = RenderInfo("r1")
    farm.rt.send(render_address("r1"), Hello(farm.rt.next_id(), info, (RunningRun(old.run_id, job_id, 0, 0, 1),)))
    farm.rt.run()
    assert old.run_id not in w1.running  # killed
    assert farm.solver.renders["r1"].free_cap == 1 and farm.solver.runs.keys() == {farm.assigns[1].run_id}
    farm.rt.run_all()
    assert [(r.render, r.state) for r in farm.records] == [("r1", "lost"), ("r2", "done")]


def test_reconnect_reporting_the_current_run_keeps_it() -> None:
    farm = Farm()
    farm.add_render("r1", seconds=100.0)
    job_id = farm.submit(one_block())
    run = farm.assigns[0]
    # the server side of r1 starts afresh (its actor restarted) and the worker says hello with its run
    farm.rt.behaviours[render_address("r1")] = RenderBehaviour("r1", watch=False)
    farm.rt.send(render_address("r1"), Hello(farm.rt.next_id(), RenderInfo("r1"),
                                             (RunningRun(run.run_id, job_id, 0, 0, 1),)))
    farm.rt.run()
    assert farm.solver.runs[run.run_id][1] is farm.solver.jobs[job_id].blocks[0]
    farm.rt.run_all()
    assert [(r.render, r.attempt, r.state) for r in farm.records] == [("r1", 1, "done")]
    assert farm.solver.renders["r1"].free_cap == 1


def test_a_paused_render_that_reconnects_gets_no_new_task() -> None:
    # regression: the solver used to fill a render coming back online before hearing it was paused
    farm = Farm()
    farm.add_render("r1", seconds=10.0, watch=True, zombie_s=30.0)
    farm.rt.send(render_address("r1"), RenderPaused(farm.rt.next_id(), "r1", True))
    farm.rt.advance(30.0)
    assert "r1" not in farm.solver.renders
    farm.submit(one_block(last=3))
    farm.rt.send(worker_address("r1"), Tick(farm.rt.next_id(), "hello"))
    farm.rt.run()
    assert farm.assigns == [] and farm.solver.renders["r1"].paused
    farm.rt.send(render_address("r1"), RenderPaused(farm.rt.next_id(), "r1", False))
    farm.rt.run()
    assert len(farm.assigns) == 1


def test_a_dispatch_in_flight_during_a_reconnection_keeps_its_reservation() -> None:
    # regression: a reconnection rebuilt the ledger from the worker's report only, forgetting a dispatch
    # that had not reached the render yet, so the render got more tasks than its capacity
    farm = Farm()
    w1 = farm.add_render("r1", seconds=10.0)
    farm.rt.send(REGISTRY, SubmitJob(farm.rt.next_id(), parse_job(one_block(last=4)), "ann", "client"))
    while not any(isinstance(m, Dispatch) for _, m in farm.rt.queue):
        farm.rt.step()
    # the worker reconnects (running nothing yet) before the job has handled the dispatch
    farm.rt.send(render_address("r1"), Hello(farm.rt.next_id(), RenderInfo("r1")))
    farm.rt.deliver(len(farm.rt.queue) - 1)
    peak = 0
    while farm.rt.step():
        peak = max(peak, len(w1.running))
    farm.rt.run_all()
    assert peak == 1
    assert Counter(r.state for r in farm.records) == Counter({"done": 4})


def test_a_run_of_a_job_deleted_while_its_render_was_away_is_killed_on_reconnect() -> None:
    # regression: the reclaim went to a job that no longer existed and the run held capacity for ever
    farm = Farm()
    w1 = farm.add_render("r1", seconds=100.0, watch=True, zombie_s=30.0)
    job_id = farm.submit(one_block())
    run = farm.assigns[0]
    farm.rt.advance(30.0)  # r1 is lost
    farm.rt.send(REGISTRY, JobAction(farm.rt.next_id(), job_id, "delete", Actor("ann"), "client"))
    farm.rt.run()
    assert job_address(job_id) not in farm.rt.behaviours
    farm.rt.send(render_address("r1"), Hello(farm.rt.next_id(), RenderInfo("r1"),
                                             (RunningRun(run.run_id, job_id, 0, 0, 1),)))
    farm.rt.run()
    assert run.run_id not in w1.running
    assert farm.solver.runs == {} and farm.solver.renders["r1"].free_cap == 1
    job2 = farm.submit(one_block("k"))
    assert [(a.job_id, a.render) for a in farm.assigns[1:]] == [(job2, "r1")]


def test_render_offline_message_reaches_the_solver_before_a_lost_runs_requeue() -> None:
    farm = Farm()
    farm.add_render("r1", seconds=100.0, watch=True, zombie_s=30.0)
    farm.submit(one_block(last=2))
    seen: list[str] = []
    farm.rt.observers.append(lambda to, m: seen.append(type(m).__name__) if isinstance(
        m, RenderOffline | RunLost) else None)
    farm.rt.advance(30.0)
    assert seen[0] == "RenderOffline" and seen.count("RunLost") == 1
    assert all(a.render == "r1" for a in farm.assigns)


def test_a_zombie_time_with_little_room_for_late_heartbeats_is_warned_about() -> None:
    from farmhand.core.render import zombie_time_warning

    assert zombie_time_warning(5.0, 60.0) is None and zombie_time_warning(5.0, 15.0) is None
    assert "under 3 heartbeats (5 s each): a late heartbeat" in (zombie_time_warning(5.0, 12.0) or "")
    assert "plus the network's worst delay (2 s)" in (zombie_time_warning(5.0, 16.0, network_s=2.0) or "")
