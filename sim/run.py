"""One simulation run: the production core on the SimPy runtime, fed by a workload, with optional faults.

:func:`run_sim` assembles the registry, the solver, one :class:`~farmhand.core.render.RenderBehaviour` per
render and one :class:`~farmhand.sim.virtual_render.VirtualWorker` behind each (across the simulated
network), submits every job at its submission time, runs until every job is done or in error (or nothing can
move any more), and computes the summary from the run records with :func:`farmhand.core.records.summarize`.

**Faults** (:class:`FaultModel`), all off by default:

- ``failure_probability``: each run fails with this probability (the job retries it as usual);
- ``mtbf_s`` / ``mttr_s``: each render's machine crashes after an exponential time of mean MTBF (its runs
  vanish, it falls silent) and comes back after an exponential time of mean MTTR, saying hello again. The
  server notices through the real lost-render path: the render's heartbeat watch (the zombie timer) declares
  it lost, or its hello reports no runs; either way every run it had is recorded ``lost`` and its task is
  requeued with a new attempt, and a late report of an old attempt is ignored. Heartbeats and zombie timers
  run only when render faults (or message loss) are on, so a run without them stays fast;
- with ``NetworkModel.loss`` > 0 a lost message breaks the worker's connection: the worker says hello again
  ``reconnect_s`` later, listing the runs it still has; runs the server gave it that it no longer has are lost.
"""

from __future__ import annotations

import gc
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from farmhand.core.messages import (
    Assign,
    JobAccepted,
    JobRefused,
    JobStateChanged,
    Message,
    RunRecord,
    SetUser,
    SubmitJob,
    Tick,
)
from farmhand.core.policies import Policy
from farmhand.core.records import summarize
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import (
    EVENTS,
    REGISTRY,
    SOLVER,
    MessageRouter,
    job_address,
    render_address,
    worker_address,
)
from farmhand.core.solver import Solver

from .runtime import NetworkModel, SimRuntime
from .virtual_render import VirtualWorker
from .workload import RenderSpec, Workload, default_renders

CLIENT = "client/sim"
DEFAULT_RENDERS = 500

#: (tasks done, tasks in all, simulated seconds) -> None
Progress = Callable[[int, int, float], None]


@dataclass
class FaultModel:
    """Task failures, render crashes (MTBF/MTTR, seconds) and the heartbeat settings used when renders can fail."""

    failure_probability: float = 0.0
    mtbf_s: float | None = None
    mttr_s: float = 600.0
    heartbeat_s: float = 30.0
    zombie_s: float = 120.0
    reconnect_s: float = 1.0

    def check(self) -> list[str]:
        """The problems with these settings (empty when fine)."""
        p = []
        if not 0 <= self.failure_probability < 1:
            p.append(f"--failure-prob: must be >= 0 and < 1 (got {self.failure_probability})")
        if self.mtbf_s is not None and not self.mtbf_s > 0:
            p.append(f"--mtbf: must be > 0 seconds (got {self.mtbf_s})")
        if not self.mttr_s > 0:
            p.append(f"--mttr: must be > 0 seconds (got {self.mttr_s})")
        if not self.heartbeat_s > 0:
            p.append(f"--heartbeat: must be > 0 seconds (got {self.heartbeat_s})")
        if not self.zombie_s > self.heartbeat_s:
            p.append(f"--zombie: must be > the heartbeat interval {self.heartbeat_s:g} s (got {self.zombie_s})")
        if not self.reconnect_s >= 0:
            p.append(f"reconnect_s: must be >= 0 (got {self.reconnect_s})")
        return p

    @property
    def render_faults(self) -> bool:
        """Whether renders may crash."""
        return self.mtbf_s is not None

    def as_dict(self) -> dict[str, Any]:
        """The settings (for the summary's scenario)."""
        return {
            "failure_probability": self.failure_probability,
            "mtbf_s": self.mtbf_s,
            "mttr_s": self.mttr_s,
            "heartbeat_s": self.heartbeat_s,
            "zombie_s": self.zombie_s,
        }


@dataclass
class SimResult:
    """What a simulation produced."""

    records: list[RunRecord]
    summary: dict[str, Any]
    job_states: dict[int, str]
    renders: list[RenderSpec]
    stalled: bool = False
    refused: list[str] = field(default_factory=list)
    crashes: int = 0
    sim_time: float = 0.0
    #: wall-clock seconds spent building the farm, running the simulation loop (and its CPU seconds), summarising
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """Every job done, nothing refused, nothing stuck."""
        return not self.stalled and not self.refused and all(s == "done" for s in self.job_states.values())


