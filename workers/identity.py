"""A worker's identity on its host: a render name no other live worker of the host holds, and an instance key.

Several workers on one host must just work. Without ``--name`` a worker takes the first free name of the
host's series: the host name, then ``HOST-2``, ``HOST-3``... A name is held by an exclusive lock on a file in
the state folder of its server (``--state-dir``, default ``$XDG_STATE_HOME/farmhand/workers``, else
``~/.local/state/farmhand/workers``; one subfolder per server address, as names are a server's) for the
worker's whole life, so two workers never choose the same one, and a worker restarted on the host takes its
name back (the lowest free one). With ``--name`` the lock still guards the name: a second worker of the host
asking the same server for a name in use stops at once with a clear message.

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
    """The lock file, locked for this process, or None if another process holds it."""
    f = open(path, "a+", encoding="utf-8")  # noqa: SIM115 (held open for the worker's life)
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.close()
        return None
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


def claim(name: str | None, folder: Path | None = None, server: str = "") -> WorkerIdentity:
    """Hold ``name`` (or the first free name of the host's series) for this process, among the workers of
    ``server`` (``HOST:PORT``) whose state is in ``folder``.

    Raises :class:`NameTaken` if ``name`` is held by another worker of this host, or if all of the series is.
    If the state folder cannot be written, the name is used unguarded with a key for this process only.
    """
    folder = folder or default_state_dir()
    if server:
        folder = folder / (re.sub(r"[^A-Za-z0-9_.-]", "_", server) or "_")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return WorkerIdentity(name or host_name(), secrets.token_hex(16))
    if name is not None:
        lock = _try_lock(folder / f"{name}.lock")
        if lock is None:
            raise NameTaken(
                f"another worker on this host already runs as {name!r}{_holder(folder / f'{name}.lock')}:"
                " give this one another --name, or none to let it choose"
            )
        return WorkerIdentity(name, _instance_key(folder, name), lock)
    base = host_name()
    for slot in range(1, MAX_SLOTS + 1):
        candidate = base if slot == 1 else f"{base}-{slot}"
        lock = _try_lock(folder / f"{candidate}.lock")
        if lock is not None:
            return WorkerIdentity(candidate, _instance_key(folder, candidate), lock)
    raise NameTaken(f"{MAX_SLOTS} workers already run on this host without --name (in {folder})")
