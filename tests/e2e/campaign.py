"""The fault and fuzz campaign against the production server, shared by the short e2e test and the soak.

:func:`run_campaign` starts a real ``farmhand server`` (a subprocess, SQLite store in a folder) and several
``farmhand worker`` processes on 127.0.0.1, submits a job whose every task appends ``S`` (start) and ``E``
(end) lines to a side-effect log, and while it runs:

- kills the server with SIGKILL several times (right after a task ended, when the next one is being handed
  out; every other time while the store's write lock is held from outside, as a stalled disk would hold the
  commits back) and restarts it on the same store and ports; kills workers (their process groups) with SIGKILL
  and restarts them under the same names; once the server and a worker die together, and the job's owner
  restarts that worker's task while the new server still waits for someone to reclaim its run;
- fuzzes the worker port: random bytes, huge length prefixes, invalid msgpack, wrong types, deep nesting,
  silent and half-sent connections, and two impostor Hellos (a new name claiming another render's running
  run; a live worker's name);
- attacks the client API: missing, bad and stale tokens, other users' actions, chunked, oversized, deeply
  nested and invalid bodies, and a flood of simultaneous connections;
- samples the server's resident memory.

Then it stops everything it started and judges the run from the side-effect log, the store (read-only) and the
server's logs: each of :data:`CHECKS` becomes a :class:`Check` with its evidence. Every wait is bounded; a
defect makes a check fail with evidence, never hang the campaign.

The side-effect log has one line per event, in the order they happened (each line is one ``O_APPEND`` write):
``S|E|X TIME RENDER JOB BLOCK TASK ATTEMPT RUN PID`` for a task's start, end and kill (SIGTERM trap), and
``K TIME RENDER`` written by the campaign once a killed worker's tasks are gone.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import json
import os
import random
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from farmhand.client import ApiClient, ApiError
from farmhand.core.messages import (
    PROTOCOL_VERSION,
    Assign,
    Handshake,
    HandshakeAccepted,
    Heartbeat,
    Hello,
    KillRun,
    Message,
    RenderInfo,
    RunningRun,
)
from farmhand.transport.codec import FrameBuffer, FrameError, worker_codec

#: every check the campaign makes, with what it means
CHECKS: Final[dict[str, str]] = {
    "job_done": "the job ends done within the time limit",
    "no_task_lost": "every task is done in the store and its command ran to its end at least once",
    "no_rerun_after_done": "no task starts again after a done run of it was committed",
    "one_task_at_a_time": "no capacity-1 worker runs two tasks at once (side-effect log intervals)",
    "attempts_increase": "each new run of a task has a higher attempt (no two runs share an attempt number)",
    "server_log_clean": "no traceback or asyncio fatal error in the server's logs; the last server stops on SIGTERM",
    "server_memory": "the server's resident memory stays under the bound",
    "worker_fuzz_closed": "every fuzzed worker connection is closed by the server with its 'closing connection' "
    "warning",
    "impostor_new_name": "a Hello under a new name listing another render's running run takes nothing over",
    "impostor_live_name": "a Hello under a live worker's name takes over none of its runs and gets no work",
    "api_tokens": "missing, wrong and replaced tokens are answered 401 (a malformed header 400 or 431)",
    "api_rights": "another user's actions on a job, and admin requests by a non-admin, are answered 403",
    "api_bodies": "chunked, oversized, deeply nested and invalid bodies are read or refused with a 4xx, never "
    "a 5xx or a hang",
    "api_concurrency": "simultaneous connections are each answered 200 or 503 in time",
    "faults_landed": "every planned kill happened mid-job with tasks running",
}

RENDER_PREFIX: Final = "cw"
BLOCK_NAME: Final = "work"
SERVER_READY: Final = "server ready"
CLOSING: Final = re.compile(r'msg="closing connection".*?\bpeer=(\S+)(?:.*?\breason=("(?:[^"\\]|\\.)*"|\S+))?')
REQUEST_LIMIT_S: Final = 10.0  # an API answer later than this is a hang
SYN_RETRY_S: Final = 0.9  # a connect this slow waited for the kernel's first SYN retransmission (1 s)
HANDSHAKE_DEADLINE_S: Final = 10.0  # the server's handshake timeout (not configurable on its command line)

#: the task: a SIGTERM trap, then the start line, a sleep, the end line (bash for $EPOCHREALTIME)
TASK_SCRIPT: Final = (
    'm="$FARMHAND_RENDER $FARMHAND_JOB_ID $FARMHAND_BLOCK $FARMHAND_TASK $FARMHAND_ATTEMPT $FARMHAND_RUN_ID $$"\n'
    "trap 'echo \"X $EPOCHREALTIME $m\" >> \"$1\"; exit 143' TERM\n"
    'echo "S $EPOCHREALTIME $m" >> "$1"\n'
    'sleep "$2"\n'
    'echo "E $EPOCHREALTIME $m" >> "$1"\n'
)


# ================================================================================================ config, report
@dataclass
class CampaignConfig:
    """What a campaign does: its size, its faults, its attacks and its bounds."""

    folder: Path
    tasks: int = 240
    workers: int = 4
    task_sleep: float = 0.5
    server_kills: int = 4
    worker_kills: int = 2
    attacks: bool = True
    flood: int = 200
    seed: int = 0
    heartbeat_s: float = 0.5
    zombie_s: float = 5.0
    reclaim_s: float = 3.0
    rss_limit_mib: float = 500.0
    job_timeout_s: float = 240.0
    say: Callable[[str], None] = field(default=lambda _line: None, repr=False)


@dataclass
class Check:
    """One check's verdict and the evidence for it (the first lines that show a failure, or a summary)."""

    name: str
    ok: bool
    evidence: list[str]

    def describe(self, most: int = 25) -> str:
        """The verdict, the meaning and the evidence as text."""
        lines = [f"{self.name}: {'ok' if self.ok else 'FAILED'} ({CHECKS[self.name]})"]
        lines += [f"    {e}" for e in self.evidence[:most]]
        if len(self.evidence) > most:
            lines.append(f"    ... and {len(self.evidence) - most} more")
        return "\n".join(lines)


@dataclass
class CampaignReport:
    """What a campaign found: a :class:`Check` per name of :data:`CHECKS`, its timeline and its duration."""

    config: CampaignConfig
    checks: dict[str, Check]
    timeline: list[str]
    seconds: float

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks.values() if not c.ok]

    def describe(self) -> str:
        """Every check with its evidence."""
        head = f"campaign in {self.config.folder}: {self.config.tasks} tasks, {self.seconds:.0f} s"
        return "\n".join([head, *(c.describe() for c in self.checks.values())])


class CampaignError(Exception):
    """The campaign could not set itself up (a server that does not start, a port taken)."""


# ================================================================================================ processes
def _proc_stat(pid: int) -> tuple[str, int] | None:
    """A process's state letter and parent pid from /proc, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    rest = text[text.rfind(")") + 2 :].split()
    return rest[0], int(rest[1])


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie does not)."""
    stat = _proc_stat(pid)
    return stat is not None and stat[0] not in "ZX"


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _proc_stat(int(entry))
            if stat is not None and stat[1] == pid:
                found.append(int(entry))
    return found


