"""Tests of the job spec: parsing, defaults, inheritance, every problem, the canonical form, commands."""

from __future__ import annotations

import copy
import json
import pickle
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farmhand.core.spec import (
    MAX_TASKS_PER_JOB,
    BlockSpec,
    FrameRange,
    JobSpec,
    SpecError,
    TaskSpec,
    format_command,
    parse_job,
    spec_to_dict,
)

Spec = dict[str, Any]


def minimal() -> Spec:
    return {
        "name": "shot",
        "blocks": [{"name": "render", "command": "render -f {frame}", "frames": {"first": 1, "last": 10}}],
    }


def complete() -> Spec:
    return {
        "name": "shot_010",
        "user": "ann",
        "priority": 120,
        "depends_on_jobs": [3, 4],
        "depend_mask": "shot_00.*",
        "depend_mask_global": "assets_.*",
        "wait_until": 1700000000,
        "tags": ["houdini", "gpu"],
        "hosts_mask": "r0.*",
        "hosts_exclude": "r013",
        "max_running_tasks": 50,
        "max_running_tasks_per_render": 2,
        "paused": True,
        "blocks": [
            {
                "name": "sim",
                "command": ["hython", "sim.py", "--frames", "{first}", "{last}"],
                "frames": {"first": 1, "last": 100, "step": 1, "per_task": 100},
                "order": "sequential",
                "capacity": 4,
                "memory_mb": 32000,
                "retries": 1,
                "avoid_render_after": 2,
                "timeout_s": 3600,
                "progress": r"Progress: (\d+)",
                "working_dir": "/proj/shot_010",
                "env": {"HOUDINI_PATH": "/opt/hou", "A": "1"},
                "tags": ["houdini"],
            },
            {
                "name": "render",
                "command": "render -f {frame} -b {block} -j {job}",
                "frames": {"first": 1, "last": 100, "step": 2, "per_task": 5},
                "depends_on_frames": ["sim"],
                "order": "middle",
                "hosts_mask": "r1.*",
                "max_running_tasks": 10,
            },
            {
                "name": "comp",
                "tasks": [
                    {"name": "slap", "command": "nuke slap.nk", "frames": [1, 100]},
                    {"name": "one", "command": "nuke one.nk", "frames": 50},
                    {
                        "name": "odd",
                        "command": ["nuke", "odd.nk"],
                        "frames": {"first": 1, "last": 99, "step": 2},
                    },
                    {"name": "notify", "command": "mail -s done ann"},
                ],
                "depends_on": ["render"],
                "order": 4,
                "tags": [],
                "max_running_tasks_per_render": None,
            },
        ],
    }


def problems(data: object, where: str = "") -> list[str]:
    with pytest.raises(SpecError) as info:
        parse_job(data, where)
    assert str(info.value) == "\n".join(info.value.problems)
    assert info.value.problems, "a SpecError always names at least one problem"
    return info.value.problems


def with_change(change: Callable[[Spec], object]) -> Spec:
    spec = complete()
    change(spec)
    return spec


# ------------------------------------------------------------------------------------------ valid specs


def test_minimal_spec_gets_the_defaults() -> None:
    spec = parse_job(minimal())
    assert spec == JobSpec(
        name="shot",
        blocks=(
            BlockSpec(
                name="render",
                command="render -f {frame}",
                frames=FrameRange(first=1, last=10, step=1, per_task=1),
            ),
        ),
    )
    assert spec.user is None
    assert spec.priority == 99
    assert spec.depends_on_jobs == ()
    assert spec.tags == frozenset()
    assert spec.paused is False
    assert spec.wait_until is None
    block = spec.blocks[0]
    assert block.tasks == ()
    assert block.depends_on == block.depends_on_frames == ()
    assert block.order == "sequential"
    assert (block.capacity, block.memory_mb, block.retries, block.avoid_render_after) == (1, 0, 3, 3)
    assert block.timeout_s is None and block.progress is None and block.working_dir is None
    assert block.env == ()
    assert block.max_running_tasks is None and block.max_running_tasks_per_render is None


