"""A worker's identity on its host: a render name no other live worker of the host holds, and an instance key.

Several workers on one host must just work. Without ``--name`` a worker takes the first free name of the
host's series: the host name, then ``HOST-2``, ``HOST-3``... A name is held by an exclusive lock on a file in
the state folder of its server (``--state-dir``, default ``$XDG_STATE_HOME/farmhand/workers``, else
``~/.local/state/farmhand/workers``; one subfolder per server address, as names are a server's) for the
worker's whole life, so two workers never choose the same one, and a worker restarted on the host takes its
name back (the lowest free one). With ``--name`` the lock still guards the name: a second worker of the host
asking the same server for a name in use stops at once with a clear message.

If the default folder cannot be written (a read-only home), a folder in the system's temporary folder is used
instead; a ``--state-dir`` that cannot be written is an error.

Each name keeps an instance key beside its lock (created once, readable only by its owner). The worker sends it
in its Hello; the server lets a new connection replace the live connection of the same name only when the key
is the same (the same worker coming back before the server noticed its old connection died), so a worker of
another host that took the same name is refused instead of the two taking turns at the name.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import socket
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not a POSIX system: names are not guarded there
    fcntl = None  # type: ignore[assignment]

#: the most workers one host runs without --name
MAX_SLOTS = 256


class NameTaken(Exception):
    """The name is held by another live worker of this host (the message says which process)."""


def host_name() -> str:
    """The host name, made a valid render name."""
    name = re.sub(r"[^A-Za-z0-9_.@+-]", "-", socket.gethostname().split(".")[0] or "worker")
    name = name.lstrip(".@+-") or "worker"
    return name[:120]  # room for a "-NNN" suffix within the 128 characters of a render name


def default_state_dir() -> Path:
    """Where workers keep their name locks and instance keys."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "farmhand" / "workers"


@dataclass
class WorkerIdentity:
    """A name held for this process (released by :meth:`release` or when the process ends) and its key."""

    name: str
    instance: str
    _lock: IO[str] | None = field(default=None, repr=False)

    def release(self) -> None:
        """Let the name go (another worker of the host may take it)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None


def _try_lock(path: Path) -> IO[str] | None:
    """The lock file, locked for this process, or None if another process holds it (``OSError`` if the file
    cannot be used at all)."""
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the worker's life)
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    except OSError:
        f.close()
        raise
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _holder(path: Path) -> str:
    with contextlib.suppress(OSError):
        pid = path.read_text(encoding="utf-8").strip()
        if pid.isdigit():
            return f" (process {pid})"
    return ""


def _with_key(name: str, folder: Path, lock: IO[str]) -> WorkerIdentity:
    try:
        return WorkerIdentity(name, _instance_key(folder, name), lock)
    except OSError:
        lock.close()
        raise


def _instance_key(folder: Path, name: str) -> str:
    path = folder / f"{name}.key"
    with contextlib.suppress(OSError):
        key = path.read_text(encoding="ascii").strip()
        if re.fullmatch(r"[0-9a-f]{32}", key):
            return key
    key = secrets.token_hex(16)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key + "\n")
    return key


def server_key(host: str, port: int) -> str:
    """The server as names are kept for it: its address (``farm`` and its IP address are one server)."""
    with contextlib.suppress(OSError, IndexError, UnicodeError):
        host = str(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0])
    return f"{host}:{port}"


def fallback_state_dir() -> Path:
    """Where workers keep their state when the default folder cannot be written (a read-only home)."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    return Path(tempfile.gettempdir()) / f"farmhand-workers-{uid}"


def claim(name: str | None, folder: Path | None = None, server: str = "") -> WorkerIdentity:
    """Hold ``name`` (or the first free name of the host's series) for this process, among the workers of
    ``server`` (``HOST:PORT``) whose state is in ``folder`` (default: :func:`default_state_dir`, else, if that
    cannot be written, :func:`fallback_state_dir`).

    Raises :class:`NameTaken` if ``name`` is held by another worker of this host, or if all of the series is;
    :class:`StateDirError` if no state folder can be used.
    """
    folders = [folder] if folder is not None else [default_state_dir(), fallback_state_dir()]
    problems = []
    for base in folders:
        place = base / (re.sub(r"[^A-Za-z0-9_.-]", "_", server) or "_") if server else base
        try:
            return _claim_in(name, place)
        except OSError as exc:
            problems.append(f"{place}: {exc.strerror or exc}")
    raise StateDirError("no folder to keep the worker's name in: " + "; ".join(problems))


class StateDirError(Exception):
    """No state folder can be written (the message says which and why)."""


def _claim_in(name: str | None, folder: Path) -> WorkerIdentity:
    folder.mkdir(parents=True, exist_ok=True)
    if name is not None:
        lock = _try_lock(folder / f"{name}.lock")
        if lock is None:
            raise NameTaken(
                f"another worker on this host already runs as {name!r}{_holder(folder / f'{name}.lock')}:"
                " give this one another --name, or none to let it choose"
            )
        return _with_key(name, folder, lock)
    base = host_name()
    for slot in range(1, MAX_SLOTS + 1):
        candidate = base if slot == 1 else f"{base}-{slot}"
        lock = _try_lock(folder / f"{candidate}.lock")
        if lock is not None:
            return _with_key(candidate, folder, lock)
    raise NameTaken(f"{MAX_SLOTS} workers already run on this host without --name (in {folder})")
