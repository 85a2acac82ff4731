"""The solver: decides which job's ready task goes to which render, under a policy.

The solver never asks a job anything. Each job pushes a compact summary per block (``BlockReady``: how many
tasks may be dispatched now, as of how many dispatches it has handled) and its needs (``JobOpened``). The
solver keeps the blocks that have ready work in an index ordered by the policy's key: per user group (one
group for ungrouped policies), per required tag set, a ``SortedList`` of ``(job key, entry seq)``. Deciding
for a render walks the groups in key order and, within a group, the tag buckets the render satisfies,
stopping at the first eligible entry of each bucket: about O(log jobs) plus the ineligible entries skipped.

The solver also owns the capacity ledger of every render: a dispatch reserves the block's capacity and
memory under the run id (the ``Dispatch`` id), a ``DispatchDeclined`` or ``RunEnded`` gives it back, and a
lost render drops everything it ran. Free capacity never goes negative or over the render's size.

Between a dispatch and the job's next summary, the solver counts the dispatch as in flight: the effective
ready count of a block is ``ready - (sent - handled)``, exact under per-link FIFO delivery.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from sortedcontainers import SortedList

from .messages import (
    AvoidRender,
    BlockNeeds,
    BlockReady,
    ClaimRefused,
    Dispatch,
    DispatchDeclined,
    JobClosed,
    JobOpened,
    JobUpdated,
    Message,
    RenderInfo,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    RunClaimed,
    RunEnded,
    SetUser,
)
from .policies import Policy, UserState
from .runtime import Context, Handler, MessageRouter, job_address

_PATTERNS: dict[str, re.Pattern[str]] = {}


def compiled(pattern: str) -> re.Pattern[str]:
    """A compiled regex, cached (patterns were validated when the job spec was parsed)."""
    rx = _PATTERNS.get(pattern)
    if rx is None:
        rx = _PATTERNS[pattern] = re.compile(pattern)
    return rx


def host_allowed(name: str, mask: str | None, exclude: str | None) -> bool:
    """Whether render ``name`` passes a hosts mask and a hosts exclude (both full matches)."""
    if mask is not None and compiled(mask).fullmatch(name) is None:
        return False
    return exclude is None or compiled(exclude).fullmatch(name) is None


class RenderSlot:
    """A render as the solver sees it: what it offers and what is free right now."""

    __slots__ = (
        "capacity",
        "compat",
        "compat_version",
        "contested",
        "free_cap",
        "free_mem",
        "free_tasks",
        "held_for",
        "idle",
        "max_tasks",
        "memory",
        "name",
        "online",
        "paused",
        "per_block",
        "per_job",
        "runs",
        "seq",
        "tags",
    )

    def __init__(self, info: RenderInfo, seq: int) -> None:
        self.name = info.name
        self.seq = seq
        self.tags: frozenset[str] = frozenset(info.tags)
        self.capacity = info.capacity
        self.max_tasks = info.max_tasks
        self.memory = info.memory_mb
        self.free_cap = info.capacity
        self.free_tasks = info.max_tasks
        self.free_mem = info.memory_mb
        self.online = True
        self.paused = False
        self.idle = False
        self.held_for: BlockEntry | None = None  # a starving block this render is kept free for
        self.runs: set[int] = set()  # the ledger's runs on this render
        self.per_job: dict[int, int] = {}
        self.per_block: dict[tuple[int, int], int] = {}
        self.compat: list[frozenset[str]] = []
        self.compat_version = -1
        self.contested = 0  # runs it reported that the ledger holds unclaimed on another render: not filled


class JobSlot:
    """A job as the solver sees it: its policy inputs and its blocks."""

    __slots__ = (
        "address",
        "blocks",
        "closed",
        "group",
        "job_id",
        "key",
        "max_per_render",
        "paused",
        "priority",
        "seq",
        "submit_time",
        "user",
    )

    def __init__(self, msg: JobOpened, seq: int, group: UserGroup) -> None:
        self.job_id = msg.job_id
        self.address = job_address(msg.job_id)
        self.user = msg.user
        self.priority = msg.priority
        self.submit_time = msg.submit_time
        self.seq = seq
        self.paused = msg.paused
        self.closed = False
        self.max_per_render = msg.max_per_render
        self.group = group
        self.key: tuple[Any, ...] = ()
        self.blocks: list[BlockEntry] = []


class BlockEntry:
    """One block of one job in the solver's index: its needs and its ready count."""

    __slots__ = (
        "avoid",
        "blocked_since",
        "handled",
        "holds",
        "hosts_ok",
        "item",
        "job",
        "needs",
        "ready",
        "sent",
        "seq",
        "simple",
        "tagset",
    )

    def __init__(self, job: JobSlot, needs: BlockNeeds, seq: int) -> None:
        self.job = job
        self.needs = needs
        self.seq = seq
        self.tagset: frozenset[str] = frozenset(needs.tags)
        self.ready = 0
        self.handled = 0
        self.sent = 0
        self.item: tuple[Any, ...] | None = None
        self.avoid: set[str] = set()
        self.blocked_since: float | None = None  # since when it has ranked first somewhere but not fitted
        self.holds = 0  # renders kept free for it
        self.hosts_ok: dict[str, bool] | None = (
            {} if needs.hosts_mask is not None or needs.hosts_exclude is not None else None
        )
        #: True while only capacity and memory matter (no masks, caps or avoided renders): the fast path
        self.simple = self.hosts_ok is None and needs.max_per_render is None and job.max_per_render is None

    @property
    def effective_ready(self) -> int:
        """Ready tasks not yet claimed by dispatches in flight."""
        return self.ready - (self.sent - self.handled)