def test_complete_spec_parses() -> None:
    spec = parse_job(complete())
    assert spec.name == "shot_010"
    assert spec.user == "ann"
    assert spec.priority == 120
    assert spec.depends_on_jobs == (3, 4)
    assert spec.wait_until == 1700000000.0 and isinstance(spec.wait_until, float)
    assert spec.tags == frozenset({"houdini", "gpu"})
    assert spec.paused is True
    sim, render, comp = spec.blocks
    assert sim.command == ("hython", "sim.py", "--frames", "{first}", "{last}")
    assert sim.frames == FrameRange(first=1, last=100, step=1, per_task=100)
    assert sim.timeout_s == 3600.0 and isinstance(sim.timeout_s, float)
    assert sim.env == (("A", "1"), ("HOUDINI_PATH", "/opt/hou"))  # sorted by name
    assert sim.progress == r"Progress: (\d+)"
    assert render.depends_on_frames == ("sim",)
    assert render.order == "middle"
    assert comp.frames is None
    assert comp.command is None
    assert comp.order == 4
    assert comp.tasks == (
        TaskSpec(name="slap", command="nuke slap.nk", first=1, last=100, step=1),
        TaskSpec(name="one", command="nuke one.nk", first=50, last=50, step=1),
        TaskSpec(name="odd", command=("nuke", "odd.nk"), first=1, last=99, step=2),
        TaskSpec(name="notify", command="mail -s done ann", first=None, last=None, step=1),
    )


def test_block_values_are_resolved_against_the_job() -> None:
    sim, render, comp = parse_job(complete()).blocks
    # tags: the block's own when given (even empty), the job's otherwise
    assert sim.tags == frozenset({"houdini"})
    assert render.tags == frozenset({"houdini", "gpu"})
    assert comp.tags == frozenset()
    # masks: own or inherited
    assert (sim.hosts_mask, sim.hosts_exclude) == ("r0.*", "r013")
    assert (render.hosts_mask, render.hosts_exclude) == ("r1.*", "r013")
    # caps: own or inherited; an explicit null counts as not given
    assert (sim.max_running_tasks, sim.max_running_tasks_per_render) == (50, 2)
    assert (render.max_running_tasks, render.max_running_tasks_per_render) == (10, 2)
    assert (comp.max_running_tasks, comp.max_running_tasks_per_render) == (50, 2)


def test_nulls_mean_defaults_for_nullable_fields() -> None:
    data = minimal()
    data.update(user=None, depend_mask=None, wait_until=None, hosts_mask=None, max_running_tasks=None)
    data["blocks"][0].update(timeout_s=None, progress=None, working_dir=None, tasks=None, command="x")
    spec = parse_job(data)
    assert spec.user is None and spec.blocks[0].timeout_s is None


def test_explicit_block_may_leave_out_its_command_when_every_task_has_one() -> None:
    data = {"name": "j", "blocks": [{"name": "b", "tasks": [{"name": "t", "command": "true"}]}]}
    assert parse_job(data).blocks[0].command is None


def test_dependency_lists_drop_duplicates() -> None:
    data = complete()
    data["depends_on_jobs"] = [3, 3, 4]
    data["blocks"][2]["depends_on"] = ["render", "render", "sim"]
    spec = parse_job(data)
    assert spec.depends_on_jobs == (3, 4)
    assert spec.blocks[2].depends_on == ("render", "sim")


def test_limits_are_inclusive() -> None:
    data = minimal()
    data["name"] = "x" * 200
    data["priority"] = 255
    data["blocks"][0].update(
        capacity=1, memory_mb=0, retries=0, avoid_render_after=1, order=2, timeout_s=0.001
    )
    assert parse_job(data).priority == 255
    data["priority"] = 0
    assert parse_job(data).priority == 0


def test_frames_that_are_one_frame_and_negative_frames() -> None:
    data = minimal()
    data["blocks"][0]["frames"] = {"first": -5, "last": -5}
    assert parse_job(data).blocks[0].frames == FrameRange(first=-5, last=-5)


def test_task_cap_is_inclusive() -> None:
    data = minimal()
    data["blocks"][0]["frames"] = {"first": 1, "last": MAX_TASKS_PER_JOB}
    assert parse_job(data).blocks[0].frames is not None
    data["blocks"][0]["frames"] = {"first": 1, "last": 10 * MAX_TASKS_PER_JOB, "per_task": 10}
    parse_job(data)
    data["blocks"][0]["frames"] = {"first": 1, "last": 10 * MAX_TASKS_PER_JOB + 1, "per_task": 10}
    assert problems(data) == [
        f"blocks: too many tasks in the job (got {MAX_TASKS_PER_JOB + 1} > {MAX_TASKS_PER_JOB})"
    ]


def test_specs_travel_in_messages() -> None:
    spec = parse_job(complete())
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=JobSpec) == spec
    assert msgspec.json.decode(msgspec.json.encode(spec), type=JobSpec) == spec
    assert hash(spec) == hash(parse_job(complete()))


def test_specs_are_immutable() -> None:
    spec = parse_job(minimal())
    with pytest.raises(AttributeError):
        spec.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------- problems


