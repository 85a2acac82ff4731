"""The production commands of ``farmhand``: the server, the client commands, user administration, the run log
export and the demo. :func:`add_server_parsers` adds them to the ``farmhand`` command's subparsers.

Client commands talk to the server's HTTP API (``--api``, ``FARMHAND_API``) with a user token (``--token``,
``FARMHAND_USER_TOKEN``, ``--token-file``; see :mod:`farmhand.client`). Exit codes: 0 success; 1 the request
could not be carried out (server unreachable or failing) or, for ``demo``, a task ended in error; 2 invalid
input or a refusal (bad spec, no such job, no valid token, not your job), with the reasons on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from farmhand.client import DEFAULT_API, ApiClient, ApiError, find_token

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
STATE_ORDER = ("done", "running", "error", "skipped", "pending", "ready", "waiting")


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--api", default=None, metavar="URL", help=f"the server's client API (default {DEFAULT_API})")
    common.add_argument("--token", help="your user token (prefer FARMHAND_USER_TOKEN or --token-file)")
    common.add_argument("--token-file", help="a file holding your user token")
    return common


def _client(args: argparse.Namespace) -> ApiClient:
    import os

    url = args.api or os.environ.get("FARMHAND_API") or DEFAULT_API
    return ApiClient(url, find_token(args.token, args.token_file))


def _run(call: Callable[[], int]) -> int:
    """Run a client command: API errors become messages on stderr and the right exit code."""
    try:
        return call()
    except ApiError as exc:
        for line in exc.lines():
            print(line, file=sys.stderr)
        if exc.status == 0 or exc.status >= 500:
            return EXIT_FAILED
        return EXIT_USAGE


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2))


# -------------------------------------------------------------------------------------------- commands
def cmd_submit(args: argparse.Namespace) -> int:
    """``farmhand submit FILE...``: prints each accepted job's id, one per line."""

    def run() -> int:
        client = _client(args)
        for name in args.files:
            path = Path(name)
            try:
                body = path.read_bytes()
            except OSError as exc:
                print(f"{path}: cannot read ({exc.strerror or exc})", file=sys.stderr)
                return EXIT_USAGE
            try:
                ids = client.submit(body, yaml_body=path.suffix.lower() != ".json")
            except ApiError as exc:
                exc.problems = [f"{path}: {p}" for p in exc.problems]
                raise
            for job_id in ids:
                print(job_id)
        return EXIT_OK

    return _run(run)


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{counts[k]} {k}" for k in STATE_ORDER if counts.get(k))


def cmd_jobs(args: argparse.Namespace) -> int:
    """``farmhand jobs``: one line per job."""

    def run() -> int:
        jobs = _client(args).jobs(args.user)
        if args.json:
            _print_json(jobs)
            return EXIT_OK
        if not jobs:
            print("no jobs")
            return EXIT_OK
        print(f"{'ID':>5}  {'USER':<10} {'STATE':<8} {'PRI':>3}  {'DONE':>9}  {'SUBMITTED':<19}  NAME")
        for j in jobs:
            state = "paused" if j["paused"] and j["state"] == "active" else j["state"]
            done = j["counts"].get("done", 0) + j["counts"].get("skipped", 0)
            print(
                f"{j['id']:>5}  {j['user']:<10.10} {state:<8} {j['priority']:>3}  {done:>4}/{j['tasks_total']:<4}  "
                f"{_when(j['submit_time'])}  {j['name']}"
            )
        return EXIT_OK

    return _run(run)


def cmd_job(args: argparse.Namespace) -> int:
    """``farmhand job ID``: the job's blocks and tasks, and the last output lines of one task."""

    def run() -> int:
        d = _client(args).job(
            args.id, args.block, args.task, args.lines, tasks=not args.brief, offset=args.offset, limit=args.limit
        )
        if args.json:
            _print_json(d)
            return EXIT_OK
        print(
            f"job {d['id']} {d['name']!r}: user {d['user']}, {d['state']}, priority {d['priority']}, "
            f"submitted {_when(d['submit_time'])}"
        )
        tasks_by_block: dict[int, list[dict[str, Any]]] = {}
        for t in d.get("tasks", []):
            tasks_by_block.setdefault(t["block"], []).append(t)
        for b in d["blocks"]:
            deps = [*b["depends_on"], *(f"{n} (frames)" for n in b["depends_on_frames"])]
            after = f" after {', '.join(deps)}" if deps else ""
            print(f"  block {b['name']}{after}: {_counts_text(b['counts'])}")
            for t in tasks_by_block.get(b["index"], []):
                where = f" on {t['render']}" if t["render"] and t["attempt"] else ""
                pct = f" {t['percent']}%" if t["state"] == "running" and t["percent"] >= 0 else ""
                frames = f" frames {t['frames']}" if t["frames"] and t["frames"] != t["name"] else ""
                attempt = f" attempt {t['attempt']}" if t["attempt"] else ""
                print(f"    {t['name']:<12}{frames} {t['state']}{pct}{attempt}{where}")
        shown = len(d.get("tasks", []))
        if not args.brief and shown < d["tasks_total"]:
            first = d["first_task"]
            span = f"tasks {first + 1}-{first + shown}" if shown else "no task"
            print(f"  ({span} of {d['tasks_total']} shown: --offset and --limit page through them)")
        if args.block is not None:
            print(f"  output of {args.block}/{args.task} (last {len(d['output'])} lines):")
            for line in d["output"]:
                print(f"    | {line}")
        return EXIT_OK

    return _run(run)


