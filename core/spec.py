"""The job spec: an immutable model of a submitted job, its parser and its canonical form.

A job spec arrives as plain data (a mapping decoded from JSON or YAML). :func:`parse_job` checks all of it
against the rules of the public contract and either returns a frozen :class:`JobSpec` or raises
:class:`SpecError` listing *every* problem, one line each, in the form ``<place>: <rule> (got <value>)``,
for example ``blocks[1].frames.last: must be >= first (got 0 < 1)``.

Block-level ``tags``, ``hosts_mask``, ``hosts_exclude``, ``max_running_tasks`` and
``max_running_tasks_per_render`` are *resolved* while parsing: a block's own value when it gives one (a
``null`` counts as not given), the job's value otherwise. :func:`spec_to_dict` gives back a canonical,
JSON-able mapping that parses to an equal spec. :func:`format_command` fills a command's placeholders.

This module is pure: no I/O, no clocks, no global state beyond constants.
"""

from __future__ import annotations

import math
import re
import reprlib
import unicodedata
from collections.abc import Mapping, Sequence
from typing import TypeGuard

from msgspec import Struct

__all__ = [
    "DEFAULT_AVOID_RENDER_AFTER",
    "DEFAULT_CAPACITY",
    "DEFAULT_MEMORY_MB",
    "DEFAULT_ORDER",
    "DEFAULT_PRIORITY",
    "DEFAULT_RETRIES",
    "INT_LIMIT",
    "MAX_NAME_LENGTH",
    "MAX_TASKS_PER_JOB",
    "ORDERS",
    "PLACEHOLDERS",
    "BlockSpec",
    "FrameRange",
    "JobSpec",
    "SpecError",
    "TaskSpec",
    "format_command",
    "parse_job",
    "spec_to_dict",
]

DEFAULT_PRIORITY = 99
DEFAULT_CAPACITY = 1
DEFAULT_MEMORY_MB = 0
DEFAULT_RETRIES = 3
DEFAULT_AVOID_RENDER_AFTER = 3
DEFAULT_ORDER = "sequential"
ORDERS = ("sequential", "reverse", "middle")
MAX_NAME_LENGTH = 200
MAX_TASKS_PER_JOB = 1_000_000
#: Every integer in a spec must fit here, so that specs survive JSON and msgpack unchanged.
INT_LIMIT = 2**53 - 1
#: The placeholders :func:`format_command` knows; any other brace is left alone.
PLACEHOLDERS = ("first", "last", "frame", "step", "task", "job", "block")

Command = str | tuple[str, ...]


class FrameRange(Struct, frozen=True, kw_only=True):
    """The frames of a numeric block: ``first..last`` by ``step``, ``per_task`` frames per task."""

    first: int
    last: int
    step: int = 1
    per_task: int = 1


class TaskSpec(Struct, frozen=True, kw_only=True):
    """One explicit task of a block; ``command`` None means the block's command, ``first`` None frameless."""

    name: str
    command: str | tuple[str, ...] | None = None
    first: int | None = None
    last: int | None = None
    step: int = 1


class BlockSpec(Struct, frozen=True, kw_only=True):
    """A block of tasks of one kind; the scheduling fields are already resolved against the job."""

    name: str
    command: str | tuple[str, ...] | None = None
    frames: FrameRange | None = None
    tasks: tuple[TaskSpec, ...] = ()
    depends_on: tuple[str, ...] = ()
    depends_on_frames: tuple[str, ...] = ()
    order: str | int = DEFAULT_ORDER
    capacity: int = DEFAULT_CAPACITY
    memory_mb: int = DEFAULT_MEMORY_MB
    retries: int = DEFAULT_RETRIES
    avoid_render_after: int = DEFAULT_AVOID_RENDER_AFTER
    timeout_s: float | None = None
    progress: str | None = None
    working_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    tags: frozenset[str] = frozenset()
    hosts_mask: str | None = None
    hosts_exclude: str | None = None
    max_running_tasks: int | None = None
    max_running_tasks_per_render: int | None = None


class JobSpec(Struct, frozen=True, kw_only=True):
    """A whole job as submitted: its blocks and its job-level scheduling fields."""

    name: str
    blocks: tuple[BlockSpec, ...]
    user: str | None = None
    priority: int = DEFAULT_PRIORITY
    depends_on_jobs: tuple[int, ...] = ()
    depend_mask: str | None = None
    depend_mask_global: str | None = None
    wait_until: float | None = None
    tags: frozenset[str] = frozenset()
    hosts_mask: str | None = None
    hosts_exclude: str | None = None
    max_running_tasks: int | None = None
    max_running_tasks_per_render: int | None = None
    paused: bool = False