def test_exact_problem_lines() -> None:
    data = minimal()
    data["blocks"] = [
        {"name": "a", "command": "x", "frames": {"first": 1, "last": 10}, "colour": "red"},
        {"name": "b", "command": "x", "frames": {"first": 1, "last": 0}},
        {"name": "comp", "command": "x", "frames": {"first": 1, "last": 1}, "hosts_mask": "("},
        {"name": "comp", "command": "x", "frames": {"first": 1, "last": 1}},
    ]
    assert problems(data) == [
        "blocks[0].colour: unknown key",
        "blocks[1].frames.last: must be >= first (got 0 < 1)",
        "blocks[2].hosts_mask: invalid regex (got '('): missing ), unterminated subpattern at position 0",
        "blocks[3].name: duplicate block name 'comp'",
    ]


def test_where_prefixes_every_line_and_all_problems_come_together() -> None:
    data = {"name": "", "priority": 300, "blocks": [{"name": "a", "frames": {"first": 1, "last": 2}}], "x": 1}
    assert problems(data, "jobs/a.json") == [
        "jobs/a.json: x: unknown key",
        "jobs/a.json: name: must not be empty (got '')",
        "jobs/a.json: priority: must be between 0 and 255 (got 300)",
        "jobs/a.json: blocks[0].command: is required",
    ]


def test_dependency_cycle_is_named() -> None:
    data = {
        "name": "j",
        "blocks": [
            {"name": "a", "command": "x", "frames": {"first": 1, "last": 2}, "depends_on": ["b"]},
            {"name": "b", "command": "x", "frames": {"first": 1, "last": 2}, "depends_on_frames": ["a"]},
            {"name": "c", "command": "x", "frames": {"first": 1, "last": 2}, "depends_on": ["a"]},
        ],
    }
    assert problems(data) == ["blocks: dependency cycle a -> b -> a"]


def test_longer_cycle_and_several_cycles() -> None:
    def block(name: str, *deps: str) -> Spec:
        return {"name": name, "command": "x", "frames": {"first": 1, "last": 1}, "depends_on": list(deps)}

    data = {
        "name": "j",
        "blocks": [block("a", "b"), block("b", "c"), block("c", "a"), block("d", "e"), block("e", "d")],
    }
    assert problems(data) == [
        "blocks: dependency cycle a -> b -> c -> a",
        "blocks: dependency cycle d -> e -> d",
    ]


def test_long_dependency_chain_is_no_problem() -> None:
    blocks = [{"name": "b0", "command": "x", "frames": {"first": 1, "last": 1}}]
    blocks += [
        {"name": f"b{i}", "command": "x", "frames": {"first": 1, "last": 1}, "depends_on": [f"b{i - 1}"]}
        for i in range(1, 3000)
    ]
    assert len(parse_job({"name": "j", "blocks": blocks}).blocks) == 3000
    blocks[0]["depends_on"] = ["b2999"]
    (line,) = problems({"name": "j", "blocks": blocks})
    assert line == (
        "blocks: dependency cycle b0 -> b2999 -> b2998 -> b2997 -> b2996 -> b2995 -> ... (2990 more) -> "
        "b4 -> b3 -> b2 -> b1 -> b0"
    )


def test_not_a_mapping() -> None:
    assert problems(5) == ["job: must be a mapping (got 5)"]
    assert problems([1, 2], "f.yaml") == ["f.yaml: job: must be a mapping (got [1, 2])"]
    assert problems(None) == ["job: must be a mapping (got None)"]


def test_missing_required() -> None:
    assert problems({}) == ["name: is required", "blocks: is required"]
    assert problems({"name": "j", "blocks": [{}]}) == [
        "blocks[0].name: is required",
        "blocks[0]: needs exactly one of frames / tasks (got neither)",
        "blocks[0].command: is required",
    ]


def test_broken_types_do_not_crash() -> None:
    assert problems({"name": "j", "blocks": 5}) == ["blocks: must be a list (got 5)"]
    assert problems({"name": "j", "blocks": [{"name": "a", "command": "x", "frames": "x"}]}) == [
        "blocks[0].frames: must be a mapping (got 'x')"
    ]
    assert problems({"name": "j", "blocks": [5, "x", None]}) == [
        "blocks[0]: must be a mapping (got 5)",
        "blocks[1]: must be a mapping (got 'x')",
        "blocks[2]: must be a mapping (got None)",
    ]


def test_broken_block_does_not_cause_unknown_block_guesses() -> None:
    data = {
        "name": "j",
        "blocks": [
            {"name": 5},
            {"name": "b", "command": "x", "frames": {"first": 1, "last": 1}, "depends_on": ["a"]},
        ],
    }
    lines = problems(data)
    assert lines[0] == "blocks[0].name: must be a string (got 5)"
    assert not any("unknown block" in line for line in lines)


