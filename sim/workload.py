"""Simulation workloads: the synthetic generator, the JSON/YAML workload file, and SWF v2.2 traces.

Every source gives a :class:`Workload`: jobs (a parsed :class:`~farmhand.core.spec.JobSpec` each, with its
submission time and the duration of every task), optionally the renders, the users' policy inputs, and a
``scenario`` mapping that describes where it came from (it ends up in ``summary.json``).

**Synthetic** (:func:`generate`, options in :class:`GeneratorOptions`): ``jobs`` jobs of ``tasks`` tasks
split over ``blocks`` blocks; users ``user00..`` chosen uniformly per job, with optional fair-share
priorities and weights; job priorities uniform in a range; arrivals all at once, Poisson (``rate`` jobs/s,
or a rate derived from the target ``load``) or bursts; durations fixed, exponential or lognormal (by mean and
sigma of the log), per block; dependency shapes none, chain (block k waits for block k-1) or frames (frame by
frame); tag mixes (a fraction of renders offering a tag, a fraction of jobs needing it) and capacity mixes.

**Workload file** (:func:`load_workload_file`): the format of CONTRACT.md. ``renders`` is optional, ``jobs``
required; each job has ``submit_at`` (seconds, default 0), ``job`` (a job spec) and ``durations`` (per block
name: one number for every task, or a list with one number per task). An optional ``users`` mapping gives
``{name: {priority, weight}}``. Job ids are the jobs' positions in the file, from 1 (for ``depends_on_jobs``).

**SWF** (:func:`read_swf`): Standard Workload Format v2.2 (Parallel Workloads Archive). Each row becomes a
one-task job: submit = field 2, duration = field 4, capacity = field 5 (allocated processors) or, when that
is unknown, field 8 (requested processors), user = field 12. ``;`` lines are the header and comments
(``; MaxProcs: N`` and friends are kept). ``cancelled`` says what rows with status 0 (failed) or 5
(cancelled) do: ``skip`` them (the default) or ``keep`` them, running for their recorded time. Rows whose run
time is unknown (-1) cannot be replayed and are skipped (counted). A malformed row is an error naming its
line.

Problems are reported whole, one line each, naming the file, the line or the field: :class:`WorkloadError`
(a :class:`~farmhand.core.spec.SpecError`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from farmhand.core.frames import block_task_count
from farmhand.core.messages import RenderInfo
from farmhand.core.spec import BlockSpec, FrameRange, JobSpec, SpecError, parse_job

__all__ = [
    "ARRIVALS",
    "DEPENDENCIES",
    "DURATIONS",
    "GeneratorOptions",
    "RenderSpec",
    "UserSpec",
    "Workload",
    "WorkloadError",
    "WorkloadJob",
    "default_renders",
    "generate",
    "load_workload_file",
    "parse_workload",
    "read_swf",
]

ARRIVALS = ("all", "poisson", "burst")
DURATIONS = ("fixed", "exp", "lognormal")
DEPENDENCIES = ("none", "chain", "frames")
SWF_CANCELLED = ("skip", "keep")
SWF_FIELDS = 18
SWF_DEFAULT_CAPACITY = 1

#: a block's durations: one number for all its tasks, or one per task
Durations = float | tuple[float, ...]


class WorkloadError(SpecError):
    """An invalid workload (file, trace or options); ``problems`` has one line per problem."""


@dataclass(frozen=True)
class RenderSpec:
    """A virtual render: what it offers and how fast it runs (a task of duration d takes d / speed)."""

    name: str
    tags: frozenset[str] = frozenset()
    capacity: int = 1
    max_tasks: int = 1
    memory_mb: int = 0
    speed: float = 1.0

    def info(self) -> RenderInfo:
        """The render as its worker announces it."""
        return RenderInfo(self.name, self.tags, self.capacity, self.max_tasks, self.memory_mb, 1)


@dataclass(frozen=True)
class UserSpec:
    """A user's policy inputs (fair-share priority, weight)."""

    priority: int = 99
    weight: float = 1.0


@dataclass(frozen=True)
class WorkloadJob:
    """One job to submit: when, what, and how long each task of each block takes (index = block index)."""

    submit_at: float
    spec: JobSpec
    durations: tuple[Durations, ...]

    def task_count(self) -> int:
        """The job's number of tasks."""
        return sum(block_task_count(b) for b in self.spec.blocks)


