"""Structured logs: key=value lines with the ids as fields, JSON lines as an option, verbosity switched while
running (SIGUSR1 toggles debug)."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import time
from collections.abc import Iterator

import pytest

from farmhand.logs import current_level, fields, install_sigusr1, set_level, setup_logging, toggle_debug


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger("farmhand")
    handlers, level, propagate = list(root.handlers), root.level, root.propagate
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    root.propagate = propagate


def test_key_value_lines_carry_the_ids_as_fields(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("info", stream=out)
    log = logging.getLogger("farmhand.test")
    log.info("job accepted", extra=fields(job=12, user="ann", name="shot 010", note='say "hi"'))
    log.debug("hidden")
    line = out.getvalue().strip()
    stamp, rest = line.split(" ", 1)
    assert stamp.endswith("Z") and "T" in stamp
    assert rest == (
        'level=info logger=farmhand.test msg="job accepted" job=12 user=ann name="shot 010" note="say \\"hi\\""'
    )


def test_json_lines_and_exceptions(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("debug", json_lines=True, stream=out)
    log = logging.getLogger("farmhand.test")
    log.debug("task finished", extra=fields(job=3, block="render", task=7, render="r1", ok=True))
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed", extra=fields(run=99))
    first, second = (json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{"))
    assert {k: first[k] for k in ("level", "logger", "msg", "job", "block", "task", "render", "ok")} == {
        "level": "debug", "logger": "farmhand.test", "msg": "task finished", "job": 3, "block": "render", "task": 7,
        "render": "r1", "ok": True,
    }
    assert second["error"] == "RuntimeError('boom')" and "Traceback" in second["traceback"] and second["run"] == 99


def test_verbosity_switches_while_running(restore_logging: None) -> None:
    out = io.StringIO()
    setup_logging("warning", stream=out)
    assert current_level() == "warning"
    assert toggle_debug() == "debug" and current_level() == "debug"
    assert toggle_debug() == "warning"
    assert set_level("ERROR") == "error" and current_level() == "error"
    with pytest.raises(ValueError, match="unknown log level"):
        set_level("loud")
    setup_logging("info", stream=out)
    previous = signal.getsignal(signal.SIGUSR1)
    try:
        assert install_sigusr1()
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while current_level() != "debug" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert current_level() == "debug"
        os.kill(os.getpid(), signal.SIGUSR1)
        deadline = time.monotonic() + 2
        while current_level() != "info" and time.monotonic() < deadline:
            time.sleep(0.01)
        assert current_level() == "info"
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert "log level set" in out.getvalue()