def _set(path: tuple[Any, ...], value: object) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        target: Any = spec
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


def _delete(path: tuple[Any, ...]) -> Callable[[Spec], None]:
    def change(spec: Spec) -> None:
        target: Any = spec
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return change


CASES: list[tuple[Callable[[Spec], object], str]] = [
    # job level
    (_set(("colour",), "red"), "colour: unknown key"),
    (_set(("name",), 5), "name: must be a string (got 5)"),
    (_set(("name",), "x" * 201), "name: must be 1-200 characters long (got 201 characters)"),
    (_delete(("name",)), "name: is required"),
    (_set(("name",), None), "name: is required"),
    (_set(("user",), ""), "user: must not be empty (got '')"),
    (_set(("user",), ["ann"]), "user: must be a string (got ['ann'])"),
    (_set(("priority",), True), "priority: must be an int (got True)"),
    (_set(("priority",), 1.5), "priority: must be an int (got 1.5)"),
    (_set(("priority",), -1), "priority: must be between 0 and 255 (got -1)"),
    (_set(("priority",), 256), "priority: must be between 0 and 255 (got 256)"),
    (_delete(("blocks",)), "blocks: is required"),
    (_set(("blocks",), []), "blocks: must have at least one block (got [])"),
    (_set(("blocks",), {"a": 1}), "blocks: must be a list (got {'a': 1})"),
    (_set(("depends_on_jobs",), 3), "depends_on_jobs: must be a list (got 3)"),
    (_set(("depends_on_jobs",), [0]), "depends_on_jobs[0]: must be >= 1 (got 0)"),
    (_set(("depends_on_jobs",), ["3"]), "depends_on_jobs[0]: must be an int (got '3')"),
    (_set(("depends_on_jobs",), [True]), "depends_on_jobs[0]: must be an int (got True)"),
    (_set(("depend_mask",), "a["), "depend_mask: invalid regex (got 'a[')"),
    (_set(("depend_mask_global",), "*"), "depend_mask_global: invalid regex (got '*')"),
    (_set(("depend_mask",), 5), "depend_mask: must be a regex string (got 5)"),
    (_set(("wait_until",), "soon"), "wait_until: must be a number (got 'soon')"),
    (_set(("wait_until",), False), "wait_until: must be a number (got False)"),
    (_set(("wait_until",), float("nan")), "wait_until: must be a finite number (got nan)"),
    (_set(("tags",), "gpu"), "tags: must be a list (got 'gpu')"),
    (_set(("tags",), ["gpu", ""]), "tags[1]: must not be empty (got '')"),
    (_set(("tags",), ["gpu", 3]), "tags[1]: must be a string (got 3)"),
    (_set(("hosts_mask",), "(a"), "hosts_mask: invalid regex (got '(a')"),
    (_set(("hosts_exclude",), "[z-a]"), "hosts_exclude: invalid regex (got '[z-a]')"),
    (_set(("max_running_tasks",), 0), "max_running_tasks: must be >= 1 (got 0)"),
    (_set(("max_running_tasks_per_render",), "2"), "max_running_tasks_per_render: must be an int (got '2')"),
    (_set(("paused",), "yes"), "paused: must be true or false (got 'yes')"),
    (_set(("paused",), 1), "paused: must be true or false (got 1)"),
    # block level
    (_set(("blocks", 0, "colour"), "red"), "blocks[0].colour: unknown key"),
    (_delete(("blocks", 0, "name")), "blocks[0].name: is required"),
    (_set(("blocks", 0, "name"), ""), "blocks[0].name: must not be empty (got '')"),
    (_set(("blocks", 0, "name"), "x" * 201), "blocks[0].name: must be 1-200 characters long"),
    (
        lambda s: s["blocks"].append(copy.deepcopy(s["blocks"][0])),
        "blocks[3].name: duplicate block name 'sim'",
    ),
    (_delete(("blocks", 0, "command")), "blocks[0].command: is required"),
    (_set(("blocks", 0, "command"), ""), "blocks[0].command: must not be empty (got '')"),
    (_set(("blocks", 0, "command"), "   "), "blocks[0].command: must not be empty (got '   ')"),
    (_set(("blocks", 0, "command"), []), "blocks[0].command: must not be an empty list (got [])"),
    (_set(("blocks", 0, "command"), ["a", 1]), "blocks[0].command[1]: must be a string (got 1)"),
    (
        _set(("blocks", 0, "command"), ["", "a"]),
        "blocks[0].command[0]: the program must not be empty (got '')",
    ),
    (
        _set(("blocks", 0, "command"), 7),
        "blocks[0].command: must be a string (shell) or a list of strings (argv) (got 7)",
    ),
    (
        _delete(("blocks", 2, "tasks", 1, "command")),
        "blocks[2].command: is required unless every task has its own command (got none for tasks[1])",
    ),
    (
        _set(("blocks", 0, "tasks"), [{"name": "t"}]),
        "blocks[0]: needs exactly one of frames / tasks (got both)",
    ),
    (_delete(("blocks", 0, "frames")), "blocks[0]: needs exactly one of frames / tasks (got neither)"),
    # frames
    (_set(("blocks", 0, "frames", "fps"), 24), "blocks[0].frames.fps: unknown key"),
    (_delete(("blocks", 0, "frames", "first")), "blocks[0].frames.first: is required"),
    (_delete(("blocks", 0, "frames", "last")), "blocks[0].frames.last: is required"),
    (_set(("blocks", 0, "frames", "first"), "1"), "blocks[0].frames.first: must be an int (got '1')"),
    (_set(("blocks", 0, "frames", "last"), True), "blocks[0].frames.last: must be an int (got True)"),
    (_set(("blocks", 0, "frames", "last"), 2**60), "blocks[0].frames.last: must be <= 9007199254740991"),
    (_set(("blocks", 0, "frames", "last"), 0), "blocks[0].frames.last: must be >= first (got 0 < 1)"),
    (_set(("blocks", 0, "frames", "step"), 0), "blocks[0].frames.step: must be >= 1 (got 0)"),
    (_set(("blocks", 0, "frames", "per_task"), 0), "blocks[0].frames.per_task: must be >= 1 (got 0)"),
    (_set(("blocks", 0, "frames"), [1, 10]), "blocks[0].frames: must be a mapping (got [1, 10])"),
    # tasks
    (_set(("blocks", 2, "tasks"), []), "blocks[2].tasks: must have at least one task (got [])"),
    (_set(("blocks", 2, "tasks"), {"name": "t"}), "blocks[2].tasks: must be a list (got {'name': 't'})"),
    (_set(("blocks", 2, "tasks", 1), "one"), "blocks[2].tasks[1]: must be a mapping (got 'one')"),
    (_set(("blocks", 2, "tasks", 1, "x"), 1), "blocks[2].tasks[1].x: unknown key"),
    (_set(("blocks", 2, "tasks", 1, "name"), "slap"), "blocks[2].tasks[1].name: duplicate task name 'slap'"),
    (_delete(("blocks", 2, "tasks", 1, "name")), "blocks[2].tasks[1].name: is required"),
    (_set(("blocks", 2, "tasks", 1, "name"), ""), "blocks[2].tasks[1].name: must not be empty (got '')"),
    (
        _set(("blocks", 2, "tasks", 1, "command"), ""),
        "blocks[2].tasks[1].command: must not be empty (got '')",
    ),
    (_set(("blocks", 2, "tasks", 1, "command"), []), "blocks[2].tasks[1].command: must not be an empty list"),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), "x"),
        "blocks[2].tasks[1].frames: must be an int, a list [first, last]",
    ),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), [1, 2, 3]),
        "blocks[2].tasks[1].frames: must be an int, a list",
    ),
    (_set(("blocks", 2, "tasks", 1, "frames"), True), "blocks[2].tasks[1].frames: must be an int, a list"),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), [5, 4]),
        "blocks[2].tasks[1].frames[1]: must be >= first (got 4 < 5)",
    ),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), [5, "6"]),
        "blocks[2].tasks[1].frames[1]: must be an int (got '6')",
    ),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), {"first": 5, "last": 4}),
        "blocks[2].tasks[1].frames.last: must be >= first (got 4 < 5)",
    ),
    (_set(("blocks", 2, "tasks", 1, "frames"), {"first": 5}), "blocks[2].tasks[1].frames.last: is required"),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), {"first": 1, "last": 4, "step": 0}),
        "blocks[2].tasks[1].frames.step: must be >= 1 (got 0)",
    ),
    (
        _set(("blocks", 2, "tasks", 1, "frames"), {"first": 1, "last": 4, "per_task": 2}),
        "blocks[2].tasks[1].frames.per_task: unknown key",
    ),
    # dependencies
    (_set(("blocks", 1, "depends_on"), "sim"), "blocks[1].depends_on: must be a list (got 'sim')"),
    (_set(("blocks", 1, "depends_on"), [""]), "blocks[1].depends_on[0]: must not be empty (got '')"),
    (_set(("blocks", 1, "depends_on"), ["sim", "fx"]), "blocks[1].depends_on[1]: unknown block 'fx'"),
    (
        _set(("blocks", 1, "depends_on"), ["render"]),
        "blocks[1].depends_on[0]: a block cannot depend on itself (got 'render')",
    ),
    (
        _set(("blocks", 1, "depends_on_frames"), ["render"]),
        "blocks[1].depends_on_frames[0]: a block cannot depend on itself",
    ),
    (_set(("blocks", 1, "depends_on_frames"), ["fx"]), "blocks[1].depends_on_frames[0]: unknown block 'fx'"),
    (
        _set(("blocks", 2, "depends_on_frames"), ["render"]),
        "blocks[2].depends_on_frames[0]: a frame-by-frame dependency needs frames on both blocks "
        "(got this block with tasks without frames)",
    ),
    (
        lambda s: (s["blocks"][2].pop("depends_on"), s["blocks"][0].update(depends_on_frames=["comp"])),
        "blocks[0].depends_on_frames[0]: a frame-by-frame dependency needs frames on both blocks "
        "(got 'comp' with tasks without frames)",
    ),
    (_set(("blocks", 0, "depends_on"), ["comp"]), "blocks: dependency cycle sim -> comp -> render -> sim"),
    # scheduling values
    (
        _set(("blocks", 0, "order"), "random"),
        "blocks[0].order: must be 'sequential', 'reverse', 'middle' or an int >= 2 (got 'random')",
    ),
    (
        _set(("blocks", 0, "order"), 1),
        "blocks[0].order: must be 'sequential', 'reverse', 'middle' or an int >= 2 (got 1)",
    ),
    (
        _set(("blocks", 0, "order"), True),
        "blocks[0].order: must be 'sequential', 'reverse', 'middle' or an int >= 2 (got True)",
    ),
    (_set(("blocks", 0, "order"), 2.0), "blocks[0].order: must be"),
    (_set(("blocks", 0, "capacity"), 0), "blocks[0].capacity: must be >= 1 (got 0)"),
    (_set(("blocks", 0, "capacity"), None), "blocks[0].capacity: must be an int (got None)"),
    (_set(("blocks", 0, "memory_mb"), -1), "blocks[0].memory_mb: must be >= 0 (got -1)"),
    (_set(("blocks", 0, "memory_mb"), 1.5), "blocks[0].memory_mb: must be an int (got 1.5)"),
    (_set(("blocks", 0, "retries"), -1), "blocks[0].retries: must be >= 0 (got -1)"),
    (_set(("blocks", 0, "avoid_render_after"), 0), "blocks[0].avoid_render_after: must be >= 1 (got 0)"),
    (_set(("blocks", 0, "timeout_s"), 0), "blocks[0].timeout_s: must be > 0 (got 0)"),
    (_set(("blocks", 0, "timeout_s"), -2.5), "blocks[0].timeout_s: must be > 0 (got -2.5)"),
    (_set(("blocks", 0, "timeout_s"), "1h"), "blocks[0].timeout_s: must be a number (got '1h')"),
    (
        _set(("blocks", 0, "timeout_s"), float("inf")),
        "blocks[0].timeout_s: must be a finite number (got inf)",
    ),
    (_set(("blocks", 0, "progress"), "(x"), "blocks[0].progress: invalid regex (got '(x')"),
    (
        _set(("blocks", 0, "progress"), r"\d+%"),
        r"blocks[0].progress: must have exactly one group (got '\\d+%' with 0)",
    ),
    (_set(("blocks", 0, "progress"), r"(\d+)/(\d+)"), "blocks[0].progress: must have exactly one group"),
    (_set(("blocks", 0, "working_dir"), 5), "blocks[0].working_dir: must be a string (got 5)"),
    (_set(("blocks", 0, "working_dir"), ""), "blocks[0].working_dir: must not be empty (got '')"),
    (
        _set(("blocks", 0, "env"), ["A=1"]),
        "blocks[0].env: must be a mapping of strings to strings (got ['A=1'])",
    ),
    (_set(("blocks", 0, "env"), {"A": 1}), "blocks[0].env.A: must be a string (got 1)"),
    (
        _set(("blocks", 0, "env"), {"A=B": "1"}),
        "blocks[0].env: names must be non-empty strings without '=' (got 'A=B')",
    ),
    (_set(("blocks", 0, "env"), {"": "1"}), "blocks[0].env: names must be non-empty strings without '='"),
    (_set(("blocks", 0, "tags"), [""]), "blocks[0].tags[0]: must not be empty (got '')"),
    (_set(("blocks", 0, "tags"), None), "blocks[0].tags: must be a list (got None)"),
    (_set(("blocks", 0, "hosts_mask"), "("), "blocks[0].hosts_mask: invalid regex (got '('): "),
    (_set(("blocks", 0, "hosts_exclude"), "+"), "blocks[0].hosts_exclude: invalid regex (got '+'): "),
    (_set(("blocks", 0, "max_running_tasks"), 0), "blocks[0].max_running_tasks: must be >= 1 (got 0)"),
    (
        _set(("blocks", 0, "max_running_tasks_per_render"), False),
        "blocks[0].max_running_tasks_per_render: must be an int (got False)",
    ),
]