class SpecError(ValueError):
    """An invalid job spec; ``problems`` holds one line per problem, ``str(error)`` joins them by newlines."""

    problems: list[str]

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))

    def __reduce__(self) -> tuple[type[SpecError], tuple[list[str]]]:
        return (SpecError, (self.problems,))


# --------------------------------------------------------------------------------------------- parsing

_JOB_KEYS = (
    "name", "user", "priority", "blocks", "depends_on_jobs", "depend_mask", "depend_mask_global",
    "wait_until", "tags", "hosts_mask", "hosts_exclude", "max_running_tasks",
    "max_running_tasks_per_render", "paused",
)  # fmt: skip
_BLOCK_KEYS = (
    "name", "command", "frames", "tasks", "depends_on", "depends_on_frames", "order", "capacity",
    "memory_mb", "retries", "avoid_render_after", "timeout_s", "progress", "working_dir", "env", "tags",
    "hosts_mask", "hosts_exclude", "max_running_tasks", "max_running_tasks_per_render",
)  # fmt: skip
_FRAMES_KEYS = ("first", "last", "step", "per_task")
_TASK_KEYS = ("name", "command", "frames")
_TASK_FRAMES_KEYS = ("first", "last", "step")


class _Missing:
    """The type of :data:`_MISSING`, the marker of an absent key."""


_MISSING = _Missing()

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlong = 30
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 6
_repr.maxlevel = 3


def _got(value: object) -> str:
    """A short, always printable rendering of a value for a problem line."""
    try:
        return _repr.repr(value)
    except Exception:  # e.g. an int too long to print, or a broken __repr__
        return f"<{type(value).__name__}>"