class UserGroup(UserState):
    """A user's state plus their part of the index (one group holds everyone for ungrouped policies)."""

    __slots__ = ("buckets", "count", "item")

    def __init__(self, name: str, seq: int, priority: int = 99, weight: float = 1.0) -> None:
        super().__init__(name, seq, priority, weight)
        self.buckets: dict[frozenset[str], SortedList] = {}
        self.count = 0
        self.item: tuple[Any, ...] | None = None


# a run in the ledger: the render, the entry it belongs to (None for an unclaimed reclaim), capacity, memory
_Run = tuple[RenderSlot, BlockEntry | None, int, int]


class Solver(MessageRouter):
    """The solver behaviour: the policy-ordered index of ready work and the render capacity ledger."""

    def __init__(self, policy: Policy, reserve_after_s: float | None = 60.0) -> None:
        self.policy = policy
        self._grouped = policy.grouped  # the policy orders users first (read on every dispatch and run end)
        #: the starvation guard: a block that ranks first for a render but has not fitted in its free
        #: capacity for this long gets the render kept free for it (None: never)
        self.reserve_after_s = reserve_after_s
        self._now = 0.0
        self.renders: dict[str, RenderSlot] = {}
        self.jobs: dict[int, JobSlot] = {}
        self.users: dict[str, UserGroup] = {}
        self.runs: dict[int, _Run] = {}
        self.contested: dict[int, RenderSlot] = {}  # a run held unclaimed on one render, reported by this one
        self._entries: dict[int, BlockEntry] = {}
        self._groups: SortedList = SortedList()
        self._group_by_seq: dict[int, UserGroup] = {}
        self._shared_group = UserGroup("", 0)
        self._group_by_seq[0] = self._shared_group
        self._tagsets: list[frozenset[str]] = []
        self._tagset_version = 0
        self._idle: dict[frozenset[str], dict[str, RenderSlot]] = {}
        self._held: dict[str, RenderSlot] = {}  # renders the starvation guard keeps for a block
        self._seq = 0
        self._last_refresh = 0.0
        self.decisions = 0
        self._handlers: dict[type[Message], Handler] = {
            BlockReady: self._on_block_ready,
            RunEnded: self._on_run_ended,
            JobOpened: self._on_job_opened,
            JobUpdated: self._on_job_updated,
            JobClosed: self._on_job_closed,
            DispatchDeclined: self._on_declined,
            AvoidRender: self._on_avoid,
            RenderOnline: self._on_render_online,
            RenderOffline: self._on_render_offline,
            RenderPaused: self._on_render_paused,
            RunClaimed: self._on_run_claimed,
            ClaimRefused: self._on_claim_refused,
            SetUser: self._on_set_user,
        }

    # ---------------------------------------------------------------------------------------- entry
    def handle(self, message: Message, ctx: Context) -> None:
        """React to one message (unknown kinds are ignored); then refill renders held for nothing."""
        handler = self._handlers.get(type(message))
        if handler is not None:
            handler(message, ctx)
            if self._held:
                self._refill_stale_holds(ctx)

    # ---------------------------------------------------------------------------------------- users
    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def _group_for(self, user: str) -> UserGroup:
        group = self.users.get(user)
        if group is None:
            group = UserGroup(user, self._next_seq())
            self.users[user] = group
            self._group_by_seq[group.seq] = group
        return group

    def _on_set_user(self, msg: SetUser, ctx: Context) -> None:
        group = self._group_for(msg.user)
        group.priority = msg.priority
        group.weight = msg.weight
        self._rekey_group(group, ctx.now)

    def _index_group(self, user: UserGroup) -> UserGroup:
        """The group whose index holds this user's entries."""
        return user if self._grouped else self._shared_group

    def _rekey_group(self, group: UserGroup, now: float) -> None:
        if not self._grouped or group.item is None:
            return
        self._groups.remove(group.item)
        group.item = (self.policy.user_key(group, now), group.seq)
        self._groups.add(group.item)

    def _refresh_groups(self, now: float) -> None:
        self._last_refresh = now
        for group in self.users.values():
            self.policy.account(group, now)
            self._rekey_group(group, now)

    # ---------------------------------------------------------------------------------------- index
    def _index(self, entry: BlockEntry, now: float) -> None:
        if entry.item is not None:
            return
        group = self._index_group(entry.job.group)
        bucket = group.buckets.get(entry.tagset)
        if bucket is None:
            bucket = group.buckets[entry.tagset] = SortedList()
            if entry.tagset not in self._tagsets:
                self._tagsets.append(entry.tagset)
                self._tagset_version += 1
        entry.item = (entry.job.key, entry.seq)
        bucket.add(entry.item)
        group.count += 1
        if group.count == 1:
            group.item = (self.policy.user_key(group, now), group.seq) if self._grouped else (0,)
            self._groups.add(group.item)

    def _unindex(self, entry: BlockEntry) -> None:
        if entry.item is None:
            return
        group = self._index_group(entry.job.group)
        group.buckets[entry.tagset].remove(entry.item)
        entry.item = None
        entry.blocked_since = None
        group.count -= 1
        if group.count == 0:
            self._groups.remove(group.item)
            group.item = None

    def _update_entry(self, entry: BlockEntry, ctx: Context) -> None:
        """Put an entry in or out of the index after its count or its job changed."""
        job = entry.job
        if entry.effective_ready > 0 and not job.paused and not job.closed:
            if entry.item is None:
                self._index(entry, ctx.now)
                self._match_idle(entry, ctx)
        else:
            self._unindex(entry)

    # ---------------------------------------------------------------------------------------- decide
    def _compatible_tagsets(self, render: RenderSlot) -> list[frozenset[str]]:
        if render.compat_version != self._tagset_version:
            render.compat = [ts for ts in self._tagsets if ts <= render.tags]
            render.compat_version = self._tagset_version
        return render.compat

    def eligible(self, entry: BlockEntry, render: RenderSlot) -> bool:
        """Whether a task of ``entry`` may run on ``render`` now (capacity, memory, masks, caps, avoidance)."""
        needs = entry.needs
        if needs.capacity > render.free_cap or needs.memory_mb > render.free_mem:
            return False
        if entry.avoid and render.name in entry.avoid:
            return False
        hosts_ok = entry.hosts_ok
        if hosts_ok is not None:
            allowed = hosts_ok.get(render.name)
            if allowed is None:
                allowed = hosts_ok[render.name] = host_allowed(render.name, needs.hosts_mask, needs.hosts_exclude)
            if not allowed:
                return False
        if needs.max_per_render is not None and render.per_block.get(
            (entry.job.job_id, needs.block), 0
        ) >= needs.max_per_render:
            return False
        job_cap = entry.job.max_per_render
        return job_cap is None or render.per_job.get(entry.job.job_id, 0) < job_cap

    def decide(self, render: RenderSlot) -> BlockEntry | None:
        """The best entry, under the policy, that may run a task on ``render`` now; None if there is none."""
        tagsets = render.compat if render.compat_version == self._tagset_version else self._compatible_tagsets(render)
        if not self._grouped:
            group = self._shared_group
            if not group.count:
                return None
            if len(tagsets) == 1:  # the usual farm: one tag set fits this render, so one bucket to look in
                bucket = group.buckets.get(tagsets[0])
                return self._first_eligible(bucket, render, None) if bucket else None
            return self._best_in(group, tagsets, render)
        by_seq = self._group_by_seq
        for group_item in self._groups:
            best = self._best_in(by_seq[group_item[-1]], tagsets, render)
            if best is not None:
                return best
        return None

    def _best_in(self, group: UserGroup, tagsets: list[frozenset[str]], render: RenderSlot) -> BlockEntry | None:
        """The best eligible entry of one group: the first eligible of each tag bucket, the smallest of those."""
        best_item: tuple[Any, ...] | None = None
        best: BlockEntry | None = None
        buckets = group.buckets
        for tagset in tagsets:
            bucket = buckets.get(tagset)
            if bucket:
                found = self._first_eligible(bucket, render, best_item)
                if found is not None:
                    best = found
                    best_item = found.item
        return best

    def _first_eligible(
        self, bucket: SortedList, render: RenderSlot, bound: tuple[Any, ...] | None
    ) -> BlockEntry | None:
        """The first entry of ``bucket`` (in key order, below ``bound``) that may run on ``render``."""
        entries = self._entries
        free_cap = render.free_cap
        free_mem = render.free_mem
        # walk the SortedList's sublists directly: the public iterator costs more than the decision
        for sub in bucket._lists:
            for item in sub:
                if bound is not None and item >= bound:
                    return None
                entry = entries[item[-1]]
                needs = entry.needs
                if needs.capacity > free_cap or needs.memory_mb > free_mem:
                    if self.reserve_after_s is not None and self._may_hold(entry, render):
                        return entry  # it does not fit: the caller keeps the render for it
                    continue
                if entry.simple or self.eligible(entry, render):
                    return entry
        return None

    def _may_hold(self, entry: BlockEntry, render: RenderSlot) -> bool:
        """Whether ``render`` should be kept free for ``entry``, which ranks first but does not fit now."""
        needs = entry.needs
        if needs.capacity > render.capacity or needs.memory_mb > render.memory:
            return False  # it never fits there
        held = render.held_for
        if held is entry:
            return entry.holds <= entry.effective_ready
        if held is not None and held.item is not None:
            return False  # kept for another block already
        after = self.reserve_after_s
        if after is None or not (entry.simple or self._eligible_but_for_size(entry, render)):
            return False
        if entry.blocked_since is None:
            entry.blocked_since = self._now
        return self._now - entry.blocked_since >= after and entry.holds < entry.effective_ready

    def _eligible_but_for_size(self, entry: BlockEntry, render: RenderSlot) -> bool:
        free = render.free_cap, render.free_mem
        render.free_cap, render.free_mem = render.capacity, render.memory
        try:
            return self.eligible(entry, render)
        finally:
            render.free_cap, render.free_mem = free

    def _hold(self, render: RenderSlot, entry: BlockEntry | None) -> None:
        """Keep ``render`` for ``entry`` (None: release it)."""
        held = render.held_for
        if held is entry:
            return
        if held is not None:
            held.holds -= 1
        render.held_for = entry
        if entry is not None:
            entry.holds += 1
            self._held[render.name] = render
        else:
            self._held.pop(render.name, None)

    def _refill_stale_holds(self, ctx: Context) -> None:
        """A render kept for a block that has left the index (dispatched elsewhere, paused, closed), or one kept
        beyond the block's ready tasks (its count dropped: the guard keeps at most one render per ready task), is
        free for the others again: fill it now rather than when one of its runs ends."""
        for render in list(self._held.values()):  # (looked at in turn: each release changes what is stale)
            entry = render.held_for
            if entry is not None and (entry.item is None or entry.holds > entry.effective_ready):
                self._hold(render, None)
                self._fill(render, ctx)

    def _fill(self, render: RenderSlot, ctx: Context) -> None:
        """Dispatch to ``render`` until it is full or nothing eligible is left (then it is idle)."""
        if not render.online or render.paused or render.contested:
            return
        now = self._now = ctx.now
        refresh = self.policy.refresh_s
        if refresh is not None and now - self._last_refresh >= refresh:
            self._refresh_groups(now)
        while render.free_tasks > 0 and render.free_cap > 0:
            entry = self.decide(render)
            if entry is None:
                if render.held_for is not None:
                    self._hold(render, None)
                self._set_idle(render, True)
                return
            needs = entry.needs
            if needs.capacity > render.free_cap or needs.memory_mb > render.free_mem:
                self._hold(render, entry)  # the starvation guard: nothing smaller goes here until it fits
                self._set_idle(render, False)
                return
            held = render.held_for
            if held is not None and (held is entry or held.item is None):
                self._hold(render, None)
            self._dispatch(entry, render, ctx, now)
        if render.idle:
            self._set_idle(render, False)

    def _set_idle(self, render: RenderSlot, idle: bool) -> None:
        if render.idle == idle:
            return
        render.idle = idle
        if idle:
            self._idle.setdefault(render.tags, {})[render.name] = render
        else:
            bucket = self._idle[render.tags]
            del bucket[render.name]
            if not bucket:
                del self._idle[render.tags]

    def _match_idle(self, entry: BlockEntry, ctx: Context) -> None:
        """New ready work: offer it to idle renders that can take it, in the order they became idle."""
        if not self._idle:
            return
        for tags in list(self._idle):
            if not entry.tagset <= tags:
                continue
            for render in list(self._idle.get(tags, {}).values()):
                if render.idle and self.eligible(entry, render):
                    self._fill(render, ctx)
                if entry.item is None:
                    return

    def _dispatch(self, entry: BlockEntry, render: RenderSlot, ctx: Context, now: float) -> None:
        needs = entry.needs
        job = entry.job
        run_id = ctx.next_id()
        entry.sent += 1
        if entry.ready - (entry.sent - entry.handled) <= 0:
            self._unindex(entry)
        self._occupy(run_id, render, entry, needs.capacity, needs.memory_mb, now)
        self.decisions += 1
        ctx.send(job.address, Dispatch(run_id, job.job_id, needs.block, render.name))

    # ---------------------------------------------------------------------------------------- ledger
    def _occupy(
        self, run_id: int, render: RenderSlot, entry: BlockEntry | None, capacity: int, memory: int, now: float
    ) -> None:
        render.free_cap -= capacity
        render.free_mem -= memory
        render.free_tasks -= 1
        render.runs.add(run_id)
        self.runs[run_id] = (render, entry, capacity, memory)
        if entry is None:
            return
        if entry.simple and not self._grouped:  # the hot path: no per-render caps, no user keys
            user = entry.job.group
            user.running_capacity += capacity
            user.running_tasks += 1
        else:
            self._count_start(run_id, render, entry, capacity, now)

    def _count_start(self, run_id: int, render: RenderSlot, entry: BlockEntry, capacity: int, now: float) -> None:
        job = entry.job
        if job.max_per_render is not None:
            render.per_job[job.job_id] = render.per_job.get(job.job_id, 0) + 1
        if entry.needs.max_per_render is not None:
            key = (job.job_id, entry.needs.block)
            render.per_block[key] = render.per_block.get(key, 0) + 1
        user = job.group
        if self._grouped:
            self.policy.account(user, now)
        user.running_capacity += capacity
        user.running_tasks += 1
        if self._grouped:
            self._rekey_group(user, now)

    def _release(self, run_id: int, now: float) -> RenderSlot | None:
        """Give a run's capacity back; returns its render (None for an unknown run)."""
        run = self.runs.pop(run_id, None)
        if run is None:
            return None
        render, entry, capacity, memory = run
        render.free_cap += capacity
        render.free_mem += memory
        render.free_tasks += 1
        render.runs.discard(run_id)
        if entry is not None:
            job = entry.job
            if job.max_per_render is not None:
                _decrement(render.per_job, job.job_id)
            if entry.needs.max_per_render is not None:
                _decrement(render.per_block, (job.job_id, entry.needs.block))
            user = job.group
            if self._grouped:
                self.policy.account(user, now)
            user.running_capacity -= capacity
            user.running_tasks -= 1
            if self._grouped:
                self._rekey_group(user, now)
        return render

    # ---------------------------------------------------------------------------------------- jobs
    def _on_job_opened(self, msg: JobOpened, ctx: Context) -> None:
        if msg.job_id in self.jobs:
            return
        job = JobSlot(msg, self._next_seq(), self._group_for(msg.user))
        job.key = self.policy.job_key(job)
        self.jobs[msg.job_id] = job
        for needs in msg.blocks:
            entry = BlockEntry(job, needs, self._next_seq())
            job.blocks.append(entry)
            self._entries[entry.seq] = entry

    def _on_job_updated(self, msg: JobUpdated, ctx: Context) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        job.paused = msg.paused
        if msg.priority != job.priority:
            job.priority = msg.priority
            for entry in job.blocks:
                self._unindex(entry)
            job.key = self.policy.job_key(job)
        for entry in job.blocks:
            self._update_entry(entry, ctx)

    def _on_job_closed(self, msg: JobClosed, ctx: Context) -> None:
        job = self.jobs.pop(msg.job_id, None)
        if job is None:
            return
        job.closed = True
        for entry in job.blocks:
            self._unindex(entry)
            del self._entries[entry.seq]
        runs = sorted(run_id for run_id, run in self.runs.items() if run[1] is not None and run[1].job is job)
        freed = {r for run_id in runs if (r := self._release(run_id, ctx.now)) is not None}
        for render in sorted(freed, key=_by_seq):
            self._fill(render, ctx)

    def _on_block_ready(self, msg: BlockReady, ctx: Context) -> None:
        job = self.jobs.get(msg.job_id)
        if job is None:
            return
        entry = job.blocks[msg.block]
        entry.ready = msg.ready
        entry.handled = msg.handled
        self._update_entry(entry, ctx)

    def _on_avoid(self, msg: AvoidRender, ctx: Context) -> None:
        job = self.jobs.get(msg.job_id)
        if job is not None:
            entry = job.blocks[msg.block]
            entry.avoid.add(msg.render)
            entry.simple = False

    def _on_declined(self, msg: DispatchDeclined, ctx: Context) -> None:
        # the job's fresh summary (or pause) reached us first, on the same link: the entry is already right
        render = self._release(msg.reply_to, ctx.now)
        if render is not None:
            self._fill(render, ctx)

    def _on_run_ended(self, msg: RunEnded, ctx: Context) -> None:
        render = self._release(msg.run_id, ctx.now)
        if render is not None:
            self._fill(render, ctx)
        if self.contested:
            self._settle(msg.run_id, None, ctx)

    def _settle(self, run_id: int, render_name: str | None, ctx: Context) -> None:
        """The question of which render runs ``run_id`` is answered for the render that contested it (by an
        answer naming that render, or by the run's end): it may be filled again."""
        slot = self.contested.get(run_id)
        if slot is None or (render_name is not None and slot.name != render_name):
            return
        del self.contested[run_id]
        slot.contested -= 1
        self._fill(slot, ctx)

    def _on_run_claimed(self, msg: RunClaimed, ctx: Context) -> None:
        run = self.runs.get(msg.run_id)
        job = self.jobs.get(msg.job_id)
        if job is None or (run is not None and run[1] is not None):
            return
        entry = job.blocks[msg.block]
        render = self.renders.get(msg.render)
        if run is not None and run[0] is not render:
            # another render reported the run first (an impostor, refused by the job): it is counted here
            other = self._release(msg.run_id, ctx.now)
            run = None
            if other is not None:
                self._fill(other, ctx)
        if run is None and render is not None and render.online:
            self._occupy(msg.run_id, render, None, entry.needs.capacity, entry.needs.memory_mb, ctx.now)
            run = self.runs[msg.run_id]
        if run is not None:
            slot, _, capacity, memory = run
            self.runs[msg.run_id] = (slot, entry, capacity, memory)
            self._count_start(msg.run_id, slot, entry, capacity, ctx.now)
        if self.contested:
            self._settle(msg.run_id, msg.render, ctx)

    def _on_claim_refused(self, msg: ClaimRefused, ctx: Context) -> None:
        run = self.runs.get(msg.run_id)
        if run is not None and run[0].name == msg.render:  # else counted on another render, which keeps it
            render = self._release(msg.run_id, ctx.now)
            if render is not None:
                self._fill(render, ctx)
        if self.contested:
            self._settle(msg.run_id, msg.render, ctx)

    # ---------------------------------------------------------------------------------------- renders
    def _on_render_online(self, msg: RenderOnline, ctx: Context) -> None:
        info = msg.info
        old = self.renders.get(info.name)
        render = RenderSlot(info, old.seq if old is not None else self._next_seq())
        render.paused = msg.paused or (old is not None and old.paused)
        if old is not None:
            # a reconnection: runs the worker no longer has are free now (their jobs' RunEnded, later, then
            # finds nothing to release); every other run the ledger holds stays held: a run the worker
            # reports, and a dispatch still on its way to the render, which will run there
            self._set_idle(old, False)
            self._hold(old, None)
            for run_id in msg.lost:
                if run_id in old.runs:
                    self._release(run_id, ctx.now)
            for run_id in self.runs_on(old):
                _, entry, capacity, memory = self.runs[run_id]
                self._release(run_id, ctx.now)
                self._occupy(run_id, render, entry, capacity, memory, ctx.now)
            if old.contested:
                self._drop_contests(old)
        self.renders[info.name] = render
        for run in msg.running:
            # a run the ledger does not know (the server restarted, say) takes its capacity until its job
            # claims it (RunClaimed) or it ends; the registry answers for runs of jobs that are gone
            held = self.runs.get(run.run_id)
            if held is None:
                self._occupy(run.run_id, render, None, run.capacity, run.memory_mb, ctx.now)
            elif held[1] is None and held[0] is not render and run.run_id not in self.contested:
                # another render reported it first and no job has said whose it is: until its job answers this
                # render's claim, this render gets nothing more (it may be running it: no over-commitment)
                self.contested[run.run_id] = render
                render.contested += 1
        self._fill(render, ctx)

    def _drop_contests(self, render: RenderSlot) -> None:
        """Forget the contests of a render that is gone or came back anew (its new Hello contests again)."""
        for run_id in [r for r, slot in self.contested.items() if slot is render]:
            del self.contested[run_id]
        render.contested = 0

    def _on_render_offline(self, msg: RenderOffline, ctx: Context) -> None:
        render = self.renders.get(msg.render)
        if render is None:
            return
        if render.contested:
            self._drop_contests(render)
        self._set_idle(render, False)
        self._hold(render, None)
        render.online = False
        for run_id in self.runs_on(render):
            self._release(run_id, ctx.now)
        del self.renders[msg.render]

    def _on_render_paused(self, msg: RenderPaused, ctx: Context) -> None:
        render = self.renders.get(msg.render)
        if render is None:
            return
        render.paused = msg.paused
        if msg.paused:
            self._set_idle(render, False)
            self._hold(render, None)
        else:
            self._fill(render, ctx)

    # ---------------------------------------------------------------------------------------- views
    def runs_on(self, render: RenderSlot) -> list[int]:
        """The ids of the runs the ledger holds on ``render``, in order."""
        return sorted(render.runs)

    def ready_entries(self) -> Iterable[BlockEntry]:
        """Every indexed entry (for checks and monitoring)."""
        return (entry for entry in self._entries.values() if entry.item is not None)


def _decrement(counts: dict[Any, int], key: Any) -> None:
    left = counts.get(key, 0) - 1
    if left > 0:
        counts[key] = left
    else:
        counts.pop(key, None)


def _by_seq(render: RenderSlot) -> int:
    return render.seq
