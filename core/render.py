"""The render behaviour: one worker machine as the server sees it.

It stands between the worker (real over TCP, or virtual in a simulation) and the rest of the core: it
registers the render with the solver when the worker says hello, forwards assignments to the worker and the
worker's reports to the jobs, acknowledges finish reports, and watches the heartbeat. A render silent for
longer than its zombie time is declared lost: the solver drops it and every job gets its runs back as lost
(requeued with a new attempt). A reconnecting worker reports what it still runs; runs the server no longer
knows are offered back to their jobs, which keep or kill them.
"""

from __future__ import annotations

from .messages import (
    Assign,
    ClaimRefused,
    FinishAck,
    Goodbye,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    ReclaimRun,
    Rejoin,
    RenderInfo,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    RunLost,
    RunningRun,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Tick,
    Welcome,
)
from .runtime import REGISTRY, SOLVER, Context, Handler, MessageRouter, job_address, worker_address

ONLINE, PAUSED, OFFLINE = "online", "paused", "offline"
#: heartbeats a render may miss in a row before its zombie time runs out, below which a setting is warned about
HEARTBEATS_OF_MARGIN = 3


def zombie_time_warning(heartbeat_s: float, zombie_s: float, network_s: float = 0.0) -> str | None:
    """Advice when the zombie time leaves little room for late heartbeats (``network_s``: the worst delay a
    message may take), or None. Too tight a zombie time makes renders flap: each late heartbeat declares a
    render lost and requeues its tasks, though its worker is fine."""
    room = HEARTBEATS_OF_MARGIN * heartbeat_s + network_s
    if zombie_s >= room:
        return None
    return (
        f"the zombie time ({zombie_s:g} s) is under {HEARTBEATS_OF_MARGIN} heartbeats ({heartbeat_s:g} s each)"
        + (f" plus the network's worst delay ({network_s:g} s)" if network_s else "")
        + f": a late heartbeat declares a render lost and requeues its tasks; {room:g} s or more is safer"
    )


