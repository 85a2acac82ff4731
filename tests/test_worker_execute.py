"""Running one assignment as a subprocess: exit codes, output, progress, environment, timeouts and kills."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from farmhand.core.messages import Assign
from farmhand.workers.execute import ExecOptions, RunResult, TaskRun, task_environment

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="process groups are POSIX")
T = TypeVar("T")
PY = sys.executable


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 30))


def assign(command: str | tuple[str, ...], **kw: Any) -> Assign:
    return Assign(kw.pop("id", 1), kw.pop("run_id", 11), 3, 0, 4, 1, "w1", command, **kw)


def execute(a: Assign, options: ExecOptions | None = None) -> tuple[RunResult, TaskRun]:
    async def go() -> tuple[RunResult, TaskRun]:
        task_run = TaskRun(a, options)
        return await task_run.execute(), task_run

    return run(go())


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def dies_soon(pid: int, within_s: float = 3.0) -> bool:
    """Whether ``pid`` is gone within a bounded wait: a signal is delivered asynchronously, so a process
    signalled a moment ago may still be on its way out."""
    deadline = time.monotonic() + within_s
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_shell_command_done_with_output() -> None:
    result, task_run = execute(assign("echo hello; echo world >&2"))
    assert result == RunResult("done", 0)
    assert task_run.take_tail() == ("hello", "world")


def test_argv_command_is_not_run_through_a_shell() -> None:
    result, task_run = execute(assign(("echo", "$HOME;", "x")))
    assert result.state == "done"
    assert task_run.take_tail() == ("$HOME; x",)


def test_non_zero_exit_is_an_error() -> None:
    result, _ = execute(assign("exit 3"))
    assert result == RunResult("error", 3, "exit code 3")


def test_death_by_signal_is_an_error() -> None:
    result, _ = execute(assign("kill -SEGV $$"))
    assert result.state == "error" and result.exit_code < 0 and "SIGSEGV" in result.reason


@pytest.mark.parametrize(
    ("command", "kw"),
    [
        (("/no/such/program",), {}),
        ("true", {"working_dir": "/no/such/dir"}),
        ((), {}),
        ("  ", {}),
    ],
)
def test_a_task_that_cannot_start_is_an_error(command: str | tuple[str, ...], kw: dict[str, Any]) -> None:
    started = []

    async def go() -> RunResult:
        return await TaskRun(assign(command, **kw)).execute(lambda: started.append(1))

    result = run(go())
    assert result.state == "error" and result.reason.startswith("cannot start")
    assert not started


def test_working_dir_and_environment(tmp_path: Path) -> None:
    os.environ["FARMHAND_TOKEN"] = "must-not-leak"
    try:
        a = assign(
            'pwd; echo "$MY_VAR $FARMHAND_RUN_ID $FARMHAND_JOB_ID $FARMHAND_ATTEMPT ${FARMHAND_TOKEN:-none}"',
            working_dir=str(tmp_path), env=(("MY_VAR", "blue"),),
        )
        result, task_run = execute(a)
    finally:
        del os.environ["FARMHAND_TOKEN"]
    assert result.state == "done"
    assert task_run.take_tail() == (str(tmp_path), "blue 11 3 1 none")
    env = task_environment(a, {"PATH": "/bin", "FARMHAND_TOKEN": "x", "MY_VAR": "red"})
    assert env["MY_VAR"] == "blue" and "FARMHAND_TOKEN" not in env and env["FARMHAND_RENDER"] == "w1"


def test_output_is_bounded_in_lines_and_length() -> None:
    options = ExecOptions(output_lines=5, max_line=50)
    result, task_run = execute(
        assign((PY, "-c", "import sys\nfor i in range(1000): print(i)\nprint('x' * 10000)\nprint('end', end='')")),
        options,
    )
    assert result.state == "done"
    tail = task_run.take_tail()
    assert len(tail) == 5
    assert tail[-1] == "end"
    assert tail[:3] == ("997", "998", "999")
    assert tail[3].startswith("xxx") and tail[3].endswith("\u2026") and len(tail[3]) == 50
    assert task_run.lines_seen == 1002


def test_progress_is_parsed_from_output_including_carriage_returns() -> None:
    result, task_run = execute(assign("printf '10%%\\r20%%\\r30%%\\n'; echo 'frame done 55.5%'"))
    assert result.state == "done"
    taken = task_run.take_progress()
    assert taken is not None
    percent, lines = taken
    assert percent == 55 and lines == ("10%", "20%", "30%", "frame done 55.5%")
    assert task_run.take_progress() is None  # nothing new


def test_lines_given_back_come_first_and_the_oldest_are_dropped() -> None:
    task_run = TaskRun(assign("true"), ExecOptions(output_lines=3))
    for line in ("a", "b", "c"):
        task_run._line(line.encode())
    taken = task_run.take_progress()
    assert taken is not None and taken[1] == ("a", "b", "c")
    for line in ("d", "e"):
        task_run._line(line.encode())
    task_run.give_back(taken[1])  # the report could not be sent
    assert task_run.dirty and task_run.take_tail() == ("c", "d", "e")


def test_block_progress_regex() -> None:
    _, task_run = execute(assign("echo 'ALF 12'; echo '99%'", progress=r"ALF (\d+)"))
    assert task_run.percent == 12


def test_timeout_kills_the_group_and_reports_an_error(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    result, _ = execute(
        assign(f"sleep 30 & echo $! > {pidfile}; wait", timeout_s=0.5), ExecOptions(kill_grace=1.0)
    )
    assert time.monotonic() - start < 5
    assert result.state == "error" and result.reason == "timeout"
    assert dies_soon(int(pidfile.read_text()))


def test_kill_terminates_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"

    async def go() -> RunResult:
        task_run = TaskRun(assign(f"sleep 30 & echo $! > {pidfile}; sleep 30"), ExecOptions(kill_grace=1.0))
        runner = asyncio.ensure_future(task_run.execute())
        for _ in range(200):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.02)
        task_run.kill("deleted")
        return await runner

    start = time.monotonic()
    result = run(go())
    assert time.monotonic() - start < 5
    assert result.state == "killed" and result.reason == "deleted"
    assert dies_soon(int(pidfile.read_text()))


def test_a_task_that_ignores_sigterm_is_killed_after_the_grace() -> None:
    script = (
        "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nprint('ready', flush=True)\n"
        "time.sleep(30)"
    )

    async def go() -> RunResult:
        task_run = TaskRun(assign((PY, "-c", script)), ExecOptions(kill_grace=0.3))
        runner = asyncio.ensure_future(task_run.execute())
        for _ in range(250):
            if task_run.lines_seen:
                break
            await asyncio.sleep(0.02)
        task_run.kill("stop")
        return await runner

    start = time.monotonic()
    result = run(go())
    assert time.monotonic() - start < 5
    assert result.state == "killed" and result.exit_code == -9


def test_leftovers_in_the_group_are_killed_when_the_task_ends(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    result, _ = execute(assign(f"sleep 30 > /dev/null 2>&1 & echo $! > {pidfile}"))
    assert result.state == "done"
    assert dies_soon(int(pidfile.read_text()))