def rss_kib(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB, or None."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` runs; the ones still running after ``timeout``."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = [p for p in left if alive(p)]
    return left


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


def _stop(proc: subprocess.Popen[bytes], grace: float) -> int | None:
    """SIGTERM to the process group, SIGKILL after ``grace`` s; the exit code if it stopped on SIGTERM."""
    if proc.poll() is not None:
        return proc.returncode
    _signal_group(proc, signal.SIGTERM)
    try:
        return proc.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(proc, signal.SIGKILL)
        proc.wait(10)
        return None


class Farmhouse:
    """The processes of one campaign: server incarnations and workers, their logs, the ports, the tokens."""

    def __init__(self, config: CampaignConfig) -> None:
        self.config = config
        self.folder = config.folder
        self.effects = self.folder / "effects.log"
        self.db = self.folder / "farmhand.db"
        self.server: subprocess.Popen[bytes] | None = None
        self.server_logs: list[Path] = []
        self.workers: dict[str, subprocess.Popen[bytes]] = {}
        self.port = 0
        self.http_port = 0
        self.farm_token = ""
        self.admin_token = ""
        self.started = time.monotonic()
        self.timeline: list[str] = []
        self.findings: list[str] = []  # harness observations that belong to no single check
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("FARMHAND_")}
        # unbuffered logs; the workers' name locks and instance keys stay in the campaign's folder
        self.env.update(PYTHONUNBUFFERED="1", XDG_STATE_HOME=str(self.folder / "state"))

    def note(self, text: str) -> None:
        """Add ``text`` to the timeline (and say it)."""
        line = f"{time.monotonic() - self.started:7.1f}s {text}"
        self.timeline.append(line)
        self.config.say(line)

    def _spawn(self, argv: list[str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("ab") as out:
            return subprocess.Popen(argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env=self.env,
                                    cwd=self.folder, start_new_session=True)

    # -------------------------------------------------------------------------------------------- server
    def start_server(self) -> None:
        """Start a server incarnation on the store (same ports after the first) and wait until it is ready."""
        c = self.config
        log = self.folder / f"server-{len(self.server_logs) + 1}.log"
        self.server_logs.append(log)
        argv = [
            sys.executable, "-m", "farmhand.server", "--db", str(self.db), "--port", str(self.port),
            "--http-port", str(self.http_port), "--heartbeat", str(c.heartbeat_s), "--zombie", str(c.zombie_s),
            "--reclaim", str(c.reclaim_s), "--policy", "fifo",
        ]
        proc = self._spawn(argv, log)
        self.server = proc
        deadline = time.monotonic() + 30
        while True:
            text = log.read_text(errors="replace")
            ready = next((line for line in text.splitlines() if f'msg="{SERVER_READY}"' in line), None)
            if ready is not None:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                _stop(proc, 5)
                raise CampaignError(f"server incarnation {len(self.server_logs)} did not start:\n{text[-2000:]}")
            time.sleep(0.05)
        if not self.port:
            self.port = int(re.search(r"workers=\S+:(\d+)", ready).group(1))  # type: ignore[union-attr]
            self.http_port = int(re.search(r"api=\S+:(\d+)", ready).group(1))  # type: ignore[union-attr]
            self.farm_token = (self.folder / "farm.token").read_text().strip()
            self.admin_token = (self.folder / "admin.token").read_text().strip()
        self.note(f"server {len(self.server_logs)} ready (pid {proc.pid})")

    def kill_server(self, delay: float, stall: float = 0.0) -> None:
        """SIGKILL the server's process group ``delay`` s after a task's end line (within 3 s): the moment the
        server hands that worker its next task. With ``stall``, the store's write lock is held from outside
        for that long first (as a disk that stalls would hold commits back) and the kill comes during it."""
        assert self.server is not None
        held: sqlite3.Connection | None = None
        if stall:
            try:
                held = sqlite3.connect(self.db, timeout=5, isolation_level=None)
                held.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                self.findings.append(f"could not stall the store: {exc}")
                held = None
        try:
            self._await_task_end(3.0)
            time.sleep(delay + (stall if held is not None else 0.0))
            _signal_group(self.server, signal.SIGKILL)
            self.server.wait(10)
        finally:
            if held is not None:
                held.rollback()
                held.close()
        when = f"during a {stall:.2f} s store stall" if held else f"{delay * 1000:.0f} ms after a task ended"
        self.note(f"server {len(self.server_logs)} killed (SIGKILL {when})")

    def _await_task_end(self, limit: float) -> None:
        """Return when a task's end line is appended to the side-effect log (or after ``limit`` s)."""
        size = self.effects.stat().st_size
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            grown = self.effects.stat().st_size
            if grown > size:
                with self.effects.open("rb") as f:
                    f.seek(size)
                    fresh = b"\n" + f.read(grown - size)
                size = grown
                if b"\nE " in fresh:
                    return
            time.sleep(0.001)

    # -------------------------------------------------------------------------------------------- workers
    def start_worker(self, name: str) -> None:
        """Start (or restart) worker ``name``, capacity 1."""
        argv = [
            sys.executable, "-m", "farmhand.workers.worker", "--server", f"127.0.0.1:{self.port}", "--name", name,
            "--token-file", str(self.folder / "farm.token"), "--capacity", "1", "--kill-grace", "1",
            "--reconnect-max", "0.5", "--progress-interval", "1",
        ]
        self.workers[name] = self._spawn(argv, self.folder / f"worker-{name}.log")

    def kill_worker(self, name: str) -> list[Mark]:
        """SIGKILL worker ``name``'s process group, wait until its tasks are gone too, mark it in the log; the
        runs it had."""
        proc = self.workers[name]
        tasks = children(proc.pid)
        _signal_group(proc, signal.SIGKILL)
        proc.wait(10)
        time.sleep(0.05)
        runs = open_runs(read_marks(self.effects)).get(name, [])
        tasks += [m.pid for m in runs]
        left = _wait_gone(tasks, 5)
        if left:
            self.findings.append(f"tasks {left} of worker {name} outlived it by 5 s (PR_SET_PDEATHSIG?)")
            for pid in left:
                self.kill_task_group(pid)
            _wait_gone(left, 5)
        append_line(self.effects, f"K {time.time():.6f} {name}")
        self.note(f"worker {name} killed (SIGKILL to its group; {len(set(tasks))} task process(es) gone)")
        return runs

    def kill_task_group(self, pid: int) -> None:
        """SIGKILL the process group of a task of this campaign (checked by its command line)."""
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if str(self.effects).encode() in cmdline:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)

    def stop_all(self) -> int | None:
        """Stop every worker, then the server (SIGTERM, then SIGKILL), then any task left; the server's exit
        code if it stopped on SIGTERM."""
        for proc in self.workers.values():
            if proc.poll() is None:
                _signal_group(proc, signal.SIGTERM)
        for proc in self.workers.values():
            _stop(proc, 8)
        code = _stop(self.server, 15) if self.server is not None else None
        for mark in read_marks(self.effects):
            if mark.kind == "S" and alive(mark.pid):
                self.kill_task_group(mark.pid)
        return code

    # -------------------------------------------------------------------------------------------- memory
    def sample_memory(self, stop: threading.Event, samples: list[int]) -> None:
        """Append the server's VmRSS (KiB) every 0.25 s until ``stop``."""
        while not stop.wait(0.25):
            proc = self.server
            if proc is not None and proc.poll() is None:
                value = rss_kib(proc.pid)
                if value is not None:
                    samples.append(value)


# ================================================================================================ side effects
@dataclass(frozen=True)
class Mark:
    """One line of the side-effect log; ``line`` is its position."""

    kind: str
    ts: float
    render: str
    job: int = 0
    block: int = 0
    task: int = 0
    attempt: int = 0
    run: int = 0
    pid: int = 0
    line: int = 0

    @property
    def key(self) -> tuple[int, int, int]:
        """The task: (job, block, task)."""
        return self.job, self.block, self.task

    def __str__(self) -> str:
        return (f"line {self.line}: {self.kind} {self.render} job {self.job} task {self.task} "
                f"attempt {self.attempt} run {self.run}")


def append_line(path: Path, line: str) -> None:
    """Append one line in one write."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def read_marks(path: Path) -> list[Mark]:
    """The side-effect log's lines, in order (a torn or unknown line is skipped)."""
    if not path.exists():
        return []
    marks = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        parts = line.split()
        try:
            if len(parts) == 3 and parts[0] == "K":
                marks.append(Mark("K", float(parts[1]), parts[2], line=number))
            elif len(parts) == 9 and parts[0] in ("S", "E", "X"):
                kind, ts, render, *numbers = parts
                job, block, task, attempt, run, pid = map(int, numbers)
                marks.append(Mark(kind, float(ts), render, job, block, task, attempt, run, pid, number))
        except ValueError:
            continue
    return marks


def open_runs(marks: Sequence[Mark]) -> dict[str, list[Mark]]:
    """The runs started and not yet ended, killed or cleared by a worker kill, by render."""
    running: dict[str, dict[int, Mark]] = collections.defaultdict(dict)
    for m in marks:
        if m.kind == "S":
            running[m.render][m.run] = m
        elif m.kind in ("E", "X"):
            running[m.render].pop(m.run, None)
        elif m.kind == "K":
            running[m.render].clear()
    return {r: list(runs.values()) for r, runs in running.items() if runs}


def task_command(effects: Path, sleep: float) -> list[str]:
    """The argv of a campaign task."""
    return ["bash", "-c", TASK_SCRIPT, "campaign-task", str(effects), f"{sleep:g}"]


def job_spec(config: CampaignConfig, effects: Path) -> dict[str, Any]:
    """The campaign's job: one block of ``tasks`` tasks, only on the campaign's workers, retried on loss."""
    return {
        "name": "campaign", "hosts_mask": f"{RENDER_PREFIX}[0-9]+",
        "blocks": [{
            "name": BLOCK_NAME, "command": task_command(effects, config.task_sleep),
            "frames": {"first": 1, "last": config.tasks}, "retries": 50, "avoid_render_after": 1000,
        }],
    }


# ================================================================================================ worker port
def _mp(obj: Any) -> bytes:
    return msgspec.msgpack.encode(obj)


def _frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


def _nested(depth: int) -> bytes:
    """``depth`` msgpack arrays, each holding the next, the last empty."""
    return b"\x91" * depth + b"\x90"


@dataclass
class FuzzOutcome:
    """What one fuzzing connection saw: its local address, whether the server closed it, and when."""

    case: str
    peer: str = ""
    closed: bool = False
    seconds: float = 0.0
    error: str = ""
    warning: str | None = None


@dataclass
class ImpostorOutcome:
    """An impostor's Hello: whom it targeted, the victim's runs at that moment, what the server sent it."""

    case: str
    name: str
    victim: str
    runs: list[Mark]
    received: list[str] = field(default_factory=list)
    assigned: list[int] = field(default_factory=list)
    error: str = ""


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=5)


