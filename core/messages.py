"""The one message catalogue: every message that crosses between behaviours, actors and the wire.

Each message is a frozen, tagged ``msgspec.Struct`` with an ``id`` (unique within a runtime, from
``ctx.next_id()``); an answer carries ``reply_to``, the id of what it answers. Fields are tuples, never
lists, so a message is immutable end to end. The same structs travel inside the server, over TCP and
through the simulated network.
"""

from __future__ import annotations

from typing import Any

import msgspec

from .spec import JobSpec

PROTOCOL_VERSION = 1


class Message(msgspec.Struct, frozen=True, tag=True, gc=False):
    """Base of every message: ``id`` is unique within the runtime that made it."""

    id: int


# --------------------------------------------------------------------------------------------
# Plain records carried inside messages
# --------------------------------------------------------------------------------------------


class RenderInfo(msgspec.Struct, frozen=True, gc=False):
    """What a render offers, as its worker announces it."""

    name: str
    tags: frozenset[str] = frozenset()
    capacity: int = 1
    max_tasks: int = 1
    memory_mb: int = 0
    cpus: int = 1


class RunningRun(msgspec.Struct, frozen=True, gc=False):
    """A run a worker is executing, as it reports it on (re)connection."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    capacity: int = 1
    memory_mb: int = 0


class BlockNeeds(msgspec.Struct, frozen=True, gc=False):
    """What a task of one block needs from a render: the solver's eligibility inputs."""

    block: int
    capacity: int
    memory_mb: int
    tags: frozenset[str]
    hosts_mask: str | None
    hosts_exclude: str | None
    max_per_render: int | None


class Actor(msgspec.Struct, frozen=True, gc=False):
    """Who asks for a user action: a user name and whether they are an admin."""

    user: str
    admin: bool = False


# --------------------------------------------------------------------------------------------
# Submission and the job registry
# --------------------------------------------------------------------------------------------


class SubmitJob(Message, frozen=True):
    """Ask the registry to accept a parsed job; the answer goes to ``reply_address``."""

    spec: JobSpec
    user: str
    reply_address: str = ""
    job_id: int = 0  # a fixed id (restoring from a store); 0 lets the registry choose
    submit_time: float | None = None  # the original submission time (restoring); None: now
    task_events: bool = False  # the job tells the event sink each lasting task change (TaskChanged)
    restore: tuple[TaskSnapshot, ...] = ()  # task states to bring back before the job starts
    reclaim_s: float = 60.0  # restored running tasks wait this long for their worker
    restore_avoided: tuple[tuple[int, str], ...] = ()  # (block, render) pairs the job had come to avoid
    #: who submits (None: trusted, e.g. a restore or a local run); only an admin may submit for another user
    by: Actor | None = None
    #: re-created from a store after a restart: an upstream job id the registry does not know was deleted
    #: meanwhile, which releases this job (as a deletion does) instead of refusing it
    restoring: bool = False


class JobAccepted(Message, frozen=True):
    """The job is accepted under ``job_id``."""

    reply_to: int
    job_id: int


class JobRefused(Message, frozen=True):
    """The job is refused, one line per problem; nothing of it was kept.

    ``forbidden`` says the submitter may not submit it at all (another user's job), not that it is invalid.
    """

    reply_to: int
    problems: tuple[str, ...]
    forbidden: bool = False


class StartJob(Message, frozen=True):
    """Sent by the registry to a job it has just spawned: open yourself to the solver."""

    waits_on: tuple[int, ...] = ()


class JobDependencyMet(Message, frozen=True):
    """A job that ``job_id`` waited on is done (or deleted)."""

    job_id: int
    upstream: int


class JobStateChanged(Message, frozen=True):
    """A job tells the registry and the event sink its overall state: active, done, error, deleted."""

    job_id: int
    state: str
    tasks_done: int = 0
    tasks_error: int = 0
    tasks_total: int = 0


# --------------------------------------------------------------------------------------------
# User actions (checked against the acting user's rights by the job)
# --------------------------------------------------------------------------------------------


