"""``farmhand local``: jobs on an in-process farm of pykka actors with virtual renders.

The registry, the solver, one render actor per render and one virtual worker per render run as pykka
actors, exactly as in the server; each task takes ``task_seconds`` of real time. The run ends when every
job is done or in error (or when nothing has moved for a while, which is reported as a stall).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.frames import block_tasks
from farmhand.core.messages import (
    JobAccepted,
    JobRefused,
    JobStateChanged,
    Message,
    RenderInfo,
    RunRecord,
    SubmitJob,
    Tick,
)
from farmhand.core.policies import Policy
from farmhand.core.records import summarize
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, render_address, worker_address
from farmhand.core.solver import Solver
from farmhand.core.spec import JobSpec
from farmhand.sim.virtual_render import VirtualWorker

CLIENT = "client/local"


@dataclass
class LocalResult:
    """What a local run produced."""

    records: list[RunRecord]
    job_states: dict[int, str]
    summary: dict[str, Any]
    stalled: bool = False
    refused: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every job done."""
        return not self.stalled and not self.refused and all(s == "done" for s in self.job_states.values())


def local_renders(specs: Sequence[JobSpec], count: int) -> list[RenderInfo]:
    """``count`` identical renders that offer every tag and the capacity and memory the jobs need."""
    tags = frozenset(t for s in specs for b in s.blocks for t in b.tags)
    capacity = max((b.capacity for s in specs for b in s.blocks), default=1)
    memory = max((b.memory_mb for s in specs for b in s.blocks), default=0)
    return [
        RenderInfo(f"local-{i + 1:03d}", tags, capacity, max(1, capacity), memory, 1) for i in range(count)
    ]


class _Collector:
    """The event sink and the reply sink of a local run (called on actor threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.records: list[RunRecord] = []
        self.done_runs = 0
        self.job_states: dict[int, str] = {}
        self.job_errors: dict[int, int] = {}
        self.accepted: list[int] = []
        self.refused: list[str] = []
        self.answers = 0
        self.last_event = time.monotonic()
        self.changed = threading.Event()

    def on_event(self, _to: str, msg: Message) -> None:
        with self.lock:
            self.last_event = time.monotonic()
            if isinstance(msg, RunRecord):
                self.records.append(msg)
                if msg.state == "done":
                    self.done_runs += 1
            elif isinstance(msg, JobStateChanged):
                self.job_states[msg.job_id] = msg.state
                self.job_errors[msg.job_id] = msg.tasks_error
        self.changed.set()

    def on_reply(self, _to: str, msg: Message) -> None:
        with self.lock:
            self.answers += 1
            if isinstance(msg, JobAccepted):
                self.accepted.append(msg.job_id)
                self.job_states.setdefault(msg.job_id, "active")
            elif isinstance(msg, JobRefused):
                self.refused.extend(msg.problems)
        self.changed.set()


def run_local(
    specs: Sequence[JobSpec],
    policy: Policy,
    renders: int = 4,
    task_seconds: float = 0.2,
    user: str = "local",
    on_progress: Callable[[int, int, dict[int, str]], None] | None = None,
    stall_s: float | None = None,
    seed: int = 0,
) -> LocalResult:
    """Run ``specs`` to the end on an in-process pykka farm and return the records and states."""
    runtime = PykkaRuntime(seed=seed)
    sink = _Collector()
    runtime.sink(EVENTS, sink.on_event)
    runtime.sink(CLIENT, sink.on_reply)
    infos = local_renders(specs, renders)
    started = time.monotonic()
    stall_limit = stall_s if stall_s is not None else max(5.0, 5 * task_seconds)
    total_tasks = 0
    try:
        runtime.spawn(REGISTRY, Registry())
        runtime.spawn(SOLVER, Solver(policy))
        for info in infos:
            runtime.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
            runtime.spawn(worker_address(info.name), VirtualWorker(info, lambda _a: task_seconds))
            runtime.send(worker_address(info.name), Tick(runtime.next_id(), "hello"))
        for spec in specs:
            runtime.send(REGISTRY, SubmitJob(runtime.next_id(), spec, spec.user or user, CLIENT))
        total_tasks = sum(len(block_tasks(b)) for s in specs for b in s.blocks)
        stalled = False
        while True:
            sink.changed.wait(timeout=0.1)
            sink.changed.clear()
            with sink.lock:
                answered = sink.answers >= len(specs)
                states = dict(sink.job_states)
                done = sink.done_runs
                quiet_for = time.monotonic() - sink.last_event
            if on_progress is not None:
                on_progress(done, total_tasks, states)
            if answered and all(s in ("done", "error") for s in states.values()):
                break
            if quiet_for > stall_limit:
                stalled = True
                break
    finally:
        runtime.stop()
    wall = time.monotonic() - started
    with sink.lock:
        records = list(sink.records)
        states = dict(sink.job_states)
        errors = sum(sink.job_errors.values())
        refused = list(sink.refused)
        accepted = list(sink.accepted)
    capacity_of = {(job_id, b.name): b.capacity for job_id, s in zip(accepted, specs, strict=False) for b in s.blocks}
    summary = summarize(
        records,
        tasks_total=total_tasks,
        tasks_error=errors,
        farm_capacity=sum(i.capacity for i in infos),
        capacity_of=capacity_of,
        policy=policy.name or type(policy).__name__,
        scenario={"mode": "local", "jobs": len(specs), "task_seconds": task_seconds},
        renders=len(infos),
        wall_s=wall,
        events=runtime.messages,
    )
    return LocalResult(records, states, summary, stalled, refused)