@dataclass
class Workload:
    """Jobs (job id = position + 1), optional renders and users, and a description of the source."""

    jobs: list[WorkloadJob]
    renders: list[RenderSpec] | None = None
    users: dict[str, UserSpec] = field(default_factory=dict)
    scenario: dict[str, Any] = field(default_factory=dict)

    def task_count(self) -> int:
        """Every task of every job."""
        return sum(j.task_count() for j in self.jobs)


def default_renders(workload: Workload, count: int, capacity: int | None = None) -> list[RenderSpec]:
    """``count`` identical renders offering every tag, the capacity (default: the largest a task needs) and
    the memory the jobs need, at speed 1."""
    blocks = [b for j in workload.jobs for b in j.spec.blocks]
    tags = frozenset(t for b in blocks for t in b.tags)
    cap = capacity if capacity is not None else max((b.capacity for b in blocks), default=1)
    memory = max((b.memory_mb for b in blocks), default=0)
    width = max(3, len(str(count)))
    return [RenderSpec(f"r{i + 1:0{width}d}", tags, cap, cap, memory, 1.0) for i in range(count)]


# ================================================================================================ synthetic


@dataclass
class GeneratorOptions:
    """Every knob of the synthetic generator; per-block lists are cycled over the blocks."""

    jobs: int = 1000
    tasks: int = 100
    blocks: int = 1
    users: int = 10
    renders: int = 500
    #: job priorities, uniform in [low, high]
    priority_low: int = 0
    priority_high: int = 199
    #: fair-share priorities and weights of the users (cycled over them); empty: the defaults
    user_priorities: tuple[int, ...] = ()
    user_weights: tuple[float, ...] = ()
    arrival: str = "poisson"
    #: Poisson rate in jobs per second; None: derived from ``load``
    rate: float | None = None
    #: the offered load the derived Poisson rate aims at (work arriving / farm capacity)
    load: float = 0.9
    burst_size: int = 50
    burst_every: float = 3600.0
    duration: tuple[str, ...] = ("lognormal",)
    mean: tuple[float, ...] = (60.0,)
    sigma: tuple[float, ...] = (0.5,)
    deps: str = "none"
    #: (tag, fraction of renders offering it, fraction of jobs needing it)
    tags: tuple[tuple[str, float, float], ...] = ()
    #: (capacity a block's tasks take, weight)
    capacity: tuple[tuple[int, float], ...] = ((1, 1.0),)
    #: capacity (and max tasks) of every render; None: the largest capacity in ``capacity``
    render_capacity: int | None = None
    #: (speed, weight) of the renders
    speeds: tuple[tuple[float, float], ...] = ((1.0, 1.0),)

    def check(self) -> None:
        """Raise :class:`WorkloadError` listing every invalid option."""
        p: list[str] = []

        def need(ok: bool, text: str) -> None:
            if not ok:
                p.append(text)

        need(self.jobs >= 1, f"--jobs: must be >= 1 (got {self.jobs})")
        need(self.tasks >= 1, f"--tasks: must be >= 1 (got {self.tasks})")
        need(self.blocks >= 1, f"--blocks: must be >= 1 (got {self.blocks})")
        need(self.blocks <= self.tasks, f"--blocks: must be <= --tasks (got {self.blocks} > {self.tasks})")
        need(self.users >= 1, f"--users: must be >= 1 (got {self.users})")
        need(self.renders >= 1, f"--renders: must be >= 1 (got {self.renders})")
        need(
            0 <= self.priority_low <= self.priority_high <= 255,
            f"--priorities: must be 0 <= low <= high <= 255 (got {self.priority_low}-{self.priority_high})",
        )
        need(all(0 <= v <= 255 for v in self.user_priorities), "--user-priorities: each must be 0-255")
        need(all(v > 0 for v in self.user_weights), "--user-weights: each must be > 0")
        need(self.arrival in ARRIVALS, f"--arrival: must be one of {', '.join(ARRIVALS)} (got {self.arrival!r})")
        need(self.rate is None or self.rate > 0, f"--rate: must be > 0 (got {self.rate})")
        need(self.load > 0, f"--load: must be > 0 (got {self.load})")
        need(self.burst_size >= 1, f"--burst-size: must be >= 1 (got {self.burst_size})")
        need(self.burst_every > 0, f"--burst-every: must be > 0 (got {self.burst_every})")
        need(bool(self.duration), "--duration: give at least one")
        for kind in self.duration:
            need(kind in DURATIONS, f"--duration: must be one of {', '.join(DURATIONS)} (got {kind!r})")
        need(bool(self.mean) and all(m > 0 for m in self.mean), f"--mean: each must be > 0 (got {self.mean})")
        need(bool(self.sigma) and all(s >= 0 for s in self.sigma), f"--sigma: each must be >= 0 (got {self.sigma})")
        need(self.deps in DEPENDENCIES, f"--deps: must be one of {', '.join(DEPENDENCIES)} (got {self.deps!r})")
        for name, render_frac, job_frac in self.tags:
            need(bool(name), "--tags: a tag needs a name")
            need(0 < render_frac <= 1, f"--tags: {name}: render fraction must be in (0, 1] (got {render_frac})")
            need(0 <= job_frac <= 1, f"--tags: {name}: job fraction must be in [0, 1] (got {job_frac})")
        need(bool(self.capacity), "--capacity: give at least one capacity")
        for cap, weight in self.capacity:
            need(cap >= 1, f"--capacity: each capacity must be >= 1 (got {cap})")
            need(weight > 0, f"--capacity: each weight must be > 0 (got {weight})")
        biggest = max((c for c, _ in self.capacity), default=1)
        if self.render_capacity is not None:
            need(
                self.render_capacity >= biggest,
                f"--render-capacity: must be >= the largest task capacity {biggest} (got {self.render_capacity})",
            )
        need(bool(self.speeds), "--speeds: give at least one speed")
        for speed, weight in self.speeds:
            need(speed > 0, f"--speeds: each speed must be > 0 (got {speed})")
            need(weight > 0, f"--speeds: each weight must be > 0 (got {weight})")
        if p:
            raise WorkloadError(p)

    def block_sizes(self) -> list[int]:
        """Tasks per block: ``tasks`` split as evenly as possible, the first blocks taking the remainder."""
        base, extra = divmod(self.tasks, self.blocks)
        return [base + (1 if i < extra else 0) for i in range(self.blocks)]

    def mean_work_per_job(self) -> float:
        """Expected capacity-seconds of one job at speed 1 (for the rate derived from the load)."""
        mean_cap = sum(c * w for c, w in self.capacity) / sum(w for _, w in self.capacity)
        sizes = self.block_sizes()
        return mean_cap * sum(n * _cycle(self.mean, i) for i, n in enumerate(sizes))

    def farm_rate(self) -> float:
        """Capacity-seconds per second the farm offers (render capacity times mean speed)."""
        mean_speed = sum(s * w for s, w in self.speeds) / sum(w for _, w in self.speeds)
        return self.renders * self.resolved_render_capacity() * mean_speed

    def resolved_render_capacity(self) -> int:
        """The render capacity: the option, or the largest capacity a task takes."""
        return self.render_capacity or max(c for c, _ in self.capacity)

    def arrival_rate(self) -> float:
        """The Poisson rate (jobs per second): the option, or the one that offers ``load``."""
        if self.rate is not None:
            return self.rate
        return self.load * self.farm_rate() / self.mean_work_per_job()