class JobAction(Message, frozen=True):
    """A user action on one job.

    ``action`` is one of ``pause``, ``resume``, ``delete``, ``restart``, ``skip``, ``priority``.
    ``block`` (-1 = every block) and ``tasks`` (empty = every task of the block) select tasks for
    restart and skip; ``downstream`` also restarts everything that depends on them; ``errors_only``
    restarts only tasks in error; ``value`` is the new priority.
    """

    job_id: int
    action: str
    by: Actor
    reply_address: str = ""
    block: int = -1
    tasks: tuple[int, ...] = ()
    downstream: bool = False
    errors_only: bool = False
    value: int = 0


class ActionDone(Message, frozen=True):
    """A user action was carried out; ``detail`` says what changed."""

    reply_to: int
    job_id: int
    detail: str


class ActionRefused(Message, frozen=True):
    """A user action was refused; ``reason`` says why, ``kind`` classifies it for clients.

    ``kind``: ``no_job`` (no such job), ``gone`` (deleted or being deleted), ``forbidden`` (not the owner
    and not an admin), ``invalid`` (a bad action or selection).
    """

    reply_to: int
    job_id: int
    reason: str
    kind: str = "invalid"


class SetUser(Message, frozen=True):
    """Tell the solver a user's policy inputs (fair-share priority, weight)."""

    user: str
    priority: int = 99
    weight: float = 1.0


# --------------------------------------------------------------------------------------------
# Job <-> solver
# --------------------------------------------------------------------------------------------


class JobOpened(Message, frozen=True):
    """A job registers its policy inputs and its blocks' needs with the solver."""

    job_id: int
    user: str
    priority: int
    submit_time: float
    blocks: tuple[BlockNeeds, ...]
    paused: bool = False
    max_per_render: int | None = None


class JobUpdated(Message, frozen=True):
    """A job's policy inputs changed (priority, paused)."""

    job_id: int
    priority: int
    paused: bool


class JobClosed(Message, frozen=True):
    """The job is gone from the solver (deleted); its running runs are released."""

    job_id: int


class BlockReady(Message, frozen=True):
    """How many tasks of a block may be dispatched now, as of having handled ``handled`` dispatches."""

    job_id: int
    block: int
    ready: int
    handled: int


class AvoidRender(Message, frozen=True):
    """A block failed too often on a render: do not dispatch it there again."""

    job_id: int
    block: int
    render: str


class Dispatch(Message, frozen=True):
    """The solver gives ``render`` to one ready task of ``job_id``'s ``block``; ``id`` becomes the run id."""

    job_id: int
    block: int
    render: str


class DispatchDeclined(Message, frozen=True):
    """The job had no dispatchable task after all; the solver releases the reservation."""

    reply_to: int
    job_id: int
    block: int
    render: str


class RunEnded(Message, frozen=True):
    """A run is over (finished, failed, killed or lost): its render capacity is free again."""

    run_id: int
    job_id: int


class ClaimRefused(Message, frozen=True):
    """A run a reconnecting render reported is not that render's to keep (stale, of a job that is gone, or
    assigned to another render). To the render: forget the run and stop it on the worker. To the solver: give
    back the capacity counted for it on ``render``, and only there."""

    run_id: int
    job_id: int
    render: str
    reason: str = "stale"


class RunClaimed(Message, frozen=True):
    """A job accepts a run a reconnecting worker reports; the solver counts it against the render."""

    run_id: int
    job_id: int
    block: int
    render: str


# --------------------------------------------------------------------------------------------
# Renders and workers
# --------------------------------------------------------------------------------------------


class Hello(Message, frozen=True):
    """A worker (re)connects: what it offers and what it is still running."""

    info: RenderInfo
    running: tuple[RunningRun, ...] = ()
    version: int = PROTOCOL_VERSION
    #: whether the worker wants finish reports acknowledged (a real one resends until acked)
    acks: bool = True
    #: a key this worker keeps for its name on its host (stable across its restarts, secret to it and the
    #: server): a live connection of the name is replaced only by a Hello with the same key (or by the
    #: worker's own credential), never by another worker that happens to take the same name
    instance: str = ""


class Welcome(Message, frozen=True):
    """The server accepts a worker and sets its heartbeat interval."""

    reply_to: int
    heartbeat_s: float
    zombie_s: float