def _at(base: str, key: str | int) -> str:
    """The place of ``key`` (a field name or a list index) inside ``base``."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    return f"{base}.{key}" if base else key


def _is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (``True`` is not a frame number)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _compile(pattern: str) -> tuple[re.Pattern[str] | None, str]:
    try:
        return re.compile(pattern), ""
    except (re.error, OverflowError, RecursionError, ValueError) as e:
        return None, str(e)


class _BlockInfo(Struct):
    """What the cross-block checks need to know of a parsed block; None where it could not be told."""

    place: str
    name: str | None
    has_frames: bool | None
    task_count: int | None
    depends_on: list[tuple[int, str]]
    depends_on_frames: list[tuple[int, str]]


#: Unicode categories a name may not hold: control characters (tabs, newlines, NUL...) and line breaks
_CONTROL = frozenset({"Cc", "Zl", "Zp"})


class _Parser:
    """Collects problems while turning plain data into specs; every method tolerates any input type."""

    def __init__(self, accepted: bool = False) -> None:
        self.problems: list[str] = []
        self.accepted = accepted

    def add(self, place: str, rule: str) -> None:
        self.problems.append(f"{place}: {rule}")

    # -- containers

    def mapping(self, place: str, value: object, keys: Sequence[str]) -> Mapping[str, object] | None:
        """``value`` as a mapping with only known keys (unknown keys are reported and dropped)."""
        if not isinstance(value, Mapping):
            self.add(place or "job", f"must be a mapping (got {_got(value)})")
            return None
        known: dict[str, object] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                self.add(place or "job", f"keys must be strings (got {_got(key)})")
            elif key not in keys:
                self.add(_at(place, key), "unknown key")
            else:
                known[key] = item
        return known

    def list_(self, place: str, value: object) -> Sequence[object] | None:
        if not isinstance(value, list | tuple):
            self.add(place, f"must be a list (got {_got(value)})")
            return None
        return value

    # -- scalars

    def int_(self, place: str, value: object, lo: int = -INT_LIMIT, hi: int = INT_LIMIT) -> int | None:
        if not _is_int(value):
            self.add(place, f"must be an int (got {_got(value)})")
            return None
        if lo <= value <= hi:
            return value
        if hi != INT_LIMIT:
            self.add(place, f"must be between {lo} and {hi} (got {_got(value)})")
        elif value < lo:
            self.add(place, f"must be >= {lo} (got {_got(value)})")
        else:
            self.add(place, f"must be <= {hi} (got {_got(value)})")
        return None

    def number(self, place: str, value: object, *, positive: bool = False) -> float | None:
        if not (_is_int(value) or isinstance(value, float)):
            self.add(place, f"must be a number (got {_got(value)})")
            return None
        try:
            result = float(value)
        except OverflowError:
            result = math.inf
        if not math.isfinite(result):
            self.add(place, f"must be a finite number (got {_got(value)})")
            return None
        if positive and result <= 0:
            self.add(place, f"must be > 0 (got {_got(value)})")
            return None
        return result

    def str_(self, place: str, value: object, *, max_length: int | None = None) -> str | None:
        if not isinstance(value, str):
            self.add(place, f"must be a string (got {_got(value)})")
            return None
        if not value:
            self.add(place, "must not be empty (got '')")
            return None
        if max_length is not None and len(value) > max_length:
            self.add(place, f"must be 1-{max_length} characters long (got {len(value)} characters)")
            return None
        return value

    def name(self, place: str, value: object) -> str | None:
        name = self.str_(place, value, max_length=MAX_NAME_LENGTH)
        if name is not None and not self.accepted and any(unicodedata.category(c) in _CONTROL for c in name):
            self.add(place, f"must not contain control characters or line breaks (got {_got(value)})")
            return None
        return name

    def bool_(self, place: str, value: object) -> bool | None:
        if not isinstance(value, bool):
            self.add(place, f"must be true or false (got {_got(value)})")
            return None
        return value

    def regex(self, place: str, value: object) -> re.Pattern[str] | None:
        if not isinstance(value, str):
            self.add(place, f"must be a regex string (got {_got(value)})")
            return None
        compiled, error = _compile(value)
        if compiled is None:
            self.add(place, f"invalid regex (got {_got(value)}): {error}")
        return compiled

    def strings(self, place: str, value: object) -> list[str] | None:
        """A list of non-empty strings, duplicates dropped, order kept."""
        items = self.list_(place, value)
        if items is None:
            return None
        result: list[str] = []
        ok = True
        for i, item in enumerate(items):
            text = self.str_(_at(place, i), item)
            if text is None:
                ok = False
            elif text not in result:
                result.append(text)
        return result if ok else None

    def command(self, place: str, value: object) -> Command | None:
        if isinstance(value, str):
            if not value.strip():
                self.add(place, f"must not be empty (got {_got(value)})")
                return None
            return value
        if not isinstance(value, list | tuple):
            self.add(place, f"must be a string (shell) or a list of strings (argv) (got {_got(value)})")
            return None
        if not value:
            self.add(place, "must not be an empty list (got [])")
            return None
        argv: list[str] = []
        for i, item in enumerate(value):
            if not isinstance(item, str):
                self.add(_at(place, i), f"must be a string (got {_got(item)})")
            elif i == 0 and not item:
                self.add(_at(place, 0), "the program must not be empty (got '')")
            else:
                argv.append(item)
        return tuple(argv) if len(argv) == len(value) else None

    # -- fields of a mapping

    def field(
        self, d: Mapping[str, object], base: str, key: str, *, required: bool = False
    ) -> object | _Missing:
        """The value of ``key``; absent and (unless required) ``null`` both give :data:`_MISSING`."""
        value = d.get(key, _MISSING)
        if value is None and not required:
            return _MISSING
        if required and (value is _MISSING or value is None):
            self.add(_at(base, key), "is required")
            return _MISSING
        return value

    def opt_int(self, d: Mapping[str, object], base: str, key: str, default: int, lo: int) -> int:
        value = d.get(key, _MISSING)
        if value is _MISSING:
            return default
        result = self.int_(_at(base, key), value, lo=lo)
        return default if result is None else result

    def cap(self, d: Mapping[str, object], base: str, key: str, inherited: int | None) -> int | None:
        value = self.field(d, base, key)
        if isinstance(value, _Missing):
            return inherited
        return self.int_(_at(base, key), value, lo=1)

    def opt_regex(self, d: Mapping[str, object], base: str, key: str, inherited: str | None) -> str | None:
        value = self.field(d, base, key)
        if isinstance(value, _Missing):
            return inherited
        compiled = self.regex(_at(base, key), value)
        return None if compiled is None else compiled.pattern

    # -- the levels

    def job(self, data: object) -> JobSpec | None:
        d = self.mapping("", data, _JOB_KEYS)
        if d is None:
            return None
        name = None
        value = self.field(d, "", "name", required=True)
        if not isinstance(value, _Missing):
            name = self.name("name", value)
        user = None
        value = self.field(d, "", "user")
        if not isinstance(value, _Missing):
            user = self.name("user", value)
        priority = DEFAULT_PRIORITY
        if "priority" in d:
            got = self.int_("priority", d["priority"], lo=0, hi=255)
            priority = DEFAULT_PRIORITY if got is None else got
        depends_on_jobs: list[int] = []
        if "depends_on_jobs" in d:
            items = self.list_("depends_on_jobs", d["depends_on_jobs"])
            for i, item in enumerate(items or ()):
                job_id = self.int_(_at("depends_on_jobs", i), item, lo=1)
                if job_id is not None and job_id not in depends_on_jobs:
                    depends_on_jobs.append(job_id)
        depend_mask = self.opt_regex(d, "", "depend_mask", None)
        depend_mask_global = self.opt_regex(d, "", "depend_mask_global", None)
        wait_until = None
        value = self.field(d, "", "wait_until")
        if not isinstance(value, _Missing):
            wait_until = self.number("wait_until", value)
        tags: frozenset[str] = frozenset()
        if "tags" in d:
            tags = frozenset(self.strings("tags", d["tags"]) or ())
        hosts_mask = self.opt_regex(d, "", "hosts_mask", None)
        hosts_exclude = self.opt_regex(d, "", "hosts_exclude", None)
        max_running = self.cap(d, "", "max_running_tasks", None)
        max_running_per_render = self.cap(d, "", "max_running_tasks_per_render", None)
        paused = False
        if "paused" in d:
            paused = bool(self.bool_("paused", d["paused"]))

        inherited = JobSpec(
            name=name or "",
            blocks=(),
            tags=tags,
            hosts_mask=hosts_mask,
            hosts_exclude=hosts_exclude,
            max_running_tasks=max_running,
            max_running_tasks_per_render=max_running_per_render,
        )
        blocks: list[BlockSpec] = []
        infos: list[_BlockInfo] = []
        value = self.field(d, "", "blocks", required=True)
        if not isinstance(value, _Missing):
            items = self.list_("blocks", value)
            if items is not None and not items:
                self.add("blocks", "must have at least one block (got [])")
            for i, item in enumerate(items or ()):
                block, info = self.block(_at("blocks", i), item, inherited)
                infos.append(info)
                if block is not None:
                    blocks.append(block)
        self.check_blocks(infos)

        if self.problems or name is None:
            return None
        return JobSpec(
            name=name,
            user=user,
            priority=priority,
            blocks=tuple(blocks),
            depends_on_jobs=tuple(depends_on_jobs),
            depend_mask=depend_mask,
            depend_mask_global=depend_mask_global,
            wait_until=wait_until,
            tags=tags,
            hosts_mask=hosts_mask,
            hosts_exclude=hosts_exclude,
            max_running_tasks=max_running,
            max_running_tasks_per_render=max_running_per_render,
            paused=paused,
        )

    def block(self, base: str, data: object, job: JobSpec) -> tuple[BlockSpec | None, _BlockInfo]:
        info = _BlockInfo(base, None, None, None, [], [])
        d = self.mapping(base, data, _BLOCK_KEYS)
        if d is None:
            return None, info
        before = len(self.problems)

        name = None
        value = self.field(d, base, "name", required=True)
        if not isinstance(value, _Missing):
            name = self.name(_at(base, "name"), value)
        info.name = name

        command = None
        command_value = self.field(d, base, "command")
        if not isinstance(command_value, _Missing):
            command = self.command(_at(base, "command"), command_value)

        frames_value = self.field(d, base, "frames")
        tasks_value = self.field(d, base, "tasks")
        has_frames_key = not isinstance(frames_value, _Missing)
        has_tasks_key = not isinstance(tasks_value, _Missing)
        if has_frames_key and has_tasks_key:
            self.add(base, "needs exactly one of frames / tasks (got both)")
        elif not has_frames_key and not has_tasks_key:
            self.add(base, "needs exactly one of frames / tasks (got neither)")
        frames = None
        if has_frames_key:
            frames = self.frame_range(_at(base, "frames"), frames_value)
            if frames is not None and not has_tasks_key:
                info.has_frames = True
                nframes = (frames.last - frames.first) // frames.step + 1
                info.task_count = -(-nframes // frames.per_task)
        tasks: tuple[TaskSpec, ...] = ()
        if has_tasks_key:
            parsed = self.tasks(_at(base, "tasks"), tasks_value)
            if parsed is not None:
                tasks = parsed
                if not has_frames_key:
                    info.has_frames = all(t.first is not None for t in tasks)
                    info.task_count = len(tasks)

        if command is None and isinstance(command_value, _Missing):
            if not has_tasks_key:
                self.add(_at(base, "command"), "is required")
            elif tasks:
                missing = [i for i, t in enumerate(tasks) if t.command is None]
                if missing:
                    self.add(
                        _at(base, "command"),
                        "is required unless every task has its own command "
                        f"(got none for {_at('tasks', missing[0])}"
                        + (f" and {len(missing) - 1} more)" if len(missing) > 1 else ")"),
                    )

        for key, target in (("depends_on", info.depends_on), ("depends_on_frames", info.depends_on_frames)):
            if key in d:
                items = self.list_(_at(base, key), d[key])
                for i, item in enumerate(items or ()):
                    text = self.str_(_at(_at(base, key), i), item)
                    if text is not None and text not in (t for _, t in target):
                        target.append((i, text))

        order: str | int = DEFAULT_ORDER
        if "order" in d:
            value = d["order"]
            if (isinstance(value, str) and value in ORDERS) or (_is_int(value) and 2 <= value <= INT_LIMIT):
                order = value
            else:
                self.add(
                    _at(base, "order"),
                    f"must be 'sequential', 'reverse', 'middle' or an int >= 2 (got {_got(value)})",
                )
        capacity = self.opt_int(d, base, "capacity", DEFAULT_CAPACITY, 1)
        memory_mb = self.opt_int(d, base, "memory_mb", DEFAULT_MEMORY_MB, 0)
        retries = self.opt_int(d, base, "retries", DEFAULT_RETRIES, 0)
        avoid = self.opt_int(d, base, "avoid_render_after", DEFAULT_AVOID_RENDER_AFTER, 1)
        timeout_s = None
        value = self.field(d, base, "timeout_s")
        if not isinstance(value, _Missing):
            timeout_s = self.number(_at(base, "timeout_s"), value, positive=True)
        progress = None
        value = self.field(d, base, "progress")
        if not isinstance(value, _Missing):
            compiled = self.regex(_at(base, "progress"), value)
            if compiled is not None:
                if compiled.groups != 1:
                    self.add(
                        _at(base, "progress"),
                        f"must have exactly one group (got {_got(value)} with {compiled.groups})",
                    )
                else:
                    progress = compiled.pattern
        working_dir = None
        value = self.field(d, base, "working_dir")
        if not isinstance(value, _Missing):
            working_dir = self.str_(_at(base, "working_dir"), value)
        env: list[tuple[str, str]] = []
        if "env" in d:
            env = self.env(_at(base, "env"), d["env"])
        tags = job.tags
        if "tags" in d:
            tags = frozenset(self.strings(_at(base, "tags"), d["tags"]) or ())
        hosts_mask = self.opt_regex(d, base, "hosts_mask", job.hosts_mask)
        hosts_exclude = self.opt_regex(d, base, "hosts_exclude", job.hosts_exclude)
        max_running = self.cap(d, base, "max_running_tasks", job.max_running_tasks)
        max_running_per_render = self.cap(
            d, base, "max_running_tasks_per_render", job.max_running_tasks_per_render
        )

        if len(self.problems) > before or name is None:
            return None, info
        return (
            BlockSpec(
                name=name,
                command=command,
                frames=frames,
                tasks=tasks,
                depends_on=tuple(t for _, t in info.depends_on),
                depends_on_frames=tuple(t for _, t in info.depends_on_frames),
                order=order,
                capacity=capacity,
                memory_mb=memory_mb,
                retries=retries,
                avoid_render_after=avoid,
                timeout_s=timeout_s,
                progress=progress,
                working_dir=working_dir,
                env=tuple(sorted(env)),
                tags=tags,
                hosts_mask=hosts_mask,
                hosts_exclude=hosts_exclude,
                max_running_tasks=max_running,
                max_running_tasks_per_render=max_running_per_render,
            ),
            info,
        )

    def frame_range(self, base: str, data: object) -> FrameRange | None:
        d = self.mapping(base, data, _FRAMES_KEYS)
        if d is None:
            return None
        before = len(self.problems)
        first = last = None
        value = self.field(d, base, "first", required=True)
        if not isinstance(value, _Missing):
            first = self.int_(_at(base, "first"), value)
        value = self.field(d, base, "last", required=True)
        if not isinstance(value, _Missing):
            last = self.int_(_at(base, "last"), value)
        step = self.opt_int(d, base, "step", 1, 1)
        per_task = self.opt_int(d, base, "per_task", 1, 1)
        if first is not None and last is not None and last < first:
            self.add(_at(base, "last"), f"must be >= first (got {last} < {first})")
        if len(self.problems) > before or first is None or last is None:
            return None
        return FrameRange(first=first, last=last, step=step, per_task=per_task)

    def tasks(self, base: str, data: object) -> tuple[TaskSpec, ...] | None:
        items = self.list_(base, data)
        if items is None:
            return None
        if not items:
            self.add(base, "must have at least one task (got [])")
            return None
        before = len(self.problems)
        result: list[TaskSpec] = []
        seen: set[str] = set()
        for i, item in enumerate(items):
            place = _at(base, i)
            task = self.task(place, item)
            if task is not None:
                result.append(task)
            # Names are compared as given, so a duplicate is found even next to an otherwise broken task.
            name = item.get("name") if isinstance(item, Mapping) else None
            if isinstance(name, str) and name:
                if name in seen:
                    self.add(_at(place, "name"), f"duplicate task name {_got(name)}")
                seen.add(name)
        return tuple(result) if len(self.problems) == before else None

    def task(self, base: str, data: object) -> TaskSpec | None:
        d = self.mapping(base, data, _TASK_KEYS)
        if d is None:
            return None
        before = len(self.problems)
        name = None
        value = self.field(d, base, "name", required=True)
        if not isinstance(value, _Missing):
            name = self.name(_at(base, "name"), value)
        command = None
        value = self.field(d, base, "command")
        if not isinstance(value, _Missing):
            command = self.command(_at(base, "command"), value)
        first = last = None
        step = 1
        value = self.field(d, base, "frames")
        if not isinstance(value, _Missing):
            parsed = self.task_frames(_at(base, "frames"), value)
            if parsed is not None:
                first, last, step = parsed
        if len(self.problems) > before or name is None:
            return None
        return TaskSpec(name=name, command=command, first=first, last=last, step=step)

    def task_frames(self, place: str, value: object) -> tuple[int, int, int] | None:
        """An explicit task's frames: ``N``, ``[first, last]`` or ``{first, last, step?}``."""
        if _is_int(value):
            frame = self.int_(place, value)
            return None if frame is None else (frame, frame, 1)
        if isinstance(value, list | tuple) and len(value) == 2:
            first = self.int_(_at(place, 0), value[0])
            last = self.int_(_at(place, 1), value[1])
            if first is None or last is None:
                return None
            if last < first:
                self.add(_at(place, 1), f"must be >= first (got {last} < {first})")
                return None
            return first, last, 1
        if isinstance(value, Mapping):
            d = self.mapping(place, value, _TASK_FRAMES_KEYS)
            assert d is not None
            before = len(self.problems)
            first = last = None
            got = self.field(d, place, "first", required=True)
            if not isinstance(got, _Missing):
                first = self.int_(_at(place, "first"), got)
            got = self.field(d, place, "last", required=True)
            if not isinstance(got, _Missing):
                last = self.int_(_at(place, "last"), got)
            step = self.opt_int(d, place, "step", 1, 1)
            if first is not None and last is not None and last < first:
                self.add(_at(place, "last"), f"must be >= first (got {last} < {first})")
            if len(self.problems) > before or first is None or last is None:
                return None
            return first, last, step
        self.add(
            place,
            f"must be an int, a list [first, last] or a mapping {{first, last, step}} (got {_got(value)})",
        )
        return None

    def env(self, place: str, value: object) -> list[tuple[str, str]]:
        if not isinstance(value, Mapping):
            self.add(place, f"must be a mapping of strings to strings (got {_got(value)})")
            return []
        result: list[tuple[str, str]] = []
        for key, item in value.items():
            if not isinstance(key, str) or not key or "=" in key or "\0" in key:
                self.add(place, f"names must be non-empty strings without '=' (got {_got(key)})")
            elif not isinstance(item, str) or "\0" in item:
                self.add(_at(place, key), f"must be a string (got {_got(item)})")
            else:
                result.append((key, item))
        return result

    # -- across blocks

    def check_blocks(self, infos: list[_BlockInfo]) -> None:
        index: dict[str, int] = {}
        for i, info in enumerate(infos):
            if info.name is None:
                continue
            if info.name in index:
                self.add(_at(info.place, "name"), f"duplicate block name {_got(info.name)}")
            else:
                index[info.name] = i
        # With a block whose name could not be read, "unknown block" would be a guess: skip that check.
        names_complete = all(info.name is not None for info in infos)
        edges: dict[str, list[str]] = {name: [] for name in index}
        for info in infos:
            for key, deps in (("depends_on", info.depends_on), ("depends_on_frames", info.depends_on_frames)):
                for i, target in deps:
                    place = _at(_at(info.place, key), i)
                    if info.name is not None and target == info.name:
                        self.add(place, f"a block cannot depend on itself (got {_got(target)})")
                        continue
                    if target not in index:
                        if names_complete:
                            self.add(place, f"unknown block {_got(target)}")
                        continue
                    if info.name is not None and info.name in edges:
                        edges[info.name].append(target)
                    if key != "depends_on_frames":
                        continue
                    for who, other in (("this block", info), (_got(target), infos[index[target]])):
                        if other.has_frames is False:
                            self.add(
                                place,
                                "a frame-by-frame dependency needs frames on both blocks "
                                f"(got {who} with tasks without frames)",
                            )
        for cycle in _find_cycles(list(index), edges):
            if len(cycle) > 12:  # a very long cycle is named by its ends
                cycle = [*cycle[:6], f"... ({len(cycle) - 11} more)", *cycle[-5:]]
            self.add("blocks", "dependency cycle " + " -> ".join(cycle))
        total = sum(info.task_count for info in infos if info.task_count is not None)
        if total > MAX_TASKS_PER_JOB:
            self.add("blocks", f"too many tasks in the job (got {total} > {MAX_TASKS_PER_JOB})")


