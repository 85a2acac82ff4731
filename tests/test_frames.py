"""Tests of task expansion, dispatch order and frame-by-frame dependencies."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Sequence
from types import FrameType
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from farmhand.core import frames as frames_module
from farmhand.core.frames import (
    TaskFrames,
    block_task_count,
    block_tasks,
    frame_dependencies,
    frames_intersect,
    task_frame_range,
    task_order,
)
from farmhand.core.spec import BlockSpec, FrameRange, TaskSpec, parse_job

R = TypeVar("R")


def numeric(first: int, last: int, step: int = 1, per_task: int = 1, command: str = "r {frame}") -> BlockSpec:
    return BlockSpec(
        name="b", command=command, frames=FrameRange(first=first, last=last, step=step, per_task=per_task)
    )


def spans(tasks: Sequence[TaskFrames]) -> list[tuple[str, int | None, int | None]]:
    return [(t.name, t.first, t.last) for t in tasks]


# ------------------------------------------------------------------------------------------- chunking


def test_one_frame_per_task() -> None:
    tasks = block_tasks(numeric(1, 4))
    assert spans(tasks) == [("1", 1, 1), ("2", 2, 2), ("3", 3, 3), ("4", 4, 4)]
    assert all(t.command == "r {frame}" and t.step == 1 for t in tasks)


def test_chunks_with_a_shorter_last_chunk() -> None:
    assert spans(block_tasks(numeric(1, 10, per_task=4))) == [("1-4", 1, 4), ("5-8", 5, 8), ("9-10", 9, 10)]
    assert spans(block_tasks(numeric(1, 9, per_task=4))) == [("1-4", 1, 4), ("5-8", 5, 8), ("9", 9, 9)]


def test_chunks_with_step() -> None:
    # frames 1 3 5 7 9 (10 is not a frame): chunks of 2 frames
    tasks = block_tasks(numeric(1, 10, step=2, per_task=2))
    assert spans(tasks) == [("1-3", 1, 3), ("5-7", 5, 7), ("9", 9, 9)]
    assert all(t.step == 2 for t in tasks)
    assert spans(block_tasks(numeric(0, 100, step=25))) == [(str(f), f, f) for f in (0, 25, 50, 75, 100)]
    assert spans(block_tasks(numeric(0, 99, step=25, per_task=3))) == [("0-50", 0, 50), ("75", 75, 75)]


def test_negative_frames_and_one_chunk() -> None:
    assert spans(block_tasks(numeric(-3, -1, per_task=2))) == [("-3--2", -3, -2), ("-1", -1, -1)]
    assert spans(block_tasks(numeric(1, 100, per_task=1000))) == [("1-100", 1, 100)]


def test_explicit_tasks_inherit_the_block_command() -> None:
    block = BlockSpec(
        name="comp",
        command="nuke {task}",
        tasks=(
            TaskSpec(name="a", first=1, last=10),
            TaskSpec(name="b", command=("own", "x"), first=3, last=3, step=1),
            TaskSpec(name="c"),
        ),
    )
    assert block_tasks(block) == (
        TaskFrames("a", 1, 10, 1, "nuke {task}"),
        TaskFrames("b", 3, 3, 1, ("own", "x")),
        TaskFrames("c", None, None, 1, "nuke {task}"),
    )
    assert block_task_count(block) == 3


@given(st.integers(-50, 50), st.integers(0, 200), st.integers(1, 7), st.integers(1, 12))
def test_chunks_cover_every_frame_once(first: int, span: int, step: int, per_task: int) -> None:
    block = numeric(first, first + span, step, per_task)
    tasks = block_tasks(block)
    assert len(tasks) == block_task_count(block)
    covered = [f for t in tasks for f in task_frame_range(t)]
    assert covered == list(range(first, first + span + 1, step))
    assert all(len(task_frame_range(t)) == per_task for t in tasks[:-1])
    assert len({t.name for t in tasks}) == len(tasks)


def test_block_task_count_without_expanding() -> None:
    assert block_task_count(numeric(1, 10**9, per_task=7)) == -(-(10**9) // 7)


def test_task_frame_range() -> None:
    assert task_frame_range(TaskFrames("t", 1, 10, 3, None)) == range(1, 11, 3)
    assert list(task_frame_range(TaskFrames("t", None, None, 1, None))) == []


# ---------------------------------------------------------------------------------------------- order


def test_orders() -> None:
    assert task_order(5, "sequential") == [0, 1, 2, 3, 4]
    assert task_order(5, "reverse") == [4, 3, 2, 1, 0]
    assert task_order(9, "middle") == [0, 8, 4, 2, 6, 1, 3, 5, 7]
    assert task_order(10, "middle") == [0, 9, 4, 2, 6, 1, 3, 5, 7, 8]
    assert task_order(10, 3) == [0, 3, 6, 9, 1, 4, 7, 2, 5, 8]
    assert task_order(3, 10) == [0, 1, 2]
    for order in ("sequential", "reverse", "middle", 2):
        assert task_order(0, order) == []
        assert task_order(1, order) == [0]


def test_bad_orders() -> None:
    with pytest.raises(ValueError):
        task_order(3, "random")
    with pytest.raises(ValueError):
        task_order(3, 1)
    with pytest.raises(ValueError):
        task_order(3, True)
    with pytest.raises(ValueError):
        task_order(-1, "sequential")


@settings(max_examples=300)
@given(st.integers(0, 300), st.sampled_from(["sequential", "reverse", "middle"]) | st.integers(2, 400))
def test_every_order_is_a_permutation(n: int, order: str | int) -> None:
    result = task_order(n, order)
    assert sorted(result) == list(range(n))


def test_every_order_is_a_permutation_exhaustively() -> None:
    for n in range(301):
        for order in ("sequential", "reverse", "middle", 2, 3, 10):
            assert sorted(task_order(n, order)) == list(range(n)), (n, order)


def test_middle_starts_coarse() -> None:
    # after the first 2 + 2**k - 1 picks, no gap between picked indices is wider than about n / 2**k
    order = task_order(1025, "middle")
    picked = sorted(order[: 2 + 15])
    assert max(b - a for a, b in itertools.pairwise(picked)) <= 1024 // 16


# --------------------------------------------------------------------------------- frame dependencies


def oracle(upstream: Sequence[TaskFrames], downstream: Sequence[TaskFrames]) -> list[tuple[int, ...]]:
    up_frames = [set(task_frame_range(t)) for t in upstream]
    return [
        tuple(i for i, frames in enumerate(up_frames) if frames & set(task_frame_range(d)))
        for d in downstream
    ]


def test_same_chunking_is_one_to_one() -> None:
    up = block_tasks(numeric(1, 5))
    assert frame_dependencies(up, up) == [(0,), (1,), (2,), (3,), (4,)]


def test_per_task_1_vs_10() -> None:
    ones = block_tasks(numeric(1, 30))
    tens = block_tasks(numeric(1, 30, per_task=10))
    # a chunk of 10 waits for its 10 single frames
    assert frame_dependencies(ones, tens) == [tuple(range(0, 10)), tuple(range(10, 20)), tuple(range(20, 30))]
    # a single frame waits for the chunk that holds it
    assert frame_dependencies(tens, ones) == [(0,)] * 10 + [(1,)] * 10 + [(2,)] * 10


def test_per_task_10_vs_3() -> None:
    tens = block_tasks(numeric(1, 30, per_task=10))  # 1-10 11-20 21-30
    threes = block_tasks(numeric(1, 30, per_task=3))  # 1-3 4-6 7-9 10-12 ... 28-30
    assert frame_dependencies(tens, threes) == [
        (0,),
        (0,),
        (0,),
        (0, 1),
        (1,),
        (1,),
        (1, 2),
        (2,),
        (2,),
        (2,),
    ]
    assert frame_dependencies(threes, tens) == [(0, 1, 2, 3), (3, 4, 5, 6), (6, 7, 8, 9)]


def test_step_2_vs_step_1() -> None:
    odd = block_tasks(numeric(1, 9, step=2))  # 1 3 5 7 9
    every = block_tasks(numeric(1, 10))  # 1..10
    assert frame_dependencies(odd, every) == [(0,), (), (1,), (), (2,), (), (3,), (), (4,), ()]
    assert frame_dependencies(every, odd) == [(0,), (2,), (4,), (6,), (8,)]
    # chunks of odd frames vs chunks of all frames: 1-5 (1 3 5) and 7-9 (7 9) vs 2-3, 4-5, 6-7, 8-9
    odd_chunks = block_tasks(numeric(1, 9, step=2, per_task=3))
    pairs = block_tasks(numeric(2, 9, per_task=2))
    assert frame_dependencies(odd_chunks, pairs) == [(0,), (0,), (1,), (1,)]


def test_steps_that_never_meet() -> None:
    even = block_tasks(numeric(0, 100, step=2, per_task=10))
    odd = block_tasks(numeric(1, 101, step=2, per_task=10))
    assert frame_dependencies(even, odd) == [()] * len(odd)
    # steps 4 and 6 from 0 meet every 12 frames
    assert frames_intersect(0, 100, 4, 0, 100, 6)
    assert not frames_intersect(1, 11, 4, 0, 100, 6)  # 1 5 9 vs 0 6 12 ...
    assert frames_intersect(2, 20, 4, 0, 100, 6)  # 2 6 ... meets at 6
    assert not frames_intersect(2, 5, 4, 0, 100, 6)  # 2 vs 0 6


def test_explicit_ranges_that_overlap_and_nest() -> None:
    up = [
        TaskFrames("all", 1, 100, 1, None),
        TaskFrames("a", 1, 10, 1, None),
        TaskFrames("b", 5, 20, 1, None),
        TaskFrames("odd", 31, 39, 2, None),
        TaskFrames("none", None, None, 1, None),
        TaskFrames("late", 90, 95, 1, None),
    ]
    down = [
        TaskFrames("x", 12, 12, 1, None),
        TaskFrames("y", 32, 38, 2, None),
        TaskFrames("z", 30, 33, 1, None),
        TaskFrames("w", 200, 300, 1, None),
        TaskFrames("v", None, None, 1, None),
        TaskFrames("u", 0, 0, 1, None),
    ]
    assert frame_dependencies(up, down) == [(0, 2), (0,), (0, 3), (), (), ()]
    assert frame_dependencies(up, down) == oracle(up, down)


def test_frameless_or_empty_sides() -> None:
    up = block_tasks(numeric(1, 3))
    assert frame_dependencies([], up) == [(), (), ()]
    assert frame_dependencies(up, []) == []
    assert frame_dependencies([TaskFrames("n", None, None, 1, None)], up) == [(), (), ()]


def test_unaligned_explicit_last_frame() -> None:
    # frames 1 4 7 (last 8 is not a frame) do not cover 8
    up = [TaskFrames("t", 1, 8, 3, None)]
    assert frame_dependencies(up, [TaskFrames("d", 8, 8, 1, None)]) == [()]
    assert frame_dependencies(up, [TaskFrames("d", 7, 8, 1, None)]) == [(0,)]


def test_works_from_parsed_specs() -> None:
    sim_block = {"name": "sim", "command": "s", "frames": {"first": 1, "last": 20, "per_task": 5}}
    render_block = {"name": "render", "command": "r", "frames": {"first": 1, "last": 20, "step": 2}}
    render_block["depends_on_frames"] = ["sim"]
    spec = parse_job({"name": "j", "blocks": [sim_block, render_block]})
    sim, render = (block_tasks(b) for b in spec.blocks)
    assert frame_dependencies(sim, render) == [(0,), (0,), (0,), (1,), (1,), (2,), (2,), (2,), (3,), (3,)]


def task_lists(min_size: int = 0) -> st.SearchStrategy[list[TaskFrames]]:
    def task(first: int, span: int, step: int, frameless: bool) -> TaskFrames:
        if frameless:
            return TaskFrames("t", None, None, 1, None)
        return TaskFrames("t", first, first + span, step, None)

    return st.lists(
        st.builds(
            task,
            st.integers(-30, 60),
            st.integers(0, 40),
            st.integers(1, 8),
            st.integers(0, 9).map(lambda x: x == 0),  # one task in ten frameless
        ),
        min_size=min_size,
        max_size=25,
    )


@settings(max_examples=400)
@given(task_lists(), task_lists())
def test_frame_dependencies_match_a_brute_force_oracle(
    upstream: list[TaskFrames], downstream: list[TaskFrames]
) -> None:
    assert frame_dependencies(upstream, downstream) == oracle(upstream, downstream)


@settings(max_examples=300)
@given(
    st.integers(-20, 20), st.integers(0, 80), st.integers(1, 4), st.integers(1, 12),
    st.integers(-20, 20), st.integers(0, 80), st.integers(1, 4), st.integers(1, 12),
)  # fmt: skip
def test_numeric_blocks_match_the_oracle(
    f1: int, s1: int, st1: int, p1: int, f2: int, s2: int, st2: int, p2: int
) -> None:
    up = block_tasks(numeric(f1, f1 + s1, st1, p1))
    down = block_tasks(numeric(f2, f2 + s2, st2, p2))
    assert frame_dependencies(up, down) == oracle(up, down)


@given(
    st.integers(-1000, 1000),
    st.integers(0, 300),
    st.integers(1, 40),
    st.integers(-1000, 1000),
    st.integers(0, 300),
    st.integers(1, 40),
)
def test_frames_intersect_matches_sets(a1: int, n1: int, s1: int, a2: int, n2: int, s2: int) -> None:
    expected = bool(set(range(a1, a1 + n1 + 1, s1)) & set(range(a2, a2 + n2 + 1, s2)))
    assert frames_intersect(a1, a1 + n1 // s1 * s1, s1, a2, a2 + n2 // s2 * s2, s2) == expected


def lines_run(fn: Callable[..., R], *args: Any) -> tuple[int, R]:
    """How many lines of :mod:`farmhand.core.frames` ``fn(*args)`` executes (comprehensions included), and what
    it returned: a count of operations that does not depend on the machine's speed, for the cost tests below."""
    count = 0
    target = frames_module.__file__

    def local(frame: FrameType, event: str, _arg: object) -> Any:
        nonlocal count
        if event == "line":
            count += 1
        return local

    def calls(frame: FrameType, _event: str, _arg: object) -> Any:
        return local if frame.f_code.co_filename == target else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        result = fn(*args)
    finally:
        sys.settrace(previous)
    return count, result