class _Collector(MessageRouter):
    """The event sink and the reply sink: run records, job states, the end condition and progress."""

    def __init__(self, jobs_total: int, tasks_total: int, on_progress: Progress | None, every: int) -> None:
        self.records: list[RunRecord] = []
        self.states: dict[int, str] = {}
        self.refused: list[str] = []
        self.terminal = 0
        self.jobs_total = jobs_total
        self.tasks_total = tasks_total
        self.finished = jobs_total == 0
        self.done_tasks = 0
        self.on_progress = on_progress
        self.progress_every = every
        self.last_progress = 0
        self.rt: SimRuntime | None = None
        #: called once every job is terminal (the runtime's halt)
        self.on_finished: Callable[[], None] | None = None
        self._handlers = {RunRecord: self._on_record, JobStateChanged: self._on_job_state}

    def _on_record(self, msg: RunRecord, _ctx: object) -> None:
        self.records.append(msg)
        if msg.state == "done":
            self.done_tasks += 1
            if self.on_progress is not None and self.done_tasks - self.last_progress >= self.progress_every:
                self.last_progress = self.done_tasks
                self.on_progress(self.done_tasks, self.tasks_total, self.rt.now if self.rt else 0.0)

    def _on_job_state(self, msg: JobStateChanged, _ctx: object) -> None:
        before = self.states.get(msg.job_id)
        self.states[msg.job_id] = msg.state
        was = before in ("done", "error", "deleted")
        now = msg.state in ("done", "error", "deleted")
        if now and not was:
            self.terminal += 1
        elif was and not now:
            self.terminal -= 1
        self._check()

    def on_reply(self, _to: str, msg: Message) -> None:
        if isinstance(msg, JobRefused):
            self.refused.extend(msg.problems)
            self.terminal += 1
            self._check()
        elif isinstance(msg, JobAccepted):
            self.states.setdefault(msg.job_id, "active")

    def _check(self) -> None:
        self.finished = self.terminal >= self.jobs_total
        if self.finished and self.on_finished is not None:
            self.on_finished()


def run_sim(
    workload: Workload,
    policy: Policy,
    *,
    seed: int = 0,
    renders: int | None = None,
    network: NetworkModel | None = None,
    faults: FaultModel | None = None,
    max_time: float | None = None,
    on_progress: Progress | None = None,
    progress_every: int = 2000,
    scenario: dict[str, Any] | None = None,
) -> SimResult:
    """Simulate ``workload`` under ``policy``; ``renders`` identical renders when the workload has none."""
    started = time.perf_counter()
    network = network or NetworkModel()
    faults = faults or FaultModel()
    problems = faults.check()
    if problems:
        raise ValueError("; ".join(problems))
    render_specs = workload.renders or default_renders(workload, renders or DEFAULT_RENDERS)
    watch = faults.render_faults or network.loss > 0
    tasks_total = workload.task_count()
    collector = _Collector(len(workload.jobs), tasks_total, on_progress, progress_every)
    workers: dict[str, VirtualWorker] = {}
    reconnecting: set[str] = set()

    def on_loss(sender: str, to: str, _msg: Message) -> None:
        worker = sender if sender in workers else to
        if worker not in workers or worker in reconnecting:
            return
        reconnecting.add(worker)

        def reconnect() -> None:
            reconnecting.discard(worker)
            if workers[worker].up:  # a crashed machine comes back by itself
                rt.send_at(rt.now, worker, Tick(rt.next_id(), "hello"))

        rt.call_at(rt.now + faults.reconnect_s, reconnect)

    rt = SimRuntime(seed=seed, network=network, on_loss=on_loss)
    collector.rt = rt
    rt.spawn(EVENTS, collector)
    rt.sink(CLIENT, collector.on_reply)
    rt.spawn(REGISTRY, Registry())
    rt.spawn(SOLVER, Solver(policy))
    for user in sorted(workload.users):
        u = workload.users[user]
        rt.send(SOLVER, SetUser(rt.next_id(), user, u.priority, u.weight))

    # the duration of every task: by job id (position + 1), block index, task index
    table: list[Any] = [None] + [job.durations for job in workload.jobs]

    def duration(a: Assign) -> float:
        d = table[a.job_id][a.block]
        return d if d.__class__ is float else d[a.task]  # type: ignore[no-any-return]

    for spec in render_specs:
        name = spec.name
        worker = worker_address(name)
        rt.spawn(render_address(name), RenderBehaviour(name, faults.heartbeat_s, faults.zombie_s, watch=watch))
        workers[worker] = VirtualWorker(
            spec.info(), duration, spec.speed, faults.failure_probability, heartbeat=watch
        )
        rt.spawn(worker, workers[worker], remote=True)
        rt.send_at(0.0, worker, Tick(rt.next_id(), "hello"))

    crashes = [0]
    if faults.mtbf_s is not None:
        _schedule_crashes(rt, render_specs, faults, seed, crashes)

    order = sorted(range(len(workload.jobs)), key=lambda i: (workload.jobs[i].submit_at, i))
    for i in order:
        job = workload.jobs[i]
        spec = job.spec
        rt.send_at(job.submit_at, REGISTRY, SubmitJob(rt.next_id(), spec, spec.user or "sim", CLIENT, i + 1))

    built = time.perf_counter()
    cpu = time.process_time()
    stalled = _run(rt, collector, workers, watch, faults, max_time)
    ran = time.perf_counter()
    run_cpu = time.process_time() - cpu

    states: dict[int, str] = {}
    tasks_error = 0
    for i in range(len(workload.jobs)):
        behaviour = rt.behaviour(job_address(i + 1))
        if behaviour is not None:
            states[i + 1] = behaviour.state
            tasks_error += behaviour.error_tasks
    if not collector.finished:
        stalled = True
    wall = time.perf_counter() - started
    capacity_of = {
        (i + 1, b.name): b.capacity for i, job in enumerate(workload.jobs) for b in job.spec.blocks if b.capacity != 1
    }
    description = dict(scenario if scenario is not None else workload.scenario)
    description.setdefault("network", network.as_dict())
    description.setdefault("faults", faults.as_dict())
    summary = summarize(
        collector.records,
        tasks_total=tasks_total,
        tasks_error=tasks_error,
        farm_capacity=sum(r.capacity for r in render_specs),
        capacity_of=capacity_of,
        policy=policy.name or type(policy).__name__,
        seed=seed,
        scenario=description,
        renders=len(render_specs),
        wall_s=wall,
        events=rt.delivered,
    )
    summary["simulated_s"] = rt.now
    summary["stalled"] = stalled
    summary["render_crashes"] = crashes[0]
    summary["runs_lost"] = sum(1 for r in collector.records if r.state == "lost")
    summary["messages_lost"] = rt.lost
    summary["jobs_refused"] = len(collector.refused)
    timings = {
        "build_s": built - started,
        "run_s": ran - built,
        "run_cpu_s": run_cpu,
        "summary_s": time.perf_counter() - ran,
    }
    return SimResult(
        collector.records, summary, states, render_specs, stalled, collector.refused, crashes[0], rt.now, timings
    )