class Rejoin(Message, frozen=True):
    """The server no longer counts this render (declared lost while its connection stayed up, e.g. a worker
    frozen longer than its zombie time): the worker says Hello again, with what it still runs."""

    reply_to: int
    reason: str = ""


class Heartbeat(Message, frozen=True):
    """A worker is alive; ``running`` lists its run ids."""

    render: str
    running: tuple[int, ...] = ()


class Goodbye(Message, frozen=True):
    """A worker leaves cleanly (its runs were killed)."""

    render: str


class RenderOnline(Message, frozen=True):
    """A render is up: the solver may dispatch to it (unless ``paused``); ``running`` occupies capacity already.

    ``lost``: on a reconnection, the runs the render gave to the worker that the worker no longer has (their
    jobs hear of them as lost): their capacity is free at once, not when each job's ``RunEnded`` arrives.
    """

    info: RenderInfo
    running: tuple[RunningRun, ...] = ()
    paused: bool = False
    lost: tuple[int, ...] = ()


class RenderOffline(Message, frozen=True):
    """A render is gone (lost or left): the solver drops it and everything it ran."""

    render: str
    reason: str


class RenderPaused(Message, frozen=True):
    """An admin pauses or resumes a render: a paused render gets no new tasks."""

    render: str
    paused: bool


class Assign(Message, frozen=True):
    """Run one attempt of one task (job -> render -> worker). ``run_id`` names this run everywhere."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    render: str
    command: str | tuple[str, ...]
    task_name: str = ""
    job_name: str = ""
    block_name: str = ""
    capacity: int = 1
    memory_mb: int = 0
    working_dir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    timeout_s: float | None = None
    progress: str | None = None


class TaskStarted(Message, frozen=True):
    """The worker started the run's process."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    render: str


class TaskProgress(Message, frozen=True):
    """Progress of a run: a percentage (or -1 when unknown) and new output lines."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    percent: int = -1
    lines: tuple[str, ...] = ()


class TaskFinished(Message, frozen=True):
    """A run is over on the worker. ``state`` is ``done``, ``error`` or ``killed``."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    render: str
    state: str
    exit_code: int = 0
    output_tail: tuple[str, ...] = ()
    reason: str = ""
    #: when the run started and ended, on the server's clock: set only by a worker that shares it (a
    #: virtual one), which then sends no TaskStarted; -1 = unknown (the server's receipts count)
    started_at: float = -1.0
    finished_at: float = -1.0


class FinishAck(Message, frozen=True):
    """The server has the finish report of ``run_id``; the worker may forget it."""

    reply_to: int
    run_id: int


class KillRun(Message, frozen=True):
    """Stop a run (job -> render -> worker)."""

    run_id: int
    job_id: int
    render: str
    reason: str = ""


class RunLost(Message, frozen=True):
    """The render running this run is lost (or refused it): requeue the task with a new attempt."""

    run_id: int
    job_id: int
    block: int
    task: int
    attempt: int
    render: str
    reason: str = ""


class ReclaimRun(Message, frozen=True):
    """A reconnecting worker still runs this; the job keeps it (``RunClaimed``) or kills it."""

    run: RunningRun
    render: str


# --------------------------------------------------------------------------------------------
# The wire handshake (transport only: the gateway answers these, no behaviour sees them)
# --------------------------------------------------------------------------------------------


class Handshake(Message, frozen=True):
    """A worker's first frame on a new connection: its protocol version and the farm token.

    Its shape never changes, so that any version of a server can read any version of a worker's first frame.
    The token is a secret: never log this message.
    """

    version: int
    token: str
    agent: str = ""


class HandshakeAccepted(Message, frozen=True):
    """The server speaks the worker's protocol version and accepts its token; ``Hello`` may follow."""

    reply_to: int
    version: int
    agent: str = ""


class HandshakeRefused(Message, frozen=True):
    """The server refuses the connection (version or token); it closes the connection after this frame."""

    reply_to: int
    reason: str
    version: int = PROTOCOL_VERSION


# --------------------------------------------------------------------------------------------
# Records for the outside world (the event sink)
# --------------------------------------------------------------------------------------------


