"""Policies inside the solver: fifo, priority, Afanasy's fair share, weighted shares with decayed usage, and a
user's own policy object. The test plays jobs and renders and reads which job each dispatch went to.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, ClassVar

import pytest
from recording import RecordingContext

from farmhand.core.messages import (
    BlockNeeds,
    BlockReady,
    Dispatch,
    JobOpened,
    JobUpdated,
    Message,
    RenderInfo,
    RenderOnline,
    RunEnded,
    SetUser,
)
from farmhand.core.policies import (
    FairShare,
    JobView,
    Policy,
    UserState,
    Weighted,
    make_policy,
    policy_class,
    policy_names,
)
from farmhand.core.solver import Solver


class Recorder(RecordingContext):
    """A context recording what the solver sends."""

    def __init__(self) -> None:
        super().__init__("solver", strict=True)

class Farm:
    """A solver with a policy; jobs are single-block and capacity-1 unless told otherwise."""

    def __init__(self, policy: Policy) -> None:
        self.solver = Solver(policy)
        self.ctx = Recorder()
        self.running: dict[int, Dispatch] = {}
        self.users: dict[int, str] = {}

    def do(self, message: Message) -> list[Dispatch]:
        before = len(self.ctx.sent)
        self.solver.handle(message, self.ctx)
        got = [m for _, m in self.ctx.sent[before:] if isinstance(m, Dispatch)]
        for d in got:
            self.running[d.id] = d
        return got

    def job(self, job_id: int, user: str = "ann", priority: int = 99, submit_time: float = 0.0,
            ready: int = 100_000, capacity: int = 1) -> list[Dispatch]:
        self.users[job_id] = user
        blocks = (BlockNeeds(0, capacity, 0, frozenset(), None, None, None),)
        self.do(JobOpened(self.ctx.next_id(), job_id, user, priority, submit_time, blocks))
        return self.do(BlockReady(self.ctx.next_id(), job_id, 0, ready, 0))

    def render(self, name: str, capacity: int = 1) -> list[Dispatch]:
        return self.do(RenderOnline(self.ctx.next_id(), RenderInfo(name, capacity=capacity, max_tasks=capacity)))

    def end(self, run_id: int) -> list[Dispatch]:
        d = self.running.pop(run_id)
        return self.do(RunEnded(self.ctx.next_id(), run_id, d.job_id))

    def jobs_of(self, dispatches: list[Dispatch]) -> list[int]:
        return [d.job_id for d in dispatches]

    def running_of(self, user: str) -> int:
        return sum(1 for d in self.running.values() if self.users[d.job_id] == user)


def test_the_registry_lists_the_builtin_policies() -> None:
    assert {"fifo", "priority", "fairshare", "weighted"} <= set(policy_names())
    assert policy_class("fairshare") is FairShare
    with pytest.raises(KeyError, match="unknown policy 'nope'"):
        make_policy("nope")
    assert make_policy("weighted", half_life_s=60).half_life_s == 60.0
    with pytest.raises(ValueError, match="half_life_s"):
        Weighted(half_life_s=0)


def test_fifo_serves_the_oldest_job_first_whatever_its_priority() -> None:
    farm = Farm(make_policy("fifo"))
    farm.job(2, priority=200, submit_time=5.0, ready=2)
    farm.job(1, priority=0, submit_time=1.0, ready=2)
    farm.job(3, priority=255, submit_time=9.0, ready=2)
    got = [d for i in range(6) for d in farm.render(f"r{i}")]
    assert farm.jobs_of(got) == [1, 1, 2, 2, 3, 3]


def test_priority_serves_the_highest_priority_then_the_oldest() -> None:
    farm = Farm(make_policy("priority"))
    farm.job(1, priority=50, submit_time=1.0, ready=1)
    farm.job(2, priority=150, submit_time=3.0, ready=1)
    farm.job(3, priority=150, submit_time=2.0, ready=1)
    farm.job(4, priority=99, submit_time=0.0, ready=1)
    got = [d for i in range(4) for d in farm.render(f"r{i}")]
    assert farm.jobs_of(got) == [3, 2, 4, 1]


def test_a_priority_change_reorders_the_queue() -> None:
    farm = Farm(make_policy("priority"))
    farm.job(1, priority=100, ready=5)
    farm.job(2, priority=50, submit_time=1.0, ready=5)
    farm.do(JobUpdated(farm.ctx.next_id(), 2, 200, False))
    assert farm.jobs_of(farm.render("r1")) == [2]
    farm.do(JobUpdated(farm.ctx.next_id(), 2, 10, False))
    assert farm.jobs_of(farm.render("r2")) == [1]


def afanasy_need(priority: int, running_capacity: int) -> float:
    return 1.1**priority / (running_capacity + 1)


def test_fairshare_serves_the_neediest_user_first() -> None:
    farm = Farm(make_policy("fairshare"))
    user_priority = {"ann": 99, "bob": 99, "cy": 120}
    for user, priority in user_priority.items():
        farm.do(SetUser(farm.ctx.next_id(), user, priority))
    farm.job(1, "ann", submit_time=0.0)
    farm.job(2, "bob", submit_time=1.0)
    farm.job(3, "bob", priority=200, submit_time=2.0)  # bob's jobs go by job priority within bob's turn
    farm.job(4, "cy", submit_time=3.0)
    rng = random.Random(4)
    for i in range(12):
        farm.render(f"r{i}")
    for _ in range(200):
        run_id = rng.choice(sorted(farm.running))
        finished_user = farm.users[farm.running[run_id].job_id]
        need = {u: afanasy_need(p, farm.running_of(u) - (u == finished_user)) for u, p in user_priority.items()}
        (d,) = farm.end(run_id)
        chosen = farm.users[d.job_id]
        assert need[chosen] == max(need.values()), (chosen, need)
        if chosen == "bob":
            assert d.job_id == 3
    # with these priorities cy's need stays highest until cy runs about 1.1^21 ~ 7.4 times as much
    counts = Counter(farm.users[d.job_id] for d in farm.running.values())
    assert counts["cy"] > counts["ann"] and counts["cy"] > counts["bob"]


def test_fairshare_counts_running_capacity_not_tasks() -> None:
    farm = Farm(make_policy("fairshare"))
    farm.job(1, "ann", capacity=4, ready=10)
    farm.job(2, "bob", submit_time=1.0, ready=10)
    farm.render("first", capacity=4)  # ann takes it all (tie broken by who came first)
    assert farm.running_of("ann") == 1
    # a render where both users' tasks fit: ann runs one task of capacity 4 (need 1.1^99/5), so bob is served
    # until his capacity reaches 4 too, and only then (a tie, ann first) ann. Counting tasks instead, ann's
    # one task would weigh as much as one of bob's, and ann would come back after bob's first task.
    got = farm.render("big", capacity=8)
    assert [farm.users[d.job_id] for d in got] == ["bob"] * 4 + ["ann"]


def test_weighted_shares_follow_the_weights() -> None:
    farm = Farm(make_policy("weighted", half_life_s=600))
    farm.do(SetUser(farm.ctx.next_id(), "ann", weight=3.0))
    farm.do(SetUser(farm.ctx.next_id(), "bob", weight=1.0))
    farm.job(1, "ann")
    farm.job(2, "bob", submit_time=1.0)
    for i in range(8):
        farm.render(f"r{i}")
    assert (farm.running_of("ann"), farm.running_of("bob")) == (6, 2)
    # keep the farm busy for a while: tasks end at random and the shares stay near 3:1
    rng = random.Random(1)
    samples = []
    for _ in range(400):
        farm.ctx.now += rng.uniform(0.0, 10.0)
        farm.end(rng.choice(sorted(farm.running)))
        samples.append(farm.running_of("ann"))
    assert 5.0 <= sum(samples) / len(samples) <= 7.0


def test_weighted_recent_usage_yields_to_a_user_who_ran_nothing() -> None:
    policy = make_policy("weighted", half_life_s=100)
    farm = Farm(policy)
    farm.job(1, "ann", ready=1000)
    farm.render("r0", capacity=4)
    assert farm.running_of("ann") == 4
    farm.job(2, "bob", submit_time=1.0, ready=1000)
    farm.ctx.now = 300.0
    for run_id in sorted(farm.running):
        farm.end(run_id)  # ann's runs end; each freed slot is refilled at once
    # ann ran 4 capacity for 3 half-lives and bob nothing: bob takes the freed capacity, not ann
    assert farm.running_of("bob") == 4
    ann = farm.solver.users["ann"]
    assert ann.usage > 0


def test_weighted_usage_decays_with_the_half_life() -> None:
    policy = Weighted(half_life_s=100.0)
    user = UserState("ann", 1)
    user.usage = 800.0
    user.usage_time = 0.0
    assert policy.usage_at(user, 100.0) == pytest.approx(400.0)
    assert policy.usage_at(user, 300.0) == pytest.approx(100.0)
    # running capacity accumulates towards capacity / rate: ln2 * usage / half_life tends to the running capacity
    user.usage = 0.0
    user.running_capacity = 2
    rate = math.log(2) / 100.0
    assert policy.usage_at(user, 100.0) == pytest.approx(2 * 0.5 / rate)
    assert policy.usage_at(user, 10_000.0) * rate == pytest.approx(2.0)
    policy.account(user, 100.0)
    assert user.usage_time == 100.0 and user.usage == pytest.approx(2 * 0.5 / rate)
    # a heavier weight lowers the load
    light, heavy = UserState("a", 1), UserState("b", 2, weight=4.0)
    light.running_capacity = heavy.running_capacity = 4
    assert policy.user_key(heavy, 0.0) < policy.user_key(light, 0.0)


class Lifo(Policy):
    """A user's own policy: newest job first."""

    name: ClassVar[str] = "lifo-test"

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        return (-job.submit_time, job.seq)