def _cycle(values: Sequence[Any], i: int) -> Any:
    return values[i % len(values)]


def _weighted(rng: random.Random, choices: Sequence[tuple[Any, float]]) -> Any:
    if len(choices) == 1:
        return choices[0][0]
    return rng.choices([c for c, _ in choices], weights=[w for _, w in choices])[0]


def _draw_durations(rng: random.Random, kind: str, mean: float, sigma: float, n: int) -> Durations:
    if kind == "fixed":
        return float(mean)
    if kind == "exp":
        rate = 1.0 / mean
        return tuple(rng.expovariate(rate) for _ in range(n))
    mu = math.log(mean) - sigma * sigma / 2.0  # so that the mean of the lognormal is ``mean``
    return tuple(rng.lognormvariate(mu, sigma) for _ in range(n))


def generate(options: GeneratorOptions, seed: int = 0) -> Workload:
    """A synthetic workload (renders included); the same options and seed give the same workload."""
    options.check()
    rng = random.Random(f"{seed}/workload")
    renders = _synthetic_renders(options, rng)
    users = [f"user{i:02d}" for i in range(options.users)]
    sizes = options.block_sizes()
    rate = options.arrival_rate()
    jobs: list[WorkloadJob] = []
    t = 0.0
    for j in range(options.jobs):
        if options.arrival == "poisson":
            if j:
                t += rng.expovariate(rate)
        elif options.arrival == "burst":
            t = (j // options.burst_size) * options.burst_every
        blocks: list[dict[str, Any]] = []
        durations: list[Durations] = []
        for b, n in enumerate(sizes):
            block: dict[str, Any] = {
                "name": f"b{b}",
                "command": "render {first}-{last}",
                "frames": {"first": 1, "last": n},
                "capacity": _weighted(rng, options.capacity),
            }
            if b and options.deps == "chain":
                block["depends_on"] = [f"b{b - 1}"]
            elif b and options.deps == "frames":
                block["depends_on_frames"] = [f"b{b - 1}"]
            blocks.append(block)
            durations.append(
                _draw_durations(rng, _cycle(options.duration, b), _cycle(options.mean, b), _cycle(options.sigma, b), n)
            )
        tags = [name for name, _, job_frac in options.tags if job_frac > 0 and rng.random() < job_frac]
        data: dict[str, Any] = {
            "name": f"job{j:05d}",
            "user": users[rng.randrange(len(users))],
            "priority": rng.randint(options.priority_low, options.priority_high),
            "blocks": blocks,
        }
        if tags:
            data["tags"] = tags
        jobs.append(WorkloadJob(t, parse_job(data, where=f"synthetic job {j}"), tuple(durations)))
    user_specs: dict[str, UserSpec] = {}
    if options.user_priorities or options.user_weights:
        for i, name in enumerate(users):
            user_specs[name] = UserSpec(
                _cycle(options.user_priorities, i) if options.user_priorities else 99,
                float(_cycle(options.user_weights, i)) if options.user_weights else 1.0,
            )
    scenario = {"source": "synthetic", **asdict(options), "arrival_rate_per_s": rate}
    scenario["tags"] = [list(t) for t in options.tags]
    scenario["capacity"] = [list(c) for c in options.capacity]
    scenario["speeds"] = [list(s) for s in options.speeds]
    return Workload(jobs, renders, user_specs, scenario)


def _synthetic_renders(options: GeneratorOptions, rng: random.Random) -> list[RenderSpec]:
    count = options.renders
    offered: list[set[str]] = [set() for _ in range(count)]
    for name, render_frac, _ in options.tags:
        chosen = rng.sample(range(count), max(1, round(render_frac * count)))
        for i in chosen:
            offered[i].add(name)
    capacity = options.resolved_render_capacity()
    width = max(3, len(str(count)))
    return [
        RenderSpec(f"r{i + 1:0{width}d}", frozenset(offered[i]), capacity, capacity, 0,
                   float(_weighted(rng, options.speeds)))
        for i in range(count)
    ]


# ================================================================================================ workload file

_TOP_KEYS = ("renders", "jobs", "users")
_RENDER_KEYS = ("name", "tags", "capacity", "max_tasks", "memory_mb", "speed")
_JOB_KEYS = ("submit_at", "job", "durations")
_USER_KEYS = ("priority", "weight")


def load_workload_file(path: Path) -> Workload:
    """Read and check a JSON or YAML workload file; :class:`WorkloadError` names every problem."""
    from farmhand.jobfiles import load_data  # the one reader of JSON/YAML files (line numbers on syntax errors)

    try:
        data = load_data(path)
    except SpecError as exc:
        raise WorkloadError(exc.problems) from None
    workload = parse_workload(data, where=str(path))
    workload.scenario = {"source": "workload", "file": str(path)}
    return workload


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_workload(data: object, where: str = "workload") -> Workload:
    """Check decoded workload data (see the module docstring); every problem is named by ``where`` and field."""
    problems: list[str] = []

    def add(place: str, rule: str) -> None:
        problems.append(f"{where}: {place}: {rule}")

    if not isinstance(data, Mapping):
        raise WorkloadError([f"{where}: must be a mapping with 'jobs' (and optionally 'renders', 'users')"])
    for key in data:
        if key not in _TOP_KEYS:
            add(str(key), f"unknown key (known: {', '.join(_TOP_KEYS)})")
    renders = _parse_renders(data.get("renders"), add) if "renders" in data else None
    users = _parse_users(data.get("users"), add) if "users" in data else {}
    jobs: list[WorkloadJob] = []
    raw_jobs = data.get("jobs")
    if "jobs" not in data:
        add("jobs", "is required")
    elif not isinstance(raw_jobs, list):
        add("jobs", f"must be a list (got {type(raw_jobs).__name__})")
    elif not raw_jobs:
        add("jobs", "must have at least one job (got [])")
    else:
        for i, item in enumerate(raw_jobs):
            job = _parse_job(i, item, where, add, problems)
            if job is not None:
                jobs.append(job)
        for i, job in enumerate(jobs if len(jobs) == len(raw_jobs) else ()):
            for k, upstream in enumerate(job.spec.depends_on_jobs):
                if upstream > len(jobs):
                    add(f"jobs[{i}].job.depends_on_jobs[{k}]", f"no job with id {upstream} (ids are 1..{len(jobs)})")
                elif jobs[upstream - 1].submit_at > job.submit_at:
                    add(
                        f"jobs[{i}].job.depends_on_jobs[{k}]",
                        f"job {upstream} is submitted later ({jobs[upstream - 1].submit_at:g} > {job.submit_at:g})",
                    )
    if renders is not None and jobs:
        _check_fit(jobs, renders, add)
    if problems:
        raise WorkloadError(problems)
    return Workload(jobs, renders, users, {"source": "workload"})


def _parse_renders(raw: object, add: Any) -> list[RenderSpec] | None:
    if not isinstance(raw, list) or not raw:
        add("renders", "must be a non-empty list of renders")
        return None
    renders: list[RenderSpec] = []
    names: set[str] = set()
    for i, item in enumerate(raw):
        place = f"renders[{i}]"
        if not isinstance(item, Mapping):
            add(place, f"must be a mapping (got {type(item).__name__})")
            continue
        ok = True
        for key in item:
            if key not in _RENDER_KEYS:
                add(f"{place}.{key}", f"unknown key (known: {', '.join(_RENDER_KEYS)})")
                ok = False
        name = item.get("name")
        if not isinstance(name, str) or not name or "/" in name:
            add(f"{place}.name", f"must be a non-empty string without '/' (got {name!r})")
            ok = False
        elif name in names:
            add(f"{place}.name", f"must be unique (got {name!r} twice)")
            ok = False
        tags = item.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags):
            add(f"{place}.tags", f"must be a list of non-empty strings (got {tags!r})")
            ok = False
        values: dict[str, Any] = {}
        for key, lo, default in (("capacity", 1, 1), ("memory_mb", 0, 0)):
            value = item.get(key, default)
            if not _is_int(value) or value < lo:
                add(f"{place}.{key}", f"must be an integer >= {lo} (got {value!r})")
                ok = False
            values[key] = value
        max_tasks = item.get("max_tasks", values["capacity"])
        if not _is_int(max_tasks) or max_tasks < 1:
            add(f"{place}.max_tasks", f"must be an integer >= 1 (got {max_tasks!r})")
            ok = False
        speed = item.get("speed", 1.0)
        if not _is_number(speed) or speed <= 0:
            add(f"{place}.speed", f"must be a number > 0 (got {speed!r})")
            ok = False
        if ok:
            names.add(name)  # type: ignore[arg-type]
            renders.append(
                RenderSpec(name, frozenset(tags), values["capacity"], max_tasks, values["memory_mb"], float(speed))  # type: ignore[arg-type]
            )
    return renders