class RunRecord(Message, frozen=True):
    """One run of one task, as a row of ``tasks.csv``."""

    job_id: int
    job_name: str
    user: str
    block: str
    task: str
    frames: str
    render: str
    attempt: int
    state: str
    submission_time: float
    ready_time: float
    starting_time: float
    finish_time: float


class Tick(Message, frozen=True):
    """A timer message with a name (and an optional number), for behaviours that need a wake-up."""

    name: str
    ref: int = 0


# --------------------------------------------------------------------------------------------
# Persistence and queries (a server with a store; a client API)
# --------------------------------------------------------------------------------------------


class TaskSnapshot(msgspec.Struct, frozen=True, gc=False):
    """One task's lasting state, as a store keeps it and gives it back on restore.

    ``state`` is a task state name (``waiting`` and ``ready`` both restore as waiting); ``run_id``,
    ``render`` and ``start_time`` describe the current run of a ``running`` task; ``output`` holds the task's
    last output lines as of that change (what ``farmhand job`` shows, after a restart too).
    """

    block: int
    task: int
    state: str
    attempt: int = 0
    failures: int = 0
    run_id: int = 0
    render: str = ""
    ready_time: float = 0.0
    start_time: float = 0.0
    output: tuple[str, ...] = ()


class TaskChanged(Message, frozen=True):
    """A job with ``task_events`` tells the event sink that a task's lasting state changed."""

    job_id: int
    snapshot: TaskSnapshot
    time: float


class RestoreTasks(Message, frozen=True):
    """Sent by the registry before ``StartJob`` to a job restored from a store: bring its tasks back.

    Done, skipped and error tasks stay so; running tasks stay running under their run ids until their
    worker reclaims them, and are requeued (run lost) if none has after ``reclaim_s`` seconds. ``avoided``:
    the (block, render) pairs the job had come to avoid after repeated failures; they stay avoided.
    """

    job_id: int
    tasks: tuple[TaskSnapshot, ...]
    reclaim_s: float = 60.0
    avoided: tuple[tuple[int, str], ...] = ()


class JobQuery(Message, frozen=True):
    """Ask a job (through the registry) for its :class:`JobDetail`; ``block``/``task`` pick whose output lines.

    ``first_task`` and ``task_limit`` pick a window of the job's tasks (in block, then task order) for the
    detail to list (``task_limit`` -1: all of them), so a job of a million tasks is read a page at a time.
    """

    job_id: int
    reply_address: str
    block: int = -1
    task: int = -1
    lines: int = 20
    first_task: int = 0
    task_limit: int = -1


class TaskView(msgspec.Struct, frozen=True, gc=False):
    """One task as a client sees it."""

    block: int
    task: int
    name: str
    frames: str
    state: str
    attempt: int
    failures: int
    render: str
    percent: int
    run_id: int = 0
    start_time: float = 0.0


class BlockView(msgspec.Struct, frozen=True, gc=False):
    """One block as a client sees it: its name, its dependencies and how many tasks are in each state."""

    index: int
    name: str
    depends_on: tuple[str, ...]
    depends_on_frames: tuple[str, ...]
    counts: tuple[tuple[str, int], ...]


class JobDetail(Message, frozen=True):
    """A job's answer to :class:`JobQuery`: its settings, blocks, the asked window of its tasks (``tasks`` starts
    at task ``first_task`` of ``tasks_total``) and the chosen task's last output lines."""

    reply_to: int
    job_id: int
    name: str
    user: str
    state: str
    priority: int
    paused: bool
    submit_time: float
    blocks: tuple[BlockView, ...]
    tasks: tuple[TaskView, ...]
    output_block: int = -1
    output_task: int = -1
    output: tuple[str, ...] = ()
    tasks_total: int = 0
    first_task: int = 0


def message_types() -> dict[str, type[Message]]:
    """Every concrete message class by its tag (its class name)."""
    found: dict[str, type[Message]] = {}
    stack: list[type[Any]] = [Message]
    while stack:
        cls = stack.pop()
        for sub in cls.__subclasses__():
            found[sub.__name__] = sub
            stack.append(sub)
    return found
