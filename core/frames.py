"""Tasks of a block, the order they are handed out in, and frame-by-frame dependencies between blocks.

- :func:`block_tasks` expands a :class:`~farmhand.core.spec.BlockSpec` into its tasks: one per chunk of
  ``per_task`` frames for a numeric block, the explicit tasks otherwise.
- :func:`task_order` is the dispatch order of a block's task indices (``sequential``, ``reverse``,
  ``middle``, or every Nth first).
- :func:`frame_dependencies` tells, for every task of a downstream block, which tasks of an upstream block
  cover any of its frames. Frame sets are arithmetic progressions, so two tasks share a frame exactly when
  their progressions intersect, which is decided in O(log step) without listing frames; candidates are found
  by binary search over the upstream tasks sorted by first frame.

Pure: no I/O.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections import deque
from collections.abc import Sequence
from itertools import accumulate, pairwise
from math import gcd
from typing import NamedTuple

from .spec import ORDERS, BlockSpec

__all__ = [
    "TaskFrames",
    "block_task_count",
    "block_tasks",
    "frame_dependencies",
    "frames_intersect",
    "task_frame_range",
    "task_order",
]


class TaskFrames(NamedTuple):
    """One task of a block: its name, the frames it covers (None for frameless) and its command."""

    name: str
    first: int | None
    last: int | None
    step: int
    command: str | tuple[str, ...] | None


def block_task_count(block: BlockSpec) -> int:
    """How many tasks :func:`block_tasks` gives for ``block``, without building them."""
    f = block.frames
    if f is None:
        return len(block.tasks)
    frames = (f.last - f.first) // f.step + 1
    return -(-frames // f.per_task)


def block_tasks(block: BlockSpec) -> tuple[TaskFrames, ...]:
    """The tasks of ``block``, in index order.

    A numeric block gives one task per chunk of ``per_task`` frames: chunk k starts at frame
    ``first + k * per_task * step`` and ends ``per_task - 1`` steps later or at the last frame of the range,
    whichever comes first; it is named after its frames (``"12"``, or ``"12-18"`` for several). The
    ``last`` of every chunk is a frame of the range. An explicit block gives its tasks, each with its own
    command or, failing that, the block's.
    """
    f = block.frames
    if f is None:
        return tuple(
            TaskFrames(t.name, t.first, t.last, t.step, block.command if t.command is None else t.command)
            for t in block.tasks
        )
    last_frame = f.first + (f.last - f.first) // f.step * f.step
    extent = (f.per_task - 1) * f.step
    command = block.command
    if f.per_task == 1:
        # tuple.__new__ is what the NamedTuple constructor ends in, without its Python frames: this runs per task
        new = tuple.__new__
        step = f.step
        frames = range(f.first, last_frame + 1, step)
        return tuple([new(TaskFrames, (str(frame), frame, frame, step, command)) for frame in frames])
    tasks = []
    for start in range(f.first, last_frame + 1, f.per_task * f.step):
        end = min(start + extent, last_frame)
        tasks.append(
            TaskFrames(str(start) if start == end else f"{start}-{end}", start, end, f.step, command)
        )
    return tuple(tasks)


def task_frame_range(task: TaskFrames) -> range:
    """The frames of ``task`` as a range (empty for a frameless task)."""
    if task.first is None:
        return range(0)
    last = task.first if task.last is None else task.last
    return range(task.first, last + 1, task.step)


def task_order(n: int, order: str | int) -> list[int]:
    """The order in which the ``n`` tasks of a block are handed out: a permutation of ``0..n-1``.

    ``sequential``: 0, 1, ...; ``reverse``: n-1, ..., 0; ``middle``: first, last, then the middle, then the
    middles of the two halves, and so on breadth first (for 9: 0, 8, 4, 2, 6, 1, 3, 5, 7); an int N:
    0, N, 2N, ..., then 1, N+1, ..., and so on (every Nth frame first).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0 (got {n})")
    if isinstance(order, bool) or not isinstance(order, str | int):
        raise ValueError(f"unknown order {order!r}")
    if isinstance(order, int):
        if order < 2:
            raise ValueError(f"an int order must be >= 2 (got {order})")
        return [i for start in range(min(order, n)) for i in range(start, n, order)]
    if order == "sequential":
        return list(range(n))
    if order == "reverse":
        return list(range(n - 1, -1, -1))
    if order != "middle":
        raise ValueError(f"unknown order {order!r} (expected one of {', '.join(ORDERS)} or an int >= 2)")
    if n <= 2:
        return list(range(n))
    result = [0, n - 1]
    gaps = deque([(0, n - 1)])  # exclusive bounds of the runs of indices still to place
    while gaps:
        lo, hi = gaps.popleft()
        if hi - lo < 2:
            continue
        mid = (lo + hi) // 2
        result.append(mid)
        gaps.append((lo, mid))
        gaps.append((mid, hi))
    return result


