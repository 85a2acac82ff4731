"""The server's embedded store: one SQLite database in WAL mode that survives restarts, even ``kill -9``.

What it keeps:

- ``jobs``: id, name, owner, the spec (canonical JSON of :func:`~farmhand.core.spec.spec_to_dict`), state,
  priority and paused as last changed, submission time, task counts.
- ``tasks``: one row per task whose *lasting* state ever changed (running with its run id and render, done,
  skipped, error, or back in the queue with its attempt and failure counts); a task without a row has never
  left waiting/ready. Rows come from the jobs' ``TaskChanged`` events.
- ``renders``: what each render offered when it was last seen, and whether it is online.
- ``users``: name, admin flag and the SHA-256 of the user's token (tokens are 256-bit random strings, so a
  plain digest is safe to keep; the token itself is shown once and never stored).
- ``runs``: append-only, one row per run (``RunRecord``), exported as ``tasks.csv``.
- ``meta``: small settings (the schema version).

Writes: a job is inserted and committed *before* it is submitted to the registry (so an accepted job is
durable before anyone hears "accepted"); the events of the running farm go through a queue to one writer
thread that applies them in order, in batched transactions. ``flush()`` waits for the queue; ``close()``
flushes and checkpoints. The core decides everything; this module only records and reads back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import queue
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from farmhand.core.messages import (
    Actor,
    AvoidRender,
    JobStateChanged,
    JobUpdated,
    Message,
    RenderOffline,
    RenderOnline,
    RenderPaused,
    RunRecord,
    TaskChanged,
    TaskSnapshot,
)
from farmhand.core.spec import JobSpec, SpecError, parse_job, spec_to_dict
from farmhand.logs import fields
from farmhand.transport.codec import RENDER_NAME

log = logging.getLogger("farmhand.store")

SCHEMA_VERSION = 1
BATCH = 2000  # events per transaction at most

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    user TEXT NOT NULL,
    spec TEXT NOT NULL,
    state TEXT NOT NULL,
    priority INTEGER NOT NULL,
    paused INTEGER NOT NULL,
    submit_time REAL NOT NULL,
    tasks_total INTEGER NOT NULL,
    tasks_done INTEGER NOT NULL DEFAULT 0,
    tasks_error INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    job INTEGER NOT NULL,
    block INTEGER NOT NULL,
    task INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    failures INTEGER NOT NULL,
    run_id INTEGER NOT NULL,
    render TEXT NOT NULL,
    ready_time REAL NOT NULL,
    start_time REAL NOT NULL,
    updated REAL NOT NULL,
    output TEXT NOT NULL DEFAULT '[]',
    PRIMARY KEY (job, block, task)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS renders (
    name TEXT PRIMARY KEY,
    tags TEXT NOT NULL,
    capacity INTEGER NOT NULL,
    max_tasks INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    cpus INTEGER NOT NULL,
    state TEXT NOT NULL,
    paused INTEGER NOT NULL DEFAULT 0,
    since REAL NOT NULL,
    reason TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    admin INTEGER NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    name TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id INTEGER NOT NULL,
    job_name TEXT NOT NULL,
    user TEXT NOT NULL,
    block TEXT NOT NULL,
    task TEXT NOT NULL,
    frames TEXT NOT NULL,
    render TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    submission_time REAL NOT NULL,
    ready_time REAL NOT NULL,
    starting_time REAL NOT NULL,
    finish_time REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_job ON runs (job_id);
CREATE TABLE IF NOT EXISTS avoids (
    job INTEGER NOT NULL,
    block INTEGER NOT NULL,
    render TEXT NOT NULL,
    PRIMARY KEY (job, block, render)
) WITHOUT ROWID;
"""


def _lines(stored: str) -> tuple[str, ...]:
    """A task's stored output lines (a JSON list; anything else reads as none)."""
    try:
        lines = json.loads(stored)
    except ValueError:
        return ()
    return tuple(str(line) for line in lines) if isinstance(lines, list) else ()


