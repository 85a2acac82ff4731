"""The job behaviour: one job's blocks and tasks, their states, dependencies, retries and user actions.

A job owns its tasks. It tells the solver what it needs (``JobOpened``) and how many tasks of each block
may be dispatched now (``BlockReady``, sent only when that number differs from what the solver already
believes); it answers a ``Dispatch`` by marking its next ready task (in the block's order) running and
sending ``Assign`` to the render. Reports from workers move tasks on; a report of an old attempt (a run
replaced after its render was lost, or killed by a restart) only closes that run and frees its capacity.

Task states: waiting (dependencies, job dependencies, wait-until), ready, running, done, error (after
``retries + 1`` failed runs), skipped. Dependencies are met by done or skipped.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

import msgspec

from .frames import TaskFrames, block_tasks, frame_dependencies, task_order
from .messages import (
    ActionDone,
    ActionRefused,
    Assign,
    AvoidRender,
    BlockNeeds,
    BlockReady,
    BlockView,
    ClaimRefused,
    Dispatch,
    DispatchDeclined,
    JobAction,
    JobClosed,
    JobDependencyMet,
    JobDetail,
    JobOpened,
    JobQuery,
    JobStateChanged,
    JobUpdated,
    KillRun,
    Message,
    ReclaimRun,
    RestoreTasks,
    RunClaimed,
    RunEnded,
    RunLost,
    RunRecord,
    StartJob,
    TaskChanged,
    TaskFinished,
    TaskProgress,
    TaskSnapshot,
    TaskStarted,
    TaskView,
    Tick,
)
from .runtime import EVENTS, REGISTRY, SOLVER, Context, Handler, MessageRouter, render_address
from .spec import BlockSpec, CommandTemplate, JobSpec

WAITING, READY, RUNNING, DONE, ERROR, SKIPPED = range(6)
STATE_NAMES = ("waiting", "ready", "running", "done", "error", "skipped")
OUTPUT_LINES_KEPT = 50
ACTIONS = ("pause", "resume", "delete", "restart", "skip", "priority")


class Task(msgspec.Struct, gc=False):
    """One task's mutable state inside its job.

    A struct rather than a plain object: a job builds all its tasks at once (a hundred thousand in a large
    simulation), and a struct is built in one call, keeps its fields in place rather than in a dictionary
    (a third of the memory) and reads them faster on the dispatch and finish paths.
    """

    index: int
    frames: TaskFrames
    rank: int
    state: int = WAITING
    attempt: int = 0
    failures: int = 0
    unmet: int = 0
    ready_time: float = 0.0
    start_time: float = 0.0
    run_id: int = 0
    render: str = ""
    percent: int = -1
    output: tuple[str, ...] = ()

    @property
    def frames_text(self) -> str:
        """The frames the task covers, as ``first-last`` (or one frame, or empty)."""
        first, last = self.frames.first, self.frames.last
        if first is None:
            return ""
        return str(first) if last is None or last == first else f"{first}-{last}"

    @property
    def state_name(self) -> str:
        """The state as the contract names it."""
        return STATE_NAMES[self.state]


class Block:
    """One block's tasks plus its dependency bookkeeping and its ready queue."""

    __slots__ = (
        "avoided",
        "blocked",
        "command",
        "down_blocks",
        "frame_down",
        "handled",
        "heap",
        "index",
        "ready",
        "render_failures",
        "reported",
        "reported_handled",
        "running",
        "spec",
        "tasks",
        "templates",
        "unfinished",
    )

    def __init__(self, index: int, spec: BlockSpec) -> None:
        self.index = index
        self.spec = spec
        frames = block_tasks(spec)
        ranks: Sequence[int] = range(len(frames))  # sequential: a task's rank is its index
        if spec.order != "sequential":
            ranks = [0] * len(frames)
            for position, task_index in enumerate(task_order(len(frames), spec.order)):
                ranks[task_index] = position
        self.tasks = [Task(i, f, ranks[i]) for i, f in enumerate(frames)]
        self.command = CommandTemplate(spec.command) if spec.command is not None else None
        self.templates: dict[str | tuple[str, ...], CommandTemplate] = {}
        self.heap: list[tuple[int, int]] = []
        self.ready = 0
        self.running = 0
        self.unfinished = len(self.tasks)
        self.blocked = 0  # whole-block upstreams not yet finished
        self.down_blocks: list[int] = []
        #: task index -> the (block, task) pairs that wait on that task alone (only tasks that have some)
        self.frame_down: dict[int, list[tuple[int, int]]] = {}
        self.handled = 0
        self.reported = 0
        self.reported_handled = 0
        self.render_failures: dict[str, int] = {}
        self.avoided: set[str] = set()


    def template(self, command: str | tuple[str, ...] | None) -> CommandTemplate | None:
        """The compiled template of a task's own command (cached per block)."""
        if command is None:
            return self.command
        template = self.templates.get(command)
        if template is None:
            template = self.templates[command] = CommandTemplate(command)
        return template