@pytest.mark.parametrize(("change", "expected"), CASES, ids=[expected for _, expected in CASES])
def test_each_problem_is_reported(change: Callable[[Spec], object], expected: str) -> None:
    lines = problems(with_change(change))
    assert any(line.startswith(expected) for line in lines), lines
    assert len(lines) == 1, lines  # and nothing else: no cascades from one mistake


def test_the_valid_spec_used_by_the_cases_is_valid() -> None:
    parse_job(complete())


def test_long_values_are_shortened_in_problems() -> None:
    (line,) = problems(with_change(_set(("blocks", 0, "order"), "z" * 10_000)))
    assert len(line) < 200


def test_huge_ints_do_not_crash() -> None:
    (line,) = problems(with_change(_set(("priority",), 10**5000)))
    assert line.startswith("priority: must be between 0 and 255 (got ")


def test_recursive_data_does_not_crash() -> None:
    loop: list[object] = []
    loop.append(loop)
    assert problems({"name": "j", "blocks": loop}) == ["blocks[0]: must be a mapping (got [[[[...]]]])"]


def test_spec_error_is_a_value_error_and_pickles() -> None:
    error = SpecError(["a: x", "b: y"])
    assert isinstance(error, ValueError)
    assert str(error) == "a: x\nb: y"
    again = pickle.loads(pickle.dumps(error))
    assert again.problems == ["a: x", "b: y"] and str(again) == "a: x\nb: y"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)