def hash_token(token: str) -> str:
    """The SHA-256 hex digest under which a token is kept."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_token() -> str:
    """A fresh random token: 256 bits as hex, so it never starts with "-" (``--token -x...`` would read as an
    option) and needs no quoting anywhere."""
    return secrets.token_hex(32)


@dataclass(frozen=True)
class RestoredJob:
    """A job as the store gives it back after a restart."""

    job_id: int
    spec: JobSpec
    user: str
    submit_time: float
    tasks: tuple[TaskSnapshot, ...]
    avoided: tuple[tuple[int, str], ...] = ()  # (block, render) pairs the job came to avoid


@dataclass(frozen=True)
class JobRow:
    """A job as listed from the store."""

    job_id: int
    name: str
    user: str
    state: str
    priority: int
    paused: bool
    submit_time: float
    tasks_total: int
    counts: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        """The JSON form used by the client API."""
        return {
            "id": self.job_id, "name": self.name, "user": self.user, "state": self.state,
            "priority": self.priority, "paused": self.paused, "submit_time": self.submit_time,
            "tasks_total": self.tasks_total, "counts": self.counts,
        }


class StoreError(Exception):
    """A request the store cannot satisfy (an existing user name, an unreadable database)."""


_STOP = object()


class _AfterCommit:
    """A marker in the writer's queue: call ``callback`` once the events queued before it are committed."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[[], None]) -> None:
        self.callback = callback


def _lock_exclusively(path: Path) -> Any:
    """Hold ``PATH.lock`` so that a second server cannot open the same store (released when closed)."""
    import fcntl

    f = open(f"{path}.lock", "a+")  # noqa: SIM115 - held open for the store's lifetime
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        raise StoreError(f"{path}: in use by another farmhand server") from None
    return f


