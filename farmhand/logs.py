"""Structured logs: one style for the server, the workers and the client tools.

Every line is a time, a level, the logger, a message and fields; the ids that matter (``job``, ``block``,
``task``, ``run``, ``render``, ``user``) are fields, never buried in the text, so a line is easy to read and
to grep or parse::

    2025-01-31T12:00:00.123Z level=info logger=farmhand.http msg="job accepted" job=12 user=ann

``--log-json`` writes the same records as JSON lines (``{"time": ..., "level": ..., "logger": ..., "msg": ...,
"job": 12}``). Verbosity changes while running: SIGUSR1 toggles between the configured level and debug, and an
admin may set any level over the client API (``POST /api/admin/log-level``). Secrets (tokens) are never given
to a logger.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO, Any

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_FIELDS_ATTR = "farmhand_fields"
_state_lock = threading.Lock()
_base_level = logging.INFO


def fields(**values: Any) -> dict[str, Any]:
    """The ``extra`` argument that attaches key=value fields to one record: ``log.info("x", extra=fields(job=3))``."""
    return {_FIELDS_ATTR: values}


def _iso(created: float) -> str:
    seconds = int(created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int((created - seconds) * 1000):03d}Z"


def _quote(value: object) -> str:
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\t'):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t") + '"'


def _record_fields(record: logging.LogRecord) -> Mapping[str, Any]:
    found = getattr(record, _FIELDS_ATTR, None)
    return found if isinstance(found, Mapping) else {}


class KeyValueFormatter(logging.Formatter):
    """``time level=... logger=... msg="..." key=value ...``; an exception adds ``error=`` and the traceback."""

    def format(self, record: logging.LogRecord) -> str:
        parts = [
            _iso(record.created),
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        parts.extend(f"{key}={_quote(value)}" for key, value in _record_fields(record).items())
        line = " ".join(parts)
        if record.exc_info:
            line += f" error={_quote(repr(record.exc_info[1]))}\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line with the same keys as the key=value style."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "time": _iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _record_fields(record).items():
            data[key] = value if isinstance(value, str | int | float | bool) or value is None else str(value)
        if record.exc_info:
            data["error"] = repr(record.exc_info[1])
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, ensure_ascii=False)


def parse_level(name: str) -> int:
    """A level by name (debug, info, warning, error); ValueError otherwise."""
    try:
        return LEVELS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown log level {name!r} (known: {', '.join(LEVELS)})") from None


def setup_logging(level: str = "info", json_lines: bool = False, stream: IO[str] | None = None) -> logging.Handler:
    """Send the ``farmhand`` loggers to ``stream`` (stderr) in the chosen style; returns the handler."""
    global _base_level
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else KeyValueFormatter())
    root = logging.getLogger("farmhand")
    for old in list(root.handlers):
        if getattr(old, "_farmhand", False):
            root.removeHandler(old)
    handler._farmhand = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
    with _state_lock:
        _base_level = parse_level(level)
        root.setLevel(_base_level)
    return handler


def set_level(level: str) -> str:
    """Set the verbosity of every ``farmhand`` logger now; returns the level's name."""
    number = parse_level(level)
    logging.getLogger("farmhand").setLevel(number)
    logging.getLogger("farmhand").info("log level set", extra=fields(level=level.lower()))
    return level.lower()


def current_level() -> str:
    """The name of the verbosity in force."""
    number = logging.getLogger("farmhand").getEffectiveLevel()
    return next((name for name, n in LEVELS.items() if n == number), logging.getLevelName(number).lower())


def toggle_debug() -> str:
    """Switch between debug and the configured level; returns the new level's name."""
    root = logging.getLogger("farmhand")
    with _state_lock:
        target = _base_level if root.getEffectiveLevel() == logging.DEBUG else logging.DEBUG
    name = next(n for n, v in LEVELS.items() if v == target) if target in LEVELS.values() else "info"
    return set_level(name)


def install_sigusr1() -> bool:
    """Make SIGUSR1 toggle debug (main thread only, where the platform has it); returns whether installed."""
    if not hasattr(signal, "SIGUSR1") or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGUSR1, lambda _sig, _frame: toggle_debug())
    return True