KEYS = [
    "name",
    "blocks",
    "frames",
    "tasks",
    "first",
    "last",
    "step",
    "per_task",
    "command",
    "depends_on",
    "depends_on_frames",
    "order",
    "tags",
    "env",
    "priority",
    "progress",
    "hosts_mask",
    "timeout_s",
]


@given(json_values)
def test_arbitrary_data_only_ever_raises_spec_error(data: object) -> None:
    try:
        parse_job(data)
    except SpecError as e:
        assert e.problems
        assert not any("could not be checked" in p for p in e.problems), e.problems


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_random_mutations_of_a_valid_spec_only_raise_spec_error(data: st.DataObject) -> None:
    spec: Any = complete()
    for _ in range(data.draw(st.integers(1, 4))):
        # walk down to a random container, then replace or add a random key / item
        target = spec
        while True:
            children = list(target.items()) if isinstance(target, dict) else list(enumerate(target))
            containers = [(k, v) for k, v in children if isinstance(v, dict | list) and v]
            if not containers or data.draw(st.booleans()):
                break
            _, target = data.draw(st.sampled_from(containers))
        if isinstance(target, dict):
            key = data.draw(st.sampled_from(KEYS + list(target)))
            target[key] = data.draw(json_values)
        elif target:
            target[data.draw(st.integers(0, len(target) - 1))] = data.draw(json_values)
    try:
        parsed = parse_job(spec)
    except SpecError as e:
        assert e.problems
        assert not any("could not be checked" in p for p in e.problems), e.problems
    else:
        assert parse_job(json.loads(json.dumps(spec_to_dict(parsed)))) == parsed


