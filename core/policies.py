"""Scheduling policies: how the solver orders jobs (and users) competing for a render.

A policy turns a job into a sort key (smaller runs first). A *grouped* policy first orders users by a key
that changes as their tasks start and finish (fair share), then that user's jobs by their job key. Keys are
tuples; the solver appends a sequence number for deterministic ties. Policies are small classes in a
registry; ``farmhand policies`` lists them, and a user's own policy (any class with this interface) loads
from a dotted path through the command line.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, Protocol


class JobView(Protocol):
    """What a policy may read of a job."""

    job_id: int
    user: str
    priority: int
    submit_time: float
    seq: int


class UserState:
    """A user's policy inputs and running totals, kept by the solver and read (and extended) by policies."""

    __slots__ = ("name", "priority", "running_capacity", "running_tasks", "seq", "usage", "usage_time", "weight")

    def __init__(self, name: str, seq: int, priority: int = 99, weight: float = 1.0) -> None:
        self.name = name
        self.seq = seq
        self.priority = priority
        self.weight = weight
        self.running_capacity = 0
        self.running_tasks = 0
        self.usage = 0.0
        self.usage_time = 0.0


class Policy:
    """Base policy: the interface the solver calls. Subclasses set ``name``/``summary`` and the keys."""

    name: ClassVar[str] = ""
    summary: ClassVar[str] = ""
    grouped: ClassVar[bool] = False
    #: when set, the solver re-keys every user at least this often (keys that drift with time)
    refresh_s: float | None = None

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        """The key of a job among its competitors (smaller first)."""
        return (job.submit_time, job.seq)

    def user_key(self, user: UserState, now: float) -> tuple[Any, ...]:
        """The key of a user among users (grouped policies only; smaller first)."""
        return (user.seq,)

    def account(self, user: UserState, now: float) -> None:
        """Called just before a user's running totals change, and before a refresh."""


_REGISTRY: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    """Class decorator: make a policy available by its ``name``."""
    if not cls.name:
        raise ValueError(f"policy class {cls.__name__} has no name")
    _REGISTRY[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    """The registered policy names, in registration order."""
    return list(_REGISTRY)


def policy_class(name: str) -> type[Policy]:
    """The registered policy class called ``name``; ``KeyError`` with the known names otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown policy {name!r} (known: {', '.join(_REGISTRY)})") from None


def make_policy(name: str, **options: Any) -> Policy:
    """An instance of the registered policy ``name``."""
    return policy_class(name)(**options)


@register_policy
class Fifo(Policy):
    """First submitted, first served."""

    name = "fifo"
    summary = "submission order: the oldest job with a ready task runs first"


@register_policy
class PriorityPolicy(Policy):
    """Highest job priority first, then the oldest."""

    name = "priority"
    summary = "job priority (higher first), then the oldest job"

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        return (-job.priority, job.submit_time, job.seq)


@register_policy
class FairShare(Policy):
    """Afanasy's fair share: each user's need is 1.1^priority / (running capacity + 1); neediest first."""

    name = "fairshare"
    summary = "Afanasy's fair share: neediest user first (1.1^priority / (running capacity + 1)), then priority, age"
    grouped = True

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        return (-job.priority, job.submit_time, job.seq)

    def user_key(self, user: UserState, now: float) -> tuple[Any, ...]:
        need = math.pow(1.1, user.priority) / (user.running_capacity + 1)
        return (-need, user.seq)


@register_policy
class Weighted(Policy):
    """Each user's share of running capacity follows a weight, with exponentially decayed past usage.

    A user's load is ``(running capacity + decayed usage * ln2 / half_life) / weight``: recent usage counts
    as if it were still running, fading with the half-life, so a user who ran a lot recently yields to one
    who did not. The least loaded user is served first, then their jobs by priority and age.
    """

    name = "weighted"
    summary = "users share running capacity by weight, with exponentially decayed past usage (half_life_s)"
    grouped = True

    def __init__(self, half_life_s: float = 3600.0) -> None:
        if isinstance(half_life_s, bool) or not isinstance(half_life_s, int | float):
            raise ValueError(f"half_life_s: must be a number of seconds (got {half_life_s!r})")
        if not half_life_s > 0:
            raise ValueError(f"half_life_s must be > 0 (got {half_life_s})")
        self.half_life_s = float(half_life_s)
        self.refresh_s = self.half_life_s / 50.0
        self._rate = math.log(2.0) / self.half_life_s

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        return (-job.priority, job.submit_time, job.seq)

    def usage_at(self, user: UserState, now: float) -> float:
        """The user's decayed usage (capacity-seconds) at ``now``, counting what ran since it was stored."""
        elapsed = now - user.usage_time
        if elapsed <= 0.0:
            return user.usage
        decay = math.exp(-self._rate * elapsed)
        return user.usage * decay + user.running_capacity * (1.0 - decay) / self._rate

    def account(self, user: UserState, now: float) -> None:
        user.usage = self.usage_at(user, now)
        user.usage_time = now

    def user_key(self, user: UserState, now: float) -> tuple[Any, ...]:
        weight = user.weight if user.weight > 0 else 1e-9
        load = (user.running_capacity + self.usage_at(user, now) * self._rate) / weight
        return (load, user.seq)