def _find_cycles(names: list[str], edges: dict[str, list[str]]) -> list[list[str]]:
    """The cycles closed by the back edges of an iterative depth-first search, each as a closed path."""
    state = dict.fromkeys(names, 0)  # 0 unseen, 1 on the current path, 2 finished
    cycles: list[list[str]] = []
    for root in names:
        if state[root]:
            continue
        path = [root]
        position = {root: 0}
        state[root] = 1
        stack = [iter(edges[root])]
        while stack:
            for nxt in stack[-1]:
                if state[nxt] == 0:
                    state[nxt] = 1
                    position[nxt] = len(path)
                    path.append(nxt)
                    stack.append(iter(edges[nxt]))
                    break
                if state[nxt] == 1:
                    cycles.append([*path[position[nxt] :], nxt])
            else:
                stack.pop()
                done = path.pop()
                del position[done]
                state[done] = 2
    return cycles


def parse_job(data: object, where: str = "", accepted: bool = False) -> JobSpec:
    """Check plain data (decoded JSON/YAML) and build a :class:`JobSpec`.

    Raises :class:`SpecError` with every problem found, each prefixed by ``where + ": "`` when ``where``
    (say, a file name) is given. Never raises anything else. ``accepted``: the spec of a job the farm accepted
    before (read back after a restart); rules added since (names without control characters) do not apply
    to it, so nothing accepted is lost to a newer check.
    """
    parser = _Parser(accepted)
    try:
        spec = parser.job(data)
    except Exception as e:  # a safety net: malformed input must never escape as another exception
        parser.add("job", f"could not be checked (got {type(e).__name__}: {e})")
        spec = None
    if parser.problems or spec is None:
        prefix = f"{where}: " if where else ""
        raise SpecError([prefix + problem for problem in parser.problems])
    return spec


