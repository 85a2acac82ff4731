"""The starvation guard: a big high-priority task among a stream of small low-priority ones.

Two renders of capacity 4 are kept busy by small tasks whose finishes are staggered, so a render never has
its whole capacity free at once. A high-priority task that needs a whole render then starves for as long as
small tasks remain (a known open problem of Afanasy); with the guard, renders are kept free for it once it
has waited ``reserve_after_s``, and it starts within that plus the longest small task.
"""

from __future__ import annotations

from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import Message, RenderInfo, RunRecord, SubmitJob, Tick
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, render_address, worker_address
from farmhand.core.solver import Solver
from farmhand.core.spec import parse_job
from farmhand.sim.virtual_render import VirtualWorker

SMALL_TASKS = 400
LONGEST_SMALL_S = 17.5


def _duration(assign: object) -> float:
    task = getattr(assign, "task", 0)
    if getattr(assign, "block_name", "") == "big":
        return 30.0
    return 10.0 + (task % 4) * 2.5


def _run(reserve_after_s: float | None) -> tuple[float, float]:
    """(when the big task started, when the last small task finished)."""
    rt = ManualRuntime(seed=1)
    records: list[RunRecord] = []

    def on_event(_to: str, msg: Message) -> None:
        if isinstance(msg, RunRecord):
            records.append(msg)

    rt.sink(EVENTS, on_event)
    rt.spawn(REGISTRY, Registry())
    rt.spawn(SOLVER, Solver(make_policy("priority"), reserve_after_s=reserve_after_s))
    for i in range(2):
        info = RenderInfo(f"r{i}", frozenset(), 4, 4, 0, 1)
        rt.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
        rt.spawn(worker_address(info.name), VirtualWorker(info, _duration))
        rt.send(worker_address(info.name), Tick(rt.next_id(), "hello"))
    small = parse_job({"name": "small", "priority": 10, "blocks": [
        {"name": "small", "command": "s {frame}", "frames": {"first": 1, "last": SMALL_TASKS}}]})
    big = parse_job({"name": "big", "priority": 250, "blocks": [
        {"name": "big", "command": "b", "tasks": [{"name": "whole"}], "capacity": 4}]})
    rt.send(REGISTRY, SubmitJob(rt.next_id(), small, "lowly"))
    rt.advance(25.0)  # the renders are full of staggered small tasks
    rt.send(REGISTRY, SubmitJob(rt.next_id(), big, "boss"))
    rt.run_all()
    big_start = next(r.starting_time for r in records if r.block == "big")
    last_small = max(r.finish_time for r in records if r.block == "small")
    assert sum(1 for r in records if r.state == "done") == SMALL_TASKS + 1
    return big_start, last_small


def test_without_the_guard_the_big_task_starves_until_the_small_ones_run_out() -> None:
    big_start, last_small = _run(None)
    assert big_start >= last_small - LONGEST_SMALL_S  # it started only as the stream dried up
    assert big_start > 0.9 * SMALL_TASKS * 13.75 / 8  # about the whole stream's length


def test_with_the_guard_the_big_task_starts_within_a_bounded_time() -> None:
    submitted = 25.0
    reserve_after = 60.0
    big_start, last_small = _run(reserve_after)
    assert big_start - submitted <= reserve_after + LONGEST_SMALL_S + 1e-9
    assert big_start < last_small  # and small tasks went on running around it
