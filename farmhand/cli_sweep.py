"""``farmhand sweep``: policies x seeds x generator options given as lists, simulated in parallel, compared.

Wire it into the main parser with ``add_sweep_parser(subparsers)``. Every synthetic generator option of
``farmhand sim`` (and its fault and network options) takes several values: separated by commas, or by ``;`` for
the options whose one value is already a comma list (``--mean``, ``--sigma``, ``--duration``, ``--capacity``,
``--speeds``, ``--tags``, ``--user-priorities``, ``--user-weights``); ``none`` is ``farmhand sim``'s default.
Runs are the cartesian product of the policies, the seeds and every option's values; they run in
``--jobs-parallel`` processes, or on a dask.distributed cluster with ``--executor dask --scheduler ADDRESS``.

Writes to ``--out`` (default ``./sweep-out``):

- ``sweep.csv``: one row per run that ended: the varied options, ``policy``, ``seed``, every scalar metric of
  ``summary.json`` (``per_user`` and ``scenario`` are left out), and ``ok`` (every job done, as ``farmhand
  sim``'s exit code 0);
- ``summaries.jsonl``: one line per run with its parameters and its whole summary, ``per_user`` included (or
  its error);
- ``comparison.png`` and ``by_<option>.png``: the comparison figures (:mod:`farmhand.sim.sweep_plots`).

Prints a progress line while it runs and a comparison table at the end (mean ± 95 % CI half-width per policy
and varied option values). Exit codes: 0 every run ended with every job done; 1 a run failed (reported with
its parameters) or ended with work not done; 2 bad options (the message names the option and the value).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def add_sweep_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sweep`` to the ``farmhand`` subcommands and return its parser."""
    from farmhand.core.policies import policy_names
    from farmhand.sim.sweep import OPTIONS

    p: argparse.ArgumentParser = subparsers.add_parser(
        "sweep",
        help="simulate policies x seeds x generator options in parallel; sweep.csv and comparison plots",
        description="Simulate every combination of the policies, the seeds and the generator options given "
        "with several values, in parallel processes or on a dask cluster; write sweep.csv, summaries.jsonl and "
        "comparison plots with 95% confidence intervals, and print a comparison table.",
        epilog="Values are separated by commas (--jobs 100,200 --load 0.8,0.95); for the options whose value is "
        "itself a comma list, by ';' (--mean '60;120' sweeps two means, --mean 60,120 is one mean per block). "
        "The value 'none' keeps farmhand sim's default (--mtbf none,3600: without and with render crashes). "
        "A run with seed S simulates what 'farmhand sim --seed S' does with the same options.",
    )
    p.add_argument("--policy", required=True, metavar="A,B,...",
                   help=f"policies to compare: {', '.join(policy_names())} or dotted paths")
    p.add_argument("--policy-option", action="append", metavar="KEY=VALUE",
                   help="an option given to every policy")
    p.add_argument("--seeds", required=True, metavar="SEEDS", help="seeds: 1-10, 1,2,5 or mixes like 1-3,7")
    p.add_argument("--jobs-parallel", type=int, default=None, metavar="N",
                   help="runs at once in local processes (default: the CPU count)")
    p.add_argument("--executor", choices=("local", "dask"), default=None,
                   help="local processes (default) or a dask.distributed cluster (needs --scheduler)")
    p.add_argument("--scheduler", metavar="ADDRESS", default=None,
                   help="the dask scheduler, e.g. tcp://127.0.0.1:8786 (implies --executor dask)")
    p.add_argument("--out", default="sweep-out", help="output folder (default ./sweep-out)")
    p.add_argument("--no-plot", action="store_true", help="do not write the comparison figures")
    p.add_argument("--quiet", action="store_true", help="no progress line and no comparison table")
    g = p.add_argument_group("generator, fault and network options of 'farmhand sim', each with one or more values")
    for option in OPTIONS:
        g.add_argument(option.flag, dest=option.dest, default=None, metavar=option.metavar, help=option.help)
    p.set_defaults(func=cmd_sweep)
    return p


