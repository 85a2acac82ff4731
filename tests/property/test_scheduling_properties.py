"""Scheduling properties over random job graphs and random render fleets, checked after every delivered message.

Each example builds a farm on the manual runtime (registry, solver, one render behaviour and one virtual worker per
render), submits random jobs (chunked numeric blocks, whole-block and frame-by-frame dependencies, job-on-job
dependencies by id and by name mask, start times, caps, tags, host masks) and runs it to the end. An independent
model, built from the specs and from the messages seen, checks after every delivery:

- no task starts (``Assign``) before its dependencies (tasks, blocks, jobs, ``wait_until``) are met, and no task
  runs twice at once; attempts count up by one;
- no render holds more than its capacity, task slots or memory, nor more than the per-render caps, both in the
  solver's ledger and in an independent count from ``Assign``/``TaskFinished``; jobs and blocks stay within
  ``max_running_tasks``; tags and host masks hold for every ``Assign``;
- each dispatch goes to a task eligible for the render, and under every policy no eligible ready task that ranks
  higher was known to the solver (a brute force over its state; fair share with each user's priority, weighted
  with each user's weight and a decayed usage this model integrates itself from the ledger);
- when the starvation guard starts keeping a render: the guard is on, the block has waited ``reserve_after_s``,
  does not fit now but fits the render, and has no more renders kept than ready tasks;
- at quiescence, the job's task states equal the model's, the solver's ready counts equal the jobs', and no render
  with room is idle while an eligible ready task exists (work conservation; the one exception is a render the
  guard keeps, with the guard on, for a block that has waited long enough and does not fit yet);
- at the end: with no failures every task that can run is done exactly once (one ``done`` record, no other run);
  a task that always fails runs ``retries + 1`` times, ends in error, and nothing that depends on it starts.

Contention scenarios (many small jobs, few renders) put the policy order to the test at nearly every dispatch.
Fault scenarios lose and bring back renders; mixed scenarios add restarts, skips and deletes racing lost runs
and finishes, and check that each run gets one record telling how the job ended it (a killed run is never done).
"""

from __future__ import annotations

import collections
import math
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmhand.core.job import JobBehaviour
from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import (
    Actor,
    Assign,
    AvoidRender,
    Dispatch,
    JobAccepted,
    JobAction,
    JobRefused,
    KillRun,
    Message,
    RenderInfo,
    RunLost,
    RunRecord,
    SetUser,
    SubmitJob,
    TaskFinished,
    Tick,
)
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address, render_address, worker_address
from farmhand.core.solver import BlockEntry, RenderSlot, Solver
from farmhand.core.spec import BlockSpec, JobSpec, parse_job
from farmhand.sim.virtual_render import VirtualWorker

RENDER_NAMES = ("cpu1", "cpu2", "cpu3", "gpu1", "gpu2", "big1")
HOST_MASKS = (None,) * 10 + ("cpu.*", "gpu.*", ".*1", "cpu1|gpu2")
TAGS = ("gpu", "hou")
JOB_NAMES = ("shot_a", "shot_b", "comp", "sim")
NAME_MASKS = (None, None, None, "shot_.", "comp|sim")
USERS = ("ann", "bob", "cy")

Key = tuple[int, int, int]  # job id, block index, task index


# -------------------------------------------------------------------------------------------- scenarios


@dataclass
class Scenario:
    renders: list[RenderInfo]
    jobs: list[tuple[dict[str, Any], str, float]]  # spec, user, submit time (non-decreasing)
    policy: str
    reserve_after_s: float | None
    failure: str  # none | random | always
    probability: float
    always_fail: frozenset[Key]
    seed: int
    #: each user's fair-share priority and weight, told to the solver before anything else (SetUser)
    user_settings: tuple[tuple[str, int, float], ...] = ()
    half_life_s: float = 3600.0  # the weighted policy's (short in the scenarios: past usage must matter)


def chunks(first: int, last: int, step: int, per_task: int) -> list[frozenset[int]]:
    """The frames of each task of a numeric block (computed here, not by the core)."""
    frames = list(range(first, last + 1, step))
    return [frozenset(frames[k:k + per_task]) for k in range(0, len(frames), per_task)]


@st.composite
def renders_st(draw: st.DrawFn) -> list[RenderInfo]:
    names = draw(st.lists(st.sampled_from(RENDER_NAMES), min_size=2, max_size=6, unique=True))
    out = []
    for name in names:
        tags = set(draw(st.lists(st.sampled_from(TAGS), max_size=2, unique=True)))
        if name.startswith("gpu"):
            tags.add("gpu")
        out.append(RenderInfo(
            name, frozenset(tags), draw(st.sampled_from((4, 1, 2, 3, 4))), draw(st.integers(1, 4)),
            draw(st.sampled_from((1000, 4000, 4000, 8000))),
        ))
    return out


@st.composite
def block_st(draw: st.DrawFn, index: int) -> dict[str, Any]:
    count = draw(st.integers(1, 12))
    first = draw(st.sampled_from((1, 2)))
    step = draw(st.sampled_from((1, 1, 2)))
    block: dict[str, Any] = {
        "name": f"b{index}",
        "command": "run {first} {last}",
        "frames": {"first": first, "last": first + (count - 1) * step, "step": step,
                   "per_task": draw(st.integers(1, 4))},
        "order": draw(st.sampled_from(("sequential", "reverse", "middle", 2, 3))),
        "capacity": draw(st.sampled_from((1, 1, 1, 1, 2, 3))),
        "memory_mb": draw(st.sampled_from((0, 0, 0, 500, 3000))),
        "retries": draw(st.integers(0, 2)),
        "avoid_render_after": draw(st.integers(1, 3)),
    }
    whole, frames = [], []
    for upstream in range(index):
        kind = draw(st.sampled_from(("none", "none", "whole", "frames")))
        if kind == "whole":
            whole.append(f"b{upstream}")
        elif kind == "frames":
            frames.append(f"b{upstream}")
    if whole:
        block["depends_on"] = whole
    if frames:
        block["depends_on_frames"] = frames
    for key, values in (
        ("tags", (None,) * 8 + (["gpu"], ["hou"])),
        ("hosts_mask", HOST_MASKS),
        ("hosts_exclude", (None,) * 8 + ("cpu2", "gpu.*")),
        ("max_running_tasks", (None, None, None, 1, 3)),
        ("max_running_tasks_per_render", (None, None, None, 1, 2)),
    ):
        value = draw(st.sampled_from(values))
        if value is not None:
            block[key] = value
    return block