class RenderBehaviour(MessageRouter):
    """The server side of one render (hosted by a RenderActor in production)."""

    def __init__(
        self, name: str, heartbeat_s: float = 5.0, zombie_s: float = 60.0, watch: bool = True, paused: bool = False
    ) -> None:
        self.name = name
        self.heartbeat_s = heartbeat_s
        self.zombie_s = zombie_s
        self.watch = watch  # False: no heartbeat watch (a simulation without render faults)
        self.info: RenderInfo | None = None
        self.acks = True
        self.state = OFFLINE
        self.paused = paused  # an admin's pause: the render gets no new task (kept across a server restart)
        self.last_seen = 0.0
        self.zombie_at = 0.0  # when the pending zombie timer fires
        self.runs: dict[int, RunningRun | Assign] = {}
        self.lost_count = 0
        self._worker = worker_address(name)
        self._handlers: dict[type[Message], Handler] = {
            Assign: self._on_assign,
            TaskStarted: self._forward_to_job,
            TaskProgress: self._forward_to_job,
            TaskFinished: self._on_finished,
            Heartbeat: self._on_heartbeat,
            Hello: self._on_hello,
            KillRun: self._on_kill,
            ClaimRefused: self._on_claim_refused,
            Tick: self._on_tick,
            Goodbye: self._on_goodbye,
            RenderPaused: self._on_paused,
        }


    # ---------------------------------------------------------------------------------------- liveness
    def _arm(self, ctx: Context) -> None:
        """A hello: the render is seen now, and its zombie deadline starts."""
        self.last_seen = ctx.now
        self._set_zombie_timer(ctx.now + self.zombie_s, ctx)

    def _set_zombie_timer(self, at: float, ctx: Context) -> None:
        if self.watch:
            self.zombie_at = at
            ctx.set_timer("zombie", at, Tick(ctx.next_id(), "zombie"))

    def _on_hello(self, msg: Hello, ctx: Context) -> None:
        self.info = msg.info
        self.acks = msg.acks
        reported = {run.run_id: run for run in msg.running}
        # runs we gave this render that its worker no longer has: lost
        lost = tuple(run_id for run_id in sorted(self.runs) if run_id not in reported)
        for run_id in lost:
            self._lose(self.runs.pop(run_id), "worker restarted", ctx)
        self.state = PAUSED if self.paused else ONLINE
        # paused travels with the registration: the solver must not fill a paused render in between
        ctx.send(SOLVER, RenderOnline(ctx.next_id(), msg.info, msg.running, self.paused, lost))
        for run in msg.running:
            if run.run_id not in self.runs:
                self.runs[run.run_id] = run
                # through the registry: it knows whether the job still exists, and its own link to the job
                # comes after the job's restore
                ctx.send(REGISTRY, ReclaimRun(ctx.next_id(), run, self.name))
        ctx.send(self._worker, Welcome(ctx.next_id(), msg.id, self.heartbeat_s, self.zombie_s))
        self._arm(ctx)

    def _on_heartbeat(self, msg: Heartbeat, ctx: Context) -> None:
        if self.state == OFFLINE:  # declared lost while its connection stayed up: it must say hello again
            ctx.send(self._worker, Rejoin(ctx.next_id(), msg.id, "render was declared lost"))
            return
        # the deadline moves, the timer does not: when it fires it looks at last_seen and, if the render was
        # heard from since, waits again until the new deadline (one timer per zombie time, not per heartbeat).
        # Only a clock that stepped back (a server on wall-clock time) puts the timer beyond the new deadline:
        # then it is set again, or a silent render would be found out late by the size of the step.
        self.last_seen = ctx.now
        if self.zombie_at > ctx.now + self.zombie_s:
            self._set_zombie_timer(ctx.now + self.zombie_s, ctx)

    def _on_tick(self, msg: Tick, ctx: Context) -> None:
        if msg.name == "zombie" and self.state != OFFLINE:
            deadline = self.last_seen + self.zombie_s
            if ctx.now >= deadline:
                self._go_offline(f"no heartbeat for {self.zombie_s:g} s", ctx)
            else:
                self._set_zombie_timer(deadline, ctx)

    def _on_goodbye(self, msg: Goodbye, ctx: Context) -> None:
        if self.state != OFFLINE:
            self._go_offline("worker left", ctx)

    def _go_offline(self, reason: str, ctx: Context) -> None:
        self.state = OFFLINE
        self.lost_count += 1
        ctx.cancel_timer("zombie")
        ctx.send(SOLVER, RenderOffline(ctx.next_id(), self.name, reason))
        for run_id in sorted(self.runs):
            self._lose(self.runs[run_id], reason, ctx)
        self.runs.clear()

    def _lose(self, run: RunningRun | Assign, reason: str, ctx: Context) -> None:
        ctx.send(
            job_address(run.job_id),
            RunLost(ctx.next_id(), run.run_id, run.job_id, run.block, run.task, run.attempt, self.name, reason),
        )

    def _on_paused(self, msg: RenderPaused, ctx: Context) -> None:
        self.paused = msg.paused
        if self.state != OFFLINE:
            self.state = PAUSED if msg.paused else ONLINE
            ctx.send(SOLVER, RenderPaused(ctx.next_id(), self.name, msg.paused))

    # ---------------------------------------------------------------------------------------- runs
    def _on_assign(self, msg: Assign, ctx: Context) -> None:
        if self.state == OFFLINE:
            self._lose(msg, "render offline", ctx)
            return
        self.runs[msg.run_id] = msg  # an Assign names its run as a RunningRun does
        ctx.send(self._worker, msg)

    def _forward_to_job(self, msg: TaskStarted | TaskProgress, ctx: Context) -> None:
        run = self.runs.get(msg.run_id)
        if run is not None:
            ctx.send(job_address(run.job_id), msg)

    def _on_finished(self, msg: TaskFinished, ctx: Context) -> None:
        if self.acks:
            ctx.send(self._worker, FinishAck(ctx.next_id(), msg.id, msg.run_id))
        run = self.runs.pop(msg.run_id, None)
        if run is not None:  # to the job we gave the run for, whatever job the report names
            ctx.send(job_address(run.job_id), msg)

    def _on_claim_refused(self, msg: ClaimRefused, ctx: Context) -> None:
        """A run this render's worker reported is not its to keep: forget it (its reports go nowhere) and stop it."""
        if self.runs.pop(msg.run_id, None) is not None and self.state != OFFLINE:
            ctx.send(self._worker, KillRun(ctx.next_id(), msg.run_id, msg.job_id, self.name, msg.reason))

    def _on_kill(self, msg: KillRun, ctx: Context) -> None:
        if self.state != OFFLINE:
            ctx.send(self._worker, msg)