def _policy_options(pairs: list[str] | None) -> tuple[tuple[str, Any], ...]:
    from farmhand.policy_loader import parse_options

    try:
        return tuple(parse_options(pairs or []).items())
    except ValueError as exc:
        raise _Usage([f"--policy-option: {exc}"]) from None


class _Usage(Exception):
    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def cmd_sweep(args: argparse.Namespace) -> int:
    """Run ``farmhand sweep``; returns the exit code."""
    from farmhand.output import prepare_out
    from farmhand.progress import ProgressLine
    from farmhand.sim.sweep import (
        OPTIONS,
        RunResult,
        SweepError,
        build_sweep,
        comparison_table,
        run_sweep,
        write_csv,
        write_summaries,
    )

    executor = args.executor or ("dask" if args.scheduler else "local")
    try:
        problems = []
        if args.jobs_parallel is not None and args.jobs_parallel < 1:
            problems.append(f"--jobs-parallel: must be >= 1 (got {args.jobs_parallel})")
        if executor == "dask" and not args.scheduler:
            problems.append("--executor dask: needs --scheduler ADDRESS")
        if executor == "local" and args.scheduler:
            problems.append(f"--scheduler: only with --executor dask (got {args.scheduler!r} with local)")
        if problems:
            raise _Usage(problems)
        sweep = build_sweep(args.policy, args.seeds, {o.dest: getattr(args, o.dest) for o in OPTIONS},
                            _policy_options(args.policy_option))
        prepare_out(Path(args.out))
    except (_Usage, SweepError) as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # a bad --out
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE

    varied = sweep.varied
    runs = sweep.runs
    bar = ProgressLine(len(runs), "sweep", enabled=not args.quiet)
    failures: list[RunResult] = []

    def show(result: RunResult, done: int, _total: int) -> None:
        if result.failed:
            failures.append(result)
            print(f"run {result.spec.index} failed ({result.spec.label()}): {_last_line(result.error)}",
                  file=sys.stderr)
        tail = f"{len(failures)} failed, " if failures else ""
        bar.update(done, f"{tail}last: {result.spec.label()}", force=result.failed)

    try:
        results = run_sweep(runs, executor=executor, jobs_parallel=args.jobs_parallel, scheduler=args.scheduler,
                            on_result=show)
    except SweepError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    bar.close(len(results), f"{len(failures)} failed" if failures else "all ended")

    out = Path(args.out)
    write_csv(out / "sweep.csv", results, varied)
    write_summaries(out / "summaries.jsonl", results)
    written = [out / "sweep.csv", out / "summaries.jsonl"]
    if failures:
        log = out / "failures.log"
        log.write_text("".join(f"run {r.spec.index} ({r.spec.label()}):\n{r.error}\n\n" for r in failures))
        written.append(log)
    if not args.no_plot:
        from farmhand.sim.sweep_plots import plot_sweep

        title = (f"farmhand sweep: {len(sweep.policies)} policies x {len(sweep.seeds)} seeds"
                 + "".join(f" x {len(v)} {d}" for d, v in sweep.axes if len(v) > 1) + f" ({len(runs)} runs)")
        if sweep.fixed:
            title += "\n" + ", ".join(f"{d}={v}" for d, v in sweep.fixed.items())
        written.extend(plot_sweep(results, varied, out, title))
    if not args.quiet:
        print(comparison_table(results, varied))
    not_ok = [r for r in results if not r.failed and not r.ok]
    print("wrote " + ", ".join(str(p) for p in written))
    if not_ok:
        print(f"{len(not_ok)} run(s) ended with work not done (tasks in error, refused or stalled), e.g. "
              f"{not_ok[0].spec.label()}", file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {len(results)} run(s) failed; tracebacks in {out / 'failures.log'}",
              file=sys.stderr)
    return EXIT_FAILED if failures or not_ok else EXIT_OK


def _last_line(text: str | None) -> str:
    lines = [line for line in (text or "").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "unknown error"


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``farmhand sweep`` alone (``python -m farmhand.cli_sweep ...``)."""
    parser = argparse.ArgumentParser(prog="farmhand")
    add_sweep_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sweep", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