def frames_intersect(first1: int, last1: int, step1: int, first2: int, last2: int, step2: int) -> bool:
    """Whether ``range(first1, last1 + 1, step1)`` and ``range(first2, last2 + 1, step2)`` share a frame.

    Decided arithmetically (Chinese remainder theorem), without listing frames.
    """
    lo = max(first1, first2)
    hi = min(last1, last2)
    if lo > hi:
        return False
    if step2 == 1:
        return first1 + -(-(lo - first1) // step1) * step1 <= hi  # the first frame of 1 at or after lo
    if step1 == 1:
        return first2 + -(-(lo - first2) // step2) * step2 <= hi
    g = gcd(step1, step2)
    diff = first2 - first1
    if diff % g:
        return False
    # x = first1 + step1 * k with step1 * k = diff (mod step2)
    modulus = step2 // g
    k = (diff // g) * pow(step1 // g, -1, modulus) % modulus  # pow(x, -1, 1) is 0
    x0 = first1 + step1 * k
    period = step1 // g * step2
    return x0 + -(-(lo - x0) // period) * period <= hi


def frame_dependencies(
    upstream: Sequence[TaskFrames], downstream: Sequence[TaskFrames]
) -> list[tuple[int, ...]]:
    """For each downstream task, the sorted indices of the upstream tasks that cover any of its frames.

    Frames are ``first..last`` by ``step``. Frameless tasks on either side take part in nothing; a
    downstream frame no upstream task covers adds no dependency. Upstream tasks may overlap or nest.

    Cost: sorting the upstream tasks, then per downstream task two binary searches plus a scan of the
    candidates whose span overlaps it (exactly the overlapping ones when upstream spans do not nest),
    each checked in O(log step).
    """
    ups: list[tuple[int, int, int, int]] = []  # (first, aligned last, step, index)
    for index, task in enumerate(upstream):
        if task.first is None:
            continue
        last = task.first if task.last is None else task.last
        step = max(task.step, 1)
        if last < task.first:
            continue
        ups.append((task.first, task.first + (last - task.first) // step * step, step, index))
    ups.sort()
    firsts = [u[0] for u in ups]
    lasts = [u[1] for u in ups]
    steps = [u[2] for u in ups]
    indices = [u[3] for u in ups]
    # reach[k]: the furthest last frame of ups[0..k]; non-decreasing, so it can be bisected.
    reach = list(accumulate(lasts, max))
    all_step_1 = all(s == 1 for s in steps)
    in_order = all(a < b for a, b in pairwise(indices))  # then found indices come out sorted

    result: list[tuple[int, ...]] = []
    append = result.append
    for task in downstream:
        first = task.first
        if first is None or not ups:
            append(())
            continue
        step = task.step if task.step > 1 else 1
        last = first if task.last is None else task.last
        if last < first:
            append(())
            continue
        if step > 1:
            last = first + (last - first) // step * step
        hi = bisect_right(firsts, last)  # ups[:hi] start at or before our last frame
        lo = bisect_left(reach, first, 0, hi)  # before lo, nothing reaches our first frame
        if hi - lo == 1 and lasts[lo] >= first:  # the usual case: one candidate
            if (step == 1 and all_step_1) or frames_intersect(
                firsts[lo], lasts[lo], steps[lo], first, last, step
            ):
                append((indices[lo],))
            else:
                append(())
            continue
        if step == 1 and all_step_1:  # spans overlap, so frames do
            found = [indices[k] for k in range(lo, hi) if lasts[k] >= first]
        else:
            found = [
                indices[k]
                for k in range(lo, hi)
                if lasts[k] >= first and frames_intersect(firsts[k], lasts[k], steps[k], first, last, step)
            ]
        if not in_order:
            found.sort()
        append(tuple(found))
    return result
