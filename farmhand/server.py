"""``farmhand server``: the production composition root.

It puts together, in this order:

1. the store (:mod:`farmhand.store`, SQLite in WAL mode at ``--db``);
2. a pykka runtime on wall-clock time whose message ids start above every id handed out before (so a run id
   a reconnecting worker still holds never names a new run), hosting the registry and the solver;
3. the restore: every job of the store that is not deleted is re-submitted under its id, with its original
   submission time and its tasks' lasting states (running tasks wait ``--reclaim`` seconds for their worker);
4. the TCP gateway for workers (:func:`farmhand.transport.serve.start_server`, with the store as event sink and
   renders whose state changes are copied to it);
5. the client API (:mod:`farmhand.http_api`) on its own port.

SIGINT and SIGTERM stop it in the reverse order within seconds: no thread is left behind and the store is
flushed and checkpointed. SIGUSR1 toggles debug logging.

Tokens: workers present their own credential (``farmhand admin worker add NAME``, bound to that render name)
or, unless ``--no-farm-token``, the shared farm token (``FARMHAND_TOKEN``, else the ``--token-file``, created
with a fresh token if missing); users present their own tokens. On a store without users an ``admin`` user is
created and its token written to ``--admin-token-file`` (next to the database by default), never to the log.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farmhand.actors.runtime import PykkaRuntime
from farmhand.client import DEFAULT_HTTP_PORT
from farmhand.core.messages import (
    JobAccepted,
    JobRefused,
    Message,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    SubmitJob,
)
from farmhand.core.registry import Registry
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import EVENTS, REGISTRY, SOLVER, Address, Behaviour, Context
from farmhand.core.solver import Solver
from farmhand.logs import fields, install_sigusr1
from farmhand.store import Store, new_token

if TYPE_CHECKING:
    from farmhand.http_api import HttpApi

log = logging.getLogger("farmhand.server")

DEFAULT_DB = "farmhand-data/farmhand.db"
RESTORE_REPLIES = "restore"


@dataclass
class ServerConfig:
    """Everything ``farmhand server`` can be told."""

    db: Path = Path(DEFAULT_DB)
    host: str = "127.0.0.1"
    port: int = 51000
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    token_file: Path | None = None  # default: next to the database
    admin_token_file: Path | None = None  # default: next to the database
    policy: str = "priority"
    heartbeat_s: float = 5.0
    zombie_s: float = 60.0
    reclaim_s: float = 60.0
    synchronous: str = "FULL"
    shared_token: bool = True  # False: no shared farm token, each worker needs its own credential

    @property
    def farm_token_path(self) -> Path:
        """Where the farm token is read from (and written to, the first time)."""
        return self.token_file or self.db.parent / "farm.token"

    @property
    def admin_token_path(self) -> Path:
        """Where the first admin's token is written when the store has no user."""
        return self.admin_token_file or self.db.parent / "admin.token"


def write_secret(path: Path, text: str) -> None:
    """Write a secret to a file only its owner can read."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)  # the mode above applies only to a new file: an existing one may be readable by others
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


def farm_token(config: ServerConfig) -> str:
    """The farm token: ``FARMHAND_TOKEN`` if set, else the token file's (a fresh one is written if missing)."""
    env = os.environ.get("FARMHAND_TOKEN")
    if env:
        return env
    path = config.farm_token_path
    if path.exists():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = new_token()
    write_secret(path, token)
    log.info("farm token created", extra=fields(file=str(path)))
    return token


class _TeeContext:
    """A context that also copies a render's state changes (online, offline, paused) to the event sink."""

    __slots__ = ("inner",)

    def __init__(self, inner: Context) -> None:
        self.inner = inner

    @property
    def now(self) -> float:
        return self.inner.now

    @property
    def address(self) -> Address:
        return self.inner.address

    @property
    def random(self) -> Any:
        return self.inner.random

    def send(self, to: Address, message: Message) -> None:
        self.inner.send(to, message)
        if to == SOLVER and isinstance(message, RenderOnline | RenderOffline | RenderPaused):
            self.inner.send(EVENTS, message)

    def set_timer(self, key: Hashable, at: float, message: Message) -> None:
        self.inner.set_timer(key, at, message)

    def cancel_timer(self, key: Hashable) -> None:
        self.inner.cancel_timer(key)

    def next_id(self) -> int:
        return self.inner.next_id()

    def spawn(self, address: Address, behaviour: Behaviour) -> None:
        self.inner.spawn(address, behaviour)

    def stop(self) -> None:
        self.inner.stop()