class Alphabetical(Policy):
    """A user's own grouped policy: users by name, their jobs newest first."""

    name: ClassVar[str] = "alpha-test"
    grouped: ClassVar[bool] = True

    def __init__(self) -> None:
        self.accounted: list[str] = []

    def job_key(self, job: JobView) -> tuple[Any, ...]:
        return (-job.submit_time, job.seq)

    def user_key(self, user: UserState, now: float) -> tuple[Any, ...]:
        return (user.name,)

    def account(self, user: UserState, now: float) -> None:
        self.accounted.append(user.name)


def test_a_users_own_policy_object_orders_the_solver() -> None:
    farm = Farm(Lifo())
    for job_id in range(1, 5):
        farm.job(job_id, submit_time=float(job_id), ready=1)
    got = [d for i in range(4) for d in farm.render(f"r{i}")]
    assert farm.jobs_of(got) == [4, 3, 2, 1]


def test_a_users_own_grouped_policy_orders_users_then_jobs_and_is_told_of_starts() -> None:
    policy = Alphabetical()
    farm = Farm(policy)
    farm.job(1, "zed", ready=5)
    farm.job(2, "amy", submit_time=1.0, ready=1)
    farm.job(3, "amy", submit_time=2.0, ready=1)
    got = [d for i in range(4) for d in farm.render(f"r{i}")]
    assert farm.jobs_of(got) == [3, 2, 1, 1]
    assert policy.accounted.count("amy") == 2 and policy.accounted.count("zed") == 2