@st.composite
def scenarios(draw: st.DrawFn, policy: str, failure: str) -> Scenario:
    renders = draw(renders_st())
    jobs: list[tuple[dict[str, Any], str, float]] = []
    at = 0.0
    for i in range(draw(st.integers(1, 6))):
        spec: dict[str, Any] = {
            "name": draw(st.sampled_from(JOB_NAMES)),
            "priority": draw(st.sampled_from((0, 50, 99, 99, 200))),
            "blocks": [draw(block_st(b)) for b in range(draw(st.integers(1, 4)))],
        }
        if i and draw(st.booleans()):
            spec["depends_on_jobs"] = draw(st.lists(st.integers(1, i), min_size=1, max_size=2, unique=True))
        for key, values in (
            ("depend_mask", NAME_MASKS),
            ("depend_mask_global", NAME_MASKS),
            ("wait_until", (None, None, None, 5.0, 20.0)),
            ("tags", (None,) * 8 + (["gpu"],)),
            ("hosts_mask", (None,) * 12 + ("cpu.*", "gpu.*")),
            ("max_running_tasks", (None, None, None, 2, 4)),
            ("max_running_tasks_per_render", (None, None, None, 1, 2)),
        ):
            value = draw(st.sampled_from(values))
            if value is not None:
                spec[key] = value
        at += draw(st.sampled_from((0.0, 0.0, 2.5, 10.0)))
        jobs.append((spec, draw(st.sampled_from(USERS)), at))
    always: set[Key] = set()
    if failure == "always":
        for _ in range(draw(st.integers(1, 3))):
            j = draw(st.integers(0, len(jobs) - 1))
            blocks = jobs[j][0]["blocks"]
            b = draw(st.integers(0, len(blocks) - 1))
            f = blocks[b]["frames"]
            count = len(chunks(f["first"], f["last"], f["step"], f["per_task"]))
            always.add((j + 1, b, draw(st.integers(0, count - 1))))
        for spec, _, _ in jobs:  # keep avoidance out of the way: every other task must stay runnable
            for block in spec["blocks"]:
                block["avoid_render_after"] = 100
    return Scenario(
        renders=renders,
        jobs=jobs,
        policy=policy,
        reserve_after_s=draw(st.sampled_from((None, 8.0, 3.0))),
        failure=failure,
        probability=draw(st.sampled_from((0.15, 0.35))) if failure == "random" else 0.0,
        always_fail=frozenset(always),
        seed=draw(st.integers(0, 2**16)),
        user_settings=draw(user_settings_st()),
        half_life_s=draw(st.sampled_from((4.0, 10.0, 30.0))),
    )


@st.composite
def user_settings_st(draw: st.DrawFn) -> tuple[tuple[str, int, float], ...]:
    """Fair-share priorities and weights for some of the users (the others keep 99 and 1.0)."""
    out = []
    for user in USERS:
        if draw(st.booleans()):
            out.append((user, draw(st.sampled_from((99, 80, 120, 140))), draw(st.sampled_from((1.0, 0.5, 2.0, 4.0)))))
    return tuple(out)


@st.composite
def contention_scenarios(draw: st.DrawFn, policy: str) -> Scenario:
    """Many small jobs of several users, submitted at distinct times, competing for a few renders: every
    dispatch is a real choice, so the policy order is tested at almost every decision."""
    renders = [
        RenderInfo(name, frozenset(), draw(st.integers(2, 4)), draw(st.integers(1, 4)),
                   draw(st.sampled_from((3000, 4000, 8000))))
        for name in draw(st.lists(st.sampled_from(RENDER_NAMES[:3]), min_size=1, max_size=3, unique=True))
    ]
    jobs: list[tuple[dict[str, Any], str, float]] = []
    at = 0.0
    for _ in range(draw(st.integers(3, 8))):
        blocks = []
        for b in range(draw(st.integers(1, 2))):
            count = draw(st.integers(1, 8))
            blocks.append({
                "name": f"b{b}", "command": "run {first} {last}",
                "frames": {"first": 1, "last": count, "per_task": 1},
                "capacity": draw(st.sampled_from((1, 1, 2))),
                "memory_mb": draw(st.sampled_from((0, 0, 0, 1000, 2500))),
            })
        spec = {"name": "job", "priority": draw(st.sampled_from((0, 50, 99, 150, 200))), "blocks": blocks}
        at += draw(st.sampled_from((0.0, 0.5, 1.0, 1.0, 2.5)))
        jobs.append((spec, draw(st.sampled_from(USERS)), at))
    return Scenario(
        renders=renders, jobs=jobs, policy=policy, reserve_after_s=draw(st.sampled_from((None, None, 2.0))),
        failure="none", probability=0.0,
        always_fail=frozenset(), seed=draw(st.integers(0, 2**16)), user_settings=draw(user_settings_st()),
        half_life_s=draw(st.sampled_from((4.0, 10.0))),
    )


# -------------------------------------------------------------------------------------------- the model


class TaskModel:
    __slots__ = ("attempts", "deps", "failures", "run_id", "state")

    def __init__(self) -> None:
        self.deps: set[Key] = set()
        self.state = "pending"  # pending (waiting or ready), running, done, error
        self.attempts = 0
        self.failures = 0
        self.run_id = 0


def host_ok(name: str, mask: str | None, exclude: str | None) -> bool:
    if mask is not None and re.fullmatch(mask, name) is None:
        return False
    return exclude is None or re.fullmatch(exclude, name) is None


def statically_fits(block: BlockSpec, info: RenderInfo) -> bool:
    return (block.tags <= info.tags and host_ok(info.name, block.hosts_mask, block.hosts_exclude)
            and block.capacity <= info.capacity and block.memory_mb <= info.memory_mb and info.max_tasks >= 1)


