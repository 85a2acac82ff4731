"""A farm server in one call: the core's actors on a pykka runtime plus the TCP gateway on its own loop thread.

:func:`start_server` is the composition the production server wraps (adding its store and its HTTP API via
the hooks), and what the end-to-end tests and benchmarks run. It hosts the registry and the solver (unless
the given runtime hosts them already), spawns a :class:`~farmhand.core.render.RenderBehaviour` for each
render the first time its worker says hello, and returns a :class:`ServerHandle` whose ``stop()`` ends the
gateway, its thread and every actor.

``python -m farmhand.transport.serve --port 0 --token T`` runs one until SIGINT/SIGTERM (for development
and load tests; ``farmhand server`` is the real command).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from farmhand.actors.runtime import PykkaRuntime
from farmhand.core.messages import JobAccepted, JobRefused, Message, SubmitJob
from farmhand.core.policies import Policy
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, Address, Behaviour, render_address
from farmhand.core.solver import Solver
from farmhand.core.spec import JobSpec
from farmhand.logs import fields

from .codec import MAX_FRAME
from .gateway import DEFAULT_HOST, DEFAULT_PORT, Barrier, Gateway, Identify, TokenCheck

log = logging.getLogger("farmhand.serve")

Sink = Callable[[Address, Message], None]
RenderFactory = Callable[[str], Behaviour]
REPLIES = "serve/"  # prefix of the reply addresses of submit() (the runtime routes prefixes by first segment)


class SubmitError(Exception):
    """The registry refused a job (``problems``: one line each) or did not answer in time."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass
