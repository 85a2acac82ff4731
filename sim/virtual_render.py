"""A virtual worker: a behaviour that speaks the worker's messages and 'runs' tasks by waiting.

It says hello to its render, heartbeats if asked to, starts each assigned run at once, and reports it
finished after its duration divided by the render's speed (killed at the block's timeout, failed with a
given probability). It shares the server's clock, so it reports each run's start time with its finish
instead of sending ``TaskStarted``, and wants no acknowledgements (it never loses a finish report): two
messages less per task than a real worker. It is pure like the core (time and randomness come from
``ctx``), so the same class stands in for workers in the simulator, in ``farmhand local`` and in tests.
"""

from __future__ import annotations

from collections.abc import Callable

from farmhand.core.messages import (
    Assign,
    Goodbye,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    Rejoin,
    RenderInfo,
    RunningRun,
    TaskFinished,
    Tick,
    Welcome,
)
from farmhand.core.runtime import Context, Handler, MessageRouter, render_address

DurationOf = Callable[[Assign], float]


class VirtualWorker(MessageRouter):
    """A worker that runs nothing: each run takes ``duration(assign) / speed`` seconds of (virtual) time."""

    def __init__(
        self,
        info: RenderInfo,
        duration: DurationOf,
        speed: float = 1.0,
        failure_probability: float = 0.0,
        heartbeat: bool = False,
        fails: Callable[[Assign], bool] | None = None,
    ) -> None:
        if speed <= 0:
            raise ValueError(f"speed must be > 0 (got {speed})")
        self.info = info
        self.duration = duration
        self.speed = speed
        self.failure_probability = failure_probability
        self.heartbeat = heartbeat
        self.fails = fails  # a deterministic failure rule (tests, scenarios), besides the probability
        self.heartbeat_s = 0.0
        self.running: dict[int, Assign] = {}
        self._timed_out: set[int] = set()
        self._started: dict[int, float] = {}
        self.up = False
        #: the render has answered this connection's hello: an assignment sent before it read the hello is not
        #: run (the render declares it lost on reading the hello, and the job runs it elsewhere), as a real
        #: worker does
        self.welcomed = False
        self.hello_id = 0  # the id of this connection's Hello: a Welcome or Rejoin answering an older one is stale
        self.completed = 0
        self._render = render_address(info.name)
        self._handlers: dict[type[Message], Handler] = {
            Assign: self._on_assign,
            Tick: self._on_tick,
            KillRun: self._on_kill,
            Welcome: self._on_welcome,
            Rejoin: self._on_rejoin,
        }


    def _on_welcome(self, msg: Welcome, ctx: Context) -> None:
        if msg.reply_to != self.hello_id:
            return  # it welcomes an earlier connection
        self.welcomed = True
        self.heartbeat_s = msg.heartbeat_s
        if self.heartbeat and self.heartbeat_s > 0:
            ctx.set_timer("heartbeat", ctx.now + self.heartbeat_s, Tick(ctx.next_id(), "heartbeat"))

    def _on_tick(self, msg: Tick, ctx: Context) -> None:
        name = msg.name
        if name == "finish":
            self._finish(msg.ref, ctx)
        elif name == "hello":
            self.up = True
            self._say_hello(ctx)
        elif name == "heartbeat" and self.up:
            ctx.send(self._render, Heartbeat(ctx.next_id(), self.info.name, tuple(sorted(self.running))))
            ctx.set_timer("heartbeat", ctx.now + self.heartbeat_s, Tick(ctx.next_id(), "heartbeat"))
        elif name == "crash":  # the machine dies: its runs vanish, it falls silent
            self.up = False
            for run_id in list(self.running):
                ctx.cancel_timer(run_id)
            self.running.clear()
            self._timed_out.clear()
            self._started.clear()
            ctx.cancel_timer("heartbeat")
        elif name == "leave":
            self.up = False
            self.running.clear()
            ctx.send(self._render, Goodbye(ctx.next_id(), self.info.name))

    def _say_hello(self, ctx: Context) -> None:
        """(Re)connect, telling the render what this worker still runs."""
        self.welcomed = False
        running = tuple(
            RunningRun(a.run_id, a.job_id, a.block, a.task, a.attempt, a.capacity, a.memory_mb)
            for a in (self.running[run_id] for run_id in sorted(self.running))
        )
        hello = Hello(ctx.next_id(), self.info, running, acks=False)
        self.hello_id = hello.id
        ctx.send(self._render, hello)

    def _on_rejoin(self, msg: Rejoin, ctx: Context) -> None:
        # the render declared this worker lost while it kept talking: say hello again, as a real worker does,
        # unless the Rejoin answers a heartbeat sent before our last Hello (which rejoins already)
        if self.up and msg.reply_to >= self.hello_id:
            self._say_hello(ctx)

    def _on_assign(self, msg: Assign, ctx: Context) -> None:
        if not (self.up and self.welcomed):
            return
        run_id = msg.run_id
        now = ctx.now
        self.running[run_id] = msg
        self._started[run_id] = now  # reported with the finish: no TaskStarted message on this clock
        seconds = self.duration(msg) / self.speed
        timeout = msg.timeout_s
        if timeout is not None and seconds > timeout:
            seconds = timeout
            self._timed_out.add(run_id)
        ctx.set_timer(run_id, now + seconds, Tick(ctx.next_id(), "finish", run_id))  # keyed by the run's id

    def _finish(self, run_id: int, ctx: Context) -> None:
        assign = self.running.pop(run_id, None)
        if assign is None:
            return
        timed_out = run_id in self._timed_out
        if timed_out:
            self._timed_out.discard(run_id)
        now = ctx.now
        failed = (
            timed_out
            or (self.fails is not None and self.fails(assign))
            or (self.failure_probability > 0 and ctx.random.random() < self.failure_probability)
        )
        self.completed += 1
        ctx.send(
            self._render,
            TaskFinished(
                ctx.next_id(), run_id, assign.job_id, assign.block, assign.task, assign.attempt, assign.render,
                "error" if failed else "done", 1 if failed else 0, (), "timeout" if timed_out else "",
                self._started.pop(run_id, now), now,
            ),
        )

    def _on_kill(self, msg: KillRun, ctx: Context) -> None:
        assign = self.running.pop(msg.run_id, None)
        if assign is None:
            return
        ctx.cancel_timer(msg.run_id)
        self._timed_out.discard(msg.run_id)
        started = self._started.pop(msg.run_id, ctx.now)
        ctx.send(
            self._render,
            TaskFinished(
                ctx.next_id(), msg.run_id, assign.job_id, assign.block, assign.task, assign.attempt, assign.render,
                "killed", -9, (), msg.reason, started, ctx.now,
            ),
        )