class World:
    """The farm, the independent model, and the checks."""

    def __init__(self, sc: Scenario) -> None:
        self.sc = sc
        self.rt = ManualRuntime(seed=sc.seed)
        options: dict[str, Any] = {"half_life_s": sc.half_life_s} if sc.policy == "weighted" else {}
        self.solver = Solver(make_policy(sc.policy, **options), reserve_after_s=sc.reserve_after_s)
        self.rt.spawn(REGISTRY, Registry())
        self.rt.spawn(SOLVER, self.solver)
        self.user_priority = dict.fromkeys(USERS, 99)
        self.user_weight = dict.fromkeys(USERS, 1.0)
        for user, priority, weight in sc.user_settings:
            self.user_priority[user] = priority
            self.user_weight[user] = weight
            self.rt.send(SOLVER, SetUser(self.rt.next_id(), user, priority, weight))
        #: the weighted policy's decayed usage, integrated here from the ledger's running capacity per user
        self.rate = math.log(2.0) / sc.half_life_s
        self.usage = dict.fromkeys(USERS, 0.0)
        self.usage_time = 0.0
        self.records: list[RunRecord] = []
        self.assigns: list[Assign] = []
        self.rt.sink(EVENTS, lambda to, m: self.records.append(m) if isinstance(m, RunRecord) else None)
        self.rt.sink("client", self._client)
        self.infos = {info.name: info for info in sc.renders}
        for info in sc.renders:
            self.rt.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
            worker = VirtualWorker(info, self._duration, failure_probability=sc.probability,
                                   fails=self._always_fails)
            self.rt.spawn(worker_address(info.name), worker)
            self.rt.send(worker_address(info.name), Tick(self.rt.next_id(), "hello"))
        # the model
        self.specs: dict[int, JobSpec] = {}
        self.users: dict[int, str] = {}
        self.submitted: dict[int, float] = {}
        self.tasks: dict[Key, TaskModel] = {}
        self.job_tasks: dict[int, list[Key]] = defaultdict(list)
        self.waits: dict[int, set[int]] = {}
        self.occupancy: dict[str, dict[int, tuple[Key, int, int]]] = {name: {} for name in self.infos}
        self.render_failures: Counter[tuple[int, int, str]] = Counter()
        self.accepted: list[int] = []
        self.decisions_checked = 0
        self.dispatches_seen = 0
        for i, (data, user, at) in enumerate(sc.jobs):
            job_id = i + 1
            spec = parse_job(data)
            self.specs[job_id] = spec
            self.users[job_id] = user
            self._build_tasks(job_id, spec)
            submit = SubmitJob(self.rt.next_id(), spec, user, "client")
            self.rt.set_timer(REGISTRY, ("submit", job_id), at, submit)
        self.rt.observers.append(self.observe)
        original = self.solver._dispatch

        def checked_dispatch(entry: BlockEntry, render: RenderSlot, ctx: Any, now: float) -> None:
            self.check_decision(entry, render)
            self.decisions_checked += 1
            original(entry, render, ctx, now)

        self.solver._dispatch = checked_dispatch  # type: ignore[method-assign]
        original_hold = self.solver._hold

        def checked_hold(render: RenderSlot, entry: BlockEntry | None) -> None:
            fresh = entry is not None and render.held_for is not entry
            original_hold(render, entry)
            if fresh:
                assert entry is not None
                self.check_hold(render, entry)

        self.solver._hold = checked_hold  # type: ignore[method-assign]

    # ---------------------------------------------------------------------------------------- setup
    def _duration(self, a: Assign) -> float:
        return 1.0 + (a.job_id * 7 + a.block * 5 + a.task * 3 + a.attempt + self.sc.seed) % 6

    def _always_fails(self, a: Assign) -> bool:
        return (a.job_id, a.block, a.task) in self.sc.always_fail

    def _build_tasks(self, job_id: int, spec: JobSpec) -> None:
        frames: dict[str, list[frozenset[int]]] = {}
        for b, block in enumerate(spec.blocks):
            f = block.frames
            assert f is not None
            mine = chunks(f.first, f.last, f.step, f.per_task)
            frames[block.name] = mine
            index = {blk.name: i for i, blk in enumerate(spec.blocks)}
            for t, task_frames in enumerate(mine):
                model = TaskModel()
                for name in block.depends_on:
                    model.deps.update((job_id, index[name], u) for u in range(len(frames[name])))
                for name in block.depends_on_frames:
                    model.deps.update(
                        (job_id, index[name], u) for u, up in enumerate(frames[name]) if up & task_frames
                    )
                self.tasks[(job_id, b, t)] = model
                self.job_tasks[job_id].append((job_id, b, t))

    def _client(self, to: str, m: Message) -> None:
        assert not isinstance(m, JobRefused), m
        if isinstance(m, JobAccepted):
            self.accepted.append(m.job_id)

    # ---------------------------------------------------------------------------------------- queries
    def job_done(self, job_id: int) -> bool:
        return all(self.tasks[k].state == "done" for k in self.job_tasks[job_id])

    def model_state(self, key: Key) -> str:
        model = self.tasks[key]
        if model.state != "pending":
            return model.state
        job_id = key[0]
        wait_until = self.specs[job_id].wait_until
        if (all(self.tasks[d].state == "done" for d in model.deps)
                and all(self.job_done(u) for u in self.waits[job_id])
                and (wait_until is None or self.rt.now >= wait_until)):
            return "ready"
        return "waiting"

    def block_spec(self, job_id: int, block: int) -> BlockSpec:
        return self.specs[job_id].blocks[block]

    def eligible(self, entry: BlockEntry, render: RenderSlot) -> bool:
        """May a task of ``entry`` run on ``render`` now, by the specs and the solver's ledger."""
        job_id = entry.job.job_id
        spec = self.specs[job_id]
        block = spec.blocks[entry.needs.block]
        if not render.online or render.paused or render.free_tasks <= 0:
            return False
        if block.capacity > render.free_cap or block.memory_mb > render.free_mem:
            return False
        if not block.tags <= render.tags or not host_ok(render.name, block.hosts_mask, block.hosts_exclude):
            return False
        if render.name in entry.avoid:
            return False
        here = [run[1] for run in (self.solver.runs[r] for r in self.solver.runs_on(render)) if run[1] is not None]
        cap = block.max_running_tasks_per_render
        if cap is not None and sum(1 for e in here if e is entry) >= cap:
            return False
        cap = spec.max_running_tasks_per_render
        return cap is None or sum(1 for e in here if e.job.job_id == job_id) < cap

    def candidates(self, render: RenderSlot) -> list[BlockEntry]:
        return [
            e for job in self.solver.jobs.values() if not job.paused
            for e in job.blocks if e.effective_ready > 0 and self.eligible(e, render)
        ]

    # ---------------------------------------------------------------------------------------- checks
    def check_decision(self, entry: BlockEntry, render: RenderSlot) -> None:
        """At the moment the solver dispatches: the choice is eligible and ranks first under the policy."""
        assert entry.effective_ready > 0
        assert self.eligible(entry, render), (entry.job.job_id, entry.needs.block, render.name)
        others = self.candidates(render)
        job_id = entry.job.job_id
        policy = self.sc.policy
        if policy == "priority":
            best = max(self.specs[e.job.job_id].priority for e in others)
            assert self.specs[job_id].priority == best, (job_id, best)
        elif policy == "fifo":
            assert (self.submitted[job_id], job_id) == min((self.submitted[e.job.job_id], e.job.job_id) for e in others)
        elif policy in ("fairshare", "weighted"):
            running = self.running_capacity()
            user = self.users[job_id]
            competing = {self.users[e.job.job_id] for e in others}
            if policy == "fairshare":  # Afanasy's need: the neediest user first
                need = {u: 1.1 ** self.user_priority[u] / (running[u] + 1) for u in competing}
                assert need[user] >= max(need.values()) * (1 - 1e-12), (user, need)
            else:  # the least loaded user first: running capacity plus decayed past usage, over the weight
                load = {u: (running[u] + self.usage[u] * self.rate) / self.user_weight[u] for u in competing}
                least = min(load.values())
                assert load[user] <= least + 1e-9 * (1.0 + abs(least)), (user, load)
            mine = [e for e in others if self.users[e.job.job_id] == user]
            key = min((-self.specs[e.job.job_id].priority, self.submitted[e.job.job_id], e.job.job_id) for e in mine)
            assert (-self.specs[job_id].priority, self.submitted[job_id], job_id) == key

    def check_hold(self, render: RenderSlot, entry: BlockEntry) -> None:
        """When the starvation guard starts keeping ``render`` for ``entry``: the guard is on, the block has waited
        long enough, may run there but for size, does not fit now, and gets at most one render per ready task."""
        after = self.solver.reserve_after_s
        assert after is not None, (render.name, "a render kept with the guard off")
        assert entry.blocked_since is not None and self.rt.now - entry.blocked_since >= after
        assert entry.needs.capacity <= render.capacity and entry.needs.memory_mb <= render.memory
        assert entry.needs.capacity > render.free_cap or entry.needs.memory_mb > render.free_mem
        kept = sum(1 for r in self.solver.renders.values() if r.held_for is entry)
        assert kept <= entry.effective_ready, (entry.job.job_id, entry.needs.block, kept, entry.effective_ready)

    def running_capacity(self) -> Counter[str]:
        """Each user's running capacity in the solver's ledger (what the fair policies weigh)."""
        running: Counter[str] = Counter()
        for _, e, capacity, _ in self.solver.runs.values():
            if e is not None:
                running[self.users[e.job.job_id]] += capacity
        return running

    def accrue_usage(self, until: float) -> None:
        """Nothing is in flight: the running capacity stays as it is until ``until``; decay and add it."""
        elapsed = until - self.usage_time
        if elapsed <= 0.0:
            return
        decay = math.exp(-self.rate * elapsed)
        running = self.running_capacity()
        for user in self.usage:
            self.usage[user] = self.usage[user] * decay + running[user] * (1.0 - decay) / self.rate
        self.usage_time = until

    def check_ledger(self) -> None:
        solver = self.solver
        for name, render in solver.renders.items():
            on_render = solver.runs_on(render)
            held = [solver.runs[r] for r in on_render]
            assert 0 <= render.free_cap <= render.capacity
            assert 0 <= render.free_tasks <= render.max_tasks
            assert 0 <= render.free_mem <= render.memory
            assert render.free_cap == render.capacity - sum(run[2] for run in held)
            assert render.free_tasks == render.max_tasks - len(held)
            assert render.free_mem == render.memory - sum(run[3] for run in held)
            # every run the workers hold is one the ledger holds
            assert set(self.occupancy[name]) <= set(on_render), (name, self.occupancy[name], on_render)

    def check_occupancy(self, name: str) -> None:
        """The independent count: what the worker of ``name`` runs fits the render and the caps."""
        info = self.infos[name]
        runs = self.occupancy[name].values()
        assert sum(c for _, c, _ in runs) <= info.capacity
        assert len(runs) <= info.max_tasks
        assert sum(m for _, _, m in runs) <= info.memory_mb
        per_job = Counter(k[0] for k, _, _ in runs)
        per_block = Counter(k[:2] for k, _, _ in runs)
        for job_id, n in per_job.items():
            cap = self.specs[job_id].max_running_tasks_per_render
            assert cap is None or n <= cap
        for (job_id, b), n in per_block.items():
            cap = self.block_spec(job_id, b).max_running_tasks_per_render
            assert cap is None or n <= cap
        everywhere = [k for occ in self.occupancy.values() for k, _, _ in occ.values()]
        for job_id, n in Counter(k[0] for k in everywhere).items():
            cap = self.specs[job_id].max_running_tasks
            assert cap is None or n <= cap
        for (job_id, b), n in Counter(k[:2] for k in everywhere).items():
            cap = self.block_spec(job_id, b).max_running_tasks
            assert cap is None or n <= cap

    def observe(self, to: str, m: Message) -> None:
        if isinstance(m, SubmitJob) and to == REGISTRY:
            job_id = len(self.submitted) + 1
            self.submitted[job_id] = self.rt.now
            spec = m.spec
            waits = {u for u in spec.depends_on_jobs if not self.job_done(u)}
            for other in range(1, job_id):
                if self.job_done(other):
                    continue
                name = self.specs[other].name
                if spec.depend_mask is not None and self.users[other] == self.users[job_id] and re.fullmatch(
                    spec.depend_mask, name
                ):
                    waits.add(other)
                if spec.depend_mask_global is not None and re.fullmatch(spec.depend_mask_global, name):
                    waits.add(other)
            self.waits[job_id] = waits
        elif isinstance(m, Assign) and to.startswith("render/"):
            self.on_assign(to.removeprefix("render/"), m)
        elif isinstance(m, TaskFinished) and to.startswith("render/"):
            del self.occupancy[m.render][m.run_id]
        elif isinstance(m, TaskFinished) and to.startswith("job/"):
            self.on_finished(m)
        elif isinstance(m, Dispatch):
            self.dispatches_seen += 1
        elif isinstance(m, AvoidRender) and to == SOLVER:
            threshold = self.block_spec(m.job_id, m.block).avoid_render_after
            assert self.render_failures[(m.job_id, m.block, m.render)] >= threshold
        self.check_ledger()

    def on_assign(self, name: str, a: Assign) -> None:
        key = (a.job_id, a.block, a.task)
        model = self.tasks[key]
        assert model.state == "pending", (key, model.state)
        assert self.model_state(key) == "ready", (key, "started before its dependencies were met")
        assert a.attempt == model.attempts + 1
        model.attempts += 1
        model.state = "running"
        model.run_id = a.run_id
        block = self.block_spec(a.job_id, a.block)
        info = self.infos[name]
        assert block.tags <= info.tags, (block.tags, info)
        assert host_ok(name, block.hosts_mask, block.hosts_exclude), (block.hosts_mask, block.hosts_exclude, name)
        assert (a.capacity, a.memory_mb) == (block.capacity, block.memory_mb)
        self.occupancy[name][a.run_id] = (key, block.capacity, block.memory_mb)
        self.check_occupancy(name)
        self.assigns.append(a)

    def on_finished(self, m: TaskFinished) -> None:
        key = (m.job_id, m.block, m.task)
        model = self.tasks[key]
        assert model.state == "running" and model.run_id == m.run_id
        if m.state == "done":
            model.state = "done"
            return
        model.failures += 1
        self.render_failures[(m.job_id, m.block, m.render)] += 1
        model.state = "error" if model.failures > self.block_spec(m.job_id, m.block).retries else "pending"

    def check_quiescent(self) -> None:
        """Nothing in flight and no timer due: the jobs, the solver and the model agree, and no render idles."""
        solver = self.solver
        assert set(solver.runs) == {r for occ in self.occupancy.values() for r in occ}
        for job_id in self.submitted:
            job: JobBehaviour = self.rt.behaviour(job_address(job_id))
            slot = solver.jobs[job_id]
            for b, block in enumerate(job.blocks):
                entry = slot.blocks[b]
                assert entry.sent == block.handled
                assert job.dispatchable(block) == entry.effective_ready, (job_id, b)
                for t, task in enumerate(block.tasks):
                    assert task.state_name == self.model_state((job_id, b, t)), (job_id, b, t)
                for name in self.infos:
                    if self.render_failures[(job_id, b, name)] >= block.spec.avoid_render_after:
                        assert name in entry.avoid
        for render in solver.renders.values():
            idle_for = self.candidates(render)
            if not idle_for:
                continue
            # the one excuse: the starvation guard keeps the render for a block that has waited long enough,
            # may run there, and does not fit in what is free now
            held = render.held_for
            after = solver.reserve_after_s
            assert after is not None and held is not None and held.item is not None, (
                render.name, "idle with eligible ready work")
            assert held.blocked_since is not None and self.rt.now - held.blocked_since >= after, (
                render.name, "kept for a block that has not waited long enough")
            assert held.effective_ready > 0
            assert held.needs.capacity <= render.capacity and held.needs.memory_mb <= render.memory
            assert held.needs.capacity > render.free_cap or held.needs.memory_mb > render.free_mem
        # the guard keeps at most one render per ready task of the block (also after its count dropped)
        kept = collections.Counter(id(r.held_for) for r in solver.renders.values() if r.held_for is not None)
        for render in solver.renders.values():
            if render.held_for is not None:
                assert kept[id(render.held_for)] <= max(render.held_for.effective_ready, 0), (
                    render.name, "more renders kept than ready tasks")

    def run(self) -> None:
        rt = self.rt
        for _ in range(100_000):
            rt.run()
            due = rt.next_timer()
            if due is not None and due <= rt.now:
                rt.fire_next_timer()
                continue
            self.check_quiescent()
            if due is None:
                break
            self.accrue_usage(due)
            rt.fire_next_timer()
        else:
            raise AssertionError("the farm did not settle")
        assert self.accepted == list(range(1, len(self.sc.jobs) + 1))

    # ---------------------------------------------------------------------------------------- the end
    def expected(self) -> dict[Key, str]:
        """What each task ends as: done, error (it always fails), or never run."""
        out: dict[Key, str] = {}
        job_ok: dict[int, bool] = {}
        for job_id in sorted(self.specs):
            spec = self.specs[job_id]
            gate = all(job_ok[u] for u in self.waits[job_id])
            for key in self.job_tasks[job_id]:
                model = self.tasks[key]
                block = spec.blocks[key[1]]
                reached = gate and all(out[d] == "done" for d in model.deps) and any(
                    statically_fits(block, info) for info in self.infos.values()
                )
                if not reached:
                    out[key] = "never"
                elif key in self.sc.always_fail:
                    out[key] = "error"
                else:
                    out[key] = "done"
            job_ok[job_id] = all(out[k] == "done" for k in self.job_tasks[job_id])
        return out

    def check_end(self) -> None:
        # every dispatch went through the decision check (the hook is on the method that sends them)
        assert self.decisions_checked == self.dispatches_seen
        assert self.solver.runs == {} and all(not occ for occ in self.occupancy.values())
        assert len(self.records) == len(self.assigns)
        runs: dict[Key, list[RunRecord]] = defaultdict(list)
        names = {}
        for job_id, spec in self.specs.items():
            for b, block in enumerate(spec.blocks):
                names[(job_id, block.name)] = b
        job_of_task: dict[tuple[int, int, str], int] = {}
        for job_id in self.specs:
            job: JobBehaviour = self.rt.behaviour(job_address(job_id))
            for b, block in enumerate(job.blocks):
                for t, task in enumerate(block.tasks):
                    job_of_task[(job_id, b, task.frames.name)] = t
        for r in self.records:
            assert r.state in ("done", "error"), r
            b = names[(r.job_id, r.block)]
            runs[(r.job_id, b, job_of_task[(r.job_id, b, r.task)])].append(r)
        for key in self.tasks:
            mine = sorted(runs[key], key=lambda r: r.attempt)
            retries = self.block_spec(key[0], key[1]).retries
            assert [r.attempt for r in mine] == list(range(1, len(mine) + 1))
            assert len(mine) <= retries + 1
            assert all(r.state == "error" for r in mine[:-1])
            job: JobBehaviour = self.rt.behaviour(job_address(key[0]))
            state = job.blocks[key[1]].tasks[key[2]].state_name
            if mine and mine[-1].state == "done":
                assert state == "done"
            elif len(mine) == retries + 1:
                assert state == "error"
        if self.sc.failure in ("none", "always"):
            expected = self.expected()
            for key, want in expected.items():
                states = [r.state for r in runs[key]]
                if want == "done":
                    assert states == ["done"], (key, states)
                elif want == "error":
                    retries = self.block_spec(key[0], key[1]).retries
                    assert states == ["error"] * (retries + 1), (key, states)
                else:
                    assert states == [], (key, states)
        for job_id in self.specs:
            job = self.rt.behaviour(job_address(job_id))
            assert (job.state == "done") == self.job_done(job_id)


