"""A whole production server in-process for API tests: store, actors, gateway and client API on ephemeral
ports, with in-process scripted workers instead of worker processes (the e2e tests use real ones)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farmhand.client import ApiClient
from farmhand.core.messages import (
    Assign,
    Hello,
    KillRun,
    Message,
    RenderInfo,
    TaskFinished,
    TaskProgress,
    TaskStarted,
    Tick,
)
from farmhand.core.render import RenderBehaviour
from farmhand.core.runtime import Context, render_address, worker_address
from farmhand.server import FarmServer, RecordedRender, ServerConfig


class ScriptedWorker:
    """An in-process worker: each task prints two lines and takes ``seconds(assign)`` (``fail(assign)``: exit 1)."""

    def __init__(
        self,
        info: RenderInfo,
        seconds: Callable[[Assign], float],
        fail: Callable[[Assign], bool] = lambda _a: False,
    ) -> None:
        self.info = info
        self.seconds = seconds
        self.fail = fail
        self.running: dict[int, Assign] = {}
        self._render = render_address(info.name)

    def handle(self, message: Message, ctx: Context) -> None:
        """React to the server's messages and to its own timers."""
        if isinstance(message, Tick) and message.name == "hello":
            ctx.send(self._render, Hello(ctx.next_id(), self.info))
        elif isinstance(message, Assign):
            a = message
            self.running[a.run_id] = a
            ctx.send(self._render, TaskStarted(ctx.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, a.render))
            lines = (f"task {a.task_name} of {a.block_name}", f"command {a.command}", "50%")
            ctx.send(self._render, TaskProgress(ctx.next_id(), a.run_id, a.job_id, a.block, a.task, a.attempt, 50,
                                                lines))
            key: Hashable = ("run", a.run_id)
            ctx.set_timer(key, ctx.now + self.seconds(a), Tick(ctx.next_id(), "finish", a.run_id))
        elif isinstance(message, Tick) and message.name == "finish":
            self._finish(message.ref, "error" if self.fail(self.running.get(message.ref)) else "done", ctx)  # type: ignore[arg-type]
        elif isinstance(message, KillRun):
            ctx.cancel_timer(("run", message.run_id))
            self._finish(message.run_id, "killed", ctx)

    def _finish(self, run_id: int, state: str, ctx: Context) -> None:
        a = self.running.pop(run_id, None)
        if a is not None:
            code = 0 if state == "done" else 1
            ctx.send(self._render, TaskFinished(ctx.next_id(), run_id, a.job_id, a.block, a.task, a.attempt, a.render,
                                                state, code, ("bye",)))


class Farm:
    """A started server plus helpers: clients for users, scripted renders, waiting for job states."""

    def __init__(self, server: FarmServer, admin_token: str) -> None:
        self.server = server
        self.admin = ApiClient(server.api_url, admin_token, timeout=10)

    @property
    def store(self) -> Any:
        return self.server.store

    def client(self, user: str, admin: bool = False) -> ApiClient:
        """A client for a new user."""
        return ApiClient(self.server.api_url, self.admin.add_user(user, admin), timeout=10)

    def add_render(
        self, name: str, seconds: Callable[[Assign], float] = lambda _a: 0.05, capacity: int = 2, **kw: Any
    ) -> None:
        """An in-process render (server side and worker) that says hello at once."""
        rt = self.server.runtime
        assert rt is not None
        info = RenderInfo(name, frozenset(), capacity, capacity, 0, 1)
        rt.spawn(render_address(name), RecordedRender(RenderBehaviour(name, watch=False)))
        rt.spawn(worker_address(name), ScriptedWorker(info, seconds, **kw))
        rt.send(worker_address(name), Tick(rt.next_id(), "hello"))

    def wait_runs(self, job_id: int, count: int, timeout: float = 10.0) -> None:
        """Wait until the store holds ``count`` runs of the job (after an action, the store hears of its effects
        a moment later: a job restarted from done may still be listed done)."""
        deadline = time.monotonic() + timeout
        while len(self.admin.runs(job_id)) < count:
            if time.monotonic() > deadline:
                have = len(self.admin.runs(job_id))
                raise AssertionError(f"job {job_id} has {have} runs, not {count}, after {timeout} s")
            time.sleep(0.05)

    def wait_job(self, job_id: int, states: tuple[str, ...] = ("done",), timeout: float = 10.0) -> dict[str, Any]:
        """Wait until the store lists the job in one of ``states``; returns its row."""
        deadline = time.monotonic() + timeout
        row: dict[str, Any] = {}
        while time.monotonic() < deadline:
            rows = {j["id"]: j for j in self.admin.jobs()}
            row = rows.get(job_id, {})
            if row.get("state") in states:
                return row
            time.sleep(0.05)
        raise AssertionError(f"job {job_id} not in {states} after {timeout} s: {row}")


@contextmanager
def running_farm(tmp_path: Path, **config: Any) -> Iterator[Farm]:
    """A server on ephemeral ports in ``tmp_path``; stopped (and checked stopped) on exit."""
    cfg = ServerConfig(db=tmp_path / "farm.db", port=0, http_port=0, **config)
    before = set(threading.enumerate())
    server = FarmServer(cfg).start()
    try:
        token = (tmp_path / "admin.token").read_text().strip()
        yield Farm(server, token)
    finally:
        server.stop()
    deadline = time.monotonic() + 5
    while (left := [t.name for t in threading.enumerate() if t not in before and t.is_alive()]) and (
        time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert not left, f"threads left after stop: {left}"


def job_spec(name: str = "shot", frames: int = 4, **extra: Any) -> dict[str, Any]:
    """A two-block job: ``prep`` then ``render`` frame by frame."""
    return {
        "name": name,
        "blocks": [
            {"name": "prep", "command": "prep {frame}", "frames": {"first": 1, "last": frames}},
            {"name": "render", "command": "render {frame}", "frames": {"first": 1, "last": frames},
             "depends_on_frames": ["prep"]},
        ],
        **extra,
    }