class LiveRun(msgspec.Struct, gc=False):
    """A run this job started and has not yet seen end: enough to record it when it does."""

    block: int
    task: int
    attempt: int
    render: str
    start_time: float
    ready_time: float


class JobBehaviour(MessageRouter):
    """The behaviour that owns one job (hosted by a JobActor in production)."""

    def __init__(self, job_id: int, spec: JobSpec, user: str, submit_time: float, task_events: bool = False) -> None:
        self.job_id = job_id
        self.task_events = task_events  # tell the event sink each lasting task change (a server with a store)
        self.unclaimed: set[int] = set()  # restored running runs no worker has reclaimed yet
        self.spec = spec
        self.user = user
        self.submit_time = submit_time
        self.priority = spec.priority
        self.paused = spec.paused
        self.deleted = False
        self.started = False
        self.waits_on: set[int] = set()
        self.time_gate = False
        self.state = "active"
        self.running = 0
        self.finished_tasks = 0  # done or skipped
        self.error_tasks = 0
        self.blocks = [Block(i, b) for i, b in enumerate(spec.blocks)]
        self.total_tasks = sum(len(b.tasks) for b in self.blocks)
        self.live: dict[int, LiveRun] = {}
        self.capped = spec.max_running_tasks is not None or any(
            b.max_running_tasks is not None for b in spec.blocks
        )
        self._wire_dependencies()
        self._handlers: dict[type[Message], Handler] = {
            Dispatch: self._on_dispatch,
            TaskStarted: self._on_started,
            TaskProgress: self._on_progress,
            TaskFinished: self._on_finished,
            RunLost: self._on_lost,
            ReclaimRun: self._on_reclaim,
            RestoreTasks: self._on_restore,
            JobQuery: self._on_query,
            StartJob: self._on_start,
            JobDependencyMet: self._on_dependency_met,
            JobAction: self._on_action,
            Tick: self._on_tick,
        }

    # ---------------------------------------------------------------------------------------- setup
    def _wire_dependencies(self) -> None:
        by_name = {b.spec.name: b for b in self.blocks}
        for block in self.blocks:
            for name in block.spec.depends_on:
                upstream = by_name[name]
                upstream.down_blocks.append(block.index)
                block.blocked += 1
            for name in block.spec.depends_on_frames:
                upstream = by_name[name]
                deps = frame_dependencies([t.frames for t in upstream.tasks], [t.frames for t in block.tasks])
                for j, ups in enumerate(deps):
                    block.tasks[j].unmet += len(ups)
                    for i in ups:
                        upstream.frame_down.setdefault(i, []).append((block.index, j))


    def _on_start(self, msg: StartJob, ctx: Context) -> None:
        if self.started:
            return
        self.started = True
        self.waits_on = set(msg.waits_on)
        wait_until = self.spec.wait_until
        if wait_until is not None and wait_until > ctx.now:
            self.time_gate = True
            ctx.set_timer("wait_until", wait_until, Tick(ctx.next_id(), "wait_until"))
        ctx.send(
            SOLVER,
            JobOpened(
                ctx.next_id(),
                self.job_id,
                self.user,
                self.priority,
                self.submit_time,
                tuple(self._needs(b) for b in self.blocks),
                self.paused,
                self.spec.max_running_tasks_per_render,
            ),
        )
        for block in self.blocks:  # renders a restored job had come to avoid
            for render in sorted(block.avoided):
                ctx.send(SOLVER, AvoidRender(ctx.next_id(), self.job_id, block.index, render))
        self._release_ready(self.blocks, ctx)
        self._update_job_state(ctx)  # a restored job may be done or stuck in error already

    @staticmethod
    def _needs(block: Block) -> BlockNeeds:
        s = block.spec
        return BlockNeeds(
            block.index, s.capacity, s.memory_mb, s.tags, s.hosts_mask, s.hosts_exclude,
            s.max_running_tasks_per_render,
        )

    # ---------------------------------------------------------------------------------------- readiness
    @property
    def gated(self) -> bool:
        """Whether the whole job still waits (on other jobs or on its start time)."""
        return bool(self.waits_on) or self.time_gate

    def _can_run(self, block: Block, task: Task) -> bool:
        return task.unmet == 0 and block.blocked == 0 and not self.gated

    def _make_ready(self, block: Block, task: Task, now: float) -> None:
        task.state = READY
        task.ready_time = now
        block.ready += 1
        heapq.heappush(block.heap, (task.rank, task.index))

    def _make_waiting(self, block: Block, task: Task) -> None:
        if task.state == READY:
            block.ready -= 1
        task.state = WAITING

    def _release_ready(self, blocks: Iterable[Block], ctx: Context) -> None:
        """Make every waiting task of ``blocks`` whose conditions hold ready, then report."""
        now = ctx.now
        for block in blocks:
            if block.blocked == 0 and not self.gated:
                released = []  # as _make_ready, for a whole block at once (a job's start releases every task)
                for task in block.tasks:
                    if task.state == WAITING and task.unmet == 0:
                        task.state = READY
                        task.ready_time = now
                        released.append((task.rank, task.index))
                if released:
                    block.ready += len(released)
                    heap = block.heap
                    if heap:
                        heap.extend(released)
                    else:
                        block.heap = heap = released
                    heapq.heapify(heap)
            self._report(block, ctx)

    def dispatchable(self, block: Block) -> int:
        """How many tasks of ``block`` the solver may dispatch now (ready, within the caps)."""
        if self.paused or self.deleted or not self.started:
            return 0
        count = block.ready
        if not self.capped:
            return count
        cap = block.spec.max_running_tasks
        if cap is not None:
            count = min(count, cap - block.running)
        cap = self.spec.max_running_tasks
        if cap is not None:
            count = min(count, cap - self.running)
        return max(count, 0)

    def _report(self, block: Block, ctx: Context) -> None:
        """Tell the solver the block's dispatchable count if it differs from what the solver believes."""
        want = self.dispatchable(block)
        if want != block.reported - (block.handled - block.reported_handled):
            block.reported = want
            block.reported_handled = block.handled
            ctx.send(SOLVER, BlockReady(ctx.next_id(), self.job_id, block.index, want, block.handled))

    def _report_after_run_change(self, block: Block, ctx: Context) -> None:
        if self.spec.max_running_tasks is not None:
            for b in self.blocks:
                self._report(b, ctx)
        else:
            self._report(block, ctx)

    # ---------------------------------------------------------------------------------------- dispatch
    def _on_dispatch(self, msg: Dispatch, ctx: Context) -> None:
        block = self.blocks[msg.block]
        block.handled += 1
        task = None
        if (
            block.ready > 0
            and self.started
            and not (self.paused or self.deleted)
            and (not self.capped or self.dispatchable(block) > 0)
        ):
            heap = block.heap
            tasks = block.tasks
            while heap:  # the next ready task in the block's order (entries of tasks no longer ready are stale)
                candidate = tasks[heapq.heappop(heap)[1]]
                if candidate.state == READY:
                    task = candidate
                    break
        if task is None:
            self._report(block, ctx)
            ctx.send(SOLVER, DispatchDeclined(ctx.next_id(), msg.id, self.job_id, msg.block, msg.render))
            return
        now = ctx.now
        run_id = msg.id
        render = msg.render
        task.state = RUNNING
        attempt = task.attempt = task.attempt + 1
        task.run_id = run_id
        task.render = render
        task.start_time = now
        task.percent = -1
        block.ready -= 1
        block.running += 1
        self.running += 1
        self.live[run_id] = LiveRun(block.index, task.index, attempt, render, now, task.ready_time)
        spec = block.spec
        f = task.frames
        template = block.command if f.command is spec.command else block.template(f.command)
        assert template is not None  # validated: a block without a command has commands on every task
        if self.task_events:  # before the Assign: a server's store has the run before its worker can have it
            self._changed(block, task, ctx)
        ctx.send(
            render_address(render),
            Assign(
                ctx.next_id(), run_id, self.job_id, block.index, task.index, attempt, render,
                template.fill(f.first, f.last, f.step, task.index, self.job_id, spec.name), f.name, self.spec.name,
                spec.name, spec.capacity, spec.memory_mb, spec.working_dir, spec.env, spec.timeout_s, spec.progress,
            ),
        )
        if self.capped:
            self._report_after_run_change(block, ctx)

    # ---------------------------------------------------------------------------------------- reports
    def _current(self, block_index: int, task_index: int, run_id: int) -> tuple[Block, Task] | None:
        if not 0 <= block_index < len(self.blocks):
            return None
        block = self.blocks[block_index]
        if not 0 <= task_index < len(block.tasks):
            return None
        task = block.tasks[task_index]
        if task.state != RUNNING or task.run_id != run_id:
            return None
        return block, task

    def _on_started(self, msg: TaskStarted, ctx: Context) -> None:
        current = self._current(msg.block, msg.task, msg.run_id)
        live = self.live.get(msg.run_id)
        if current is not None and live is not None and live.render == msg.render:
            current[1].start_time = ctx.now
            live.start_time = ctx.now

    def _on_progress(self, msg: TaskProgress, ctx: Context) -> None:
        current = self._current(msg.block, msg.task, msg.run_id)
        if current is None:
            return
        task = current[1]
        if msg.percent >= 0:
            task.percent = msg.percent
        if msg.lines:
            task.output = (task.output + msg.lines)[-OUTPUT_LINES_KEPT:]

    def _record_run(self, live: LiveRun, task: Task, block: Block, state: str, ctx: Context, at: float) -> None:
        """Tell the event sink how a run this job started ended (at ``at``)."""
        ctx.send(
            EVENTS,
            RunRecord(
                ctx.next_id(), self.job_id, self.spec.name, self.user, block.spec.name, task.frames.name,
                task.frames_text, live.render, live.attempt, state, self.submit_time, live.ready_time,
                live.start_time, at,
            ),
        )

    def _close_run(self, run_id: int, state: str, ctx: Context) -> LiveRun | None:
        """Forget a run this job started and record its end now; None if unknown."""
        live = self.live.pop(run_id, None)
        if live is not None:
            if self.unclaimed:
                self._no_longer_unclaimed(run_id, ctx)
            block = self.blocks[live.block]
            self._record_run(live, block.tasks[live.task], block, state, ctx, ctx.now)
        return live

    def _no_longer_unclaimed(self, run_id: int, ctx: Context) -> None:
        """A restored run was reclaimed or has ended: its reclaim timer must not fire for it."""
        if run_id in self.unclaimed:
            self.unclaimed.discard(run_id)
            ctx.cancel_timer(("reclaim", run_id))

    def _end_current(self, block: Block, task: Task) -> None:
        task.run_id = 0
        block.running -= 1
        self.running -= 1

    def _on_finished(self, msg: TaskFinished, ctx: Context) -> None:
        run_id = msg.run_id
        live = self.live.pop(run_id, None)
        if live is None:
            return
        if live.render != msg.render:  # a report from a render the run is not on (one that claimed it wrongly)
            self.live[run_id] = live
            return
        if self.unclaimed:  # a restored run that ended before (or without) being reclaimed
            self._no_longer_unclaimed(run_id, ctx)
        if msg.started_at >= 0.0:
            live.start_time = msg.started_at
        # the run id names the run: trust our record of which task it runs over the report's indices
        block = self.blocks[live.block]
        task = block.tasks[live.task]
        current = task.state == RUNNING and task.run_id == run_id
        state = msg.state
        if not current:
            state = "killed"  # we stopped it (restart, skip): whatever it did is not counted, so not "done"
        elif state != "done" and state != "error" and state != "killed":
            state = "error"
        self._record_run(live, task, block, state, ctx, msg.finished_at if msg.finished_at >= 0.0 else ctx.now)
        if current:
            if msg.output_tail:
                task.output = (task.output + msg.output_tail)[-OUTPUT_LINES_KEPT:]
            task.run_id = 0  # as _end_current, inline on the hot path
            block.running -= 1
            self.running -= 1
            if state == "done":
                task.percent = 100
                self._finish_task(block, task, DONE, ctx)  # reports the blocks it released
                if self.capped:
                    self._report_after_run_change(block, ctx)
            else:
                self._fail(block, task, msg.render, ctx)
                self._report_after_run_change(block, ctx)
            if self.task_events:
                self._changed(block, task, ctx)
        ctx.send(SOLVER, RunEnded(ctx.next_id(), run_id, self.job_id))
        if self.state != "active" or self.error_tasks or self.finished_tasks == self.total_tasks:
            self._update_job_state(ctx)  # it can change only then: the common case skips the call

    def _on_lost(self, msg: RunLost, ctx: Context) -> None:
        live = self.live.get(msg.run_id)
        if live is None or live.render != msg.render:  # a render that never held the run cannot lose it
            return
        current = self._current(live.block, live.task, msg.run_id)
        self._close_run(msg.run_id, "lost", ctx)
        if current is not None:
            block, task = current
            self._end_current(block, task)
            self._requeue(block, task, ctx.now)
            if self.task_events:
                self._changed(block, task, ctx)
            self._report_after_run_change(block, ctx)
        ctx.send(SOLVER, RunEnded(ctx.next_id(), msg.run_id, self.job_id))

    def _on_reclaim(self, msg: ReclaimRun, ctx: Context) -> None:
        run = msg.run
        current = self._current(run.block, run.task, run.run_id)
        live = self.live.get(run.run_id)
        if current is not None and current[1].attempt == run.attempt and live is not None:
            if live.render != msg.render:
                # only the render the run was assigned to may claim it: another name reporting it is an impostor
                # (or a confused worker); its copy is stopped and the real one keeps the run
                self._refuse_claim(run.run_id, msg.render, f"assigned to {live.render}", ctx)
                return
            ctx.send(SOLVER, RunClaimed(ctx.next_id(), run.run_id, self.job_id, run.block, msg.render))
            self._no_longer_unclaimed(run.run_id, ctx)
            if self.task_events:
                self._changed(current[0], current[1], ctx)
        else:  # not ours any more: stop it, and give back the capacity the render counted for it
            self._refuse_claim(run.run_id, msg.render, "stale", ctx)

    def _refuse_claim(self, run_id: int, render: str, reason: str, ctx: Context) -> None:
        """The render forgets the run and stops it; the solver frees what it counted for it there."""
        refused = ClaimRefused(ctx.next_id(), run_id, self.job_id, render, reason)
        ctx.send(render_address(render), refused)
        ctx.send(SOLVER, refused)

    def _requeue(self, block: Block, task: Task, now: float) -> None:
        task.state = WAITING
        if self._can_run(block, task):
            self._make_ready(block, task, now)

    def _fail(self, block: Block, task: Task, render: str, ctx: Context) -> None:
        task.failures += 1
        spec = block.spec
        count = block.render_failures.get(render, 0) + 1
        block.render_failures[render] = count
        if count >= spec.avoid_render_after and render not in block.avoided:
            block.avoided.add(render)
            avoid = AvoidRender(ctx.next_id(), self.job_id, block.index, render)
            ctx.send(SOLVER, avoid)
            if self.task_events:  # a lasting change: the store keeps it
                ctx.send(EVENTS, avoid)
        if task.failures <= spec.retries:
            self._requeue(block, task, ctx.now)
        else:
            task.state = ERROR
            self.error_tasks += 1

    # ---------------------------------------------------------------------------------------- dependencies
    def _finish_task(self, block: Block, task: Task, state: int, ctx: Context) -> None:
        """A task becomes done or skipped: count it and release what waited on it."""
        if task.state == READY:
            block.ready -= 1
        elif task.state == ERROR:
            self.error_tasks -= 1
        task.state = state
        block.unfinished -= 1
        self.finished_tasks += 1
        frame_down = block.frame_down.get(task.index, ())
        if not frame_down and block.unfinished:
            return  # the common case: nothing waits on this task alone, and its block is not finished
        touched: set[int] = set()
        for d_index, j in frame_down:
            down = self.blocks[d_index]
            dt = down.tasks[j]
            dt.unmet -= 1
            if dt.unmet == 0 and dt.state == WAITING and self._can_run(down, dt):
                self._make_ready(down, dt, ctx.now)
                touched.add(d_index)
        if block.unfinished == 0:
            for d_index in block.down_blocks:
                down = self.blocks[d_index]
                down.blocked -= 1
                if down.blocked == 0:
                    touched.add(d_index)
            self._release_ready([self.blocks[i] for i in sorted(touched)], ctx)
        else:
            for d_index in sorted(touched):
                self._report(self.blocks[d_index], ctx)

    def _unfinish_task(self, block: Block, task: Task) -> None:
        """A done or skipped task goes back: whatever depended on it waits again."""
        block.unfinished += 1
        self.finished_tasks -= 1
        for d_index, j in block.frame_down.get(task.index, ()):
            down = self.blocks[d_index]
            dt = down.tasks[j]
            dt.unmet += 1
            if dt.state == READY:
                self._make_waiting(down, dt)
        if block.unfinished == 1:
            for d_index in block.down_blocks:
                down = self.blocks[d_index]
                down.blocked += 1
                if down.blocked == 1:
                    for dt in down.tasks:
                        if dt.state == READY:
                            self._make_waiting(down, dt)

    def _on_dependency_met(self, msg: JobDependencyMet, ctx: Context) -> None:
        if msg.upstream in self.waits_on:
            self.waits_on.discard(msg.upstream)
            if not self.gated:
                self._release_ready(self.blocks, ctx)

    def _on_tick(self, msg: Tick, ctx: Context) -> None:
        if msg.name == "wait_until" and self.time_gate:
            self.time_gate = False
            if not self.gated:
                self._release_ready(self.blocks, ctx)
        elif msg.name == "reclaim" and msg.ref in self.unclaimed:
            # a restored run no worker came back for: lost, like a run of a lost render
            self.unclaimed.discard(msg.ref)
            live = self.live.get(msg.ref)
            if live is None:  # it ended meanwhile (ending forgets the timer; a wake-up already on its way is late)
                return
            self._on_lost(
                RunLost(ctx.next_id(), msg.ref, self.job_id, live.block, live.task, live.attempt, live.render,
                        "not reclaimed after restart"),
                ctx,
            )

    def _stuck(self) -> bool:
        """Whether no task can move on without a user: none ready or running, and no gate left to open.

        Then every waiting task waits, directly or not, on a task in error (dependencies are acyclic).
        """
        return not self.running and not self.gated and not any(b.ready for b in self.blocks)

    def _update_job_state(self, ctx: Context) -> None:
        if self.deleted:
            return
        if self.finished_tasks == self.total_tasks:
            state = "done"
        elif self.error_tasks and self._stuck():
            state = "error"
        else:
            state = "active"
        if state != self.state:
            self.state = state
            change = JobStateChanged(
                ctx.next_id(), self.job_id, state, self.finished_tasks, self.error_tasks, self.total_tasks
            )
            ctx.send(REGISTRY, change)
            ctx.send(EVENTS, change)

    # ---------------------------------------------------------------------------------------- actions
    def _on_action(self, msg: JobAction, ctx: Context) -> None:
        def refuse(reason: str, kind: str = "invalid") -> None:
            if msg.reply_address:
                ctx.send(msg.reply_address, ActionRefused(ctx.next_id(), msg.id, self.job_id, reason, kind))

        if self.deleted:
            refuse(f"job {self.job_id} is deleted", "gone")
            return
        if not (msg.by.admin or msg.by.user == self.user):
            refuse(f"user {msg.by.user!r} may not {msg.action} job {self.job_id} of user {self.user!r}", "forbidden")
            return
        if msg.action not in ACTIONS:
            refuse(f"unknown action {msg.action!r} (known: {', '.join(ACTIONS)})")
            return
        try:
            detail = getattr(self, f"_act_{msg.action}")(msg, ctx)
        except ValueError as exc:
            refuse(str(exc))
            return
        if msg.reply_address:
            ctx.send(msg.reply_address, ActionDone(ctx.next_id(), msg.id, self.job_id, detail))

    def _send_update(self, ctx: Context) -> None:
        update = JobUpdated(ctx.next_id(), self.job_id, self.priority, self.paused)
        ctx.send(SOLVER, update)
        if self.task_events:
            ctx.send(EVENTS, update)

    def _set_paused(self, paused: bool, ctx: Context) -> bool:
        """Pause or resume; False if it already was."""
        if self.paused == paused:
            return False
        self.paused = paused
        self._send_update(ctx)
        for block in self.blocks:
            self._report(block, ctx)
        return True

    def _act_pause(self, msg: JobAction, ctx: Context) -> str:
        return "paused" if self._set_paused(True, ctx) else "already paused"

    def _act_resume(self, msg: JobAction, ctx: Context) -> str:
        return "resumed" if self._set_paused(False, ctx) else "not paused"

    def _act_priority(self, msg: JobAction, ctx: Context) -> str:
        if not 0 <= msg.value <= 255:
            raise ValueError(f"priority: must be 0-255 (got {msg.value})")
        self.priority = msg.value
        self._send_update(ctx)
        return f"priority {msg.value}"

    def _act_delete(self, msg: JobAction, ctx: Context) -> str:
        self.deleted = True
        for run_id in sorted(self.live):
            live = self.live[run_id]
            ctx.send(render_address(live.render), KillRun(ctx.next_id(), run_id, self.job_id, live.render, "deleted"))
            self._close_run(run_id, "killed", ctx)
        ctx.send(SOLVER, JobClosed(ctx.next_id(), self.job_id))
        change = JobStateChanged(
            ctx.next_id(), self.job_id, "deleted", self.finished_tasks, self.error_tasks, self.total_tasks
        )
        ctx.send(REGISTRY, change)
        ctx.send(EVENTS, change)
        ctx.stop()
        return "deleted"

    def _selected(self, msg: JobAction) -> list[tuple[Block, Task]]:
        if msg.block == -1:
            if msg.tasks:
                raise ValueError("tasks: a task selection needs a block")
            return [(b, t) for b in self.blocks for t in b.tasks]
        if not 0 <= msg.block < len(self.blocks):
            raise ValueError(f"block: no block {msg.block} in job {self.job_id} (it has {len(self.blocks)})")
        block = self.blocks[msg.block]
        if not msg.tasks:
            return [(block, t) for t in block.tasks]
        chosen = []
        for index in msg.tasks:
            if not 0 <= index < len(block.tasks):
                raise ValueError(f"tasks: no task {index} in block {block.spec.name!r} (it has {len(block.tasks)})")
            chosen.append((block, block.tasks[index]))
        return chosen

    def _downstream(self, chosen: list[tuple[Block, Task]]) -> list[tuple[Block, Task]]:
        """``chosen`` plus every task that depends on them, directly or not."""
        seen = {(b.index, t.index) for b, t in chosen}
        order = list(seen)
        stack = list(seen)
        while stack:
            b_index, t_index = stack.pop()
            block = self.blocks[b_index]
            nexts = list(block.frame_down.get(t_index, ()))
            for d_index in block.down_blocks:
                nexts.extend((d_index, j) for j in range(len(self.blocks[d_index].tasks)))
            for key in nexts:
                if key not in seen:
                    seen.add(key)
                    order.append(key)
                    stack.append(key)
        return [(self.blocks[b], self.blocks[b].tasks[t]) for b, t in sorted(order)]

    def _stop_current(self, block: Block, task: Task, reason: str, ctx: Context) -> None:
        """Kill the task's current run (its report will then be ignored) and forget it."""
        ctx.send(render_address(task.render), KillRun(ctx.next_id(), task.run_id, self.job_id, task.render, reason))
        self._end_current(block, task)

    def _act_restart(self, msg: JobAction, ctx: Context) -> str:
        chosen = self._selected(msg)
        if msg.errors_only:
            chosen = [(b, t) for b, t in chosen if t.state == ERROR]
        if msg.downstream:
            chosen = self._downstream(chosen)
        count = 0
        for block, task in chosen:
            if task.state in (WAITING, READY):
                continue
            if task.state == RUNNING:
                self._stop_current(block, task, "restarted", ctx)
            elif task.state in (DONE, SKIPPED):
                self._unfinish_task(block, task)
            elif task.state == ERROR:
                self.error_tasks -= 1
            task.failures = 0
            task.percent = -1
            self._requeue(block, task, ctx.now)
            if self.task_events:
                self._changed(block, task, ctx)
            count += 1
        for block in self.blocks:
            self._report(block, ctx)
        self._update_job_state(ctx)
        return f"restarted {count} task(s)"

    def _act_skip(self, msg: JobAction, ctx: Context) -> str:
        count = 0
        for block, task in self._selected(msg):
            if task.state in (DONE, SKIPPED):
                continue
            if task.state == RUNNING:
                self._stop_current(block, task, "skipped", ctx)
            self._finish_task(block, task, SKIPPED, ctx)
            if self.task_events:
                self._changed(block, task, ctx)
            count += 1
        for block in self.blocks:
            self._report(block, ctx)
        self._update_job_state(ctx)
        return f"skipped {count} task(s)"

    # ---------------------------------------------------------------------------------------- persistence
    @staticmethod
    def snapshot(block: Block, task: Task) -> TaskSnapshot:
        """A task's lasting state, as a store keeps it."""
        running = task.state == RUNNING
        return TaskSnapshot(
            block.index, task.index, STATE_NAMES[task.state], task.attempt, task.failures,
            task.run_id if running else 0, task.render, task.ready_time, task.start_time, task.output,
        )

    def _changed(self, block: Block, task: Task, ctx: Context) -> None:
        ctx.send(EVENTS, TaskChanged(ctx.next_id(), self.job_id, self.snapshot(block, task), ctx.now))

    def _on_restore(self, msg: RestoreTasks, ctx: Context) -> None:
        """Bring back tasks' lasting states (before the start only); unknown or pending tasks are skipped."""
        if self.started:
            return
        for b_index, render in msg.avoided:
            if 0 <= b_index < len(self.blocks):
                block = self.blocks[b_index]
                block.avoided.add(render)
                block.render_failures[render] = max(block.render_failures.get(render, 0), block.spec.avoid_render_after)
        for snap in msg.tasks:
            if not 0 <= snap.block < len(self.blocks) or not 0 <= snap.task < len(self.blocks[snap.block].tasks):
                continue
            block = self.blocks[snap.block]
            task = block.tasks[snap.task]
            if task.state != WAITING:
                continue
            task.attempt = snap.attempt
            task.failures = snap.failures
            task.ready_time = snap.ready_time
            task.render = snap.render
            task.output = snap.output[-OUTPUT_LINES_KEPT:]
            if snap.state in ("done", "skipped"):
                self._restore_finished(block, task, DONE if snap.state == "done" else SKIPPED)
            elif snap.state == "error":
                task.state = ERROR
                self.error_tasks += 1
            elif snap.state == "running" and snap.run_id:
                task.state = RUNNING
                task.run_id = snap.run_id
                task.start_time = snap.start_time
                block.running += 1
                self.running += 1
                self.live[snap.run_id] = LiveRun(
                    block.index, task.index, task.attempt, snap.render, snap.start_time, task.ready_time
                )
                self.unclaimed.add(snap.run_id)
                wake = Tick(ctx.next_id(), "reclaim", snap.run_id)
                ctx.set_timer(("reclaim", snap.run_id), ctx.now + msg.reclaim_s, wake)

    def _restore_finished(self, block: Block, task: Task, state: int) -> None:
        """Count a task as done or skipped and note it for its dependents, without telling anyone yet."""
        task.state = state
        if state == DONE:
            task.percent = 100
        block.unfinished -= 1
        self.finished_tasks += 1
        for d_index, j in block.frame_down.get(task.index, ()):
            self.blocks[d_index].tasks[j].unmet -= 1
        if block.unfinished == 0:
            for d_index in block.down_blocks:
                self.blocks[d_index].blocked -= 1

    # ---------------------------------------------------------------------------------------- views
    def _on_query(self, msg: JobQuery, ctx: Context) -> None:
        """Answer a client's query with the job's detail (read-only)."""
        output: tuple[str, ...] = ()
        if 0 <= msg.block < len(self.blocks) and 0 <= msg.task < len(self.blocks[msg.block].tasks):
            lines = max(0, msg.lines)
            output = self.blocks[msg.block].tasks[msg.task].output[-lines:] if lines else ()
        blocks = []
        tasks = []
        first = max(0, msg.first_task)
        end = self.total_tasks if msg.task_limit < 0 else min(self.total_tasks, first + msg.task_limit)
        at = 0  # the index of a block's first task among the job's tasks
        for b in self.blocks:
            counts = dict.fromkeys(STATE_NAMES, 0)
            for t in b.tasks:
                counts[STATE_NAMES[t.state]] += 1
            for t in b.tasks[max(0, first - at) : max(0, end - at)]:
                tasks.append(
                    TaskView(
                        b.index, t.index, t.frames.name, t.frames_text, STATE_NAMES[t.state], t.attempt, t.failures,
                        t.render, t.percent, t.run_id, t.start_time,
                    )
                )
            at += len(b.tasks)
            blocks.append(
                BlockView(
                    b.index, b.spec.name, b.spec.depends_on, b.spec.depends_on_frames,
                    tuple((name, n) for name, n in counts.items() if n),
                )
            )
        state = "paused" if self.paused and self.state == "active" else self.state
        ctx.send(
            msg.reply_address,
            JobDetail(
                ctx.next_id(), msg.id, self.job_id, self.spec.name, self.user, state, self.priority, self.paused,
                self.submit_time, tuple(blocks), tuple(tasks), msg.block, msg.task, output, self.total_tasks, first,
            ),
        )

    def task_states(self) -> dict[tuple[str, str], str]:
        """Every task's state by (block name, task name)."""
        return {(b.spec.name, t.frames.name): t.state_name for b in self.blocks for t in b.tasks}

    def counts(self) -> dict[str, int]:
        """How many tasks are in each state."""
        out = dict.fromkeys(STATE_NAMES, 0)
        for block in self.blocks:
            for task in block.tasks:
                out[STATE_NAMES[task.state]] += 1
        return out