class RecordedRender:
    """A render behaviour whose state changes also reach the event sink (so the store knows the renders)."""

    def __init__(self, inner: RenderBehaviour) -> None:
        self.inner = inner
        self._ctx: _TeeContext | None = None

    def handle(self, message: Message, ctx: Context) -> None:
        """Let the render handle ``message`` through a context that copies its state changes."""
        if self._ctx is None or self._ctx.inner is not ctx:
            self._ctx = _TeeContext(ctx)
        self.inner.handle(message, self._ctx)


def _register_actor_class() -> None:
    """Host recorded renders in the named render actor (thread names and logs say RenderActor)."""
    try:
        from farmhand.actors.actors import ACTOR_CLASSES, RenderActor
    except ImportError:  # an older runtime without named actors
        return
    ACTOR_CLASSES.setdefault(RecordedRender, RenderActor)


_register_actor_class()


def restore_jobs(store: Store, runtime: PykkaRuntime, reclaim_s: float, timeout: float = 60.0) -> tuple[int, int]:
    """Re-submit every stored job with its id, time and task states; returns (restored, refused)."""
    jobs = store.restorable_jobs()
    if not jobs:
        return 0, 0
    answers: dict[int, Message] = {}
    cond = threading.Condition()

    def on_reply(_to: Address, msg: Message) -> None:
        with cond:
            answers[getattr(msg, "reply_to", -1)] = msg
            cond.notify_all()

    runtime.sink(RESTORE_REPLIES, on_reply)
    sent: dict[int, int] = {}
    for job in jobs:
        mid = runtime.next_id()
        sent[mid] = job.job_id
        runtime.send(
            REGISTRY,
            SubmitJob(
                mid, job.spec, job.user, RESTORE_REPLIES, job_id=job.job_id, submit_time=job.submit_time,
                task_events=True, restore=job.tasks, reclaim_s=reclaim_s, restoring=True,
                restore_avoided=job.avoided,
            ),
        )
    deadline = time.monotonic() + timeout
    with cond:
        while len(answers) < len(sent) and time.monotonic() < deadline:
            cond.wait(deadline - time.monotonic())
    restored = refused = 0
    for mid, job_id in sent.items():
        answer = answers.get(mid)
        if isinstance(answer, JobAccepted):
            restored += 1
        elif isinstance(answer, JobRefused):
            refused += 1
            store.mark_job(job_id, "refused")
            log.error("stored job refused on restore", extra=fields(job=job_id, problems="; ".join(answer.problems)))
        else:
            log.error("no answer restoring job", extra=fields(job=job_id))
    running = sum(1 for j in jobs for t in j.tasks if t.state == "running")
    log.info("jobs restored", extra=fields(jobs=restored, refused=refused, running_tasks=running))
    return restored, refused


