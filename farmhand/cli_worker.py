"""``farmhand worker``: the command line of the worker process.

The token (the shared farm token, or this worker's own credential from ``farmhand admin worker add NAME``)
comes from ``--token-file`` (best), the ``FARMHAND_TOKEN`` environment variable, or ``--token`` (visible to
other users in the process list). Without ``--name`` the worker takes the first name of its host's series no
other worker of the host holds (``HOST``, ``HOST-2``...: see :mod:`farmhand.workers.identity`). Exit codes: 0
stopped cleanly (SIGINT/SIGTERM), 2 usage error, the name is held by another worker of this host, or the server
refused the worker (wrong token or protocol version, a credential of another name, a name in use).
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_USAGE = 0, 2


def _tags(values: list[str] | None) -> frozenset[str]:
    return frozenset(t.strip() for v in values or () for t in v.split(",") if t.strip())


def configure_worker_parser(p: argparse.ArgumentParser) -> None:
    """Add the worker's options to ``p``."""
    p.add_argument("--server", default="127.0.0.1:51000", metavar="HOST:PORT", help="the server (default %(default)s)")
    p.add_argument("--name", help="render name (default: the host name, HOST-2, HOST-3... for further workers)")
    p.add_argument("--state-dir", help="where names are locked and instance keys kept (default ~/.local/state/...)")
    p.add_argument("--tags", action="append", metavar="A,B", help="tags this render offers (comma list, repeatable)")
    p.add_argument("--capacity", type=int, default=1, help="capacity units offered (default 1)")
    p.add_argument("--max-tasks", type=int, help="most tasks at once (default: the capacity)")
    p.add_argument("--memory-mb", type=int, help="memory offered in MiB (default: the machine's)")
    p.add_argument("--cpus", type=int, help="CPU count announced (default: the machine's)")
    p.add_argument("--token", help="farm token or worker credential (prefer --token-file or FARMHAND_TOKEN)")
    p.add_argument("--token-file", help="a file whose first line is the farm token or the worker's credential")
    p.add_argument("--kill-grace", type=float, default=3.0, help="seconds between SIGTERM and SIGKILL (default 3)")
    p.add_argument("--output-lines", type=int, default=100, help="unsent output lines kept per task (default 100)")
    p.add_argument("--progress-interval", type=float, default=1.0, help="seconds between progress reports")
    p.add_argument("--reconnect-max", type=float, default=30.0, help="longest pause between reconnections (s)")
    p.add_argument(
        "--log-level", default="info", help="debug, info, warning or error (default info); SIGUSR1 toggles debug"
    )
    p.add_argument("--log-json", action="store_true", help="log JSON lines instead of key=value lines")
    p.set_defaults(func=cmd_worker)


def add_worker_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``worker`` command to the ``farmhand`` command's subparsers."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "worker", help="run a worker: connect to the server and run the tasks it assigns"
    )
    configure_worker_parser(p)
    return p


def _token(args: argparse.Namespace) -> str:
    if args.token_file:
        with open(args.token_file, encoding="utf-8") as f:
            return f.readline().strip()
    return str(args.token or os.environ.get("FARMHAND_TOKEN", "")).strip()


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the worker until SIGINT/SIGTERM."""
    from farmhand.workers.execute import ExecOptions
    from farmhand.workers.identity import NameTaken, StateDirError, claim, host_name, server_key
    from farmhand.workers.worker import WorkerOptions, parse_server, run_worker

    problems: list[str] = []
    try:
        host, port = parse_server(args.server)
    except ValueError as exc:
        problems.append(str(exc))
        host, port = "", 0
    try:
        token = _token(args)
    except OSError as exc:
        problems.append(f"--token-file: {exc}")
        token = ""
    if args.output_lines < 1:
        problems.append(f"--output-lines: must be >= 1 (got {args.output_lines})")
    if not args.progress_interval > 0:
        problems.append(f"--progress-interval: must be > 0 (got {args.progress_interval})")
    extra: dict[str, Any] = {}
    if args.memory_mb is not None:
        extra["memory_mb"] = args.memory_mb
    if args.cpus is not None:
        extra["cpus"] = args.cpus
    options = WorkerOptions(
        host=host,
        port=port,
        token=token,
        name=args.name or host_name(),
        tags=_tags(args.tags),
        capacity=args.capacity,
        max_tasks=args.max_tasks if args.max_tasks is not None else args.capacity,
        progress_s=args.progress_interval,
        backoff_max=args.reconnect_max,
        execution=ExecOptions(output_lines=max(args.output_lines, 1), kill_grace=args.kill_grace),
        **extra,
    )
    problems.extend(options.problems())
    if problems:
        for line in problems:
            print(f"farmhand worker: {line}", file=sys.stderr)
        return EXIT_USAGE
    from farmhand.logs import install_sigusr1, parse_level, setup_logging

    try:
        parse_level(args.log_level)
    except ValueError as exc:
        print(f"farmhand worker: --log-level: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        identity = claim(args.name, Path(args.state_dir) if args.state_dir else None, server_key(host, port))
    except (NameTaken, StateDirError) as exc:
        print(f"farmhand worker: {'--state-dir: ' if isinstance(exc, StateDirError) else ''}{exc}", file=sys.stderr)
        return EXIT_USAGE
    options.name, options.instance = identity.name, identity.instance
    setup_logging(args.log_level, json_lines=args.log_json)
    install_sigusr1()
    try:
        return run_worker(options)
    finally:
        identity.release()
