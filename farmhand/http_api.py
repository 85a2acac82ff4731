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
``POST /api/admin/log-level``               (admin) ``{"level": "debug"}``; ``GET`` tells the level in force
==========================================  ====================================================================

The API decides nothing: submissions and actions go to the registry as messages with a reply address, and
the answers (``JobAccepted``/``JobRefused``, ``ActionDone``/``ActionRefused``, ``JobDetail``) come back to a
sink that wakes the waiting request. A submission is committed to the store before it is sent, so a job
answered "accepted" survives any crash. Lists come from the store.
"""

from __future__ import annotations

import io
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import msgspec

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

DEFAULT_HTTP_PORT = 51080
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

    def __init__(self, store: Store, bus: Bus, reply_timeout: float = REPLY_TIMEOUT_S) -> None:
        self.store = store
        self.bus = bus
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


class _Handler(BaseHTTPRequestHandler):
    """One request: authenticate, route, answer JSON (or CSV)."""

    server: _Server
    server_version = "farmhand"
    protocol_version = "HTTP/1.0"
    def setup(self) -> None:
        self.timeout = self.server.request_timeout_s  # a silent client cannot hold a thread (or the shutdown) long
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("http " + format % args, extra=fields(client=self.client_address[0]))

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The server's own refusals (an unknown method, a malformed request line, headers too long) in JSON,
        like every other answer of the API, instead of the standard library's HTML page."""
        try:
            reason = message or HTTPStatus(code).phrase
        except ValueError:
            reason = message or "error"
        log.info("request refused", extra=fields(client=self.client_address[0], status=code, reason=reason))
        self.close_connection = True
        body = (json.dumps({"error": reason, "problems": [explain] if explain else []}) + "\n").encode("utf-8")
        try:
            self.send_response(code, message)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Connection", "close")
            if code == HTTPStatus.NOT_IMPLEMENTED:
                self.send_header("Allow", "GET, POST, DELETE")
            self.end_headers()
            if self.command != "HEAD" and code >= 200 and code not in (204, 304):
                self.wfile.write(body)
        except OSError:
            pass

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    # ---------------------------------------------------------------------------------------- plumbing
    def _send(self, status: int, payload: Any, content_type: str = "application/json") -> None:
        body = payload if isinstance(payload, bytes) else (json.dumps(payload) + "\n").encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if status == HTTPStatus.UNAUTHORIZED:
            self.send_header("WWW-Authenticate", 'Bearer realm="farmhand"')
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise ApiError(HTTPStatus.BAD_REQUEST, "bad Content-Length") from None
        if length > MAX_BODY:
            raise ApiError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY} bytes")
        return self.rfile.read(length) if length > 0 else b""

    def _json_body(self) -> dict[str, Any]:
        raw = self._body()
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

    def _actor(self) -> Actor:
        header = self.headers.get("Authorization") or ""
        scheme, _, token = header.partition(" ")
        actor = self.server.api.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if actor is None:
            log.info("request refused: no valid token", extra=fields(client=self.client_address[0], path=self.path))
            raise ApiError(HTTPStatus.UNAUTHORIZED, "a valid user token is required (Authorization: Bearer TOKEN)")
        return actor

    def _serve(self, method: str) -> None:
        try:
            self._route(method)
        except ApiError as exc:
            payload: dict[str, Any] = {"error": exc.error, "problems": exc.problems, **exc.extra}
            self._send(exc.status, payload)
        except SpecError as exc:
            self._send(HTTPStatus.BAD_REQUEST, {"error": "invalid job", "problems": exc.problems})
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception:
            log.exception("request failed", extra=fields(path=self.path))
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error", "problems": []})

    def _route(self, method: str) -> None:
        api = self.server.api
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        if not parts or parts[0] != "api":
            raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {url.path}")
        actor = self._actor()
        route = parts[1:]
        if route == ["whoami"] and method == "GET":
            self._send(HTTPStatus.OK, {"user": actor.user, "admin": actor.admin})
        elif route == ["jobs"] and method == "POST":
            specs = parse_body_jobs(self._body(), self.headers.get("Content-Type") or "")
            self._send(HTTPStatus.OK, {"jobs": api.submit(actor, specs)})
        elif route == ["jobs"] and method == "GET":
            rows = api.store.jobs(user=query.get("user"))
            self._send(HTTPStatus.OK, {"jobs": [r.to_json() for r in rows]})
        elif len(route) >= 2 and route[0] == "jobs":
            job_id = _job_id(route[1])
            if len(route) == 2 and method == "GET":
                lines = _int_param(query, "lines", 20)
                with_tasks = _flag_param(query, "tasks", True)
                first = _int_param(query, "offset", 0, MAX_ID)
                limit = _int_param(query, "limit", DEFAULT_TASK_LIMIT, MAX_TASK_LIMIT) if with_tasks else 0
                detail = api.detail(job_id, query.get("block"), query.get("task"), lines, first, limit)
                self._send(HTTPStatus.OK, detail_to_json(detail, with_tasks))
            elif len(route) == 2 and method == "DELETE":
                self._send(HTTPStatus.OK, {"detail": api.act(actor, job_id, "delete", {})})
            elif len(route) == 3 and route[2] == "runs" and method == "GET":
                runs = [msgspec.to_builtins(r) for r in api.store.runs(job_id)]
                for run in runs:
                    run.pop("type", None)
                self._send(HTTPStatus.OK, {"runs": runs})
            elif len(route) == 3 and method == "POST":
                self._send(HTTPStatus.OK, {"detail": api.act(actor, job_id, route[2], self._json_body())})
            else:
                raise ApiError(HTTPStatus.NOT_FOUND, f"no such endpoint {method} {url.path}")
        elif route == ["renders"] and method == "GET":
            self._send(HTTPStatus.OK, {"renders": api.store.renders()})
        elif len(route) == 3 and route[0] == "renders" and method == "POST":
            self._json_body()  # none is needed; a malformed one is still refused
            self._send(HTTPStatus.OK, {"detail": api.render_action(actor, unquote(route[1]), route[2])})
        elif route == ["runs.csv"] and method == "GET":
            self._send(HTTPStatus.OK, runs_csv_text(api.store).encode("utf-8"), "text/csv; charset=utf-8")
        elif route == ["admin", "users"] and method == "POST":
            self._send(HTTPStatus.OK, api.add_user(actor, self._json_body()))
        elif route == ["admin", "log-level"] and method in ("GET", "POST"):
            self._send(HTTPStatus.OK, api.log_level(actor, self._json_body() if method == "POST" else None))
        else:
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