def test_the_cost_of_frame_dependencies_grows_linearly_with_the_tasks() -> None:
    """About 25 lines per downstream task and 13 per upstream one; a scan of every pair (quadratic) runs about 400
    lines per task at 100 x 100 and grows 100-fold from 100 to 1000 tasks."""
    ops: dict[int, int] = {}
    for n in (100, 1000):
        ops[n], _ = lines_run(frame_dependencies, block_tasks(numeric(1, n)), block_tasks(numeric(1, n)))
    assert ops[100] <= 30 * (100 + 100), ops
    assert ops[1000] <= 11 * ops[100], ops


def test_10k_by_10k_frames_cost_ten_times_1k_by_1k_at_any_chunking() -> None:
    for per_task in (1, 7, 100, None):  # None: one task of every frame
        ops: dict[int, int] = {}
        for n in (1000, 10_000):
            up = block_tasks(numeric(1, n))
            down = block_tasks(numeric(1, n, per_task=per_task or n))
            ops[n], deps = lines_run(frame_dependencies, up, down)
            assert sum(len(d) for d in deps) == n
        assert ops[10_000] <= 11 * ops[1000], (per_task, ops)


def test_huge_chunks_cost_by_their_count_not_their_frames() -> None:
    """Huge chunks never list frames: one task of 10**12 frames against 1000 chunks of 10**9 costs ten times one
    of 10**11 frames against 100 chunks, about 13 lines per chunk."""
    ops: dict[int, int] = {}
    for total, chunks in ((10**11, 100), (10**12, 1000)):
        up = block_tasks(numeric(1, total, per_task=total // chunks))
        ops[chunks], deps = lines_run(frame_dependencies, up, [TaskFrames("all", 1, total, 1, None)])
        assert deps == [tuple(range(chunks))]
    assert ops[1000] <= 20 * 1000 and ops[1000] <= 11 * ops[100], ops