def _parse_users(raw: object, add: Any) -> dict[str, UserSpec]:
    users: dict[str, UserSpec] = {}
    if not isinstance(raw, Mapping):
        add("users", f"must be a mapping of user name to {{priority, weight}} (got {type(raw).__name__})")
        return users
    for name, item in raw.items():
        place = f"users.{name}"
        if not isinstance(item, Mapping):
            add(place, f"must be a mapping with priority and/or weight (got {item!r})")
            continue
        for key in item:
            if key not in _USER_KEYS:
                add(f"{place}.{key}", f"unknown key (known: {', '.join(_USER_KEYS)})")
        priority = item.get("priority", 99)
        weight = item.get("weight", 1.0)
        ok = True
        if not _is_int(priority) or not 0 <= priority <= 255:
            add(f"{place}.priority", f"must be an integer 0-255 (got {priority!r})")
            ok = False
        if not _is_number(weight) or weight <= 0:
            add(f"{place}.weight", f"must be a number > 0 (got {weight!r})")
            ok = False
        if ok:
            users[str(name)] = UserSpec(priority, float(weight))
    return users


def _parse_job(i: int, item: object, where: str, add: Any, problems: list[str]) -> WorkloadJob | None:
    place = f"jobs[{i}]"
    if not isinstance(item, Mapping):
        add(place, f"must be a mapping with submit_at, job, durations (got {type(item).__name__})")
        return None
    ok = True
    for key in item:
        if key not in _JOB_KEYS:
            add(f"{place}.{key}", f"unknown key (known: {', '.join(_JOB_KEYS)})")
            ok = False
    submit_at = item.get("submit_at", 0.0)
    if not _is_number(submit_at) or submit_at < 0:
        add(f"{place}.submit_at", f"must be a number >= 0 (got {submit_at!r})")
        ok = False
    if "job" not in item:
        add(f"{place}.job", "is required")
        return None
    try:
        spec = parse_job(item["job"], where=f"{where}: {place}.job")
    except SpecError as exc:
        problems.extend(exc.problems)
        return None
    raw = item.get("durations")
    if not isinstance(raw, Mapping):
        add(f"{place}.durations", f"must map each block name to seconds or a list of seconds (got {raw!r})")
        return None
    names = [b.name for b in spec.blocks]
    for key in raw:
        if key not in names:
            add(f"{place}.durations.{key}", f"no block {key!r} in the job (blocks: {', '.join(names)})")
            ok = False
    durations: list[Durations] = []
    for block in spec.blocks:
        d_place = f"{place}.durations.{block.name}"
        if block.name not in raw:
            add(d_place, "is required (seconds, or a list with one number per task)")
            ok = False
            continue
        value = raw[block.name]
        count = block_task_count(block)
        if _is_number(value):
            if value < 0:
                add(d_place, f"must be >= 0 (got {value!r})")
                ok = False
            durations.append(float(value))
        elif isinstance(value, list):
            if len(value) != count:
                add(d_place, f"must have one duration per task: {count} (got {len(value)})")
                ok = False
            bad = [k for k, v in enumerate(value) if not _is_number(v) or v < 0]
            if bad:
                add(f"{d_place}[{bad[0]}]", f"must be a number >= 0 (got {value[bad[0]]!r})")
                ok = False
            durations.append(tuple(float(v) for v in value) if ok else 0.0)
        else:
            add(d_place, f"must be seconds or a list of seconds (got {value!r})")
            ok = False
    if not ok:
        return None
    return WorkloadJob(float(submit_at), spec, tuple(durations))


