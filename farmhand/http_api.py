"""The client API: HTTP/JSON on its own port (default 127.0.0.1:51080), what the CLI and a browser monitor use.

Every request carries a user token (``Authorization: Bearer TOKEN``); without a valid one the answer is 401.
Endpoints (JSON in, JSON out; errors are ``{"error": "...", "problems": [...]}``):

==========================================  ====================================================================
``GET  /api/whoami``                        the caller: ``{"user", "admin"}``
``POST /api/jobs``                          submit a job (or a list, or ``{"jobs": [...]}``), JSON or YAML body;
                                            ``{"jobs": [ids]}``; 400 with the problems; 403 for another owner
``GET  /api/jobs[?user=NAME]``              jobs with their task counts (from the store)
``GET  /api/jobs/ID[?block=B&task=T&lines=N&tasks=0&offset=K&limit=N]``
                                            blocks, tasks, states, renders, the last N output lines of task T of
                                            block B (index or name); ``tasks=0`` leaves the task list out;
                                            the list holds ``limit`` tasks (default 1000, at most 100000) from
                                            task ``offset``, of ``tasks_total``
``GET  /api/jobs/ID/runs``                  the job's runs (the ``tasks.csv`` rows) as JSON
``POST /api/jobs/ID/ACTION``                ``pause`` ``resume`` ``delete`` ``restart`` ``skip`` ``priority``; body
                                            ``{"block", "tasks", "downstream", "errors_only", "value"}``;
                                            403 with the job's reason when the job is not the caller's
``GET  /api/renders``                       renders, their state and running task counts
``POST /api/renders/NAME/ACTION``           (admin) ``pause`` or ``resume`` a render (kept across restarts)
``GET  /api/runs.csv``                      the whole run log as ``tasks.csv``
``POST /api/admin/users``                   (admin) ``{"name", "admin"}``: a new user; its token, once
``POST /api/admin/workers``                 (admin) ``{"name", "replace"}``: enrol a worker; its credential, once
``GET  /api/admin/workers``                 (admin) the enrolled workers
``DELETE /api/admin/workers/NAME``          (admin) revoke a worker's credential (its connection is closed)
``POST /api/admin/log-level``               (admin) ``{"level": "debug"}``; ``GET`` tells the level in force
==========================================  ====================================================================

The API decides nothing: submissions and actions go to the registry as messages with a reply address, and
the answers (``JobAccepted``/``JobRefused``, ``ActionDone``/``ActionRefused``, ``JobDetail``) come back to a
sink that wakes the waiting request. A submission is committed to the store before it is sent, so a job
answered "accepted" survives any crash. Lists come from the store.

HTTP is aiohttp's server, on an asyncio event loop in one thread of its own (:class:`HttpApi`). It reads
requests (lengths, chunked bodies, keep-alive, compressed bodies) and keeps no thread per client. A request's
work (store reads, waiting for the farm's answer, both blocking) runs in a pool of ``MAX_CONCURRENT_REQUESTS``
threads, through :class:`ClientApi`, which knows nothing of HTTP. Around that, every request:

- holds a **slot** of ``MAX_CONCURRENT_REQUESTS`` (one per connection accepted and waiting for its first
  request, or per request being served); without a free one it is answered ``503`` with ``Retry-After: 1`` at
  once, so the pool never queues. The operating system holds up to ``LISTEN_BACKLOG`` connections not yet
  accepted, so a burst of clients is answered rather than left waiting for a retransmission;
- is read whole before anything acts on it: a body over ``MAX_BODY`` is a ``413``, one that cannot be read as
  sent (broken chunks, content that does not decode) a ``400``, never an empty body (chunks framed wrongly in
  a packet after the head stop aiohttp's parser short of an answer: the watchdog drops that client);
- is dropped when its client stays silent ``REQUEST_TIMEOUT_S`` in the middle of it, or leaves its answer
  unread that long;
- is answered in JSON, the parser's own refusals too (a malformed request line, a line too long, an unknown
  method).

A web monitor adds its routes to ``HttpApi.app`` before ``start()``: static files with
``app.router.add_static``, and server-sent events from a handler that prepares a ``web.StreamResponse`` and
writes each event as it comes. Those are served on the event loop without a thread per client. A stream should
then give its slot back, and count against a limit of its own, so that watchers do not crowd out requests.
"""

from __future__ import annotations

import ast
import asyncio
import concurrent.futures
import contextlib
import io
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from http import HTTPStatus
from typing import Any, NamedTuple, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMethod, HttpProcessingError, LineTooLong
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from farmhand.client import DEFAULT_HTTP_PORT
from farmhand.core.frames import block_tasks
from farmhand.core.job import ACTIONS
from farmhand.core.messages import (
    ActionDone,
    ActionRefused,
    Actor,
    JobAccepted,
    JobAction,
    JobDetail,
    JobQuery,
    JobRefused,
    Message,
    RenderPaused,
    SubmitJob,
)
from farmhand.core.runtime import REGISTRY, Address, render_address
from farmhand.core.spec import JobSpec, SpecError
from farmhand.jobfiles import parse_body_jobs, parse_text
from farmhand.logs import current_level, fields, parse_level, set_level
from farmhand.store import Store, StoreError