class Store:
    """One SQLite database, one connection guarded by a lock, one writer thread for the farm's events."""

    def __init__(self, path: str | Path, synchronous: str = "FULL", exclusive: bool = False) -> None:
        self.path = Path(path)
        self._lock_file: Any = None
        if str(path) != ":memory:":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if exclusive:
                self._lock_file = _lock_exclusively(self.path)
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA foreign_keys=OFF")
            self._db.executescript(_SCHEMA)
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(tasks)")}
            if "output" not in columns:  # a store made before tasks kept their output lines
                self._db.execute("ALTER TABLE tasks ADD COLUMN output TEXT NOT NULL DEFAULT '[]'")
            self._db.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
            )
        except sqlite3.DatabaseError as exc:
            if self._lock_file is not None:
                self._lock_file.close()
            raise StoreError(f"{path}: cannot open the store ({exc})") from None
        self._lock = threading.RLock()
        self._memory = str(path) == ":memory:"
        self._local = threading.local()  # each thread's reading connection
        self._readers: list[sqlite3.Connection] = []
        self._readers_lock = threading.Lock()
        (last,) = self._db.execute("SELECT COALESCE(MAX(id), 0) FROM jobs").fetchone()
        self._next_job_id = int(last) + 1
        self._queue: queue.SimpleQueue[object] = queue.SimpleQueue()
        self._pending = 0
        self._pending_cond = threading.Condition()
        self._closed = False
        self.events_written = 0
        self.events_failed = 0  # events a write could not store (each logged at error level)
        self._writer = threading.Thread(target=self._write_loop, name="farmhand-store", daemon=True)
        self._writer.start()

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        """A connection of this thread's own for reading, in one snapshot (a read transaction): readers never
        wait for the writer's lock, so neither the event writer (and with it durable dispatch) nor a worker's
        handshake waits for a long read such as the whole run log. A store in memory has one connection."""
        if self._memory:
            with self._lock:
                yield self._db
            return
        db: sqlite3.Connection | None = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None, timeout=30.0)
            db.execute("PRAGMA query_only=ON")
            self._local.db = db
            with self._readers_lock:
                self._readers.append(db)
        db.execute("BEGIN")
        try:
            yield db
        finally:
            db.execute("COMMIT")

    # ---------------------------------------------------------------------------------------- lifecycle
    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every queued event is committed; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._pending_cond:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._pending_cond.wait(left)
        return True

    def close(self) -> None:
        """Commit what is queued, stop the writer thread, checkpoint and close the database."""
        if self._closed:
            return
        self._closed = True
        self._queue.put(_STOP)
        self._writer.join(timeout=30)
        with self._lock:
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.DatabaseError:
                log.warning("checkpoint failed at close", exc_info=True)
            self._db.close()
        with self._readers_lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
        if self._lock_file is not None:
            self._lock_file.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # ---------------------------------------------------------------------------------------- events
    def on_event(self, _address: str, message: Message) -> None:
        """The event sink: queue a farm event for the writer thread (thread-safe, never blocks)."""
        if self._closed:
            return
        with self._pending_cond:
            self._pending += 1
        self._queue.put(message)

    def after_commit(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the writer thread, soon) once every event queued before this call is committed.

        The server's durable dispatch: the gateway holds an assignment until the store has its run, so a
        server killed at any moment restarts knowing every run a worker may report. Commits are grouped: one
        transaction covers whatever queued meanwhile, so waiting costs latency, not throughput. A callback
        must not block; if the store is closed it is called at once. An event that cannot be stored (a full
        disk, say) is logged at error level and counted in ``events_failed``, and the callbacks are called all
        the same: the farm goes on working without the guarantee for those runs rather than stop.
        """
        if self._closed:
            callback()
            return
        self._queue.put(_AfterCommit(callback))

    def _write_loop(self) -> None:
        stop = False
        while not stop:
            batch: list[Any] = [self._queue.get()]
            while len(batch) < BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in batch:
                stop = True
                batch = [m for m in batch if m is not _STOP]
            callbacks = [m.callback for m in batch if type(m) is _AfterCommit]
            if callbacks:
                batch = [m for m in batch if type(m) is not _AfterCommit]
            if batch and not self._write(batch):
                for message in batch:  # find the event that fails; keep every other one
                    if not self._write([message]):
                        self.events_failed += 1
                        log.error("event not stored", extra=fields(event=type(message).__name__))
            with self._pending_cond:
                self._pending -= len(batch)
                self._pending_cond.notify_all()
            for callback in callbacks:
                try:
                    callback()
                except Exception:
                    log.exception("after-commit callback failed")

    def _write(self, batch: list[Any]) -> bool:
        """Apply events in one transaction; False (rolled back, logged) if one of them fails."""
        try:
            with self._lock:
                self._db.execute("BEGIN IMMEDIATE")
                for message in batch:
                    self._apply(message)
                self._db.execute("COMMIT")
        except Exception:
            log.exception("store write failed", extra=fields(events=len(batch)))
            with self._lock:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            return False
        self.events_written += len(batch)
        return True

    def _apply(self, m: Message) -> None:
        db = self._db
        if isinstance(m, TaskChanged):
            s = m.snapshot
            db.execute(
                "INSERT INTO tasks (job, block, task, state, attempt, failures, run_id, render, ready_time,"
                " start_time, updated, output) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT"
                " (job, block, task) DO UPDATE SET state=excluded.state, attempt=excluded.attempt,"
                " failures=excluded.failures, run_id=excluded.run_id, render=excluded.render,"
                " ready_time=excluded.ready_time, start_time=excluded.start_time, updated=excluded.updated,"
                " output=excluded.output",
                (m.job_id, s.block, s.task, s.state, s.attempt, s.failures, s.run_id, s.render, s.ready_time,
                 s.start_time, m.time, json.dumps(list(s.output))),
            )
        elif isinstance(m, RunRecord):
            db.execute(
                "INSERT INTO runs (job_id, job_name, user, block, task, frames, render, attempt, state,"
                " submission_time, ready_time, starting_time, finish_time) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (m.job_id, m.job_name, m.user, m.block, m.task, m.frames, m.render, m.attempt, m.state,
                 m.submission_time, m.ready_time, m.starting_time, m.finish_time),
            )
        elif isinstance(m, JobStateChanged):
            db.execute(
                "UPDATE jobs SET state=?, tasks_done=?, tasks_error=?, updated=? WHERE id=?",
                (m.state, m.tasks_done, m.tasks_error, time.time(), m.job_id),
            )
        elif isinstance(m, JobUpdated):
            db.execute(
                "UPDATE jobs SET priority=?, paused=?, updated=? WHERE id=?",
                (m.priority, int(m.paused), time.time(), m.job_id),
            )
        elif isinstance(m, RenderOnline):
            i = m.info
            db.execute(
                "INSERT INTO renders (name, tags, capacity, max_tasks, memory_mb, cpus, state, paused, since,"
                " reason) VALUES (?, ?, ?, ?, ?, ?, 'online', ?, ?, '') ON CONFLICT (name) DO UPDATE SET"
                " tags=excluded.tags, capacity=excluded.capacity, max_tasks=excluded.max_tasks,"
                " memory_mb=excluded.memory_mb, cpus=excluded.cpus, state='online', since=excluded.since,"
                " reason=''",
                (i.name, json.dumps(sorted(i.tags)), i.capacity, i.max_tasks, i.memory_mb, i.cpus,
                 int(getattr(m, "paused", False)), time.time()),
            )
        elif isinstance(m, RenderOffline):
            db.execute(
                "UPDATE renders SET state='offline', since=?, reason=? WHERE name=?", (time.time(), m.reason, m.render)
            )
        elif isinstance(m, RenderPaused):
            db.execute("UPDATE renders SET paused=? WHERE name=?", (int(m.paused), m.render))
        elif isinstance(m, AvoidRender):
            db.execute(
                "INSERT OR IGNORE INTO avoids (job, block, render) VALUES (?, ?, ?)", (m.job_id, m.block, m.render)
            )

    # ---------------------------------------------------------------------------------------- jobs
    def add_job(self, spec: JobSpec, user: str, submit_time: float, tasks_total: int) -> int:
        """Insert a job under a fresh id and commit it (before it is submitted); returns the id."""
        data = json.dumps(spec_to_dict(spec), separators=(",", ":"))
        with self._lock:
            job_id = self._next_job_id
            self._next_job_id += 1
            self._db.execute(
                "INSERT INTO jobs (id, name, user, spec, state, priority, paused, submit_time, tasks_total, updated)"
                " VALUES (?, ?, ?, ?, 'active', ?, ?, ?, ?, ?)",
                (job_id, spec.name, user, data, spec.priority, int(spec.paused), submit_time, tasks_total,
                 time.time()),
            )
        return job_id

    def forget_job(self, job_id: int) -> None:
        """Remove a job that was never accepted (the registry refused it)."""
        with self._lock:
            self._db.execute("DELETE FROM tasks WHERE job=?", (job_id,))
            self._db.execute("DELETE FROM avoids WHERE job=?", (job_id,))
            self._db.execute("DELETE FROM jobs WHERE id=?", (job_id,))

    def mark_job(self, job_id: int, state: str) -> None:
        """Set a job's state directly (a job refused on restore is marked ``refused``)."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state=?, updated=? WHERE id=?", (state, time.time(), job_id))

    def restorable_jobs(self) -> list[RestoredJob]:
        """Every job that is not deleted, in id order, with its tasks' lasting states."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, spec, user, submit_time, priority, paused FROM jobs"
                " WHERE state NOT IN ('deleted', 'refused') ORDER BY id"
            ).fetchall()
            task_rows = self._db.execute(
                "SELECT t.job, t.block, t.task, t.state, t.attempt, t.failures, t.run_id, t.render, t.ready_time,"
                " t.start_time, t.output FROM tasks t JOIN jobs j ON j.id = t.job"
                " WHERE j.state NOT IN ('deleted', 'refused') ORDER BY t.job, t.block, t.task"
            ).fetchall()
            avoid_rows = self._db.execute(
                "SELECT job, block, render FROM avoids ORDER BY job, block, render"
            ).fetchall()
        avoids: dict[int, list[tuple[int, str]]] = {}
        for job, block, render in avoid_rows:
            avoids.setdefault(job, []).append((block, render))
        snaps: dict[int, list[TaskSnapshot]] = {}
        for job, block, task, state, attempt, failures, run_id, render, ready_time, start_time, output in task_rows:
            snaps.setdefault(job, []).append(
                TaskSnapshot(
                    block, task, state, attempt, failures, run_id, render, ready_time, start_time, _lines(output)
                )
            )
        out: list[RestoredJob] = []
        for job_id, data, user, submit_time, priority, paused in rows:
            try:
                spec = parse_job(json.loads(data), accepted=True)
            except (SpecError, ValueError) as exc:
                log.error("stored job spec unreadable; not restored", extra=fields(job=job_id, error=str(exc)))
                continue
            # the actions' lasting changes; upstream jobs deleted since are the registry's business (restoring)
            spec = msgspec.structs.replace(spec, priority=priority, paused=bool(paused))
            avoided = tuple(avoids.get(job_id, ()))
            out.append(RestoredJob(job_id, spec, user, submit_time, tuple(snaps.get(job_id, ())), avoided))
        return out

    def max_run_id(self) -> int:
        """The highest run id the store has seen (new ids must start above it)."""
        with self._reading() as db:
            (value,) = db.execute("SELECT COALESCE(MAX(run_id), 0) FROM tasks").fetchone()
        return int(value)

    def job_owner(self, job_id: int) -> str | None:
        """The owner of a job, or None if the store has no such job."""
        with self._reading() as db:
            row = db.execute("SELECT user FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else str(row[0])

    def jobs(self, user: str | None = None, include_deleted: bool = False) -> list[JobRow]:
        """Jobs in id order (of one user if given) with their task counts by state."""
        where = [] if include_deleted else ["state != 'deleted'", "state != 'refused'"]
        args: list[Any] = []
        if user is not None:
            where.append("user = ?")
            args.append(user)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        with self._reading() as db:
            rows = db.execute(
                "SELECT id, name, user, state, priority, paused, submit_time, tasks_total FROM jobs"
                f"{clause} ORDER BY id",
                args,
            ).fetchall()
            count_rows = db.execute(
                "SELECT job, state, COUNT(*) FROM tasks GROUP BY job, state"
            ).fetchall()
        counts: dict[int, dict[str, int]] = {}
        for job, state, n in count_rows:
            counts.setdefault(job, {})[state] = n
        out = []
        for job_id, name, owner, state, priority, paused, submit_time, total in rows:
            c = counts.get(job_id, {})
            c = {k: v for k, v in c.items() if k not in ("waiting", "ready")}
            c["pending"] = total - sum(c.values())
            out.append(JobRow(job_id, name, owner, state, priority, bool(paused), submit_time, total, c))
        return out

    def set_render_paused(self, name: str, paused: bool) -> bool:
        """Pause or resume the render ``name`` (written at once); False if the store knows no such render."""
        with self._lock:
            cursor = self._db.execute("UPDATE renders SET paused=? WHERE name=?", (int(paused), name))
            return cursor.rowcount > 0

    def render_paused(self, name: str) -> bool:
        """Whether an admin paused the render ``name`` (False for a render the store does not know)."""
        with self._reading() as db:
            row = db.execute("SELECT paused FROM renders WHERE name=?", (name,)).fetchone()
        return bool(row and row[0])

    def renders(self) -> list[dict[str, Any]]:
        """Every render seen, with its running task count (from the task rows)."""
        with self._reading() as db:
            rows = db.execute(
                "SELECT name, tags, capacity, max_tasks, memory_mb, cpus, state, paused, since, reason"
                " FROM renders ORDER BY name"
            ).fetchall()
            running = dict(
                db.execute(
                    "SELECT t.render, COUNT(*) FROM tasks t JOIN jobs j ON j.id = t.job"
                    " WHERE t.state = 'running' AND j.state NOT IN ('deleted', 'refused') GROUP BY t.render"
                ).fetchall()
            )
        return [
            {
                "name": name, "tags": json.loads(tags), "capacity": capacity, "max_tasks": max_tasks,
                "memory_mb": memory, "cpus": cpus, "state": "paused" if paused and state == "online" else state,
                "since": since, "reason": reason, "running": running.get(name, 0),
            }
            for name, tags, capacity, max_tasks, memory, cpus, state, paused, since, reason in rows
        ]

    # ---------------------------------------------------------------------------------------- runs
    def runs(self, job_id: int | None = None) -> list[RunRecord]:
        """The run log (of one job if given) as records, in insertion order."""
        sql = (
            "SELECT seq, job_id, job_name, user, block, task, frames, render, attempt, state, submission_time,"
            " ready_time, starting_time, finish_time FROM runs"
        )
        with self._reading() as db:
            if job_id is None:
                rows = db.execute(sql + " ORDER BY seq").fetchall()
            else:
                rows = db.execute(sql + " WHERE job_id=? ORDER BY seq", (job_id,)).fetchall()
        return [RunRecord(*row) for row in rows]

    def export_runs(self, path: Path, job_ids: Iterable[int] | None = None) -> int:
        """Write the run log as ``tasks.csv`` (the contract's columns and order); returns the row count."""
        from farmhand.output import write_tasks_csv

        records = self.runs()
        if job_ids is not None:
            wanted = set(job_ids)
            records = [r for r in records if r.job_id in wanted]
        return write_tasks_csv(path, records)

    # ---------------------------------------------------------------------------------------- users
    def add_user(self, name: str, admin: bool = False, replace: bool = False) -> str:
        """Create a user (or give an existing one a new token with ``replace``); returns the token, once."""
        # (a lone surrogate, which SQLite cannot store, is not printable either)
        if not name or len(name) > 100 or not name.isprintable() or any(c.isspace() for c in name):
            raise StoreError(f"user name: 1-100 printable characters without spaces (got {name[:100]!a})")
        token = new_token()
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM users WHERE name=?", (name,)).fetchone() is not None
            if exists and not replace:
                raise StoreError(f"user {name!r} exists (give --replace for a new token)")
            self._db.execute(
                "INSERT INTO users (name, admin, token_hash, created) VALUES (?, ?, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET admin=excluded.admin, token_hash=excluded.token_hash",
                (name, int(admin), hash_token(token), time.time()),
            )
        log.info("user token issued", extra=fields(user=name, admin=admin))
        return token

    def users(self) -> list[tuple[str, bool]]:
        """Every user's name and admin flag."""
        with self._reading() as db:
            return [(n, bool(a)) for n, a in db.execute("SELECT name, admin FROM users ORDER BY name")]

    def authenticate(self, token: str) -> Actor | None:
        """The user a token belongs to, or None."""
        if not token:
            return None
        with self._reading() as db:
            row = db.execute("SELECT name, admin FROM users WHERE token_hash=?", (hash_token(token),)).fetchone()
        return None if row is None else Actor(row[0], bool(row[1]))

    # ---------------------------------------------------------------------------------------- worker credentials
    def add_worker(self, name: str, replace: bool = False) -> str:
        """Enrol a worker under a render name (or give it a new credential with ``replace``); returns the
        credential, once. A worker presenting it may connect only under that name, and a live connection of
        that name is replaced only by a worker presenting it."""
        if not RENDER_NAME.fullmatch(name):
            raise StoreError(
                f"worker name: 1-128 of letters, digits and _.@+- not starting with .@+- (got {name[:130]!a})"
            )
        token = new_token()
        with self._lock:
            exists = self._db.execute("SELECT 1 FROM workers WHERE name=?", (name,)).fetchone() is not None
            if exists and not replace:
                raise StoreError(f"worker {name!r} is enrolled already (give --replace for a new credential)")
            self._db.execute(
                "INSERT INTO workers (name, token_hash, created) VALUES (?, ?, ?) ON CONFLICT (name)"
                " DO UPDATE SET token_hash=excluded.token_hash, created=excluded.created",
                (name, hash_token(token), time.time()),
            )
        log.info("worker credential issued", extra=fields(render=name))
        return token

    def remove_worker(self, name: str) -> bool:
        """Revoke a worker's credential; False if it had none."""
        with self._lock:
            gone = self._db.execute("DELETE FROM workers WHERE name=?", (name,)).rowcount > 0
        if gone:
            log.info("worker credential revoked", extra=fields(render=name))
        return gone

    def enrolled_workers(self) -> list[dict[str, Any]]:
        """The enrolled workers: name and when their credential was issued."""
        with self._reading() as db:
            rows = db.execute("SELECT name, created FROM workers ORDER BY name").fetchall()
        return [{"name": n, "created": c} for n, c in rows]

    def worker_for_token(self, token: str) -> str | None:
        """The render name a worker credential is bound to, or None."""
        if not token:
            return None
        with self._reading() as db:
            row = db.execute("SELECT name FROM workers WHERE token_hash=?", (hash_token(token),)).fetchone()
        return None if row is None else str(row[0])

    def has_users(self) -> bool:
        """Whether any user exists."""
        with self._reading() as db:
            return db.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None