# ------------------------------------------------------------------------------------ canonical form


def _command_to_json(command: Command) -> str | list[str]:
    return command if isinstance(command, str) else list(command)


def _task_to_dict(task: TaskSpec) -> dict[str, object]:
    d: dict[str, object] = {"name": task.name}
    if task.command is not None:
        d["command"] = _command_to_json(task.command)
    if task.first is not None:
        last = task.first if task.last is None else task.last
        d["frames"] = {"first": task.first, "last": last, "step": task.step}
    return d


def _block_to_dict(block: BlockSpec) -> dict[str, object]:
    d: dict[str, object] = {"name": block.name}
    if block.command is not None:
        d["command"] = _command_to_json(block.command)
    if block.frames is not None:
        f = block.frames
        d["frames"] = {"first": f.first, "last": f.last, "step": f.step, "per_task": f.per_task}
    else:
        d["tasks"] = [_task_to_dict(t) for t in block.tasks]
    d.update(
        depends_on=list(block.depends_on),
        depends_on_frames=list(block.depends_on_frames),
        order=block.order,
        capacity=block.capacity,
        memory_mb=block.memory_mb,
        retries=block.retries,
        avoid_render_after=block.avoid_render_after,
        timeout_s=block.timeout_s,
        progress=block.progress,
        working_dir=block.working_dir,
        env=dict(block.env),
        tags=sorted(block.tags),
        hosts_mask=block.hosts_mask,
        hosts_exclude=block.hosts_exclude,
        max_running_tasks=block.max_running_tasks,
        max_running_tasks_per_render=block.max_running_tasks_per_render,
    )
    return d