log = logging.getLogger("farmhand.http")

REPLY_ADDRESS = "http"
MAX_BODY = 8 << 20
REPLY_TIMEOUT_S = 10.0


class Bus(Protocol):
    """What the API needs of a runtime: send from any thread, register a sink, make message ids."""

    def send(self, to: Address, message: Message) -> None: ...

    def sink(self, address: Address, sink: Callable[[Address, Message], None]) -> None: ...

    def next_id(self) -> int: ...


#: the HTTP status of each kind of refusal the core gives (others are 400 with the reason as the problem)
_REFUSAL_STATUS = {"no_job": HTTPStatus.NOT_FOUND, "gone": HTTPStatus.CONFLICT, "forbidden": HTTPStatus.FORBIDDEN}


class ApiError(Exception):
    """An answer other than 200: a status, a message and the problems (one line each)."""

    def __init__(self, status: int, error: str, problems: list[str] | None = None, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.error = error
        self.problems = problems or []
        self.extra = extra


class _Waiter:
    __slots__ = ("event", "reply")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reply: Message | None = None


class Replies:
    """The reply sink: wakes the request waiting for the answer to a message id."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[int, _Waiter] = {}

    def expect(self, message_id: int) -> _Waiter:
        waiter = _Waiter()
        with self._lock:
            self._waiting[message_id] = waiter
        return waiter

    def drop(self, message_id: int) -> None:
        with self._lock:
            self._waiting.pop(message_id, None)

    def __call__(self, _address: Address, message: Message) -> None:
        reply_to = getattr(message, "reply_to", None)
        with self._lock:
            waiter = self._waiting.pop(reply_to, None) if isinstance(reply_to, int) else None
        if waiter is not None:
            waiter.reply = message
            waiter.event.set()


def detail_to_json(detail: JobDetail, with_tasks: bool = True) -> dict[str, Any]:
    """A job's detail as the API answers it."""
    data = msgspec.to_builtins(detail)
    for key in ("type", "id", "reply_to"):
        data.pop(key, None)
    data["id"] = detail.job_id
    for b in data["blocks"]:
        b["counts"] = dict(b["counts"])
    if not with_tasks:
        for key in ("tasks", "first_task"):
            data.pop(key)
    return data


class ClientApi:
    """The API's logic, independent of HTTP: every method takes the authenticated caller and plain values."""

    def __init__(
        self,
        store: Store,
        bus: Bus,
        reply_timeout: float = REPLY_TIMEOUT_S,
        disconnect_worker: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.bus = bus
        self.disconnect_worker = disconnect_worker  # the gateway's: closes a worker whose credential changed
        self.reply_timeout = reply_timeout
        self.replies = Replies()
        bus.sink(REPLY_ADDRESS, self.replies)

    # ---------------------------------------------------------------------------------------- plumbing
    def ask(self, make: Callable[[int], Message], to: Address = REGISTRY) -> Message:
        """Send the message ``make(id)`` and wait for its answer (503 if none comes in time)."""
        message_id = self.bus.next_id()
        waiter = self.replies.expect(message_id)
        self.bus.send(to, make(message_id))
        if not waiter.event.wait(self.reply_timeout):
            self.replies.drop(message_id)
            raise ApiError(HTTPStatus.SERVICE_UNAVAILABLE, "the farm did not answer in time")
        assert waiter.reply is not None
        return waiter.reply

    def authenticate(self, token: str) -> Actor | None:
        """The caller a token names, or None."""
        return self.store.authenticate(token)

    # ---------------------------------------------------------------------------------------- jobs
    def submit(self, actor: Actor, specs: list[JobSpec]) -> list[int]:
        """Accept each job (committed to the store first); the registry decides: 403 when the caller may not
        submit it (another user's job), 400 when it is refused."""
        accepted: list[int] = []
        for spec in specs:
            owner = spec.user or actor.user
            now = time.time()
            total = sum(len(block_tasks(b)) for b in spec.blocks)
            job_id = self.store.add_job(spec, owner, now, total)

            def make(
                mid: int, spec: JobSpec = spec, owner: str = owner, job_id: int = job_id, now: float = now
            ) -> SubmitJob:
                return SubmitJob(
                    mid, spec, owner, REPLY_ADDRESS, job_id=job_id, submit_time=now, task_events=True, by=actor
                )

            try:
                reply = self.ask(make)
            except ApiError as exc:
                # the job is stored and on its way; it will run, but we cannot confirm it now
                raise ApiError(exc.status, exc.error, accepted=accepted, pending=job_id) from None
            if isinstance(reply, JobRefused):
                self.store.forget_job(job_id)
                if reply.forbidden:
                    raise ApiError(HTTPStatus.FORBIDDEN, reply.problems[0], accepted=accepted)
                raise ApiError(HTTPStatus.BAD_REQUEST, "job refused", list(reply.problems), accepted=accepted)
            assert isinstance(reply, JobAccepted)
            accepted.append(job_id)
            log.info("job accepted", extra=fields(job=job_id, user=owner, name=spec.name, tasks=total))
        return accepted

    def detail(
        self,
        job_id: int,
        block: str | None = None,
        task: str | None = None,
        lines: int = 20,
        first_task: int = 0,
        task_limit: int = -1,
    ) -> JobDetail:
        """A job's detail from its actor; ``block``/``task`` (index or name) pick the output lines, ``first_task``
        and ``task_limit`` (-1: all) the window of tasks listed."""
        b_index, t_index = -1, -1
        if block is not None or task is not None:
            if block is None or task is None:
                raise ApiError(HTTPStatus.BAD_REQUEST, "output: give both block and task")
            blocks = self._blocks(job_id)
            b_index = _block_index(blocks, block)
            if b_index is None:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"no block {block!r} in job {job_id}")
            t_index = _task_index(self._block_page(job_id, blocks, b_index), b_index, task)
            if t_index is None:
                raise ApiError(HTTPStatus.BAD_REQUEST, f"no task {task!r} in block {block!r} of job {job_id}")
        return self._query(job_id, b_index, t_index, lines, first_task, task_limit)

    def _blocks(self, job_id: int) -> JobDetail:
        """A job's detail without its tasks: its blocks, to resolve a block's name."""
        return self._query(job_id, -1, -1, 0, 0, 0)

    def _block_page(self, job_id: int, blocks: JobDetail, b_index: int) -> JobDetail:
        """A job's detail listing the tasks of one block only (to resolve a task's name)."""
        sizes = [sum(n for _, n in b.counts) for b in blocks.blocks]
        return self._query(job_id, -1, -1, 0, sum(sizes[:b_index]), sizes[b_index])

    def _query(
        self, job_id: int, block: int, task: int, lines: int, first_task: int = 0, task_limit: int = -1
    ) -> JobDetail:
        reply = self.ask(lambda mid: JobQuery(mid, job_id, REPLY_ADDRESS, block, task, lines, first_task, task_limit))
        if isinstance(reply, ActionRefused):
            raise ApiError(HTTPStatus.NOT_FOUND, reply.reason)
        assert isinstance(reply, JobDetail)
        return reply

    def act(self, actor: Actor, job_id: int, action: str, body: dict[str, Any]) -> str:
        """Carry out a user action through the job; the job checks the caller's rights."""
        if action not in ACTIONS:
            raise ApiError(HTTPStatus.NOT_FOUND, f"unknown action {action!r} (known: {', '.join(ACTIONS)})")
        unknown = sorted(set(body) - {"block", "tasks", "downstream", "errors_only", "value"})
        if unknown:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad action", [f"{k}: unknown field" for k in unknown])
        if self.store.job_owner(job_id) is None:
            raise ApiError(HTTPStatus.NOT_FOUND, f"no job {job_id}")
        block, tasks = self._selection(job_id, body)
        value = body.get("value", 0)
        if action == "priority":
            if "value" not in body:
                raise _bad_action("value: is required (the new priority, 0-255)")
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
                raise _bad_action(f"value: must be an integer 0-255 (got {_shown(value)})")
        downstream, errors_only = body.get("downstream", False), body.get("errors_only", False)
        if not isinstance(downstream, bool) or not isinstance(errors_only, bool):
            raise _bad_action("downstream, errors_only: must be true or false")

        def make(mid: int) -> JobAction:
            return JobAction(mid, job_id, action, actor, REPLY_ADDRESS, block, tasks, downstream, errors_only, value)

        reply = self.ask(make)
        if isinstance(reply, ActionDone):
            log.info("job action", extra=fields(job=job_id, user=actor.user, action=action, detail=reply.detail))
            # what the job recorded while acting went to the store before its answer: have it written, so
            # that the caller's next listing shows the action's effect
            self.store.flush(timeout=5.0)
            return reply.detail
        assert isinstance(reply, ActionRefused)
        status = _REFUSAL_STATUS.get(reply.kind)
        if status is not None:
            raise ApiError(status, reply.reason)
        raise ApiError(HTTPStatus.BAD_REQUEST, reply.reason, [reply.reason])

    def _selection(self, job_id: int, body: dict[str, Any]) -> tuple[int, tuple[int, ...]]:
        block = body.get("block")  # absent or null: every block (-1 to the job)
        tasks = body.get("tasks", [])
        if not isinstance(tasks, list):
            raise _bad_action(f"tasks: must be a list of task indices or names (got {_shown(tasks)})")
        for i, t in enumerate(tasks):
            if isinstance(t, bool) or not isinstance(t, int | str) or (isinstance(t, int) and t < 0):
                raise _bad_action(f"tasks[{i}]: must be a task index (0 or more) or name (got {_shown(t)})")
        if block is None:
            block = -1
        elif isinstance(block, bool) or not isinstance(block, int | str) or (isinstance(block, int) and block < 0):
            raise _bad_action(f"block: must be a block index (0 or more) or name (got {_shown(block)})")
        if isinstance(block, int) and all(isinstance(t, int) for t in tasks):
            return block, tuple(tasks)
        blocks = self._blocks(job_id)
        if isinstance(block, str):
            found = _block_index(blocks, block)
            if found is None:
                raise _bad_action(f"block: no block {block!r} in job {job_id}")
            block = found
        if block < 0 or block >= len(blocks.blocks):
            return block, tuple(t for t in tasks if isinstance(t, int))  # the job says what is wrong
        page = self._block_page(job_id, blocks, block) if any(isinstance(t, str) for t in tasks) else blocks
        chosen = []
        for t in tasks:
            if isinstance(t, str):
                found = _task_index(page, block, t)
                if found is None:
                    raise _bad_action(f"tasks: no task {t!r} in block {block}")
                t = found
            chosen.append(t)
        return block, tuple(chosen)

    # ---------------------------------------------------------------------------------------- admin
    def render_action(self, actor: Actor, name: str, action: str) -> str:
        """(admin) Pause a render (it gets no new task; what runs there finishes) or resume it."""
        self._admin_only(actor)
        if action not in RENDER_ACTIONS:
            known = ", ".join(RENDER_ACTIONS)
            raise ApiError(HTTPStatus.NOT_FOUND, f"unknown render action {action!r} (known: {known})")
        paused = action == "pause"
        if not self.store.set_render_paused(name, paused):
            raise ApiError(HTTPStatus.NOT_FOUND, f"no render {name!r}")
        # to the render's actor, when it has one (an online render); an offline one reads the flag on its hello
        self.bus.send(render_address(name), RenderPaused(self.bus.next_id(), name, paused))
        log.info("render action", extra=fields(render=name, user=actor.user, action=action))
        return "paused" if paused else "resumed"

    def add_user(self, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """(admin) Create a user; the answer holds its token, the only time it is shown."""
        self._admin_only(actor)
        name, admin = body.get("name"), body.get("admin", False)
        if not isinstance(name, str) or not isinstance(admin, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad user", ["name: a string; admin: true or false"])
        try:
            token = self.store.add_user(name, admin, replace=bool(body.get("replace", False)))
        except StoreError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc), [str(exc)]) from None
        return {"user": name, "admin": admin, "token": token}

    def add_worker(self, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
        """(admin) Enrol a worker under a render name; the answer holds its credential, the only time it is
        shown. With ``replace`` a new credential replaces the old one, whose connection is closed."""
        self._admin_only(actor)
        name, replace = body.get("name"), body.get("replace", False)
        if not isinstance(name, str) or not isinstance(replace, bool):
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad worker", ["name: a string; replace: true or false"])
        try:
            token = self.store.add_worker(name, replace=replace)
        except StoreError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad worker", [str(exc)]) from None
        if replace and self.disconnect_worker is not None:
            self.disconnect_worker(name)
        return {"worker": name, "token": token}

    def remove_worker(self, actor: Actor, name: str) -> str:
        """(admin) Revoke a worker's credential and close its connection if it came in with it."""
        self._admin_only(actor)
        if not self.store.remove_worker(name):
            raise ApiError(HTTPStatus.NOT_FOUND, f"no worker {name[:130]!r} is enrolled")
        if self.disconnect_worker is not None:
            self.disconnect_worker(name)
        return f"revoked the credential of worker {name!r}"

    def workers(self, actor: Actor) -> list[dict[str, Any]]:
        """(admin) The enrolled workers."""
        self._admin_only(actor)
        return self.store.enrolled_workers()

    def log_level(self, actor: Actor, body: dict[str, Any] | None) -> dict[str, Any]:
        """(admin) Read or set the verbosity of the server's logs."""
        self._admin_only(actor)
        if body is None:
            return {"level": current_level()}
        level = body.get("level")
        try:
            parse_level(str(level))
        except ValueError as exc:
            raise ApiError(HTTPStatus.BAD_REQUEST, str(exc), [str(exc)]) from None
        return {"level": set_level(str(level))}

    @staticmethod
    def _admin_only(actor: Actor) -> None:
        if not actor.admin:
            raise ApiError(HTTPStatus.FORBIDDEN, f"user {actor.user!r} is not an admin")


def _block_index(detail: JobDetail, block: str) -> int | None:
    """The index of the block named ``block`` (or, when no name matches, of that index), or None."""
    for b in detail.blocks:
        if b.name == block:
            return b.index
    if block.isascii() and block.isdigit() and len(block) < 19 and int(block) < len(detail.blocks):
        return int(block)
    return None


def _task_index(detail: JobDetail, block: int, task: str) -> int | None:
    """The index of the task named ``task`` in block ``block`` (or, when no name matches, of that index), or None;
    ``detail`` lists that block's tasks."""
    tasks = [t for t in detail.tasks if t.block == block]
    for t in tasks:
        if t.name == task:
            return t.task
    if task.isascii() and task.isdigit() and len(task) < 19 and int(task) < len(tasks):
        return int(task)
    return None


class _Call:
    """One request, read whole, as the synchronous layer sees it (in a thread of the pool)."""

    __slots__ = ("body", "client", "headers", "method", "target")

    def __init__(self, method: str, target: str, headers: Mapping[str, str], body: bytes, client: str) -> None:
        self.method = method
        self.target = target  # the request target as sent: path and query, still percent-encoded
        self.headers = headers
        self.body = body
        self.client = client


class _Answer(NamedTuple):
    status: int
    body: bytes
    content_type: str = "application/json"


def _json_answer(status: int, payload: Any) -> _Answer:
    return _Answer(status, (json.dumps(payload) + "\n").encode("utf-8"))


def _error_answer(exc: ApiError) -> _Answer:
    return _json_answer(exc.status, {"error": exc.error, "problems": exc.problems, **exc.extra})


def _answer(api: ClientApi, call: _Call) -> _Answer:
    """Authenticate, route and answer one request (JSON, or CSV); every failure is an answer too."""
    try:
        return _route(api, call)
    except ApiError as exc:
        return _error_answer(exc)
    except SpecError as exc:
        return _json_answer(HTTPStatus.BAD_REQUEST, {"error": "invalid job", "problems": exc.problems})
    except Exception:
        log.exception("request failed", extra=fields(path=call.target))
        return _json_answer(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error", "problems": []})


def _json_body(raw: bytes) -> dict[str, Any]:
    if not raw.strip():
        return {}
    try:
        data = parse_text(raw.decode("utf-8-sig"), "body", json_only=True)
    except UnicodeDecodeError as exc:
        problem = f"body: not UTF-8 text (byte {exc.start})"
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid JSON body", [problem]) from None
    except SpecError as exc:
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid JSON body", exc.problems) from None
    if not isinstance(data, dict):
        raise ApiError(HTTPStatus.BAD_REQUEST, "invalid JSON body", ["body: must be a JSON object"])
    return data


def _actor(api: ClientApi, call: _Call, path: str) -> Actor:
    header = call.headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    actor = api.authenticate(token.strip()) if scheme.lower() == "bearer" else None
    if actor is None:
        log.info("request refused: no valid token", extra=fields(client=call.client, path=path))
        raise ApiError(HTTPStatus.UNAUTHORIZED, "a valid user token is required (Authorization: Bearer TOKEN)")
    return actor


def _route(api: ClientApi, call: _Call) -> _Answer:
    method = call.method
    url = urlsplit(call.target)
    parts = [p for p in url.path.split("/") if p]
    query = {k: v[-1] for k, v in parse_qs(url.query).items()}
    if not parts or parts[0] != "api":
        raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}")
    actor = _actor(api, call, url.path)
    route = parts[1:]
    ok = HTTPStatus.OK
    if route == ["whoami"] and method == "GET":
        return _json_answer(ok, {"user": actor.user, "admin": actor.admin})
    if route == ["jobs"] and method == "POST":
        specs = parse_body_jobs(call.body, call.headers.get("Content-Type") or "")
        return _json_answer(ok, {"jobs": api.submit(actor, specs)})
    if route == ["jobs"] and method == "GET":
        rows = api.store.jobs(user=query.get("user"))
        return _json_answer(ok, {"jobs": [r.to_json() for r in rows]})
    if len(route) >= 2 and route[0] == "jobs":
        job_id = _job_id(route[1])
        if len(route) == 2 and method == "GET":
            lines = _int_param(query, "lines", 20)
            with_tasks = _flag_param(query, "tasks", True)
            first = _int_param(query, "offset", 0, MAX_ID)
            limit = _int_param(query, "limit", DEFAULT_TASK_LIMIT, MAX_TASK_LIMIT) if with_tasks else 0
            detail = api.detail(job_id, query.get("block"), query.get("task"), lines, first, limit)
            return _json_answer(ok, detail_to_json(detail, with_tasks))
        if len(route) == 2 and method == "DELETE":
            return _json_answer(ok, {"detail": api.act(actor, job_id, "delete", {})})
        if len(route) == 3 and route[2] == "runs" and method == "GET":
            runs = [msgspec.to_builtins(r) for r in api.store.runs(job_id)]
            for run in runs:
                run.pop("type", None)
            return _json_answer(ok, {"runs": runs})
        if len(route) == 3 and method == "POST":
            return _json_answer(ok, {"detail": api.act(actor, job_id, route[2], _json_body(call.body))})
    elif route == ["renders"] and method == "GET":
        return _json_answer(ok, {"renders": api.store.renders()})
    elif len(route) == 3 and route[0] == "renders" and method == "POST":
        _json_body(call.body)  # none is needed; a malformed one is still refused
        return _json_answer(ok, {"detail": api.render_action(actor, unquote(route[1]), route[2])})
    elif route == ["runs.csv"] and method == "GET":
        return _Answer(ok, runs_csv_text(api.store).encode("utf-8"), "text/csv; charset=utf-8")
    elif route == ["admin", "users"] and method == "POST":
        return _json_answer(ok, api.add_user(actor, _json_body(call.body)))
    elif route == ["admin", "workers"] and method == "POST":
        return _json_answer(ok, api.add_worker(actor, _json_body(call.body)))
    elif route == ["admin", "workers"] and method == "GET":
        return _json_answer(ok, {"workers": api.workers(actor)})
    elif len(route) == 3 and route[:2] == ["admin", "workers"] and method == "DELETE":
        return _json_answer(ok, {"detail": api.remove_worker(actor, unquote(route[2]))})
    elif route == ["admin", "log-level"] and method in ("GET", "POST"):
        return _json_answer(ok, api.log_level(actor, _json_body(call.body) if method == "POST" else None))
    raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {method} {url.path}")


def _shown(value: Any, most: int = 60) -> str:
    """A value as a problem line shows it: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= most else text[: most - 3] + "..."


def _bad_action(problem: str) -> ApiError:
    return ApiError(HTTPStatus.BAD_REQUEST, "bad action", [problem])


RENDER_ACTIONS = ("pause", "resume")

#: the largest id the store can hold (SQLite's integers are 64-bit)
MAX_ID = 2**63 - 1
#: tasks a job's detail lists unless ``limit`` says otherwise, and the most it lists at once
DEFAULT_TASK_LIMIT = 1000
MAX_TASK_LIMIT = 100_000


def _job_id(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise ApiError(HTTPStatus.BAD_REQUEST, f"job id: must be a number (got {text[:40]!r})")
    if len(text) > 19 or int(text) > MAX_ID:
        raise ApiError(HTTPStatus.NOT_FOUND, f"no job {text[:40]}{'...' if len(text) > 40 else ''}")
    return int(text)


def _int_param(query: dict[str, str], name: str, default: int, most: int = 1_000_000) -> int:
    value = query.get(name)
    if value is None:
        return default
    if not (value.isascii() and value.isdigit()) or len(value) > 30 or int(value) > most:
        raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: must be a whole number 0-{most} (got {value[:40]!r})")
    return int(value)


def _flag_param(query: dict[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default
    if value.lower() in ("1", "true", "yes"):
        return True
    if value.lower() in ("0", "false", "no"):
        return False
    raise ApiError(HTTPStatus.BAD_REQUEST, f"{name}: must be 1 or 0 (got {value[:40]!r})")


def runs_csv_text(store: Store) -> str:
    """The store's run log as ``tasks.csv`` text."""
    import csv

    from farmhand.core.records import CSV_COLUMNS, csv_row, sort_records

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for r in sort_records(store.runs()):
        writer.writerow(csv_row(r))
    return out.getvalue()


#: requests served at once (the size of the thread pool that runs them); one more is answered 503 at once
MAX_CONCURRENT_REQUESTS = 64
#: seconds a client may stay silent in the middle of a request (or not read its answer) before it is dropped
REQUEST_TIMEOUT_S = 3.0
#: connections the operating system may hold for the server before it accepts them
LISTEN_BACKLOG = 1024
#: seconds an idle keep-alive connection stays open between requests
KEEPALIVE_S = 15.0
#: the longest line of a request's head (its request line, each header), as the standard library's server took
MAX_LINE = 65536
#: seconds ``stop()`` lets the requests in flight finish (one waits for the farm's answer at most REPLY_TIMEOUT_S)
SHUTDOWN_S = REPLY_TIMEOUT_S + 5.0

_METHODS = ("GET", "POST", "DELETE")


def _response(answer: _Answer) -> web.Response:
    response = web.Response(status=answer.status, body=answer.body, headers={"Content-Type": answer.content_type})
    if answer.status == HTTPStatus.UNAUTHORIZED:
        response.headers["WWW-Authenticate"] = 'Bearer realm="farmhand"'
    return response


def _refusal(status: int, error: str, problems: list[str], **headers: str) -> web.Response:
    """A refusal that also ends the connection (what follows on it may not be a request)."""
    response = _response(_json_answer(status, {"error": error, "problems": problems}))
    response.headers.update(headers)
    response.force_close()
    return response


class _Gate:
    """The request slots (``size``), counted on the event loop's thread only; refusals are logged at most once a
    second, with a count."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.used = 0
        self._refused = 0
        self._refusals_logged_at = 0.0

    def take(self) -> bool:
        if self.used >= self.size:
            return False
        self.used += 1
        return True

    def give(self) -> None:
        self.used -= 1

    def refused(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= 1.0:
            log.warning("client API busy: requests refused", extra=fields(refused=self._refused))
            self._refused = 0
            self._refusals_logged_at = now


class _Connection(RequestHandler):
    """aiohttp's handler of one connection, plus three things of the API's own.

    - **A request slot**: taken when the connection is accepted (a client that connects and says nothing yet
      holds one, as a request on its way) and by each later request on the connection when its head has
      arrived; given back when the answer is written. Without one, the request is answered 503.
    - **The stall watchdog**: a client silent for ``timeout`` seconds in the middle of a request (its head or
      its body still coming), or that leaves its answer unread that long, is dropped. Idle keep-alive
      connections are aiohttp's (``keepalive_timeout``).
    - **The parser's own refusals** (a malformed request line or header, a line too long, a method it does not
      know, a body framed wrongly) are answered in JSON like every other error, and logged in one line.
    """

    def __init__(
        self, manager: web.Server, *, loop: asyncio.AbstractEventLoop, gate: _Gate, timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(manager, loop=loop, **kwargs)
        self._clock = loop
        self._gate = gate
        self._timeout = timeout
        self.slot = False
        self.handling = False
        self._read_since: float | None = None  # reading a request: the time of its last bytes
        self._unread_since: float | None = None  # the client has left our writes unread since then
        self._watch: asyncio.TimerHandle | None = None

    # ---------------------------------------------------------------------------------------- slots
    def claim(self) -> bool:
        """Hold a request slot (the one the connection took when accepted, or a free one); False when full."""
        if not self.slot:
            self.slot = self._gate.take()
            if not self.slot:
                self._gate.refused()
        return self.slot

    def release(self) -> None:
        if self.slot:
            self.slot = False
            self._gate.give()

    # ---------------------------------------------------------------------------------------- the watchdog
    def request_read(self) -> None:
        """The request is read whole: the client owes nothing more until its answer is written."""
        self._read_since = None

    def _arm(self) -> None:
        deadlines = [t + self._timeout for t in (self._read_since, self._unread_since) if t is not None]
        if not deadlines:
            return
        if self._watch is not None:
            if self._watch.when() <= min(deadlines):
                return  # it will look again then
            self._watch.cancel()
        self._watch = self._clock.call_at(min(deadlines), self._look)

    def _look(self) -> None:
        self._watch = None
        now = self._clock.time()
        if any(t is not None and now - t >= self._timeout for t in (self._read_since, self._unread_since)):
            stalled = "writing" if self._read_since is None else "reading"
            log.debug("client stalled mid-request: dropped", extra=fields(client=self._client(), stalled=stalled))
            transport = self.transport
            self.force_close()
            if transport is not None:
                transport.abort()  # closing would wait for an unread answer to flush, and so never end
        else:
            self._arm()

    def _client(self) -> str:
        peer = self.transport.get_extra_info("peername") if self.transport is not None else None
        return str(peer[0]) if isinstance(peer, tuple) else "?"

    # ---------------------------------------------------------------------------------------- aiohttp's hooks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.slot = self._gate.take()
        self._read_since = self._clock.time()
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None
        self._read_since = self._unread_since = None
        if not self.handling:  # else the handler gives the slot back when it ends
            self.release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if data:
            self._read_since = self._clock.time()
            if self._watch is None:
                self._arm()
        super().data_received(data)

    def pause_writing(self) -> None:
        self._unread_since = self._clock.time()
        self._arm()
        super().pause_writing()

    def resume_writing(self) -> None:
        self._unread_since = None
        super().resume_writing()

    async def finish_response(
        self, request: BaseRequest, resp: web.StreamResponse, start_time: float | None
    ) -> tuple[web.StreamResponse, bool]:
        try:
            return await super().finish_response(request, resp, start_time)
        finally:
            self.release()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer is partly sent already: no room for another")
        headers: dict[str, str] = {}
        if isinstance(exc, LineTooLong):
            status, error = HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "Line too long"
            problems = [f"a line of the request head is over {exc.args[1]} bytes"]
        elif isinstance(exc, BadHttpMethod):
            status, error, problems = HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method{_method_in(exc)}", []
            headers["Allow"] = ", ".join(_METHODS)
        elif status == HTTPStatus.INTERNAL_SERVER_ERROR:
            log.error("request failed", exc_info=exc, extra=fields(client=self._client()))
            error, problems = "internal error", []
        else:
            error = "Bad request"
            text = _parser_problem(exc.message if isinstance(exc, HttpProcessingError) else message)
            problems = [text] if text else []
        log.info("request refused", extra=fields(client=self._client(), status=int(status), reason=error))
        return _refusal(status, error, problems, **headers)


def _parser_problem(message: str | None) -> str:
    """What the parser found wrong, without the bytes it quotes after it (they may hold a token)."""
    text = (message or "").split("\n\n", 1)[0]
    return ": ".join(line.strip().rstrip(":") for line in text.splitlines() if line.strip())[:200]


def _method_in(exc: HttpProcessingError) -> str:
    """`` ('FOO')``: the method of the request line the parser quotes, or nothing."""
    for line in exc.message.splitlines():
        line = line.strip()
        if line.startswith(("b'", 'b"')):
            with contextlib.suppress(ValueError, SyntaxError):
                quoted = ast.literal_eval(line)
                if isinstance(quoted, bytes) and quoted.split():
                    return f" ({quoted.split()[0][:40].decode('latin-1')!r})"
    return ""


class HttpApi:
    """The HTTP server of the client API: aiohttp on an asyncio event loop in one thread of its own, the
    requests' work (store reads, waiting for the farm's answer) in a pool of ``max_requests`` threads.

    ``app`` is the aiohttp application: ``/api`` is routed to the API; a later addition (a web monitor) adds
    its own routes to it before ``start()``: a static files route (``app.router.add_static``), a server-sent
    events route whose handler writes a ``web.StreamResponse`` as events come. Those are served on the event
    loop itself, without a thread per client. ``stop()`` joins every thread it started.
    """

    def __init__(
        self,
        api: ClientApi,
        host: str = "127.0.0.1",
        port: int = DEFAULT_HTTP_PORT,
        max_requests: int = MAX_CONCURRENT_REQUESTS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.api = api
        self.max_requests = max_requests
        self.request_timeout_s = request_timeout_s
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # bound here, so that a port in use fails the caller at once and an ephemeral port is known
        self._sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
        bound = self._sock.getsockname()
        self.host, self.port = str(bound[0]), int(bound[1])
        self._pool = concurrent.futures.ThreadPoolExecutor(max_requests, thread_name_prefix="farmhand-http-call")
        self.app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        self.app.router.add_route("*", "/api", self._api)
        self.app.router.add_route("*", "/api/{rest:.*}", self._api)
        self._thread = threading.Thread(target=self._run, name="farmhand-http", daemon=True)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._loop = asyncio.new_event_loop()  # run by the thread; stop() can reach it whenever it is called
        self._stopping = asyncio.Event()

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpApi:
        """Start serving; returns self."""
        self._thread.start()
        if not self._ready.wait(10.0) or self._failure is not None:
            self.stop()
            raise RuntimeError(f"the client API did not start: {self._failure!r}") from self._failure
        log.info("client API listening", extra=fields(url=self.url))
        return self

    def stop(self) -> None:
        """Stop accepting, let the requests in progress finish (for at most SHUTDOWN_S), close the socket."""
        if self._thread.ident is not None:
            with contextlib.suppress(RuntimeError):  # the loop has ended by itself
                self._loop.call_soon_threadsafe(self._stopping.set)
            self._thread.join(timeout=SHUTDOWN_S + REPLY_TIMEOUT_S + 5.0)
        elif not self._loop.is_closed():  # never started
            self._loop.close()
        self._pool.shutdown(wait=True)
        self._sock.close()

    # ---------------------------------------------------------------------------------------- the loop's thread
    def _run(self) -> None:
        loop = self._loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:
            self._failure = exc
            log.exception("client API failed")
        finally:
            self._ready.set()
            self._pool.shutdown(wait=True)  # requests still waiting for the farm end within its reply timeout
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=SHUTDOWN_S)
        await runner.setup()
        server, gate = runner.server, _Gate(self.max_requests)
        assert server is not None

        def connection() -> _Connection:
            return _Connection(
                server, loop=loop, gate=gate, timeout=self.request_timeout_s, keepalive_timeout=KEEPALIVE_S,
                access_log=None, max_line_size=MAX_LINE, max_field_size=MAX_LINE,
            )

        listener = await loop.create_server(connection, sock=self._sock, backlog=LISTEN_BACKLOG)
        try:
            self._ready.set()
            await self._stopping.wait()
        finally:
            listener.close()  # no new connection; then idle ones close, and those in a request finish it
            await runner.cleanup()

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Every request: a slot (or 503 at once), then its body read whole (or 400/413, and the handler never
        runs), then the handler; the router's refusals (no such path) in JSON too."""
        conn = request.protocol
        assert isinstance(conn, _Connection)
        if not conn.claim():
            return _refusal(HTTPStatus.SERVICE_UNAVAILABLE, "too many requests at once, retry soon", [],
                            **{"Retry-After": "1"})
        conn.handling = True
        try:
            try:
                await _read_whole(request)
            except ApiError as exc:
                return _refusal(exc.status, exc.error, exc.problems)
            finally:
                conn.request_read()
            try:
                response = await handler(request)
            except web.HTTPException as exc:  # from the router: nothing answers this path or method
                error = f"no such endpoint {request.path}" if exc.status == HTTPStatus.NOT_FOUND else exc.reason
                allow = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else {}
                return _refusal(exc.status, error, [], **allow)
            except Exception:
                log.exception("request failed", extra=fields(path=request.path))
                return _refusal(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error", [])
            log.debug("http request", extra=fields(client=request.remote, method=request.method,
                                                   path=request.path, status=response.status))
            return response
        finally:
            conn.handling = False
            if conn.transport is None:  # the client left: no answer will be written
                conn.release()

    async def _api(self, request: web.Request) -> web.StreamResponse:
        if request.method not in _METHODS:
            return _refusal(HTTPStatus.NOT_IMPLEMENTED, f"Unsupported method ({request.method!r})", [],
                            Allow=", ".join(_METHODS))
        call = _Call(request.method, request.raw_path, request.headers, await request.read(), request.remote or "")
        return _response(await asyncio.get_running_loop().run_in_executor(self._pool, _answer, self.api, call))


async def _read_whole(request: web.Request) -> None:
    """Read the request's body as sent (a length, chunks, compressed) and keep it; 413 over MAX_BODY, 400 when it
    cannot be read whole: a request is never acted on with a body other than the one sent."""
    too_large = ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
    if (request.content_length or 0) > MAX_BODY:
        raise too_large
    try:
        await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large from None
    except Exception as exc:  # the framing is broken, the client went away in the middle, ...
        text = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
        text = re.sub(r"^\d{3}, message:\s*", "", text)  # a parser's error passed on as text
        problem = f"body: {_parser_problem(text) or type(exc).__name__}"
        raise ApiError(HTTPStatus.BAD_REQUEST, "the request body could not be read as sent", [problem]) from None