# ------------------------------------------------------------------------------------- canonical form


def test_round_trip_through_the_canonical_dict() -> None:
    for data in (minimal(), complete()):
        spec = parse_job(data)
        canonical = spec_to_dict(spec)
        assert json.loads(json.dumps(canonical)) == canonical  # JSON-able as it is
        again = parse_job(json.loads(json.dumps(canonical)))
        assert again == spec
        assert spec_to_dict(again) == canonical


def test_canonical_dict_is_independent_of_how_the_spec_was_written() -> None:
    a = complete()
    b = copy.deepcopy(a)
    b["tags"] = list(reversed(b["tags"]))
    b["blocks"][0]["env"] = dict(reversed(list(b["blocks"][0]["env"].items())))
    b["blocks"][1]["tags"] = ["gpu", "houdini"]  # same as inheriting
    b["blocks"][2]["tasks"][1]["frames"] = [50, 50]
    assert spec_to_dict(parse_job(a)) == spec_to_dict(parse_job(b))


names = st.text(
    st.characters(codec="utf-8", exclude_categories=["Cs", "Cc", "Zl", "Zp"]),
    min_size=1,
    max_size=8,
)
regexes = st.sampled_from([None, "r.*", "a|b", "[0-9]+"])
caps = st.none() | st.integers(1, 100)
task_frames = st.integers(0, 9) | st.just([1, 3]) | st.just({"first": 2, "last": 8, "step": 3})
commands = st.text(min_size=1, max_size=10).filter(str.strip) | st.lists(names, min_size=1, max_size=3)