def _check_fit(jobs: list[WorkloadJob], renders: list[RenderSpec], add: Any) -> None:
    """Every block must fit on at least one render (tags, capacity, memory), or it would wait forever."""
    for i, job in enumerate(jobs):
        for b, block in enumerate(job.spec.blocks):
            if not any(_fits(block, r) for r in renders):
                add(
                    f"jobs[{i}].job.blocks[{b}]",
                    f"no render can run it (needs tags {sorted(block.tags)}, capacity {block.capacity}, "
                    f"memory_mb {block.memory_mb})",
                )


def _fits(block: BlockSpec, render: RenderSpec) -> bool:
    return block.tags <= render.tags and block.capacity <= render.capacity and block.memory_mb <= render.memory_mb


# ================================================================================================ SWF

_SWF_NAMES = {
    1: "job number", 2: "submit time", 3: "wait time", 4: "run time", 5: "allocated processors",
    6: "average CPU time", 7: "used memory", 8: "requested processors", 9: "requested time",
    10: "requested memory", 11: "status", 12: "user id", 13: "group id", 14: "executable", 15: "queue",
    16: "partition", 17: "preceding job", 18: "think time",
}


def read_swf(path: Path, cancelled: str = "skip", max_jobs: int | None = None) -> Workload:
    """Read a Standard Workload Format v2.2 trace (see the module docstring)."""
    if cancelled not in SWF_CANCELLED:
        raise WorkloadError([f"--swf-cancelled: must be one of {', '.join(SWF_CANCELLED)} (got {cancelled!r})"])
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise WorkloadError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    return parse_swf(text.splitlines(), where=str(path), cancelled=cancelled, max_jobs=max_jobs)