def _peer(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"{host}:{port}"


def _read_messages(sock: socket.socket, seconds: float,
                   until: Callable[[Message], bool] | None = None) -> list[Message]:
    """Messages the server sends within ``seconds`` (or until one satisfies ``until``, or the close)."""
    buffer = FrameBuffer(worker_codec())
    got: list[Message] = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except (TimeoutError, OSError):
            break
        if not data:
            break
        try:
            new = buffer.feed(data)
        except FrameError:
            break
        got += new
        if until is not None and any(until(m) for m in new):
            break
    return got


def _handshake(sock: socket.socket, token: str) -> None:
    sock.sendall(worker_codec().encode(Handshake(1, PROTOCOL_VERSION, token)))
    got = _read_messages(sock, 5, lambda m: isinstance(m, HandshakeAccepted))
    if not any(isinstance(m, HandshakeAccepted) for m in got):
        raise OSError(f"handshake not accepted (got {[type(m).__name__ for m in got]})")


def _await_close(sock: socket.socket, limit: float) -> bool:
    """Read and discard until the server closes (True) or ``limit`` seconds pass (False)."""
    deadline = time.monotonic() + limit
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except TimeoutError:
            return False
        except OSError:
            return True  # reset: closed too
    return False


def fuzz_cases(token: str, rng: random.Random) -> dict[str, Callable[[socket.socket], None]]:
    """The misbehaving connections: each sends its bytes on a fresh connection (the server must close it)."""
    codec = worker_codec()
    deep_handshake = (
        b"\x85" + _mp("type") + _mp("Handshake") + _mp("id") + _mp(1) + _mp("version") + _mp(PROTOCOL_VERSION)
        + _mp("token") + _mp(token) + _mp("padding") + _nested(5000)
    )
    deep_hello = b"\x83" + _mp("type") + _mp("Hello") + _mp("id") + _mp(2) + _mp("padding") + _nested(5000)
    bad_types = _mp({"type": "Handshake", "id": "one", "version": [1], "token": 7})
    other_name = codec.encode(Hello(2, RenderInfo("fz-intruder"))) + codec.encode(Heartbeat(3, f"{RENDER_PREFIX}1"))

    def send(*chunks: bytes, after_handshake: bool = False) -> Callable[[socket.socket], None]:
        def act(sock: socket.socket) -> None:
            if after_handshake:
                _handshake(sock, token)
            for chunk in chunks:
                sock.sendall(chunk)

        return act

    return {
        "random bytes": send(rng.randbytes(512)),
        "random body under a valid length": send(_frame(rng.randbytes(300))),
        "huge length prefix": send(b"\xff\xff\xff\xff" + rng.randbytes(16)),
        "huge length prefix after the handshake": send(b"\x7f\xff\xff\xff", after_handshake=True),
        "empty frame": send(b"\x00\x00\x00\x00"),
        "invalid msgpack": send(_frame(b"\xc1\xc1\xc1")),
        "truncated msgpack": send(_frame(b"\x85\xa4type")),
        "wrong field types": send(_frame(bad_types)),
        "unknown message type": send(_frame(_mp({"type": "Shutdown", "id": 1}))),
        "not a map": send(_frame(_mp([1, 2, 3]))),
        "5000 nested arrays in the first frame": send(_frame(deep_handshake)),
        "5000 nested arrays after the handshake": send(_frame(deep_hello), after_handshake=True),
        "a server message from a worker": send(codec.encode(KillRun(2, 1, 1, "x")), after_handshake=True),
        "Hello before the handshake": send(codec.encode(Hello(1, RenderInfo("fz-early")))),
        "wrong farm token": send(codec.encode(Handshake(1, PROTOCOL_VERSION, "wrong-" + rng.randbytes(8).hex()))),
        "silent connection": send(),
        "half a frame": send(_frame(rng.randbytes(200))[:100]),
        "half a frame after the handshake": send(codec.encode(Hello(2, RenderInfo("fz-half")))[:20],
                                                 after_handshake=True),
        "a report in another render's name": send(other_name, after_handshake=True),
    }


def fuzz_worker_port(port: int, token: str, rng: random.Random) -> list[FuzzOutcome]:
    """Every fuzz case on its own connection, all at once; each must be closed by the server in time."""
    cases = fuzz_cases(token, rng)
    outcomes = {name: FuzzOutcome(name) for name in cases}

    def one(name: str, act: Callable[[socket.socket], None]) -> None:
        out = outcomes[name]
        start = time.monotonic()
        try:
            with _connect(port) as sock:
                out.peer = _peer(sock)
                with contextlib.suppress(OSError):  # the server may close before all is sent
                    act(sock)
                out.closed = _await_close(sock, HANDSHAKE_DEADLINE_S + 5)
        except OSError as exc:
            out.error = f"{type(exc).__name__}: {exc}"
        out.seconds = time.monotonic() - start

    threads = [threading.Thread(target=one, args=item, daemon=True) for item in cases.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(HANDSHAKE_DEADLINE_S + 15)
    return list(outcomes.values())


def impostor(port: int, token: str, case: str, name: str, victim: str, runs: list[Mark],
             listed: Sequence[RunningRun] = (), listen_s: float = 2.0) -> ImpostorOutcome:
    """Authenticate with the farm token, say Hello as ``name`` listing ``listed``, listen, leave."""
    out = ImpostorOutcome(case, name, victim, runs)
    try:
        with _connect(port) as sock:
            _handshake(sock, token)
            sock.sendall(worker_codec().encode(Hello(2, RenderInfo(name), running=tuple(listed))))
            for msg in _read_messages(sock, listen_s):
                run_id = getattr(msg, "run_id", None)
                out.received.append(type(msg).__name__ + (f"(run {run_id})" if run_id is not None else ""))
                if isinstance(msg, Assign):
                    out.assigned.append(msg.run_id)
    except OSError as exc:
        out.error = f"{type(exc).__name__}: {exc}"
    return out


def impostors(house: Farmhouse) -> list[ImpostorOutcome]:
    """The two impostor Hellos, each against a live worker with a task running (waits up to 10 s for one)."""
    found: list[ImpostorOutcome] = []
    used: set[str] = set()
    for case in ("new name", "live name"):
        deadline = time.monotonic() + 10
        victim_runs: list[Mark] = []
        while time.monotonic() < deadline:
            running = {r: runs for r, runs in open_runs(read_marks(house.effects)).items()
                       if r.startswith(RENDER_PREFIX) and r not in used}
            if running:
                victim, victim_runs = max(running.items(), key=lambda kv: max(m.line for m in kv[1]))
                break
            time.sleep(0.05)
        else:
            house.findings.append(f"impostor ({case}): no worker had a task running within 10 s")
            continue
        used.add(victim)
        if case == "new name":
            run = max(victim_runs, key=lambda m: m.line)
            listed = [RunningRun(run.run, run.job, run.block, run.task, run.attempt)]
            found.append(impostor(house.port, house.farm_token, case, "imp-new", victim, [run], listed))
        else:
            found.append(impostor(house.port, house.farm_token, case, victim, victim, victim_runs))
        house.note(f"impostor ({case}) against {victim}: received {found[-1].received or 'nothing'}")
    return found


# ================================================================================================ client API
@dataclass
class HttpOutcome:
    """One raw HTTP exchange: the status (None if no answer), the body's start, the time, what went wrong."""

    case: str
    group: str
    expect: frozenset[int]
    status: int | None = None
    body: str = ""
    seconds: float = 0.0
    error: str = ""
    may_close: bool = False  # a silent client may be dropped without an answer
    verdict: str = ""  # set when the answer needs a further look (a chunked body that was read)

    @property
    def ok(self) -> bool:
        """Answered as expected in time (or dropped in time, where that is allowed)."""
        if self.verdict:
            return False
        if self.status is None:
            return self.may_close and not self.error.startswith("timed out")
        return self.status in self.expect

    def __str__(self) -> str:
        got = f"HTTP {self.status} {self.body[:160]!r}" if self.status is not None else self.error or "no answer"
        extra = f"; {self.verdict}" if self.verdict else ""
        return f"{self.case}: expected {sorted(self.expect)}, got {got} after {self.seconds:.1f} s{extra}"


def http_request(method: str, path: str, token: str | bytes | None, body: bytes = b"", *,
                 content_type: str = "application/json", length: str | None = None, chunked: bool = False,
                 auth: bytes | None = None) -> bytes:
    """A raw HTTP/1.1 request (``Connection: close``); ``length`` overrides Content-Length."""
    head = [f"{method} {path} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    if auth is not None:
        head.append(b"Authorization: " + auth)
    elif token is not None:
        head.append(b"Authorization: Bearer " + (token if isinstance(token, bytes) else token.encode()))
    if body or chunked or length is not None:
        head.append(f"Content-Type: {content_type}".encode())
    if chunked:
        head.append(b"Transfer-Encoding: chunked")
        pieces = [body[i : i + 7] for i in range(0, len(body), 7)]
        body = b"".join(f"{len(p):x}\r\n".encode() + p + b"\r\n" for p in pieces) + b"0\r\n\r\n"
    elif length is not None:
        head.append(f"Content-Length: {length}".encode())
    elif body:
        head.append(f"Content-Length: {len(body)}".encode())
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class Exchange:
    """One raw HTTP exchange: the status (None if no answer), the body, what went wrong, and how long the
    connection took to open and the whole exchange took."""

    status: int | None
    body: bytes
    error: str
    connect_s: float
    seconds: float


def http_exchange(port: int, request: bytes, limit: float = REQUEST_LIMIT_S) -> Exchange:
    """Send ``request`` and read the answer (to its Content-Length, or until the server closes) within ``limit``
    seconds."""
    start = time.monotonic()
    deadline = start + limit
    data = b""
    error = ""
    connect_s = -1.0
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=limit) as sock:
            connect_s = time.monotonic() - start
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(request)
            while not _complete(data):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
    except TimeoutError:
        error = f"timed out after {limit:g} s"
    except OSError as exc:
        error = f"{type(exc).__name__}" + (" before any answer" if not data else " while reading the answer")
    status = _parse_status(data)
    if status is None and not error:
        error = "closed without an answer"
    return Exchange(status, data.partition(b"\r\n\r\n")[2], error, connect_s, time.monotonic() - start)


def _complete(data: bytes) -> bool:
    """Whether ``data`` holds a whole response with a Content-Length."""
    head, sep, body = data.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(sep) and match is not None and len(body) >= int(match.group(1))


def _parse_status(data: bytes) -> int | None:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(match.group(1)) if match else None


@dataclass
class Users:
    """The users of the API attacks: alice owns the job, bob attacks it, a replaced user's old token."""

    alice: str
    bob: str
    stale: str


def make_users(house: Farmhouse) -> Users:
    """Create alice and bob (not admins) and a user whose first token is replaced at once."""
    admin = ApiClient(f"http://127.0.0.1:{house.http_port}", house.admin_token, timeout=10)
    stale = admin.add_user("mallory")
    admin.add_user("mallory", replace=True)
    return Users(admin.add_user("alice"), admin.add_user("bob"), stale)


def api_cases(users: Users, job: int, rng: random.Random) -> list[tuple[str, str, frozenset[int], bytes, bool]]:
    """(case, group, expected statuses, raw request, whether a silent close is acceptable) of each attack."""
    unauthorized, forbidden, bad = frozenset({401}), frozenset({403}), frozenset({400})
    probe = json.dumps({"name": "campaign-chunked", "paused": True,
                        "blocks": [{"name": "b", "command": "true", "tasks": [{"name": "t"}]}]}).encode()
    deep_json = b"[" * 100_000 + b"]" * 100_000
    deep_action = b'{"block": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
    foreign = json.dumps({"name": "x", "user": "alice",
                          "blocks": [{"name": "b", "command": "true", "tasks": [{"name": "t"}]}]}).encode()
    r = http_request
    jp = f"/api/jobs/{job}"
    cases: list[tuple[str, str, frozenset[int], bytes, bool]] = [
        ("no Authorization header", "tokens", unauthorized, r("GET", "/api/whoami", None), False),
        ("empty bearer token", "tokens", unauthorized, r("GET", "/api/whoami", ""), False),
        ("wrong token", "tokens", unauthorized, r("GET", "/api/whoami", rng.randbytes(32).hex()), False),
        ("Basic credentials", "tokens", unauthorized, r("GET", "/api/whoami", None, auth=b"Basic YWxpY2U6eA=="),
         False),
        ("a replaced user's old token", "tokens", unauthorized, r("GET", "/api/whoami", users.stale), False),
        ("a 16 KiB token", "tokens", frozenset({401, 431}), r("GET", "/api/whoami", "a" * 16384), False),
        ("a token of control and non-ASCII bytes", "tokens", frozenset({400, 401}),
         r("GET", "/api/whoami", b"\x01\xff\xfe" + users.alice.encode()[:10]), False),
        ("submission with a wrong token", "tokens", unauthorized,
         r("POST", "/api/jobs", "0" * 64, probe), False),
    ]
    for action, body in (("pause", b"{}"), ("resume", b"{}"), ("restart", b"{}"), ("skip", b"{}"),
                         ("priority", b'{"value": 1}')):
        cases.append((f"another user's {action}", "rights", forbidden, r("POST", f"{jp}/{action}", users.bob, body),
                      False))
    cases += [
        ("another user's submission as alice", "rights", forbidden, r("POST", "/api/jobs", users.bob, foreign), False),
        ("a render pause by a non-admin", "rights", forbidden,
         r("POST", f"/api/renders/{RENDER_PREFIX}1/pause", users.bob, b"{}"), False),
        ("a user added by a non-admin", "rights", forbidden,
         r("POST", "/api/admin/users", users.bob, b'{"name": "eve", "admin": true}'), False),
        ("the log level set by a non-admin", "rights", forbidden,
         r("POST", "/api/admin/log-level", users.bob, b'{"level": "debug"}'), False),
        ("another user's DELETE", "rights", forbidden, r("DELETE", jp, users.bob), False),
        ("another user's delete action", "rights", forbidden, r("POST", f"{jp}/delete", users.bob, b"{}"), False),
        # bodies: a chunked body must be read (200, checked after) or refused as such (411), never taken as empty
        ("chunked job submission", "bodies", frozenset({200, 411}),
         r("POST", "/api/jobs", users.alice, probe, chunked=True), False),
        ("chunked action body", "bodies", frozenset({200, 411}),
         r("POST", f"{jp}/priority", users.alice, b'{"value": 100}', chunked=True), False),
        ("9 MiB body (first 64 KiB sent)", "bodies", frozenset({413}),
         r("POST", "/api/jobs", users.alice, b"[" * 65536, length=str(9 << 20)), False),
        ("Content-Length of 10^12", "bodies", frozenset({413}),
         r("POST", "/api/jobs", users.alice, length=str(10**12)), False),
        ("JSON nested 100,000 deep", "bodies", bad, r("POST", "/api/jobs", users.alice, deep_json), False),
        ("YAML nested 100,000 deep", "bodies", bad,
         r("POST", "/api/jobs", users.alice, deep_json, content_type="application/yaml"), False),
        ("action body nested 50,000 deep", "bodies", bad, r("POST", f"{jp}/pause", users.alice, deep_action), False),
        ("invalid JSON job", "bodies", bad, r("POST", "/api/jobs", users.alice, b'{"name": "x", "blocks": ['), False),
        ("invalid JSON action body", "bodies", bad, r("POST", f"{jp}/pause", users.alice, b'{"block":'), False),
        ("body not UTF-8", "bodies", bad, r("POST", "/api/jobs", users.alice, b'{"name": "\xff\xfe"}'), False),
        ("action body not an object", "bodies", bad, r("POST", f"{jp}/pause", users.alice, b"[1, 2]"), False),
        ("job of wrong types", "bodies", bad, r("POST", "/api/jobs", users.alice, b'{"name": 5, "blocks": "x"}'),
         False),
        ("a 20,000-digit number", "bodies", bad,
         r("POST", "/api/jobs", users.alice, b'{"name": "x", "priority": ' + b"9" * 20000 + b"}"), False),
        ("Content-Length not a number", "bodies", bad, r("POST", "/api/jobs", users.alice, probe, length="abc"),
         False),
        ("negative Content-Length", "bodies", frozenset({400, 411}),
         r("POST", "/api/jobs", users.alice, probe, length="-5"), False),
        ("body shorter than its Content-Length, then silence", "bodies", frozenset({400, 408}),
         r("POST", "/api/jobs", users.alice, probe[:10], length="1000"), True),
    ]
    return cases


def attack_api(house: Farmhouse, users: Users, job: int, rng: random.Random) -> list[HttpOutcome]:
    """Every API attack in turn (a 503 is retried twice); a read chunked body is checked for its effect."""
    outcomes = []
    alice = ApiClient(f"http://127.0.0.1:{house.http_port}", users.alice, timeout=10)
    for case, group, expect, request, may_close in api_cases(users, job, rng):
        out = HttpOutcome(case, group, expect, may_close=may_close)
        for _ in range(3):
            got = http_exchange(house.http_port, request)
            out.status, out.error, out.seconds = got.status, got.error, got.seconds
            out.body = got.body.decode("utf-8", "replace").strip()
            if got.status != 503:
                break
            time.sleep(1)
        if case.startswith("chunked") and out.status == 200:
            out.verdict = _chunked_effect(alice, case, job, out.body)
        outcomes.append(out)
    return outcomes


def _chunked_effect(alice: ApiClient, case: str, job: int, body: str) -> str:
    """'' if the chunked request did what its body says; otherwise what went wrong."""
    try:
        jobs = {j["id"]: j for j in alice.jobs()}
        if case == "chunked job submission":
            ids = json.loads(body).get("jobs", [])
            names = [jobs[i]["name"] for i in ids if i in jobs]
            return "" if names == ["campaign-chunked"] else f"answered 200 but the jobs made are {names}"
        priority = jobs[job]["priority"]
        return "" if priority == 100 else f"answered 200 but the job's priority is {priority}, not 100"
    except (ApiError, ValueError, KeyError) as exc:
        return f"answered 200 but the effect could not be read: {exc}"


def flood_api(port: int, token: str, count: int) -> list[Exchange]:
    """``count`` connections at once, each asking whoami."""
    request = http_request("GET", "/api/whoami", token)
    barrier = threading.Barrier(count)
    results = [Exchange(None, b"", "not run", -1.0, 0.0)] * count

    def one(i: int) -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(30)
        results[i] = http_exchange(port, request)

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(REQUEST_LIMIT_S + 35)
    return results


# ================================================================================================ the store, logs
@dataclass
class Stored:
    """What the store holds at the end (read-only): the job's state, its task rows, every run record."""

    job_state: str = "?"
    tasks: dict[tuple[int, int], tuple[str, int, str]] = field(default_factory=dict)  # (block, task) -> state...
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""


def read_store(db: Path, job: int) -> Stored:
    """Open the SQLite store read-only and read the job, its tasks and all runs."""
    out = Stored()
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        out.error = str(exc)
        return out
    try:
        con.row_factory = sqlite3.Row
        row = con.execute("SELECT state FROM jobs WHERE id=?", (job,)).fetchone()
        out.job_state = row["state"] if row else "missing"
        for t in con.execute("SELECT block, task, state, attempt, render FROM tasks WHERE job=?", (job,)):
            out.tasks[(t["block"], t["task"])] = (t["state"], t["attempt"], t["render"])
        out.runs = [dict(r) for r in con.execute("SELECT * FROM runs ORDER BY seq")]
    except sqlite3.Error as exc:
        out.error = str(exc)
    finally:
        con.close()
    return out


def tracebacks(paths: Iterable[Path]) -> list[str]:
    """Each traceback or asyncio fatal error in the logs: the record it belongs to and the exception, counted."""
    found: collections.Counter[str] = collections.Counter()
    for path in paths:
        lines = path.read_text(errors="replace").splitlines() if path.exists() else []
        for i, line in enumerate(lines):
            if "Traceback (most recent call last)" in line:
                head = next((lines[j] for j in range(i - 1, max(i - 6, -1), -1)
                             if lines[j] and not lines[j].startswith(("protocol:", "transport:", " ", "\t"))), "")
                exc = next((x for x in lines[i + 1 : i + 300] if x and not x.startswith((" ", "\t"))), "")
                found[f"{path.name}: {_strip_time(head)[:200]} -> {exc[:200]}"] += 1
            elif "Fatal error" in line and not any("Traceback" in x for x in lines[i + 1 : i + 6]):
                found[f"{path.name}: {_strip_time(line)[:200]}"] += 1
    return [f"{text} (x{n})" for text, n in found.items()]


def _strip_time(line: str) -> str:
    return re.sub(r"^\S+Z ", "", line)


def closing_warnings(paths: Iterable[Path]) -> dict[str, str]:
    """peer -> reason of every 'closing connection' warning in the logs."""
    found = {}
    for path in paths:
        if path.exists():
            for match in CLOSING.finditer(path.read_text(errors="replace")):
                found[match.group(1)] = (match.group(2) or "").strip('"')
    return found


# ================================================================================================ the checks
def _by_task(marks: Sequence[Mark], kind: str) -> dict[tuple[int, int, int], list[Mark]]:
    out: dict[tuple[int, int, int], list[Mark]] = collections.defaultdict(list)
    for m in marks:
        if m.kind == kind:
            out[m.key].append(m)
    return out


def check_job_done(final: tuple[str, float] | None, stored: Stored, timeout: float) -> Check:
    """The job reached done (seen on the API) and the store says so."""
    ev = [f"API: {final[0]!r} after {final[1]:.0f} s" if final else f"API: not done within {timeout:g} s",
          f"store: job state {stored.job_state!r}" + (f" ({stored.error})" if stored.error else "")]
    return Check("job_done", final is not None and final[0] == "done" and stored.job_state == "done", ev)


def check_no_task_lost(job: int, tasks: int, stored: Stored, marks: Sequence[Mark]) -> Check:
    """Every task's row says done, and every task has an end line."""
    ev = []
    not_done = [(i, stored.tasks.get((0, i), ("no row",))[0]) for i in range(tasks)
                if stored.tasks.get((0, i), ("",))[0] != "done"]
    if not_done:
        ev.append(f"{len(not_done)} task(s) not done in the store: " + ", ".join(f"task {i}: {s}" for i, s in
                                                                               not_done[:15]))
    ended = {m.task for m in marks if m.kind == "E" and m.job == job}
    never = [i for i in range(tasks) if i not in ended]
    if never:
        ev.append(f"{len(never)} task(s) never ran to their end: {never[:20]}")
    return Check("no_task_lost", not ev, ev or [f"{tasks} tasks done, each ran to its end"])


def check_no_rerun_after_done(job: int, stored: Stored, marks: Sequence[Mark]) -> Check:
    """No start line of a task later than the finish time of its first committed done run."""
    done_at: dict[str, float] = {}
    for r in stored.runs:
        if r["job_id"] == job and r["state"] == "done":
            done_at[r["task"]] = min(done_at.get(r["task"], r["finish_time"]), r["finish_time"])
    ev = []
    for m in marks:
        if m.kind == "S" and m.job == job:
            at = done_at.get(str(m.task + 1))
            if at is not None and m.ts > at:
                ev.append(f"{m} started {m.ts - at:.2f} s after the task's done run was recorded")
    return Check("no_rerun_after_done", not ev, ev or [f"{len(done_at)} tasks done, none started again"])


def check_one_task_at_a_time(marks: Sequence[Mark]) -> Check:
    """Per render, a start while another run of it is open (no end, kill line or worker kill since) overlaps."""
    open_now: dict[str, dict[int, Mark]] = collections.defaultdict(dict)
    ev = []
    for m in marks:
        if m.kind == "S":
            if open_now[m.render]:
                others = ", ".join(str(o) for o in open_now[m.render].values())
                ev.append(f"{m} while {others} still ran")
            open_now[m.render][m.run] = m
        elif m.kind in ("E", "X"):
            open_now[m.render].pop(m.run, None)
        elif m.kind == "K":
            open_now[m.render].clear()
    starts = sum(1 for m in marks if m.kind == "S")
    return Check("one_task_at_a_time", not ev, ev or [f"{starts} runs, never two at once on one worker"])


def check_attempts_increase(job: int, stored: Stored, marks: Sequence[Mark]) -> Check:
    """In the log, each start of a task is a new run with a higher attempt; in the store, no (task, attempt)
    has two run records."""
    ev = []
    for key, starts in _by_task(marks, "S").items():
        for before, after in itertools.pairwise(starts):
            if after.run == before.run:
                ev.append(f"run {after.run} of task {key[2]} started twice: {before} / {after}")
            elif after.attempt <= before.attempt:
                ev.append(f"task {key[2]} ran again without a higher attempt: {before} then {after}")
    records: dict[tuple[str, str, int], list[str]] = collections.defaultdict(list)
    for r in stored.runs:
        if r["job_id"] == job:
            records[(r["block"], r["task"], r["attempt"])].append(f"{r['state']} on {r['render']}")
    for (block, task, attempt), states in records.items():
        if len(states) > 1:
            ev.append(f"store: task {block}/{task} has {len(states)} runs of attempt {attempt}: {states}")
    reruns = sum(len(s) - 1 for s in _by_task(marks, "S").values())
    return Check("attempts_increase", not ev, ev or [f"{reruns} reruns, each with a higher attempt"])


def check_server_log_clean(house: Farmhouse, exit_code: int | None) -> Check:
    """No traceback or asyncio fatal error in any incarnation's log; the last one stopped on SIGTERM (0)."""
    ev = tracebacks(house.server_logs)
    if exit_code != 0:
        ev.append(f"the last server did not stop cleanly on SIGTERM (exit code {exit_code})")
    return Check("server_log_clean", not ev, ev or [f"{len(house.server_logs)} server logs without a traceback"])


def check_server_memory(samples: Sequence[int], limit_mib: float) -> Check:
    """The largest VmRSS sampled is under the limit."""
    if not samples:
        return Check("server_memory", False, ["no memory sample was taken"])
    top = max(samples) / 1024
    ev = [f"max VmRSS {top:.0f} MiB over {len(samples)} samples (limit {limit_mib:g} MiB)"]
    return Check("server_memory", top < limit_mib, ev)


def check_worker_fuzz(outcomes: Sequence[FuzzOutcome]) -> Check:
    """Each fuzz connection closed by the server in time, with its warning logged for that peer."""
    ev = []
    for o in outcomes:
        if o.error or not o.closed or o.warning is None:
            state = o.error or f"{'closed' if o.closed else 'still open'} after {o.seconds:.1f} s"
            ev.append(f"{o.case}: {state}; server warning: {o.warning or 'none'}")
    if not outcomes:
        ev.append("the worker port was not fuzzed (the job ended first?)")
    return Check("worker_fuzz_closed", not ev, ev or [f"{len(outcomes)} connections, each closed with a warning"])


def check_impostor(name: str, case: str, found: Sequence[ImpostorOutcome], stored: Stored,
                   marks: Sequence[Mark]) -> Check:
    """The victim's runs at the impostor's Hello end normally and are not run again; the impostor is given no
    work and no run is recorded under its name."""
    imp = next((o for o in found if o.case == case), None)
    if imp is None:
        return Check(name, False, ["the impostor did not run (no worker had a task running)"])
    ev = [f"impostor {imp.name!r} against {imp.victim}: received {imp.received or 'nothing'}"
          + (f" ({imp.error})" if imp.error else "")]
    bad = False
    ends = {m.run: m for m in marks if m.kind in ("E", "X")}
    starts = _by_task(marks, "S")
    for run in imp.runs:
        end = ends.get(run.run)
        if end is None or end.kind != "E":
            bad = True
            ev.append(f"victim's {run} " + ("was killed (X)" if end else "never ended"))
        later = [s for s in starts.get(run.key, []) if s.line > run.line]
        if later:
            bad = True
            ev.append(f"victim's task {run.task} ran again: " + "; ".join(str(s) for s in later))
    if imp.assigned:
        bad = True
        ev.append(f"the impostor was assigned runs {imp.assigned}")
    taken = [r for r in stored.runs if r["render"] == imp.name and imp.name != imp.victim]
    if taken:
        bad = True
        ev.append(f"the store has {len(taken)} run(s) under the impostor's name: "
                  + "; ".join(f"task {r['task']} attempt {r['attempt']} {r['state']}" for r in taken[:5]))
    return Check(name, not bad, ev)


def check_api(name: str, group: str, outcomes: Sequence[HttpOutcome]) -> Check:
    """Each attack of ``group`` answered as expected (and never with a 5xx other than 503, never late)."""
    mine = [o for o in outcomes if o.group == group]
    ev = [str(o) for o in mine if not o.ok]
    if not mine:
        ev.append("the API was not attacked (the job ended first?)")
    return Check(name, not ev, ev or [f"{len(mine)} requests, each answered as expected"])


def check_api_concurrency(results: Sequence[Exchange], count: int) -> Check:
    """Every flooding connection opened at once (no SYN retransmission: a listen backlog with room) and was
    answered 200 or 503 in time."""
    if not results:
        return Check("api_concurrency", False, ["the API was not flooded (the job ended first?)"])
    outcome = collections.Counter(str(x.status) if x.status is not None else x.error for x in results)
    bad = sum(n for k, n in outcome.items() if k not in ("200", "503"))
    late = [x.connect_s for x in results if x.connect_s >= SYN_RETRY_S]
    ev = [f"{count} simultaneous requests: " + ", ".join(f"{k}: {n}" for k, n in outcome.most_common())
          + f"; slowest {max(x.seconds for x in results):.1f} s"
          + f", slowest connect {max(x.connect_s for x in results):.2f} s"]
    if late:
        ev.append(f"{len(late)} connection(s) took {min(late):.1f}-{max(late):.1f} s to open: their SYN was dropped "
                  "and retransmitted (the listen backlog was full)")
    return Check("api_concurrency", bad == 0 and not late, ev)


def check_faults_landed(faults: Sequence[str], planned: int) -> Check:
    """Every planned fault happened while the job ran with tasks in flight."""
    landed = [f for f in faults if f.endswith("(landed)")]
    ev = list(faults)
    if len(faults) < planned:
        ev.append(f"only {len(faults)} of {planned} planned faults happened (the job ended first)")
    return Check("faults_landed", len(landed) == planned, ev)


# ================================================================================================ the campaign
@dataclass
class Fault:
    """A planned fault: at a fraction of tasks done, kill the server (during a store stall or not) and/or some
    workers."""

    at: float
    server: bool = False
    stall: bool = False
    workers: list[str] = field(default_factory=list)


def plan_faults(config: CampaignConfig) -> list[Fault]:
    """Server kills spread over 30%..85% of the job, every other one during a store stall; worker kills over
    5%..90%, the second one together with the middle server kill."""

    def spread(n: int, lo: float, hi: float) -> list[float]:
        return [round(lo + (hi - lo) * i / max(n - 1, 1), 2) for i in range(n)]

    server_at = spread(config.server_kills, 0.3, 0.85)
    worker_at = spread(config.worker_kills, 0.05, 0.9)
    if server_at and len(worker_at) >= 2:
        worker_at[1] = server_at[len(server_at) // 2]
    faults: dict[float, Fault] = {}
    for i, at in enumerate(server_at):
        faults[at] = Fault(at, server=True, stall=i % 2 == 0)
    for i, at in enumerate(worker_at):
        faults.setdefault(at, Fault(at)).workers.append(f"{RENDER_PREFIX}{i % config.workers + 1}")
    return sorted(faults.values(), key=lambda f: f.at)


class _Progress:
    """The job's progress as the API tells it (None while the server is away)."""

    def __init__(self, house: Farmhouse, token: str, job: int) -> None:
        self.client = ApiClient(f"http://127.0.0.1:{house.http_port}", token, timeout=5)
        self.job = job

    def read(self) -> tuple[int, str] | None:
        """(tasks done, job state), or None if the API does not answer."""
        try:
            row = next(j for j in self.client.jobs() if j["id"] == self.job)
        except (ApiError, StopIteration, OSError):
            return None
        return int(row["counts"].get("done", 0)), str(row["state"])

    def wait(self, done: int, deadline: float) -> tuple[int, str] | None:
        """Wait until ``done`` tasks are done or the job ended (or the deadline); the last reading."""
        last = None
        while time.monotonic() < deadline:
            last = self.read() or last
            if last is not None and (last[0] >= done or last[1] in ("done", "error")):
                return last
            time.sleep(0.2)
        return last


def run_campaign(config: CampaignConfig) -> CampaignReport:
    """Run the whole campaign in ``config.folder``; stop everything it started; judge it."""
    config.folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    house = Farmhouse(config)
    memory: list[int] = []
    stop_sampling = threading.Event()
    sampler = threading.Thread(target=house.sample_memory, args=(stop_sampling, memory), daemon=True)
    fuzzed: list[FuzzOutcome] = []
    imps: list[ImpostorOutcome] = []
    api: list[HttpOutcome] = []
    flood: list[Exchange] = []
    faults_seen: list[str] = []
    final: tuple[str, float] | None = None
    exit_code: int | None = None
    job = 0
    plan = plan_faults(config)
    stopped_early = ""
    try:
        house.start_server()
        sampler.start()
        users = make_users(house)
        for i in range(1, config.workers + 1):
            house.start_worker(f"{RENDER_PREFIX}{i}")
        alice = ApiClient(f"http://127.0.0.1:{house.http_port}", users.alice, timeout=10)
        (job,) = alice.submit(json.dumps(job_spec(config, house.effects)).encode())
        house.note(f"job {job} submitted: {config.tasks} tasks on {config.workers} workers; plan {plan}")
        progress = _Progress(house, users.alice, job)
        deadline = time.monotonic() + config.job_timeout_s
        attacked = not config.attacks
        last_done = 0
        for fault in plan:
            if not attacked and fault.at > 0.05:
                fuzzed, imps, api, flood = _attack(house, users, job, rng, progress, deadline)
                attacked = True
            # some progress between two faults (the farm recovered), yet room for them all
            step = max(3, min(config.tasks // 12, config.tasks // (2 * len(plan))))
            now = progress.wait(max(int(fault.at * config.tasks), last_done + step), deadline)
            if now is None or now[1] != "active":
                break
            in_flight = sum(len(v) for v in open_runs(read_marks(house.effects)).values())
            what = " and ".join((["server (store stalled)" if fault.stall else "server"] if fault.server else [])
                                + fault.workers)
            landed = "landed" if in_flight and now[0] < config.tasks else "did not land"
            faults_seen.append(f"kill {what} at {now[0]}/{config.tasks} done, {in_flight} running ({landed})")
            _strike(house, fault, rng, alice)
            last_done = now[0]
        if not attacked:
            fuzzed, imps, api, flood = _attack(house, users, job, rng, progress, deadline)
        ended = progress.wait(config.tasks + 1, deadline)
        if ended is not None and ended[1] in ("done", "error"):
            final = (ended[1], time.monotonic() - house.started)
        house.note(f"job {job}: {ended}")
    except (CampaignError, ApiError, OSError, ValueError) as exc:
        stopped_early = f"the campaign stopped early: {type(exc).__name__}: {exc}"
        house.note(stopped_early)
    finally:
        stop_sampling.set()
        exit_code = house.stop_all()
        house.note(f"stopped everything (server exit code {exit_code})")
    marks = read_marks(house.effects)
    stored = read_store(house.db, job)
    warnings = closing_warnings(house.server_logs)
    for o in fuzzed:
        o.warning = warnings.get(o.peer)
    checks = [
        check_job_done(final, stored, config.job_timeout_s),
        check_no_task_lost(job, config.tasks, stored, marks),
        check_no_rerun_after_done(job, stored, marks),
        check_one_task_at_a_time(marks),
        check_attempts_increase(job, stored, marks),
        check_server_log_clean(house, exit_code),
        check_server_memory(memory, config.rss_limit_mib),
        check_faults_landed(faults_seen, len(plan)),
    ]
    attacks = [
        check_worker_fuzz(fuzzed),
        check_impostor("impostor_new_name", "new name", imps, stored, marks),
        check_impostor("impostor_live_name", "live name", imps, stored, marks),
        check_api("api_tokens", "tokens", api),
        check_api("api_rights", "rights", api),
        check_api("api_bodies", "bodies", api),
        check_api_concurrency(flood, config.flood),
    ]
    checks += attacks if config.attacks else [Check(c.name, True, ["not run (no attacks)"]) for c in attacks]
    by_name = {c.name: c for c in checks}
    if stopped_early:
        by_name["job_done"].evidence.append(stopped_early)
    by_name["faults_landed"].evidence += [f"note: {finding}" for finding in house.findings]
    return CampaignReport(config, {name: by_name[name] for name in CHECKS}, house.timeline,
                          time.monotonic() - house.started)


def _strike(house: Farmhouse, fault: Fault, rng: random.Random, owner: ApiClient) -> None:
    """Carry out one fault: SIGKILL the server and/or workers, pause a moment, restart them. When both died, the
    job's owner restarts the dead workers' tasks at once, while the new server still waits for someone to
    reclaim their runs."""
    if fault.server:
        house.kill_server(rng.uniform(0, 0.015), rng.uniform(0.3, 0.6) if fault.stall else 0.0)
    orphans = [run for name in fault.workers for run in house.kill_worker(name)]
    time.sleep(rng.uniform(0.2, 1.0))
    if fault.server:
        house.start_server()
        for run in orphans:
            try:
                done = owner.action(run.job, "restart", block=run.block, tasks=[run.task])
            except ApiError as exc:
                done = f"refused: {exc.status} {exc.error}"
            house.note(f"task {run.task} of the dead {run.render} restarted by its owner before its reclaim: {done}")
    for name in fault.workers:
        house.start_worker(name)


def _attack(house: Farmhouse, users: Users, job: int, rng: random.Random, progress: _Progress,
            deadline: float) -> tuple[list[FuzzOutcome], list[ImpostorOutcome], list[HttpOutcome], list[Exchange]]:
    """The worker-port fuzz (with the impostors) and the API attacks (then the flood), side by side, once a few
    tasks are done."""
    progress.wait(max(2, house.config.tasks // 50), deadline)
    house.note("attacks start: worker-port fuzz and impostors, API attacks and flood")
    fuzz_rng, api_rng = random.Random(rng.random()), random.Random(rng.random())
    result: dict[str, Any] = {}

    def fuzz() -> None:
        result["fuzz"] = fuzz_worker_port(house.port, house.farm_token, fuzz_rng)

    def imps() -> None:
        result["imps"] = impostors(house)

    def api() -> None:
        result["api"] = attack_api(house, users, job, api_rng)
        result["flood"] = flood_api(house.http_port, users.alice, house.config.flood)

    threads = [threading.Thread(target=f, daemon=True) for f in (fuzz, imps, api)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    time.sleep(0.5)  # the last warnings reach the log
    house.note("attacks done")
    return result.get("fuzz", []), result.get("imps", []), result.get("api", []), result.get("flood", [])