# -------------------------------------------------------------------------------------------- the property


def check(sc: Scenario) -> None:
    world = World(sc)
    world.run()
    world.check_end()


POLICIES = ("priority", "fifo", "fairshare", "weighted")
FAILURES = ("none", "always", "random")
POLICY_EXAMPLES = 200  # per policy, for the contention scenarios (cheap: no dependencies, no faults)


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("policy", POLICIES)
def test_scheduling_invariants_hold_after_every_message(policy: str, failure: str) -> None:
    # one derandomized hypothesis run per policy and failure mode, so that every pair gets its share
    @settings(
        max_examples=35,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(scenarios(policy, failure))
    def run(sc: Scenario) -> None:
        check(sc)

    run()


@pytest.mark.parametrize("policy", POLICIES)
def test_every_dispatch_follows_the_policy_under_contention(policy: str) -> None:
    # small scenarios where jobs of several users, priorities and ages compete for one to three renders: the
    # policy oracle in check_decision runs at nearly every dispatch, so an order reversed, or blind to
    # priority, age, usage or weight, fails here
    @settings(
        max_examples=POLICY_EXAMPLES,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(contention_scenarios(policy))
    def run(sc: Scenario) -> None:
        world = World(sc)
        world.run()
        world.check_end()
        assert world.decisions_checked > 0

    run()


def test_the_model_frames_match_a_hand_computed_case() -> None:
    assert chunks(1, 7, 2, 2) == [frozenset({1, 3}), frozenset({5, 7})]
    assert chunks(2, 2, 1, 4) == [frozenset({2})]
    assert math.isclose(1.1**99 / 3, 1.1**99 / (2 + 1))


# -------------------------------------------------------------------------------------------- lost renders


class FlakyWorker(VirtualWorker):
    """A virtual worker that can also fall silent (stop heartbeating but keep running, a network cut)."""

    def handle(self, message: Message, ctx: Any) -> None:
        if isinstance(message, Tick) and message.name == "silence":
            ctx.cancel_timer("heartbeat")
            return
        super().handle(message, ctx)


@dataclass
class FaultScenario:
    renders: list[RenderInfo]
    jobs: list[dict[str, Any]]
    faults: list[tuple[str, str, float, float]]  # render, crash | silence, at, down for
    policy: str
    seed: int


@st.composite
def fault_scenarios(draw: st.DrawFn) -> FaultScenario:
    names = draw(st.lists(st.sampled_from(RENDER_NAMES), min_size=2, max_size=4, unique=True))
    renders = [RenderInfo(n, frozenset(), draw(st.integers(2, 4)), draw(st.integers(1, 4))) for n in names]
    jobs = []
    for _ in range(draw(st.integers(1, 4))):
        blocks = []
        for b in range(draw(st.integers(1, 3))):
            block: dict[str, Any] = {
                "name": f"b{b}", "command": "c {first}",
                "frames": {"first": 1, "last": draw(st.integers(1, 8)), "per_task": draw(st.integers(1, 3))},
                "capacity": draw(st.integers(1, 2)), "retries": 0,
            }
            if b and draw(st.booleans()):
                block["depends_on_frames" if draw(st.booleans()) else "depends_on"] = [f"b{b - 1}"]
            blocks.append(block)
        jobs.append({"name": "job", "blocks": blocks})
    faults = [
        (draw(st.sampled_from(names)), draw(st.sampled_from(("silence", "crash"))),
         draw(st.sampled_from((0.5, 2.0, 4.5, 7.0, 11.0))), draw(st.sampled_from((6.0, 1.0, 2.5, 15.0))))
        for _ in range(draw(st.integers(1, 4)))
    ]
    return FaultScenario(renders, jobs, faults, draw(st.sampled_from(POLICIES)), draw(st.integers(0, 2**16)))


class FlakyFarm:
    """A fault scenario's farm on a manual runtime: registry, solver, renders with flaky workers whose faults
    are timed, the run records kept; its jobs are parsed, not yet submitted."""

    def __init__(self, sc: FaultScenario) -> None:
        self.rt = rt = ManualRuntime(seed=sc.seed)
        self.solver = Solver(make_policy(sc.policy), reserve_after_s=None)
        rt.spawn(REGISTRY, Registry())
        rt.spawn(SOLVER, self.solver)
        self.records: list[RunRecord] = []
        rt.sink(EVENTS, lambda to, m: self.records.append(m) if isinstance(m, RunRecord) else None)
        self.workers: dict[str, FlakyWorker] = {}
        self.infos = {info.name: info for info in sc.renders}
        for info in sc.renders:
            rt.spawn(render_address(info.name), RenderBehaviour(info.name, heartbeat_s=1.0, zombie_s=3.0))
            self.workers[info.name] = FlakyWorker(
                info, lambda a: 2.0 + 3 * ((a.task + a.block + a.attempt) % 3), heartbeat=True
            )
            rt.spawn(worker_address(info.name), self.workers[info.name])
            rt.send(worker_address(info.name), Tick(rt.next_id(), "hello"))
        for i, (name, kind, at, down) in enumerate(sc.faults):
            rt.set_timer(worker_address(name), ("fault", i), at, Tick(rt.next_id(), kind))
            rt.set_timer(worker_address(name), ("back", i), at + down, Tick(rt.next_id(), "hello"))
        self.specs = [parse_job(data) for data in sc.jobs]


def check_with_faults(sc: FaultScenario) -> None:
    farm = FlakyFarm(sc)
    rt, solver, records, workers, infos, specs = (
        farm.rt, farm.solver, farm.records, farm.workers, farm.infos, farm.specs
    )
    for spec in specs:
        rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann"))
    done: set[Key] = set()
    current: dict[Key, int] = {}

    def observe(to: str, m: Message) -> None:
        # the capacity ledger, and what each worker really runs, stay within the render
        for render in solver.renders.values():
            assert 0 <= render.free_cap <= render.capacity and 0 <= render.free_tasks <= render.max_tasks
        running_where: Counter[Key] = Counter()
        for name, worker in workers.items():
            runs = list(worker.running.values())
            assert sum(a.capacity for a in runs) <= infos[name].capacity, name
            assert len(runs) <= infos[name].max_tasks, name
            running_where.update((a.job_id, a.block, a.task) for a in runs if a.run_id == current.get(
                (a.job_id, a.block, a.task)))
        assert all(n == 1 for n in running_where.values())  # no task's current run is in two places
        if isinstance(m, Assign) and to.startswith("render/"):
            key = (m.job_id, m.block, m.task)
            assert key not in done, key
            job: JobBehaviour = rt.behaviour(job_address(m.job_id))
            spec = job.blocks[m.block].spec
            index = {b.spec.name: b.index for b in job.blocks}
            for name in spec.depends_on:
                assert all((m.job_id, index[name], t) in done for t in range(len(job.blocks[index[name]].tasks)))
            current[key] = m.run_id
        elif isinstance(m, TaskFinished) and to.startswith("job/") and m.state == "done":
            key = (m.job_id, m.block, m.task)
            if current.get(key) == m.run_id:
                assert key not in done
                done.add(key)

    rt.observers.append(observe)
    total = sum(len(JobBehaviour(1, spec, "x", 0.0).blocks[b].tasks) for spec in specs for b in range(len(spec.blocks)))
    while len(done) < total:
        rt.run()
        assert rt.fire_next_timer() and rt.now < 1000.0, "the farm never finished"
    rt.run()
    per_task: dict[tuple[int, str, str], list[RunRecord]] = defaultdict(list)
    for r in records:
        per_task[(r.job_id, r.block, r.task)].append(r)
    assert sum(len(v) for v in per_task.values()) == len(records) and len(per_task) == total
    for runs in per_task.values():
        assert sorted(r.attempt for r in runs) == list(range(1, len(runs) + 1))
        assert [r.state for r in runs].count("done") == 1
        assert {r.state for r in runs} <= {"done", "lost"}
    for job_id in range(1, len(specs) + 1):
        assert rt.behaviour(job_address(job_id)).state == "done"


@settings(max_examples=50, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(fault_scenarios())
def test_lost_and_returning_renders_never_lose_or_double_a_task(sc: FaultScenario) -> None:
    check_with_faults(sc)


# -------------------------------------------------------------------------------------------- user actions

Action = tuple[float, int, str, int, tuple[int, ...], bool, bool]  # at, job id, action, block, tasks, down, errors


@st.composite
def action_scenarios(draw: st.DrawFn) -> tuple[Scenario, list[Action]]:
    sc = draw(scenarios(draw(st.sampled_from(("priority", "fairshare"))), draw(st.sampled_from(("none", "random")))))
    actions = []
    for _ in range(draw(st.integers(1, 8))):
        j = draw(st.integers(0, len(sc.jobs) - 1))
        blocks = sc.jobs[j][0]["blocks"]
        b = draw(st.integers(-1, len(blocks) - 1))
        tasks: tuple[int, ...] = ()
        if b >= 0 and draw(st.booleans()):
            f = blocks[b]["frames"]
            count = len(chunks(f["first"], f["last"], f["step"], f["per_task"]))
            tasks = tuple(draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3, unique=True)))
        actions.append((
            draw(st.sampled_from((1.0, 3.0, 6.0, 12.0, 25.0))), j + 1,
            draw(st.sampled_from(("restart", "restart", "skip", "pause", "resume", "priority"))),
            b, tasks, draw(st.booleans()), draw(st.booleans()),
        ))
    return sc, actions


def check_job_bookkeeping(job: JobBehaviour) -> None:
    """The job's counters and readiness agree with its tasks' states (recomputed from scratch)."""
    finished = (3, 5)  # done, skipped
    by_name = {b.spec.name: b for b in job.blocks}
    assert job.finished_tasks == sum(t.state in finished for b in job.blocks for t in b.tasks)
    assert job.error_tasks == sum(t.state == 4 for b in job.blocks for t in b.tasks)
    assert job.running == sum(t.state == 2 for b in job.blocks for t in b.tasks)
    unmet: Counter[tuple[int, int]] = Counter()
    for up in job.blocks:
        for i, downs in up.frame_down.items():
            if up.tasks[i].state not in finished:
                unmet.update(downs)
    for block in job.blocks:
        assert block.ready == sum(t.state == 1 for t in block.tasks)
        assert block.running == sum(t.state == 2 for t in block.tasks)
        assert block.unfinished == sum(t.state not in finished for t in block.tasks)
        blocked = sum(1 for name in block.spec.depends_on if by_name[name].unfinished)
        assert block.blocked == blocked, (block.spec.name, block.blocked, blocked)
        for task in block.tasks:
            assert task.unmet == unmet[(block.index, task.index)], (block.spec.name, task.index)
            free = task.unmet == 0 and block.blocked == 0 and not job.gated
            if task.state == 0:
                assert not free, (block.spec.name, task.index, "waiting with nothing to wait for")
            elif task.state == 1:
                assert free, (block.spec.name, task.index, "ready while its dependencies are not met")
            elif task.state == 2:
                assert task.run_id in job.live


def check_with_actions(sc: Scenario, actions: list[Action]) -> None:
    rt = ManualRuntime(seed=sc.seed)
    solver = Solver(make_policy(sc.policy), reserve_after_s=sc.reserve_after_s)
    rt.spawn(REGISTRY, Registry())
    rt.spawn(SOLVER, solver)
    records: list[RunRecord] = []
    rt.sink(EVENTS, lambda to, m: records.append(m) if isinstance(m, RunRecord) else None)
    rt.sink("client", lambda to, m: None)
    run_of: dict[int, tuple[int, str, str, int]] = {}  # run id -> job id, block name, task name, attempt
    killed: set[int] = set()
    workers = {}
    for info in sc.renders:
        rt.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
        workers[info.name] = VirtualWorker(info, lambda a: 1.0 + (a.task * 3 + a.block + a.attempt) % 5,
                                           failure_probability=sc.probability)
        rt.spawn(worker_address(info.name), workers[info.name])
        rt.send(worker_address(info.name), Tick(rt.next_id(), "hello"))
    specs: dict[int, JobSpec] = {}
    for i, (data, user, at) in enumerate(sc.jobs):
        specs[i + 1] = parse_job(data)
        rt.set_timer(REGISTRY, ("submit", i), at, SubmitJob(rt.next_id(), specs[i + 1], user, "client"))
    users = {i + 1: user for i, (_, user, _) in enumerate(sc.jobs)}
    for i, (at, job_id, action, block, tasks, downstream, errors_only) in enumerate(actions):
        by = Actor(users[job_id]) if i % 3 else Actor("root", admin=True)
        msg = JobAction(rt.next_id(), job_id, action, by, "client", block, tasks, downstream, errors_only, 7 * i % 256)
        rt.set_timer(REGISTRY, ("act", i), 30.0 + at, msg)
    for job_id in specs:  # in the end every job runs again
        resume = JobAction(rt.next_id(), job_id, "resume", Actor("root", True))
        rt.set_timer(REGISTRY, ("resume", job_id), 100.0, resume)
    infos = {info.name: info for info in sc.renders}

    def observe(to: str, m: Message) -> None:
        for render in solver.renders.values():
            assert 0 <= render.free_cap <= render.capacity and 0 <= render.free_tasks <= render.max_tasks
        for name, worker in workers.items():
            assert sum(a.capacity for a in worker.running.values()) <= infos[name].capacity
            assert len(worker.running) <= infos[name].max_tasks
        if isinstance(m, Assign) and to.startswith("render/"):
            assigned: JobBehaviour = rt.behaviour(job_address(m.job_id))
            block_of = assigned.blocks[m.block]
            run_of[m.run_id] = (m.job_id, block_of.spec.name, block_of.tasks[m.task].frames.name, m.attempt)
        elif isinstance(m, KillRun) and to.startswith("render/"):
            killed.add(m.run_id)
        if isinstance(m, Dispatch) and to in rt.behaviours:
            job: JobBehaviour = rt.behaviour(to)
            block = job.blocks[m.block]
            started = [t for t in block.tasks if t.run_id == m.id and t.state == 2]
            for task in started:  # it starts now: everything it depends on is done or skipped now
                index = {b.spec.name: b for b in job.blocks}
                for name in block.spec.depends_on:
                    assert all(t.state in (3, 5) for t in index[name].tasks)
                assert task.unmet == 0
        if to.startswith("job/") and to in rt.behaviours:
            check_job_bookkeeping(rt.behaviour(to))

    rt.observers.append(observe)
    for _ in range(100_000):
        rt.run()
        due = rt.next_timer()
        if due is None:
            break
        if due > rt.now:  # quiescent: the jobs and the solver agree on what may be dispatched
            for job_id in specs:
                address = job_address(job_id)
                if address in rt.behaviours and job_id in solver.jobs:
                    job = rt.behaviour(address)
                    for b, block in enumerate(job.blocks):
                        assert job.dispatchable(block) == solver.jobs[job_id].blocks[b].effective_ready
        rt.fire_next_timer()
        while (again := rt.next_timer()) is not None and again <= rt.now:
            rt.fire_next_timer()  # timers due together race: an action and the finish of a run it stops
    assert solver.runs == {}
    for job_id in specs:
        job = rt.behaviour(job_address(job_id))
        check_job_bookkeeping(job)
        assert (job.state == "done") == (job.finished_tasks == job.total_tasks)
    # every run gets one record; a run the job killed (restart, skip) is recorded killed, never done
    by_run: dict[tuple[int, str, str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        by_run[(r.job_id, r.block, r.task, r.attempt)].append(r)
    assert set(by_run) == set(run_of.values())
    for run_id, ident in run_of.items():
        (record,) = by_run[ident]
        assert record.state == "killed" if run_id in killed else record.state in ("done", "error"), (ident, record)


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(action_scenarios())
def test_user_actions_keep_jobs_and_ledger_consistent(case: tuple[Scenario, list[Any]]) -> None:
    check_with_actions(*case)


# -------------------------------------------------------------------------------------------- actions and faults

MixedAction = tuple[float, int, str, int, tuple[int, ...], bool]  # at, job id, action, block, tasks, downstream


@dataclass
class MixedScenario:
    faults: FaultScenario
    actions: list[MixedAction]


@st.composite
def mixed_scenarios(draw: st.DrawFn) -> MixedScenario:
    """Lost and returning renders, with restarts, skips and deletes landing while runs are lost or in doubt."""
    sc = draw(fault_scenarios())
    actions: list[MixedAction] = []
    for _ in range(draw(st.integers(1, 6))):
        j = draw(st.integers(0, len(sc.jobs) - 1))
        blocks = sc.jobs[j]["blocks"]
        b = draw(st.integers(-1, len(blocks) - 1))
        tasks: tuple[int, ...] = ()
        if b >= 0 and draw(st.booleans()):
            f = blocks[b]["frames"]
            count = len(chunks(f["first"], f["last"], 1, f["per_task"]))
            tasks = tuple(draw(st.lists(st.integers(0, count - 1), min_size=1, max_size=3, unique=True)))
        action = draw(st.sampled_from(("restart", "restart", "restart", "skip", "skip", "delete")))
        # the faults fall at 0.5 .. 11 s and a crashed render is declared lost 3 s later: act in between
        at = draw(st.sampled_from((0.5, 1.0, 2.0, 2.5, 3.0, 4.5, 5.0, 6.0, 7.5, 8.0, 9.0, 12.0, 13.5)))
        actions.append((at, j + 1, action, b, tasks, draw(st.booleans())))
    return MixedScenario(sc, actions)


def check_actions_with_faults(mixed: MixedScenario) -> None:
    sc = mixed.faults
    farm = FlakyFarm(sc)
    rt, solver, records, workers, infos, specs = (
        farm.rt, farm.solver, farm.records, farm.workers, farm.infos, farm.specs
    )
    rt.sink("client", lambda to, m: None)
    for spec in specs:
        rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, "ann", "client"))
    deleted: set[int] = set()
    for i, (at, job_id, action, block, tasks, downstream) in enumerate(mixed.actions):
        msg = JobAction(rt.next_id(), job_id, action, Actor("ann"), "client", block, tasks, downstream)
        rt.set_timer(REGISTRY, ("act", i), at, msg)
        if action == "delete":
            deleted.add(job_id)

    # the independent record of runs: each assigned run, and how the job ended it (if it did)
    run_of: dict[int, tuple[int, str, str, int]] = {}  # run id -> job id, block name, task name, attempt
    render_of: dict[int, str] = {}
    key_of: dict[int, Key] = {}
    runs_of_task: dict[Key, list[int]] = defaultdict(list)
    ended: set[int] = set()  # the job reported, killed or lost it: its task may run again
    killed: set[int] = set()  # the job stopped it (restart, skip, delete): never counted as done

    def observe(to: str, m: Message) -> None:
        for render in solver.renders.values():
            assert 0 <= render.free_cap <= render.capacity and 0 <= render.free_tasks <= render.max_tasks
        for name, worker in workers.items():
            assert sum(a.capacity for a in worker.running.values()) <= infos[name].capacity, name
            assert len(worker.running) <= infos[name].max_tasks, name
        if isinstance(m, Assign) and to.startswith("render/"):
            key = (m.job_id, m.block, m.task)
            earlier = [r for r in runs_of_task[key] if r not in ended]
            assert not earlier, (key, "assigned again while run", earlier, "is still its own")
            job: JobBehaviour = rt.behaviour(job_address(m.job_id))
            block = job.blocks[m.block]
            run_of[m.run_id] = (m.job_id, block.spec.name, block.tasks[m.task].frames.name, m.attempt)
            render_of[m.run_id] = m.render
            key_of[m.run_id] = key
            runs_of_task[key].append(m.run_id)
        elif isinstance(m, KillRun) and to.startswith("render/") and m.reason in ("restarted", "skipped", "deleted"):
            killed.add(m.run_id)
            ended.add(m.run_id)
        elif isinstance(m, TaskFinished | RunLost) and to.startswith("job/") and render_of.get(m.run_id) == m.render:
            ended.add(m.run_id)  # the job has its report (a lost run counts only from the render it was on)
        if to.startswith("job/") and to in rt.behaviours:
            check_job_bookkeeping(rt.behaviour(to))

    rt.observers.append(observe)
    live_jobs = [job_id for job_id in range(1, len(specs) + 1) if job_id not in deleted]

    def finished() -> bool:
        return rt.now > 14.0 and all(rt.behaviour(job_address(j)).state == "done" for j in live_jobs)

    while not finished():
        rt.run()
        # every timer due at this instant fires before any of their messages is delivered: a restart and the
        # finish of the run it kills race, as they do on a real farm
        assert rt.fire_next_timer() and rt.now < 1000.0, "the farm never finished"
        while (due := rt.next_timer()) is not None and due <= rt.now:
            rt.fire_next_timer()
    rt.run()
    for job_id in live_jobs:
        job: JobBehaviour = rt.behaviour(job_address(job_id))
        check_job_bookkeeping(job)
        assert job.finished_tasks == job.total_tasks and not job.live
    # every run assigned gets exactly one record, and the record says how the job ended it
    by_run: dict[tuple[int, str, str, int], list[RunRecord]] = defaultdict(list)
    for r in records:
        by_run[(r.job_id, r.block, r.task, r.attempt)].append(r)
    assert set(by_run) == set(run_of.values()), "a run without a record, or a record without a run"
    for run_id, ident in run_of.items():
        (record,) = by_run[ident]
        if run_id in killed:
            assert record.state in ("killed", "lost"), (ident, record.state, "a run the job killed")
        else:
            assert record.state in ("done", "lost"), (ident, record.state)
    # a done task of a job still there is done by its last run
    for key, run_ids in runs_of_task.items():
        if key[0] in deleted:
            continue
        done = [r for r in run_ids if by_run[run_of[r]][0].state == "done"]
        job = rt.behaviour(job_address(key[0]))
        task = job.blocks[key[1]].tasks[key[2]]
        if task.state_name == "done":
            assert done and done[-1] == run_ids[-1], (key, run_ids, done)


@settings(max_examples=200, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(mixed_scenarios())
def test_actions_on_lost_and_returning_renders_keep_runs_and_records_straight(mixed: MixedScenario) -> None:
    check_actions_with_faults(mixed)
