"""The same scenario on the pykka runtime and on the deterministic manual runtime ends in the same states."""

from __future__ import annotations

import threading

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.job import JobBehaviour
from farmhand.core.manual_runtime import ManualRuntime
from farmhand.core.messages import Assign, JobStateChanged, Message, RenderInfo, SubmitJob, Tick
from farmhand.core.policies import make_policy
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, job_address, render_address, worker_address
from farmhand.core.solver import Solver
from farmhand.core.spec import JobSpec, parse_job
from farmhand.sim.virtual_render import VirtualWorker

JOBS = [
    {
        "name": "lighting",
        "user": "ann",
        "priority": 150,
        "blocks": [
            {"name": "sim", "command": "sim {first}-{last}", "frames": {"first": 1, "last": 12, "per_task": 4}},
            {"name": "render", "command": "render {frame}", "frames": {"first": 1, "last": 12},
             "depends_on_frames": ["sim"], "order": "middle", "tags": ["gpu"]},
            {"name": "comp", "command": "comp {first}-{last}", "frames": {"first": 1, "last": 12, "per_task": 6},
             "depends_on": ["render"]},
        ],
    },
    {
        "name": "fx",
        "user": "bob",
        "blocks": [
            {"name": "broken", "command": "FAIL", "frames": {"first": 1, "last": 3}, "retries": 1},
            {"name": "after", "command": "after {frame}", "frames": {"first": 1, "last": 3},
             "depends_on_frames": ["broken"]},
            {"name": "side", "command": "side {frame}", "frames": {"first": 1, "last": 5}, "order": 2},
        ],
    },
    {
        "name": "final",
        "user": "ann",
        "depend_mask": "light.*",
        "blocks": [{"name": "pack", "command": "pack", "tasks": [{"name": "zip"}, {"name": "upload"}]}],
    },
]
RENDERS = [RenderInfo(f"r{i}", frozenset({"gpu"} if i % 2 else set()), 2, 2, 0, 1) for i in range(4)]


def _fails(a: Assign) -> bool:
    return a.command == "FAIL"


def _specs() -> list[JobSpec]:
    return [parse_job(j) for j in JOBS]


def _final_states(behaviours: dict[int, JobBehaviour]) -> dict[int, dict[tuple[str, str], str]]:
    return {job_id: b.task_states() for job_id, b in sorted(behaviours.items())}


def _on_manual() -> dict[int, dict[tuple[str, str], str]]:
    rt = ManualRuntime(seed=3)
    rt.spawn(REGISTRY, Registry())
    rt.spawn(SOLVER, Solver(make_policy("priority")))
    rt.sink(EVENTS, lambda _t, _m: None)
    for info in RENDERS:
        rt.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
        rt.spawn(worker_address(info.name), VirtualWorker(info, lambda a: 1.0 + a.task % 3, fails=_fails))
        rt.send(worker_address(info.name), Tick(rt.next_id(), "hello"))
    for spec in _specs():
        rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, spec.user or "x"))
        rt.run()
    rt.run_all()
    return _final_states({i: rt.behaviour(job_address(i)) for i in (1, 2, 3)})


def _on_pykka() -> dict[int, dict[tuple[str, str], str]]:
    rt = PykkaRuntime(seed=3)
    states: dict[int, str] = {}
    lock = threading.Lock()
    settled = threading.Event()

    def on_event(_to: str, msg: Message) -> None:
        if isinstance(msg, JobStateChanged):
            with lock:
                states[msg.job_id] = msg.state
                if len(states) == 3 and states[1] == "done" and states[3] == "done" and states[2] == "error":
                    settled.set()

    try:
        rt.sink(EVENTS, on_event)
        rt.spawn(REGISTRY, Registry())
        rt.spawn(SOLVER, Solver(make_policy("priority")))
        for info in RENDERS:
            rt.spawn(render_address(info.name), RenderBehaviour(info.name, watch=False))
            # tasks take milliseconds of real time here
            rt.spawn(worker_address(info.name), VirtualWorker(info, lambda a: 0.002 * (1 + a.task % 3), fails=_fails))
            rt.send(worker_address(info.name), Tick(rt.next_id(), "hello"))
        for spec in _specs():
            rt.send(REGISTRY, SubmitJob(rt.next_id(), spec, spec.user or "x"))
        assert settled.wait(30), f"job states never settled: {states}"
        # The event is the end: a job is done when every task is, and in error only when stuck (nothing ready,
        # nothing running); no message in flight may change a task's state after it. Checked, not waited for.
        behaviours: dict[int, JobBehaviour] = {}
        for i in (1, 2, 3):
            b = rt.behaviour(job_address(i))
            assert isinstance(b, JobBehaviour)
            counts = b.counts()
            assert counts["running"] == counts["ready"] == 0 and not b.live, (i, states[i], counts)
            behaviours[i] = b
        return _final_states(behaviours)
    finally:
        rt.stop()


def test_pykka_and_manual_runtimes_end_in_the_same_task_states() -> None:
    manual = _on_manual()
    actors = _on_pykka()
    assert manual == actors
    # and the states are the ones the scenario implies
    assert set(manual[1].values()) == {"done"}
    assert set(manual[3].values()) == {"done"}
    fx = manual[2]
    assert {fx[("broken", str(f))] for f in (1, 2, 3)} == {"error"}
    assert {fx[("after", str(f))] for f in (1, 2, 3)} == {"waiting"}
    assert {fx[("side", str(f))] for f in range(1, 6)} == {"done"}