def parse_swf(
    lines: Sequence[str], where: str = "trace.swf", cancelled: str = "skip", max_jobs: int | None = None
) -> Workload:
    """Parse the lines of an SWF trace; each job row becomes a one-task job."""
    problems: list[str] = []
    header: dict[str, str] = {}
    rows: list[tuple[int, float, float, int, int]] = []  # number, submit, duration, capacity, user
    skipped_status = 0
    skipped_unknown = 0
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        if text.startswith(";"):
            key, sep, value = text[1:].partition(":")
            if sep and key.strip() and " " not in key.strip():
                header[key.strip()] = value.strip()
            continue
        fields = text.split()
        if len(fields) != SWF_FIELDS:
            problems.append(f"{where}:{number}: expected {SWF_FIELDS} fields, got {len(fields)}")
            continue
        values: list[float] = []
        for k, raw in enumerate(fields, start=1):
            try:
                number_value = float(raw)
            except ValueError:
                problems.append(f"{where}:{number}: field {k} ({_SWF_NAMES[k]}): not a number (got {raw!r})")
                break
            if not math.isfinite(number_value):
                problems.append(f"{where}:{number}: field {k} ({_SWF_NAMES[k]}): not a finite number (got {raw!r})")
                break
            values.append(number_value)
        else:
            submit, run_time, allocated, requested, status = values[1], values[3], values[4], values[7], values[10]
            if submit < 0:
                problems.append(f"{where}:{number}: field 2 (submit time): must be >= 0 (got {fields[1]})")
                continue
            if status in (0, 5):  # failed, cancelled
                if cancelled == "skip":
                    skipped_status += 1
                    continue
                run_time = max(run_time, 0.0)
            if run_time < 0:
                skipped_unknown += 1
                continue
            field_number, processors = (5, allocated) if allocated > 0 else (8, requested)
            if processors > 0 and not processors.is_integer():
                problems.append(f"{where}:{number}: field {field_number} ({_SWF_NAMES[field_number]}): "
                                f"must be a whole number of processors (got {fields[field_number - 1]})")
                continue
            capacity = int(processors) if processors > 0 else SWF_DEFAULT_CAPACITY
            rows.append((int(values[0]), submit, run_time, capacity, int(values[11])))
    if problems:
        raise WorkloadError(problems)
    if not rows:
        raise WorkloadError([f"{where}: no replayable job rows (skipped {skipped_status} cancelled/failed, "
                             f"{skipped_unknown} with unknown run time)"])
    rows.sort(key=lambda r: (r[1], r[0]))
    if max_jobs is not None:
        rows = rows[:max_jobs]
    jobs = [
        WorkloadJob(
            submit,
            JobSpec(
                name=f"swf{job_number}",
                user=f"user{user}" if user >= 0 else "unknown",
                blocks=(
                    BlockSpec(name="run", command=f"swf job {job_number}", frames=FrameRange(first=1, last=1),
                              capacity=capacity),
                ),
            ),
            (run_time,),
        )
        for job_number, submit, run_time, capacity, user in rows
    ]
    scenario = {
        "source": "swf",
        "file": where,
        "cancelled": cancelled,
        "rows_skipped_cancelled_or_failed": skipped_status,
        "rows_skipped_unknown_run_time": skipped_unknown,
        "header": header,
    }
    return Workload(jobs, None, {}, scenario)


def swf_machine_size(workload: Workload) -> int | None:
    """The trace's machine size from its header (``MaxProcs``, else ``MaxNodes``), if given."""
    header = workload.scenario.get("header") or {}
    for key in ("MaxProcs", "MaxNodes"):
        try:
            value = int(float(str(header.get(key, "")).split()[0]))
        except (ValueError, IndexError):
            continue
        if value > 0:
            return value
    return None