class FarmServer:
    """The whole production server; ``start()`` then ``stop()`` (idempotent), or use it as a context manager."""

    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.store: Store | None = None
        self.runtime: PykkaRuntime | None = None
        self.handle: Any = None
        self.http: HttpApi | None = None
        self.admin_token_written: Path | None = None
        self.farm_token = ""
        self._stopped = False

    @property
    def worker_address(self) -> str:
        """``HOST:PORT`` of the worker gateway."""
        return self.handle.address if self.handle is not None else f"{self.config.host}:{self.config.port}"

    @property
    def api_url(self) -> str:
        """The client API's base URL."""
        assert self.http is not None
        return self.http.url

    def start(self) -> FarmServer:
        """Open the store, restore the jobs, start the gateway and the client API."""
        from farmhand.http_api import ClientApi, HttpApi  # (aiohttp: loaded only by a command that serves)
        from farmhand.policy_loader import load_policy
        from farmhand.transport.serve import start_server

        c = self.config
        try:
            token: str | None = None
            if c.shared_token:
                self.farm_token = token = farm_token(c)
            self.store = store = Store(c.db, synchronous=c.synchronous, exclusive=True)
            if not store.has_users():
                write_secret(c.admin_token_path, store.add_user("admin", admin=True))
                self.admin_token_written = c.admin_token_path
                log.info("first admin user created", extra=fields(user="admin", token_file=str(c.admin_token_path)))
            first_id = max(store.max_run_id() + 1, time.time_ns() // 1000)
            self.runtime = rt = PykkaRuntime(wall_clock=True, first_id=first_id)
            rt.sink(EVENTS, store.on_event)
            rt.spawn(REGISTRY, Registry())
            rt.spawn(SOLVER, Solver(load_policy(c.policy)))
            restore_jobs(store, rt, c.reclaim_s)

            def render_factory(name: str) -> Behaviour:
                paused = store.render_paused(name)  # an admin's pause outlives a restart
                return RecordedRender(
                    RenderBehaviour(name, heartbeat_s=c.heartbeat_s, zombie_s=c.zombie_s, paused=paused)
                )

            self.handle = start_server(
                c.host, c.port, token, identify=store.worker_for_token, runtime=rt, event_sinks=[store.on_event],
                render_factory=render_factory,
                heartbeat_s=c.heartbeat_s, zombie_s=c.zombie_s, durable=store.after_commit,
            )
            api = ClientApi(store, rt, disconnect_worker=self.handle.gateway.revoke)
            self.http = HttpApi(api, c.http_host, c.http_port).start()
        except BaseException:
            self.stop()
            raise
        log.info(
            "server ready",
            extra=fields(workers=self.worker_address, api=self.http.url, db=str(c.db), policy=c.policy),
        )
        return self

    def stop(self) -> None:
        """Stop the client API, the gateway, the actors, then flush and close the store."""
        if self._stopped:
            return
        self._stopped = True
        steps: list[tuple[str, Callable[[], None]]] = []
        if self.http is not None:
            steps.append(("http", self.http.stop))
        if self.handle is not None:
            steps.append(("gateway", self.handle.stop))
        if self.runtime is not None:
            steps.append(("actors", self.runtime.stop))
        if self.store is not None:
            steps.append(("store", self.store.close))
        for name, step in steps:
            try:
                step()
            except Exception:
                log.exception("stopping failed", extra=fields(part=name))
        log.info("server stopped")

    def __enter__(self) -> FarmServer:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()


def run_server(config: ServerConfig, ready: Callable[[FarmServer], None] | None = None) -> int:
    """Run until SIGINT or SIGTERM (main thread); returns the exit code."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    install_sigusr1()
    server = FarmServer(config)
    try:
        server.start()
        print(f"farmhand server: workers {server.worker_address}, client API {server.api_url}", flush=True)
        if server.admin_token_written is not None:
            print(f"first admin token written to {server.admin_token_written}", flush=True)
        if ready is not None:
            ready(server)
        while not stop.wait(0.5):
            pass
        log.info("signal received: stopping")
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def add_server_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``farmhand server``."""
    p.add_argument("--host", default="127.0.0.1", help="address for workers (default 127.0.0.1; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=51000, help="port for workers (default 51000; 0: any free port)")
    p.add_argument("--http-host", default="127.0.0.1", help="address of the client API (default 127.0.0.1)")
    p.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT, help="client API port (default 51080)")
    p.add_argument("--db", default=DEFAULT_DB, help=f"the SQLite store (default ./{DEFAULT_DB})")
    p.add_argument("--token-file", help="the farm token file (default next to the database; created if missing)")
    p.add_argument("--no-farm-token", action="store_true",
                   help="no shared farm token: each worker needs its own credential (farmhand admin worker add)")
    p.add_argument("--admin-token-file", help="where the first admin's token is written (default next to the db)")
    p.add_argument("--policy", default="priority", help="the scheduling policy (default priority)")
    p.add_argument("--heartbeat", type=float, default=5.0, help="heartbeat interval told to workers (s, default 5)")
    p.add_argument("--zombie", type=float, default=60.0, help="silence before a render is lost (s, default 60)")
    p.add_argument("--reclaim", type=float, default=60.0,
                   help="after a restart, how long running tasks wait for their worker (s, default 60)")
    p.add_argument("--log-level", default="info", help="debug, info, warning or error (default info)")
    p.add_argument("--log-json", action="store_true", help="JSON lines instead of key=value logs")


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """A :class:`ServerConfig` from parsed ``farmhand server`` options."""
    return ServerConfig(
        db=Path(args.db), host=args.host, port=args.port, http_host=args.http_host, http_port=args.http_port,
        token_file=Path(args.token_file) if args.token_file else None,
        admin_token_file=Path(args.admin_token_file) if args.admin_token_file else None,
        policy=args.policy, heartbeat_s=args.heartbeat, zombie_s=args.zombie, reclaim_s=args.reclaim,
        shared_token=not args.no_farm_token,
    )


def main(argv: list[str] | None = None) -> int:
    """``python -m farmhand.server``: the same as ``farmhand server``."""
    from farmhand.cli_server import cmd_server

    parser = argparse.ArgumentParser(prog="farmhand server", description="run the farm server")
    add_server_arguments(parser)
    return cmd_server(parser.parse_args(argv))


if __name__ == "__main__":
    import sys

    sys.exit(main())