@st.composite
def job_specs(draw: st.DrawFn) -> Spec:
    block_names = draw(st.lists(names, min_size=1, max_size=4, unique=True))
    blocks = []
    for i, name in enumerate(block_names):
        block: Spec = {"name": name, "command": draw(commands)}
        if draw(st.booleans()):
            first = draw(st.integers(-100, 100))
            block["frames"] = {
                "first": first,
                "last": first + draw(st.integers(0, 100)),
                "step": draw(st.integers(1, 5)),
                "per_task": draw(st.integers(1, 5)),
            }
        else:
            task_names = draw(st.lists(names, min_size=1, max_size=3, unique=True))
            block["tasks"] = []
            for t in task_names:
                task: Spec = {"name": t}
                if draw(st.booleans()):
                    task["command"] = draw(commands)
                if draw(st.booleans()):
                    task["frames"] = draw(task_frames)
                block["tasks"].append(task)
        if i:
            block["depends_on"] = draw(st.lists(st.sampled_from(block_names[:i]), max_size=2))
        for key, strategy in (
            ("order", st.sampled_from(["sequential", "reverse", "middle", 2, 7])),
            ("capacity", st.integers(1, 8)),
            ("timeout_s", st.none() | st.floats(0.1, 1e6) | st.integers(1, 100)),
            (
                "env",
                st.dictionaries(
                    st.sampled_from(["A", "B", "PATH"]), st.text(max_size=4).filter(lambda s: "\0" not in s)
                ),
            ),
            ("tags", st.lists(names, max_size=3)),
            ("hosts_mask", regexes),
            ("max_running_tasks", caps),
        ):
            if draw(st.booleans()):
                block[key] = draw(strategy)
        blocks.append(block)
    spec: Spec = {"name": draw(names), "blocks": blocks}
    for key, strategy in (
        ("user", st.none() | names),
        ("priority", st.integers(0, 255)),
        ("depends_on_jobs", st.lists(st.integers(1, 10**6), max_size=3)),
        ("wait_until", st.none() | st.floats(0, 2e9) | st.integers(0, 2**40)),
        ("tags", st.lists(names, max_size=3)),
        ("hosts_mask", regexes),
        ("hosts_exclude", regexes),
        ("depend_mask", regexes),
        ("max_running_tasks", caps),
        ("max_running_tasks_per_render", caps),
        ("paused", st.booleans()),
    ):
        if draw(st.booleans()):
            spec[key] = draw(strategy)
    return spec


@given(job_specs())
def test_round_trip_property(data: Spec) -> None:
    spec = parse_job(data)
    canonical = spec_to_dict(spec)
    assert parse_job(json.loads(json.dumps(canonical))) == spec
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(spec), type=JobSpec) == spec


# -------------------------------------------------------------------------------------------- commands


def test_format_command_fills_every_placeholder() -> None:
    got = format_command(
        "r {first} {last} {frame} {step} {task} {job} {block}",
        first=11, last=20, step=3, task=4, job=77, block="render",
    )  # fmt: skip
    assert got == "r 11 20 11 3 4 77 render"


def test_format_command_leaves_other_braces_alone() -> None:
    command = "echo ${HOME} {frame} | awk '{print $1}' {} {{frame}} {Frame} {unknown}"
    got = format_command(command, first=5, last=5, step=1, task="t", job=1, block="b")
    assert got == "echo ${HOME} 5 | awk '{print $1}' {} {5} {Frame} {unknown}"


def test_format_command_argv() -> None:
    got = format_command(
        ("nuke", "-F", "{first}-{last}x{step}", "comp.nk", "{block}/{task}"),
        first=1, last=9, step=2, task="slap", job=3, block="comp",
    )  # fmt: skip
    assert got == ("nuke", "-F", "1-9x2", "comp.nk", "comp/slap")


def test_format_command_frameless_task() -> None:
    got = format_command(
        "notify {first}:{last}:{frame}:{task}", first=None, last=None, step=1, task="n", job=1, block="b"
    )
    assert got == "notify :::n"


def test_format_command_does_not_refill_inserted_values() -> None:
    got = format_command("{block} {task}", first=1, last=1, step=1, task="{job}", job=9, block="{frame}")
    assert got == "{frame} {job}"