class ServerHandle:
    """A running server: its runtime, its gateway and where it listens. ``stop()`` ends it all."""

    runtime: PykkaRuntime
    gateway: Gateway
    loop: asyncio.AbstractEventLoop
    thread: threading.Thread
    host: str
    port: int
    owns_runtime: bool = True
    _pending: dict[int, Future[Message]] = field(default_factory=dict)
    _stopped: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        """``HOST:PORT``, as a worker's ``--server`` takes it."""
        return f"{self.host}:{self.port}"

    def submit(self, spec: JobSpec, user: str | None = None, timeout: float = 10.0) -> int:
        """Submit a parsed job and wait for the registry's answer: the job id, or :class:`SubmitError`."""
        rt = self.runtime
        msg_id = rt.next_id()
        future: Future[Message] = Future()
        with self._lock:
            self._pending[msg_id] = future
        rt.send(REGISTRY, SubmitJob(msg_id, spec, user or spec.user or "farmhand", f"{REPLIES}{msg_id}"))
        try:
            answer = future.result(timeout)
        except TimeoutError:
            raise SubmitError([f"no answer from the registry within {timeout:g} s"]) from None
        finally:
            with self._lock:
                self._pending.pop(msg_id, None)
        if isinstance(answer, JobRefused):
            raise SubmitError(answer.problems)
        assert isinstance(answer, JobAccepted)
        return answer.job_id

    def _on_reply(self, _to: Address, msg: Message) -> None:
        reply_to = getattr(msg, "reply_to", None)
        with self._lock:
            future = self._pending.get(reply_to) if isinstance(reply_to, int) else None
        if future is not None and not future.done():
            future.set_result(msg)

    def stop(self, timeout: float = 10.0) -> None:
        """Close the gateway and its connections, end its loop thread, then stop every actor (idempotent)."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        if self.loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout)
        if self.owns_runtime:
            self.runtime.stop()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _fan_out(sinks: Sequence[Sink]) -> Sink:
    def deliver(to: Address, msg: Message) -> None:
        for sink in sinks:
            try:
                sink(to, msg)
            except Exception:
                log.exception("event sink failed", extra=fields(message=type(msg).__name__))

    return deliver


def start_server(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    token: str | None = None,
    policy: Policy | str = "priority",
    *,
    verify: TokenCheck | None = None,
    identify: Identify | None = None,
    allow_anonymous: bool = False,
    heartbeat_s: float = 5.0,
    zombie_s: float = 60.0,
    runtime: PykkaRuntime | None = None,
    event_sinks: Sequence[Sink] = (),
    render_factory: RenderFactory | None = None,
    max_frame: int = MAX_FRAME,
    handshake_timeout: float = 10.0,
    seed: int = 0,
    wall_clock: bool = False,
    start_timeout: float = 10.0,
    durable: Barrier | None = None,
) -> ServerHandle:
    """Start a farm server listening for workers on ``host:port`` (port 0: ephemeral; see ``handle.port``).

    - ``token`` / ``verify``: the farm token workers must present (constant-time compare), or a callable
      that accepts or refuses a presented token (e.g. against hashed tokens in a store).
    - ``identify``: a worker's own credential -> the render name it is bound to (None if it is not one).
    - ``policy``: a :class:`Policy` or a policy name / dotted path.
    - ``heartbeat_s`` / ``zombie_s``: the interval workers are told to heartbeat at, and the silence after
      which a render is declared lost (its runs requeued); used by the default render factory.
    - ``runtime``: a runtime to host the core in (e.g. one the store restored jobs into); the registry and
      the solver are spawned only if it hosts none yet, and it is not stopped by ``stop()``.
    - ``event_sinks``: callables that get every message sent to ``events`` (run records, job states).
    - ``render_factory(name)``: builds the behaviour for a newly connected render (default: a
      ``RenderBehaviour`` with the heartbeat and zombie times above).
    - ``durable(callback)``: a store's barrier; assignments leave only once what was sent to the event sinks
      before them is committed (durable dispatch, see :class:`~farmhand.transport.gateway.Gateway`).
    """
    if not host:
        raise ValueError("host must not be empty")
    owns = runtime is None
    rt = runtime if runtime is not None else PykkaRuntime(seed=seed, wall_clock=wall_clock)
    try:
        if rt.behaviour(REGISTRY) is None:
            rt.spawn(REGISTRY, Registry())
        if rt.behaviour(SOLVER) is None:
            if isinstance(policy, str):
                from farmhand.policy_loader import load_policy

                policy = load_policy(policy)
            rt.spawn(SOLVER, Solver(policy))
        if event_sinks:
            rt.sink(EVENTS, _fan_out(list(event_sinks)))
        elif EVENTS not in rt.sinks:
            rt.sink(EVENTS, lambda _to, _msg: None)

        def factory(name: str) -> Behaviour:
            return RenderBehaviour(name, heartbeat_s=heartbeat_s, zombie_s=zombie_s)

        make_render = render_factory or factory
        spawn_lock = threading.Lock()

        def ensure_render(name: str) -> None:
            address = render_address(name)
            with spawn_lock:
                if rt.behaviour(address) is None:
                    rt.spawn(address, make_render(name))

        gateway = Gateway(
            rt, ensure_render, token=token, verify=verify, identify=identify, allow_anonymous=allow_anonymous,
            bind=host, port=port, max_frame=max_frame, handshake_timeout=handshake_timeout, durable=durable,
            silent_s=zombie_s,
        )
        loop = asyncio.new_event_loop()
        started: Future[None] = Future()

        def run_loop() -> None:
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(gateway.start())
            except BaseException as exc:
                started.set_exception(exc)
                loop.close()
                return
            started.set_result(None)
            try:
                loop.run_forever()
            finally:
                with contextlib.suppress(Exception):
                    loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        thread = threading.Thread(target=run_loop, name="farmhand-gateway", daemon=True)
        thread.start()
        started.result(start_timeout)
    except BaseException:
        if owns:
            rt.stop()
        raise
    handle = ServerHandle(rt, gateway, loop, thread, host, gateway.port, owns)
    rt.sink(REPLIES, handle._on_reply)
    return handle


def main(argv: Sequence[str] | None = None) -> int:
    """Run a server until SIGINT/SIGTERM (development and load tests)."""
    parser = argparse.ArgumentParser(prog="python -m farmhand.transport.serve", description=__doc__)
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--token", default=os.environ.get("FARMHAND_TOKEN"), help="farm token (or FARMHAND_TOKEN)")
    parser.add_argument("--policy", default="priority")
    parser.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval told to workers (s)")
    parser.add_argument("--zombie", type=float, default=60.0, help="silence after which a render is lost (s)")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from farmhand.logs import setup_logging

    setup_logging(args.log_level)
    if not args.token:
        print("a farm token is required: --token or FARMHAND_TOKEN", file=sys.stderr)
        return 2
    handle = start_server(
        args.host, args.port, args.token, args.policy, heartbeat_s=args.heartbeat, zombie_s=args.zombie
    )
    print(f"listening on {handle.address}", flush=True)
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        while not done.wait(0.5):
            pass
    finally:
        handle.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

