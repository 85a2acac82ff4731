"""The ``farmhand`` command line: the composition root that wires the core to its hosts.

Exit codes everywhere: 0 success; 1 the work ran but something failed (a task ended in error, a check fell
short); 2 usage error or invalid input (the message on stderr).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from farmhand.core.frames import block_tasks
from farmhand.core.policies import policy_class, policy_names
from farmhand.core.spec import JobSpec, SpecError
from farmhand.jobfiles import load_jobs
from farmhand.policy_loader import load_policy, parse_options

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
MAX_LOCAL_RENDERS = 1000
MAX_LOCAL_TASK_SECONDS = 3600.0


class UsageError(Exception):
    """Bad command-line input: reported on stderr with exit code 2."""


def _load_all(paths: Sequence[str]) -> list[JobSpec]:
    specs: list[JobSpec] = []
    problems: list[str] = []
    for name in paths:
        try:
            specs.extend(load_jobs(Path(name)))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return specs


def _policy(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    try:
        return load_policy(args.policy, parse_options(args.policy_option or []))
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _add_policy_options(p: argparse.ArgumentParser, default: str = "priority") -> None:
    p.add_argument("--policy", default=default, help=f"a policy ({', '.join(policy_names())}) or a dotted path")
    p.add_argument(
        "--policy-option", action="append", metavar="KEY=VALUE", help="an option of the policy (e.g. half_life_s=600)"
    )


def cmd_validate(args: argparse.Namespace) -> int:
    failed = False
    for name in args.files:
        try:
            specs = load_jobs(Path(name))
        except SpecError as exc:
            failed = True
            for line in exc.problems:
                print(line, file=sys.stderr)
            continue
        for spec in specs:
            counts = [(b.name, len(block_tasks(b))) for b in spec.blocks]
            total = sum(n for _, n in counts)
            print(f"{name}: job {spec.name!r}: {len(counts)} block(s), {total} task(s)")
            for block, n in counts:
                print(f"  {block}: {n} task(s)")
    return EXIT_USAGE if failed else EXIT_OK


def cmd_policies(args: argparse.Namespace) -> int:
    for name in policy_names():
        print(f"{name:10s} {policy_class(name).summary}")
    return EXIT_OK


def cmd_local(args: argparse.Namespace) -> int:
    from farmhand.local import run_local
    from farmhand.output import prepare_out, write_summary, write_tasks_csv
    from farmhand.progress import ProgressLine

    # an in-process farm: one actor (one thread) per render, tasks that really wait
    if not 1 <= args.renders <= MAX_LOCAL_RENDERS:
        raise UsageError(f"--renders: must be 1-{MAX_LOCAL_RENDERS} (got {args.renders})")
    if not 0 <= args.task_seconds <= MAX_LOCAL_TASK_SECONDS:
        raise UsageError(f"--task-seconds: must be 0-{MAX_LOCAL_TASK_SECONDS:g} (got {args.task_seconds})")
    specs = _load_all(args.files)
    try:
        prepare_out(Path(args.out))
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    policy = _policy(args)
    total = sum(len(block_tasks(b)) for s in specs for b in s.blocks)
    bar = ProgressLine(total, "local", enabled=not args.quiet)

    def show(done: int, _total: int, states: dict[int, str]) -> None:
        finished = sum(1 for s in states.values() if s in ("done", "error"))
        bar.update(done, f"jobs {finished}/{len(specs)} finished")

    result = run_local(specs, policy, renders=args.renders, task_seconds=args.task_seconds, on_progress=show)
    bar.close(result.summary["tasks_done"], f"jobs {len(result.job_states)}/{len(specs)}")
    out = Path(args.out)
    write_tasks_csv(out / "tasks.csv", result.records)
    write_summary(out / "summary.json", result.summary)
    for line in result.refused:
        print(line, file=sys.stderr)
    s = result.summary
    print(
        f"{s['tasks_done']}/{s['tasks_total']} tasks done, {s['tasks_error']} in error, {s['task_runs']} runs, "
        f"makespan {s['makespan_s']:.2f} s, utilization {s['utilization']:.0%}; wrote {out}/tasks.csv and "
        f"{out}/summary.json"
    )
    if result.stalled:
        print("stalled: some tasks can never run on these renders (tags, hosts masks?)", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="farmhand", description="farmhand: a render farm manager")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("validate", help="check job files; print each job's blocks and task counts")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("local", help="run jobs on an in-process farm of pykka actors with virtual renders")
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--renders", type=int, default=4, help="number of in-process renders (default 4)")
    p.add_argument("--task-seconds", type=float, default=0.2, help="seconds each task takes (default 0.2)")
    p.add_argument("--out", default="local-out", help="output folder (default ./local-out)")
    p.add_argument("--quiet", action="store_true", help="no progress line")
    _add_policy_options(p)
    p.set_defaults(func=cmd_local)

    p = sub.add_parser("policies", help="list the scheduling policies")
    p.set_defaults(func=cmd_policies)

    from farmhand.cli_server import add_server_parsers
    from farmhand.cli_sim import add_sim_parser
    from farmhand.cli_sweep import add_sweep_parser
    from farmhand.cli_worker import add_worker_parser

    add_sim_parser(sub)
    add_sweep_parser(sub)
    add_worker_parser(sub)
    add_server_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except SpecError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"farmhand {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
