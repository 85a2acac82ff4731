"""Load generators for the benchmarks: synthetic jobs and render fleets driven straight through the core.

:class:`CoreFarm` hosts the registry, the solver and the jobs on the deterministic manual runtime; renders
are announced to the solver directly and assignments land in a sink, so what is timed is the scheduling
core itself: the solver's decisions and the jobs' bookkeeping, message by message.

A uniform farm (``mixed=False``) has capacity-1 renders without tags and jobs without constraints; a mixed
farm (``mixed=True``) has renders of 1, 2 or 4 slots with tag sets drawn from linux/gpu/maya/nuke, and jobs
that need tags, take 2 capacity units, are limited to some renders by a hosts mask or exclude, or cap their
running tasks: the solver's slower paths, as a real farm has them.
"""

from __future__ import annotations

from collections import deque

from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import Assign, Message, RenderInfo, RenderOnline, SubmitJob, TaskFinished
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address
from farmhand.core.solver import Solver
from farmhand.core.spec import JobSpec, parse_job


def synthetic_job(index: int, tasks: int, users: int = 10, mixed: bool = False) -> JobSpec:
    """A one-block job of ``tasks`` frames with a spread of priorities and users (and constraints if ``mixed``)."""
    block: dict[str, object] = {"name": "render", "command": "render {frame}", "frames": {"first": 1, "last": tasks}}
    if mixed:
        tags = {0: ["gpu"], 1: ["maya"], 2: ["nuke"], 3: ["linux", "maya"]}.get(index % 8)
        if tags is not None:
            block["tags"] = tags
        if index % 3 == 0:
            block["capacity"] = 2
        if index % 7 == 4:
            block["hosts_mask"] = "r.*[02468]"  # even-numbered renders only
        if index % 11 == 5:
            block["hosts_exclude"] = "r.*7"
        if index % 13 == 6:
            block["max_running_tasks"] = 5
    return parse_job(
        {
            "name": f"job{index:05d}",
            "user": f"user{index % users:02d}",
            "priority": (index * 37) % 200,
            "blocks": [block],
        }
    )


def synthetic_render(index: int, capacity: int = 1, mixed: bool = False) -> RenderInfo:
    """Render ``r{index:05d}``: ``capacity`` slots and no tags, or (``mixed``) 1, 2 or 4 slots and some tags."""
    if not mixed:
        return RenderInfo(f"r{index:05d}", frozenset(), capacity, capacity, 0, 1)
    tags = {"linux"}
    if index % 4 == 0:
        tags.add("gpu")
    if index % 3 == 0:
        tags.add("maya")
    if index % 5 == 0:
        tags.add("nuke")
    slots = (1, 2, 4)[index % 3]
    return RenderInfo(f"r{index:05d}", frozenset(tags), slots, slots, 0, slots)


class CoreFarm:
    """The core on the manual runtime with assignments collected instead of sent to workers."""

    def __init__(
        self, jobs: int, tasks: int, renders: int, policy: str = "priority", capacity: int = 1, mixed: bool = False
    ) -> None:
        self.rt = ManualRuntime(seed=0)
        self.solver = Solver(make_policy(policy))
        self.rt.spawn(REGISTRY, Registry())
        self.rt.spawn(SOLVER, self.solver)
        self.running: deque[Assign] = deque()
        self.rt.sink("render/", self._on_render_message)
        self.rt.sink(EVENTS, _drop)
        self.renders = [synthetic_render(i, capacity, mixed) for i in range(renders)]
        self.specs = [synthetic_job(i, tasks, mixed=mixed) for i in range(jobs)]

    def _on_render_message(self, _to: str, msg: Message) -> None:
        if type(msg) is Assign:
            self.running.append(msg)

    def submit_jobs(self) -> None:
        """Submit every job and run the runtime until it is quiet."""
        rt = self.rt
        for spec in self.specs:
            rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, spec.user or "user"))
        rt.run()

    def renders_online(self) -> None:
        """Bring every render online and run the runtime until it is quiet (the cold fill)."""
        rt = self.rt
        for info in self.renders:
            rt.send(SOLVER, RenderOnline(rt.next_id(), info))
        rt.run()

    def finish_one(self) -> None:
        """The oldest running task finishes: the job records it, the solver frees and refills its render."""
        a = self.running.popleft()
        rt = self.rt
        rt.send(
            job_address(a.job_id),
            TaskFinished(rt.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render, "done"),
        )
        rt.run()


def _drop(_to: str, _msg: Message) -> None:
    return None