def spec_to_dict(spec: JobSpec) -> dict[str, object]:
    """A canonical JSON-able mapping of ``spec``; ``parse_job`` of it gives back an equal spec.

    Every field is written out, blocks with their resolved values, tags sorted, env sorted by name.
    """
    return {
        "name": spec.name,
        "user": spec.user,
        "priority": spec.priority,
        "blocks": [_block_to_dict(b) for b in spec.blocks],
        "depends_on_jobs": list(spec.depends_on_jobs),
        "depend_mask": spec.depend_mask,
        "depend_mask_global": spec.depend_mask_global,
        "wait_until": spec.wait_until,
        "tags": sorted(spec.tags),
        "hosts_mask": spec.hosts_mask,
        "hosts_exclude": spec.hosts_exclude,
        "max_running_tasks": spec.max_running_tasks,
        "max_running_tasks_per_render": spec.max_running_tasks_per_render,
        "paused": spec.paused,
    }


# ------------------------------------------------------------------------------------------ commands

_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")


class CommandTemplate:
    """A command with its placeholders located once, filled per task on the dispatch path.

    Placeholders are ``{first}`` ``{last}`` ``{frame}`` (= first) ``{step}`` ``{task}`` ``{job}``
    ``{block}``; every other brace (``${HOME}``, awk's ``{print $1}``) is left alone. All are filled in one
    pass, so a value that itself contains a placeholder is not filled again. A frameless task gives ``""``
    for ``{first}``/``{last}``/``{frame}``. An argv command has every item filled.
    """

    __slots__ = ("_argv", "_formats", "_items")

    #: the position of each placeholder's value in the arguments of ``str.format``
    _SLOT = {"first": 0, "frame": 0, "last": 1, "step": 2, "task": 3, "job": 4, "block": 5}

    def __init__(self, command: str | tuple[str, ...]) -> None:
        self._argv = not isinstance(command, str)
        items = command if isinstance(command, tuple) else (command,)
        # each item as a str.format pattern (other braces escaped), or None when it has no placeholder
        self._formats = tuple(self._pattern(item) for item in items)
        self._items = items

    @classmethod
    def _pattern(cls, item: str) -> str | None:
        parts = _PLACEHOLDER.split(item)  # literal text at even positions, placeholder names at odd ones
        if len(parts) == 1:
            return None
        return "".join(
            part.replace("{", "{{").replace("}", "}}") if i % 2 == 0 else "{" + str(cls._SLOT[part]) + "}"
            for i, part in enumerate(parts)
        )

    def fill(
        self, first: int | None, last: int | None, step: int, task: int | str, job: int, block: str
    ) -> str | tuple[str, ...]:
        """The command of one task."""
        values = ("" if first is None else first, "" if last is None else last, step, task, job, block)
        if not self._argv:  # the usual command, on the dispatch path: no generator
            pattern = self._formats[0]
            return self._items[0] if pattern is None else pattern.format(*values)
        return tuple(
            item if pattern is None else pattern.format(*values)
            for item, pattern in zip(self._items, self._formats, strict=True)
        )


def format_command(
    command: str | tuple[str, ...],
    *,
    first: int | None,
    last: int | None,
    step: int,
    task: int | str,
    job: int,
    block: str,
) -> str | tuple[str, ...]:
    """Fill the placeholders of ``command`` for one task (see :class:`CommandTemplate`)."""
    return CommandTemplate(command).fill(first, last, step, task, job, block)