def _run(
    rt: SimRuntime,
    collector: _Collector,
    workers: dict[str, VirtualWorker],
    watch: bool,
    faults: FaultModel,
    max_time: float | None,
) -> bool:
    """Step the environment until every job is terminal; True if it stopped because nothing could move."""
    limit = math.inf if max_time is None else max_time
    stalled = [False]
    if watch:
        _watch_for_stall(rt, collector, workers, faults, stalled)
    collector.on_finished = rt.halt
    if not collector.finished:
        with _cycle_collector_paused():
            rt.run(limit)
    if not collector.finished and not stalled[0] and not rt.env._queue:
        return True  # nothing left to happen, and not every job is terminal
    return stalled[0]


@contextmanager
def _cycle_collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector for the simulation loop.

    The loop builds a large heap that lives as long as the run (every job's tasks) and allocates short-lived
    objects at a high rate; each automatic collection then walks the long-lived heap again, which cost a
    quarter to a third of the loop's time at the default scenario. The core makes almost no reference
    cycles (a few hundred objects in a whole default run), so reference counting frees nearly everything as
    it goes and pausing the collector does not grow memory; what cycles there are go at its first pass after
    it resumes. The collector is process-wide: a caller that had it off finds it off again.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _watch_for_stall(
    rt: SimRuntime, collector: _Collector, workers: dict[str, VirtualWorker], faults: FaultModel, stalled: list[bool]
) -> None:
    """With heartbeats the schedule never empties: stop once nothing has moved for a while and nothing can.

    Nothing can move when no worker runs anything, every worker is up, no submission or job timer is pending
    and no record or job state arrived since the last look (checked every ``max(10 heartbeats, 2 zombie times)``).
    """
    every = max(10 * faults.heartbeat_s, 2 * faults.zombie_s)
    last = [-1]

    def busy_timers(key: object) -> bool:
        return key not in ("heartbeat", "zombie")

    def look() -> None:
        if collector.finished:
            return
        mark = len(collector.records) + collector.terminal + sum(1 for _ in collector.states)
        quiet = (
            mark == last[0]
            and not rt._batches
            and all(w.up and not w.running for w in workers.values())
            and rt.pending_timers(busy_timers) == 0
        )
        if quiet:
            stalled[0] = True
            rt.halt()
            return
        last[0] = mark
        rt.call_at(rt.now + every, look)

    rt.call_at(every, look)


def _schedule_crashes(
    rt: SimRuntime, renders: list[RenderSpec], faults: FaultModel, seed: int, crashes: list[int]
) -> None:
    """Crash each render's machine after Exp(MTBF), bring it back after Exp(MTTR), and again."""
    assert faults.mtbf_s is not None
    crash_rate = 1.0 / faults.mtbf_s
    repair_rate = 1.0 / faults.mttr_s
    for spec in renders:
        worker = worker_address(spec.name)
        rng = random.Random(f"{seed}/faults/{spec.name}")

        def crash(worker: str = worker, rng: random.Random = rng) -> None:
            crashes[0] += 1
            rt.send_at(rt.now, worker, Tick(rt.next_id(), "crash"))
            rt.call_at(rt.now + rng.expovariate(repair_rate), lambda: repair(worker, rng))

        def repair(worker: str, rng: random.Random) -> None:
            rt.send_at(rt.now, worker, Tick(rt.next_id(), "hello"))
            rt.call_at(rt.now + rng.expovariate(crash_rate), lambda: crash(worker, rng))

        rt.call_at(rng.expovariate(crash_rate), crash)