def cmd_renders(args: argparse.Namespace) -> int:
    """``farmhand renders``: one line per render."""

    def run() -> int:
        renders = _client(args).renders()
        if args.json:
            _print_json(renders)
            return EXIT_OK
        if not renders:
            print("no renders")
            return EXIT_OK
        print(f"{'NAME':<20} {'STATE':<8} {'RUN':>3} {'CAP':>3}  {'SINCE':<19}  TAGS")
        for r in renders:
            reason = f" ({r['reason']})" if r["reason"] else ""
            print(
                f"{r['name']:<20} {r['state']:<8} {r['running']:>3} {r['capacity']:>3}  {_when(r['since'])}  "
                f"{','.join(r['tags']) or '-'}{reason}"
            )
        return EXIT_OK

    return _run(run)


def cmd_render_action(args: argparse.Namespace) -> int:
    """``farmhand render pause|resume NAME...`` (admins)."""

    def run() -> int:
        client = _client(args)
        for name in args.names:
            print(f"render {name}: {client.render_action(name, args.render_action)}")
        return EXIT_OK

    return _run(run)


def _selection(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if getattr(args, "block", None) is not None:
        body["block"] = args.block
    if getattr(args, "tasks", None):
        if "block" not in body:
            raise ApiError(400, "--tasks needs --block")
        body["tasks"] = [t.strip() for v in args.tasks for t in v.split(",") if t.strip()]
    return body


def cmd_action(args: argparse.Namespace) -> int:
    """``farmhand pause|resume|delete|restart|skip ID...`` and ``farmhand priority ID VALUE``."""

    def run() -> int:
        client = _client(args)
        body = _selection(args)
        if args.action == "restart":
            body.update(downstream=args.downstream, errors_only=args.errors_only)
        if args.action == "priority":
            body["value"] = args.value
        ids = args.ids if args.action != "priority" else [args.id]
        for job_id in ids:
            print(f"job {job_id}: {client.action(job_id, args.action, **body)}")
        return EXIT_OK

    return _run(run)


def cmd_export_runs(args: argparse.Namespace) -> int:
    """``farmhand export-runs``: the run log as ``tasks.csv`` (from the store with ``--db``, else the API)."""

    def run() -> int:
        if args.db:
            from farmhand.store import Store, StoreError

            if not Path(args.db).exists():
                print(f"--db: {args.db} does not exist", file=sys.stderr)
                return EXIT_USAGE
            try:
                with Store(args.db) as store:
                    if args.out == "-":
                        from farmhand.http_api import runs_csv_text

                        sys.stdout.write(runs_csv_text(store))
                        return EXIT_OK
                    rows = store.export_runs(Path(args.out))
            except StoreError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_USAGE
        else:
            text = _client(args).runs_csv()
            if args.out == "-":
                sys.stdout.write(text)
                return EXIT_OK
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(text, encoding="utf-8")
            rows = max(0, text.count("\n") - 1)
        print(f"wrote {rows} run(s) to {args.out}", file=sys.stderr)
        return EXIT_OK

    return _run(run)


def cmd_admin(args: argparse.Namespace) -> int:
    """``farmhand admin user add NAME``, ``admin user list``, ``admin worker add|remove|list``,
    ``admin log-level [LEVEL]``."""

    def run() -> int:
        if args.admin_command == "log-level":
            print(_client(args).log_level(args.level))
            return EXIT_OK
        if args.admin_command == "worker":
            return _admin_worker(args)
        if args.db:
            from farmhand.store import Store, StoreError

            try:
                with Store(args.db) as store:
                    if args.user_command == "list":
                        for name, admin in store.users():
                            print(f"{name}{' (admin)' if admin else ''}")
                        return EXIT_OK
                    token = store.add_user(args.name, args.admin, args.replace)
            except StoreError as exc:
                print(str(exc), file=sys.stderr)
                return EXIT_USAGE
        else:
            if args.user_command == "list":
                print("admin user list: give --db PATH (the server's store)", file=sys.stderr)
                return EXIT_USAGE
            token = _client(args).add_user(args.name, args.admin, args.replace)
        print(token)
        print(f"the token of user {args.name!r}: shown once, keep it (FARMHAND_USER_TOKEN)", file=sys.stderr)
        return EXIT_OK

    return _run(run)


def _admin_worker(args: argparse.Namespace) -> int:
    """``farmhand admin worker add|remove|list``: through the API (a revoked worker is disconnected at once), or
    with ``--db`` on the store directly (then a running server drops a revoked worker at its next connection)."""
    from farmhand.store import Store, StoreError

    command = args.worker_command
    if args.db:
        try:
            with Store(args.db) as store:
                if command == "list":
                    workers = store.enrolled_workers()
                elif command == "remove":
                    if not store.remove_worker(args.name):
                        print(f"no worker {args.name!r} is enrolled", file=sys.stderr)
                        return EXIT_USAGE
                    print(f"revoked the credential of worker {args.name!r}")
                    return EXIT_OK
                else:
                    token = store.add_worker(args.name, args.replace)
        except StoreError as exc:
            print(str(exc), file=sys.stderr)
            return EXIT_USAGE
    else:
        client = _client(args)
        if command == "list":
            workers = client.workers()
        elif command == "remove":
            print(client.remove_worker(args.name))
            return EXIT_OK
        else:
            token = client.add_worker(args.name, args.replace)
    if command == "list":
        for w in workers:
            print(f"{w['name']}  enrolled {_when(w['created'])}")
        return EXIT_OK
    print(token)
    print(
        f"the credential of worker {args.name!r}: shown once; give it to that worker only"
        f" (farmhand worker --name {args.name} --token-file FILE)",
        file=sys.stderr,
    )
    return EXIT_OK


def cmd_server(args: argparse.Namespace) -> int:
    """``farmhand server``."""
    from farmhand.logs import setup_logging
    from farmhand.server import config_from_args, run_server

    try:
        setup_logging(args.log_level, args.log_json)
    except ValueError as exc:
        print(f"farmhand server: --log-level: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from farmhand.policy_loader import load_policy

    try:
        load_policy(args.policy)
    except ValueError as exc:
        print(f"farmhand server: --policy: {exc}", file=sys.stderr)
        return EXIT_USAGE
    from farmhand.core.render import zombie_time_warning
    from farmhand.store import StoreError

    if not args.heartbeat > 0 or not args.zombie > args.heartbeat or not args.reclaim >= 0:
        print(
            "farmhand server: --heartbeat must be > 0, --zombie greater than it and --reclaim >= 0"
            f" (got {args.heartbeat:g}, {args.zombie:g}, {args.reclaim:g})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    warning = zombie_time_warning(args.heartbeat, args.zombie)
    if warning:
        print(f"farmhand server: warning: {warning}", file=sys.stderr)
    try:
        return run_server(config_from_args(args))
    except (OSError, StoreError) as exc:
        print(f"farmhand server: {exc}", file=sys.stderr)
        return EXIT_FAILED


def cmd_demo(args: argparse.Namespace) -> int:
    """``farmhand demo``."""
    from farmhand.demo import run_demo

    if args.workers < 1:
        print(f"farmhand demo: --workers: must be >= 1 (got {args.workers})", file=sys.stderr)
        return EXIT_USAGE
    return run_demo(workers=args.workers, folder=Path(args.dir) if args.dir else None, frames=args.frames)


# -------------------------------------------------------------------------------------------- parsers
def add_server_parsers(subparsers: Any) -> None:
    """Add ``server``, the client commands, ``admin``, ``export-runs`` and ``demo`` to ``farmhand``."""
    from farmhand.server import add_server_arguments

    common = _client_options()

    p = subparsers.add_parser("server", help="run the farm server (workers over TCP, client API over HTTP)")
    add_server_arguments(p)
    p.set_defaults(func=cmd_server)

    p = subparsers.add_parser("submit", parents=[common], help="submit job files (JSON or YAML); prints the ids")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_submit)

    p = subparsers.add_parser("jobs", parents=[common], help="list the jobs")
    p.add_argument("--user", help="only this user's jobs")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_jobs)

    p = subparsers.add_parser("job", parents=[common], help="a job's blocks and tasks (and a task's last output)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("--block", help="block (name or index) of the task whose output to show")
    p.add_argument("--task", help="task (name or index) whose output to show")
    p.add_argument("--lines", type=int, default=20, help="output lines to show (default 20)")
    p.add_argument("--brief", action="store_true", help="blocks only, no task list")
    p.add_argument("--offset", type=int, default=0, help="list tasks from this one (0 = the first; default 0)")
    p.add_argument("--limit", type=int, default=None, help="list at most this many tasks (default: the server's, 1000)")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_job)

    p = subparsers.add_parser("renders", parents=[common], help="list the renders")
    p.add_argument("--json", action="store_true", help="JSON output")
    p.set_defaults(func=cmd_renders)

    p = subparsers.add_parser("render", help="pause or resume renders (admins)")
    render = p.add_subparsers(dest="render_action", required=True)
    for action, text in (("pause", "give the renders no new task (what runs there finishes); kept across restarts"),
                         ("resume", "let the renders take tasks again")):
        q = render.add_parser(action, parents=[common], help=text)
        q.add_argument("names", nargs="+", metavar="NAME")
        q.set_defaults(func=cmd_render_action, render_action=action)

    for action, text in (("pause", "pause jobs"), ("resume", "resume jobs"), ("delete", "delete jobs")):
        p = subparsers.add_parser(action, parents=[common], help=text)
        p.add_argument("ids", nargs="+", type=int, metavar="ID")
        p.set_defaults(func=cmd_action, action=action)
    for action, text in (("restart", "restart tasks (all, a block's, or chosen ones)"),
                         ("skip", "skip tasks (all, a block's, or chosen ones)")):
        p = subparsers.add_parser(action, parents=[common], help=text)
        p.add_argument("ids", nargs="+", type=int, metavar="ID")
        p.add_argument("--block", help="only this block (name)")
        p.add_argument("--tasks", action="append", metavar="T1,T2", help="only these tasks of the block (names)")
        if action == "restart":
            p.add_argument("--downstream", action="store_true", help="also restart what depends on them")
            p.add_argument("--errors-only", action="store_true", help="only tasks in error")
        p.set_defaults(func=cmd_action, action=action)
    p = subparsers.add_parser("priority", parents=[common], help="set a job's priority (0-255)")
    p.add_argument("id", type=int, metavar="ID")
    p.add_argument("value", type=int, metavar="VALUE")
    p.set_defaults(func=cmd_action, action="priority")

    p = subparsers.add_parser("export-runs", parents=[common], help="write the run log as tasks.csv")
    p.add_argument("--out", default="tasks.csv", help="output file (default tasks.csv; - for stdout)")
    p.add_argument("--db", help="read the server's store directly instead of asking the API")
    p.set_defaults(func=cmd_export_runs)

    p = subparsers.add_parser("admin", help="users and server settings (admins)")
    admin = p.add_subparsers(dest="admin_command", required=True)
    user = admin.add_parser("user", help="users and their tokens")
    users = user.add_subparsers(dest="user_command", required=True)
    for sub in (users.add_parser("add", parents=[common], help="create a user; prints its token once"),
                users.add_parser("list", parents=[common], help="list the users (with --db)")):
        sub.add_argument("--db", help="the server's store (works without a running server or an admin token)")
        sub.set_defaults(func=cmd_admin, admin_command="user")
        if sub.prog.endswith("add"):
            sub.add_argument("name", metavar="NAME")
            sub.add_argument("--admin", action="store_true", help="the user is an admin")
            sub.add_argument("--replace", action="store_true", help="give an existing user a new token")
    worker = admin.add_parser("worker", help="workers' own credentials (each bound to one render name)")
    workers = worker.add_subparsers(dest="worker_command", required=True)
    for sub in (workers.add_parser("add", parents=[common], help="enrol a worker; prints its credential once"),
                workers.add_parser("remove", parents=[common], help="revoke a worker's credential"),
                workers.add_parser("list", parents=[common], help="list the enrolled workers")):
        sub.add_argument("--db", help="the server's store directly (a running server then drops a revoked"
                         " worker only when it reconnects)")
        sub.set_defaults(func=cmd_admin, admin_command="worker")
        if not sub.prog.endswith("list"):
            sub.add_argument("name", metavar="NAME", help="the worker's render name")
        if sub.prog.endswith("add"):
            sub.add_argument("--replace", action="store_true", help="a new credential (the old one stops working)")
    level = admin.add_parser("log-level", parents=[common], help="show or set the server's log level")
    level.add_argument("level", nargs="?", help="debug, info, warning or error")
    level.set_defaults(func=cmd_admin, admin_command="log-level")

    p = subparsers.add_parser("demo", help="a server, local workers and a sample job, with progress until done")
    p.add_argument("--workers", type=int, default=4, help="local worker processes (default 4)")
    p.add_argument("--frames", type=int, default=12, help="frames of the sample job (default 12)")
    p.add_argument("--dir", help="keep the demo's store, logs and tasks.csv here (default: a temporary folder)")
    p.set_defaults(func=cmd_demo)