#: requests served at once; one more is answered 503 instead of costing the server another thread
MAX_CONCURRENT_REQUESTS = 64
#: seconds a client may stay silent in the middle of a request before its thread lets it go
REQUEST_TIMEOUT_S = 3.0

_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b'Content-Length: 51\r\n\r\n{"error": "too many requests at once, retry soon"}\n'
)


class _Server(ThreadingHTTPServer):
    """A thread per request, at most ``max_requests`` at once; the others are answered 503 by one more thread.

    The accept loop never waits on a refused client: it hands the connection to the refusing thread (up to
    a queue of 128; beyond that the connection is just closed), which reads the request head briefly (closing
    a socket with unread input would reset the connection, and the client would see that instead of the
    503), answers and closes. Refusals are logged at most once a second, with a count.
    """

    daemon_threads = False  # server_close() joins the request threads: none is left behind
    block_on_close = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        api: ClientApi,
        max_requests: int = MAX_CONCURRENT_REQUESTS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.api = api
        self.request_timeout_s = request_timeout_s
        self._slots = threading.BoundedSemaphore(max_requests)
        self._refusals: queue.Queue[Any] = queue.Queue(maxsize=128)
        self._refused = 0
        self._refusals_logged_at = 0.0
        super().__init__(address, _Handler)
        self._refuser = threading.Thread(target=self._refuse_loop, name="farmhand-http-busy", daemon=True)
        self._refuser.start()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._note_refusal()
            try:
                self._refusals.put_nowait(request)
            except queue.Full:
                self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _note_refusal(self) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusals_logged_at >= 1.0:
            log.warning("client API busy: requests refused", extra=fields(refused=self._refused))
            self._refused = 0
            self._refusals_logged_at = now

    def _refuse_loop(self) -> None:
        while True:
            request = self._refusals.get()
            if request is None:
                return
            try:
                request.settimeout(0.5)
                request.recv(65536)
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)

    def server_close(self) -> None:
        super().server_close()
        while True:  # drop what still waits for a refusal, then stop the refusing thread
            try:
                self.shutdown_request(self._refusals.get_nowait())
            except queue.Empty:
                break
        self._refusals.put(None)
        self._refuser.join(timeout=5)


class HttpApi:
    """The HTTP server of the client API, on its own thread; ``stop()`` joins every thread it started."""

    def __init__(
        self,
        api: ClientApi,
        host: str = "127.0.0.1",
        port: int = DEFAULT_HTTP_PORT,
        max_requests: int = MAX_CONCURRENT_REQUESTS,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.api = api
        self._server = _Server((host, port), api, max_requests, request_timeout_s)
        bound = self._server.server_address
        self.host, self.port = str(bound[0]), int(bound[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.2}, name="farmhand-http", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL (``http://host:port``)."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> HttpApi:
        """Start serving; returns self."""
        self._thread.start()
        log.info("client API listening", extra=fields(url=self.url))
        return self

    def stop(self) -> None:
        """Stop accepting, finish the requests in progress, close the socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()
