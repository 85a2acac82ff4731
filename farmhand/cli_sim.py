"""``farmhand sim``: a workload (synthetic, JSON/YAML workload file, or SWF trace) on virtual renders, simulated.

Wire it into the main parser with ``add_sim_parser(subparsers)``. Writes ``tasks.csv`` and ``summary.json`` to
``--out`` (and PNG figures with ``--plot``), shows a progress line on stderr while it runs and a summary table
at the end. Exit codes: 0 every job done; 1 the run ended with tasks in error, refused jobs or work that could
never run; 2 bad options or invalid input (the message, naming the option, file, line or field, on stderr).
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from farmhand.core.policies import policy_names
from farmhand.core.spec import SpecError

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

T = TypeVar("T")

#: generator options: (flag, dest, default); None defaults mean "not given" so a workload file can refuse them
_GENERATOR_DEFAULTS: dict[str, Any] = {
    "tasks": 100,
    "blocks": 1,
    "users": 10,
    "priorities": "0-199",
    "user_priorities": None,
    "user_weights": None,
    "arrival": "poisson",
    "rate": None,
    "load": 0.9,
    "burst_size": 50,
    "burst_every": 3600.0,
    "duration": "lognormal",
    "mean": "60",
    "sigma": "0.5",
    "deps": "none",
    "tags": None,
    "capacity": "1",
    "speeds": "1",
}


class _OptionError(ValueError):
    """A bad option value: one line naming the option."""


def add_sim_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``sim`` to the ``farmhand`` subcommands and return its parser."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "sim",
        help="simulate a workload on virtual renders (the production core on SimPy)",
        description="Simulate a workload (synthetic by default, or --workload FILE, or --swf FILE) on virtual "
        "renders with the production scheduling core; writes tasks.csv and summary.json (and plots).",
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--workload", metavar="FILE", help="a JSON/YAML workload file (see the docs)")
    src.add_argument("--swf", metavar="FILE", help="a Standard Workload Format v2.2 trace")
    p.add_argument("--jobs", type=int, default=None, help="synthetic jobs (default 1000); with --swf, the first J")
    p.add_argument("--renders", type=int, default=None,
                   help="renders (default 500; with --swf, the trace's MaxProcs / render capacity)")
    p.add_argument("--policy", default="priority", help=f"a policy ({', '.join(policy_names())}) or a dotted path")
    p.add_argument("--policy-option", action="append", metavar="KEY=VALUE", help="an option of the policy")
    p.add_argument("--seed", type=int, default=0, help="the seed of everything random (default 0)")
    p.add_argument("--out", default="sim-out", help="output folder (default ./sim-out)")
    p.add_argument("--plot", action="store_true", help="also write PNG figures")
    p.add_argument("--gantt-renders", type=int, default=20, metavar="N", help="renders in the Gantt chart (20)")
    p.add_argument("--quiet", action="store_true", help="no progress line and no summary table")
    p.add_argument("--until", type=float, default=None, metavar="SECONDS", help="stop at this simulated time")

    add_generator_arguments(p)
    s = p.add_argument_group("SWF traces")
    s.add_argument("--swf-cancelled", default="skip", choices=("skip", "keep"),
                   help="rows with status failed (0) or cancelled (5): skip them, or keep them (default skip)")
    add_fault_arguments(p)
    p.set_defaults(func=cmd_sim)
    return p


def add_generator_arguments(p: argparse.ArgumentParser) -> None:
    """The synthetic generator's options (defaults None = not given; see :func:`generator_options`)."""
    g = p.add_argument_group("synthetic generator (ignored with --workload / --swf)")
    g.add_argument("--tasks", type=int, default=None, help="tasks per job, split over the blocks (100)")
    g.add_argument("--blocks", type=int, default=None, help="blocks per job (1)")
    g.add_argument("--users", type=int, default=None, help="users (10)")
    g.add_argument("--priorities", default=None, metavar="LO-HI", help="job priorities, uniform (0-199)")
    g.add_argument("--user-priorities", default=None, metavar="P,...", help="users' fair-share priorities, cycled")
    g.add_argument("--user-weights", default=None, metavar="W,...", help="users' weights, cycled")
    g.add_argument("--arrival", default=None, choices=("all", "poisson", "burst"), help="arrivals (poisson)")
    g.add_argument("--rate", type=float, default=None, help="Poisson arrivals, jobs per second (default: --load)")
    g.add_argument("--load", type=float, default=None, help="offered load the default Poisson rate aims at (0.9)")
    g.add_argument("--burst-size", type=int, default=None, help="jobs per burst (50)")
    g.add_argument("--burst-every", type=float, default=None, metavar="SECONDS", help="seconds between bursts (3600)")
    g.add_argument("--duration", default=None, metavar="KIND,...",
                   help="task durations per block: fixed, exp or lognormal, cycled over blocks (lognormal)")
    g.add_argument("--mean", default=None, metavar="SECONDS,...", help="mean task duration per block (60)")
    g.add_argument("--sigma", default=None, metavar="S,...", help="lognormal sigma of log(duration) per block (0.5)")
    g.add_argument("--deps", default=None, choices=("none", "chain", "frames"), help="block dependencies (none)")
    g.add_argument("--tags", default=None, metavar="TAG=R[:J],...",
                   help="tag mix: a fraction R of renders offers TAG, a fraction J of jobs (default R) needs it")
    g.add_argument("--capacity", default=None, metavar="C[=W],...", help="capacity mix of blocks, weighted (1)")
    g.add_argument("--render-capacity", type=int, default=None,
                   help="capacity and max tasks of each render (default: the largest task capacity)")
    g.add_argument("--speeds", default=None, metavar="S[=W],...", help="render speed mix, weighted (1)")


def add_fault_arguments(p: argparse.ArgumentParser) -> None:
    """The fault and network options (see :func:`fault_model` and :func:`network_model`)."""
    f = p.add_argument_group("faults and network")
    f.add_argument("--failure-prob", type=float, default=0.0, help="probability that a run fails (0)")
    f.add_argument("--mtbf", type=float, default=None, metavar="SECONDS", help="render mean time between failures")
    f.add_argument("--mttr", type=float, default=600.0, metavar="SECONDS", help="render mean time to repair (600)")
    f.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                   help="worker heartbeat interval when renders can fail (30)")
    f.add_argument("--zombie", type=float, default=120.0, metavar="SECONDS",
                   help="silence after which a render is declared lost (120)")
    f.add_argument("--latency", type=float, default=0.0, metavar="SECONDS", help="worker<->server latency (0)")
    f.add_argument("--jitter", type=float, default=0.0, metavar="SECONDS", help="extra uniform latency (0)")
    f.add_argument("--loss", type=float, default=0.0, help="probability a worker<->server message is lost (0)")
    f.add_argument("--internal-latency", type=float, default=0.0, metavar="SECONDS",
                   help="latency of messages inside the server (0)")


# ------------------------------------------------------------------------------------------------ option parsing


def _split(option: str, text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not items or any(not t for t in items):
        raise _OptionError(f"{option}: expected a comma-separated list (got {text!r})")
    return items


def _convert(option: str, raw: str, kind: Callable[[str], T], what: str) -> T:
    try:
        return kind(raw)
    except ValueError:
        raise _OptionError(f"{option}: {what} expected (got {raw!r})") from None


def _numbers(option: str, text: str, kind: Callable[[str], T]) -> tuple[T, ...]:
    what = "an integer" if kind is int else "a number"
    return tuple(_convert(option, t, kind, what) for t in _split(option, text))


def _weighted(option: str, text: str, kind: Callable[[str], T]) -> tuple[tuple[T, float], ...]:
    out = []
    for item in _split(option, text):
        value, sep, weight = item.partition("=")
        out.append((_convert(option, value, kind, "a value"),
                    _convert(option, weight, float, "a weight") if sep else 1.0))
    return tuple(out)


def _tags(text: str) -> tuple[tuple[str, float, float], ...]:
    out = []
    for item in _split("--tags", text):
        name, sep, fractions = item.partition("=")
        if not sep or not name:
            raise _OptionError(f"--tags: expected TAG=R[:J] (got {item!r})")
        render_frac, sep, job_frac = fractions.partition(":")
        r = _convert("--tags", render_frac, float, "a fraction")
        j = _convert("--tags", job_frac, float, "a fraction") if sep else r
        out.append((name, r, j))
    return tuple(out)


def _priorities(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    lo = _convert("--priorities", low, int, "LO-HI")
    hi = _convert("--priorities", high, int, "LO-HI") if sep else lo
    return lo, hi


def generator_options(args: argparse.Namespace) -> Any:
    """The :class:`~farmhand.sim.workload.GeneratorOptions` of parsed arguments (``_OptionError`` if bad)."""
    from farmhand.sim.workload import GeneratorOptions

    v = {k: (getattr(args, k) if getattr(args, k) is not None else d) for k, d in _GENERATOR_DEFAULTS.items()}
    lo, hi = _priorities(v["priorities"])
    return GeneratorOptions(
        jobs=args.jobs if args.jobs is not None else 1000,
        tasks=v["tasks"],
        blocks=v["blocks"],
        users=v["users"],
        renders=args.renders if args.renders is not None else 500,
        priority_low=lo,
        priority_high=hi,
        user_priorities=_numbers("--user-priorities", v["user_priorities"], int) if v["user_priorities"] else (),
        user_weights=_numbers("--user-weights", v["user_weights"], float) if v["user_weights"] else (),
        arrival=v["arrival"],
        rate=v["rate"],
        load=v["load"],
        burst_size=v["burst_size"],
        burst_every=v["burst_every"],
        duration=tuple(_split("--duration", v["duration"])),
        mean=_numbers("--mean", v["mean"], float),
        sigma=_numbers("--sigma", v["sigma"], float),
        deps=v["deps"],
        tags=_tags(v["tags"]) if v["tags"] else (),
        capacity=_weighted("--capacity", v["capacity"], int),
        render_capacity=args.render_capacity,
        speeds=_weighted("--speeds", v["speeds"], float),
    )


def network_model(args: argparse.Namespace) -> Any:
    """The :class:`~farmhand.sim.runtime.NetworkModel` of parsed arguments (``ValueError`` if bad)."""
    from farmhand.sim.runtime import NetworkModel

    return NetworkModel(args.latency, args.jitter, args.loss, args.internal_latency)


def fault_model(args: argparse.Namespace) -> Any:
    """The :class:`~farmhand.sim.run.FaultModel` of parsed arguments (``SpecError`` listing what is bad)."""
    from farmhand.sim.run import FaultModel

    faults = FaultModel(args.failure_prob, args.mtbf, args.mttr, args.heartbeat, args.zombie)
    problems = faults.check()
    if problems:
        raise SpecError(problems)
    return faults


def _workload(args: argparse.Namespace) -> Any:
    """The workload and the number of identical renders to make when it brings none."""
    from farmhand.sim.workload import default_renders, generate, load_workload_file, read_swf, swf_machine_size

    if args.workload or args.swf:
        given = [k for k in _GENERATOR_DEFAULTS if getattr(args, k) is not None]
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise _OptionError(f"{flag}: a synthetic generator option; not with --workload / --swf")
    if args.workload:
        if args.jobs is not None:
            raise _OptionError("--jobs: not with --workload (the file lists the jobs)")
        workload = load_workload_file(Path(args.workload))
        if workload.renders is not None and (args.renders is not None or args.render_capacity is not None):
            flag = "--renders" if args.renders is not None else "--render-capacity"
            raise _OptionError(f"{flag}: not with a workload file that lists its renders")
        if workload.renders is None:
            workload.renders = default_renders(workload, args.renders or 500, args.render_capacity)
            _check_capacity(workload)
        return workload
    if args.swf:
        if args.jobs is not None and args.jobs < 1:
            raise _OptionError(f"--jobs: must be >= 1 (got {args.jobs})")
        workload = read_swf(Path(args.swf), cancelled=args.swf_cancelled, max_jobs=args.jobs)
        biggest = max(b.capacity for j in workload.jobs for b in j.spec.blocks)
        capacity = args.render_capacity or biggest
        count = args.renders
        source = "option"
        if count is None:
            size = swf_machine_size(workload)
            count = max(1, math.ceil(size / capacity)) if size else 500
            source = "trace header (MaxProcs or MaxNodes)" if size else "default (no usable MaxProcs/MaxNodes header)"
        workload.renders = default_renders(workload, count, capacity)
        workload.scenario["renders_from"] = source
        _check_capacity(workload)
        return workload
    return generate(generator_options(args), seed=args.seed)


def _check_capacity(workload: Any) -> None:
    from farmhand.sim.workload import WorkloadError

    top = max(r.capacity for r in workload.renders)
    too_big = sorted({b.capacity for j in workload.jobs for b in j.spec.blocks if b.capacity > top})
    if too_big:
        raise WorkloadError([f"--render-capacity: {top} is less than tasks need (capacities {too_big[:5]})"])
    if workload.renders and min(r.capacity for r in workload.renders) < 1:
        raise WorkloadError(["--render-capacity: must be >= 1"])


def _check_counts(args: argparse.Namespace) -> None:
    if args.renders is not None and args.renders < 1:
        raise _OptionError(f"--renders: must be >= 1 (got {args.renders})")
    if args.jobs is not None and args.jobs < 1:
        raise _OptionError(f"--jobs: must be >= 1 (got {args.jobs})")
    if args.render_capacity is not None and args.render_capacity < 1:
        raise _OptionError(f"--render-capacity: must be >= 1 (got {args.render_capacity})")
    if args.gantt_renders < 1:
        raise _OptionError(f"--gantt-renders: must be >= 1 (got {args.gantt_renders})")
    if args.until is not None and not args.until > 0:
        raise _OptionError(f"--until: must be > 0 seconds (got {args.until})")


# ------------------------------------------------------------------------------------------------ the command


def cmd_sim(args: argparse.Namespace) -> int:
    """Run ``farmhand sim``; returns the exit code."""
    from farmhand.core.render import zombie_time_warning
    from farmhand.output import prepare_out, write_summary, write_tasks_csv
    from farmhand.policy_loader import load_policy, parse_options
    from farmhand.progress import ProgressLine
    from farmhand.sim.run import run_sim

    try:
        _check_counts(args)
        policy = load_policy(args.policy, parse_options(args.policy_option or []))
        network = network_model(args)
        faults = fault_model(args)
        workload = _workload(args)
        prepare_out(Path(args.out))
    except SpecError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except ValueError as exc:  # option errors, policy errors, network model errors
        text = str(exc)
        print(text if text.startswith("--") else f"farmhand sim: {text}", file=sys.stderr)
        return EXIT_USAGE

    if faults.render_faults or network.loss > 0:  # heartbeats are watched
        warning = zombie_time_warning(faults.heartbeat_s, faults.zombie_s, network.latency + network.jitter)
        if warning:
            print(f"farmhand sim: warning: {warning}", file=sys.stderr)
    total = workload.task_count()
    bar = ProgressLine(total, "sim", enabled=not args.quiet)

    def show(done: int, _total: int, now: float) -> None:
        bar.update(done, f"simulated {now:,.0f} s")

    result = run_sim(
        workload, policy, seed=args.seed, network=network, faults=faults, max_time=args.until, on_progress=show,
        progress_every=max(1000, total // 500),
    )
    s = result.summary
    bar.close(s["tasks_done"], f"simulated {result.sim_time:,.0f} s")
    out = Path(args.out)
    write_tasks_csv(out / "tasks.csv", result.records)
    write_summary(out / "summary.json", s)
    written = [out / "tasks.csv", out / "summary.json"]
    if args.plot:
        from farmhand.sim.plots import plot_all

        capacity_of = {
            (i + 1, b.name): b.capacity for i, j in enumerate(workload.jobs) for b in j.spec.blocks
        }
        written.extend(plot_all(result.records, result.renders, out, capacity_of=capacity_of,
                                gantt_renders=args.gantt_renders, title=f"{s['policy']}, seed {args.seed}"))
    for line in result.refused:
        print(f"refused: {line}", file=sys.stderr)
    if not args.quiet:
        print(summary_table(s, result.timings))
    print("wrote " + ", ".join(str(p) for p in written))
    if result.stalled:
        left = s["tasks_total"] - s["tasks_done"] - s["tasks_error"]
        reason = "the --until limit was reached" if args.until is not None else "nothing could move any more"
        print(f"stopped with {left} task(s) not done: {reason}", file=sys.stderr)
    return EXIT_OK if result.ok else EXIT_FAILED


def summary_table(s: dict[str, Any], timings: dict[str, float] | None = None) -> str:
    """The summary as an aligned table for the terminal."""
    def secs(value: float) -> str:
        if value >= 3600:
            return f"{value:,.1f} s ({value / 3600:.2f} h)"
        return f"{value:,.2f} s"

    rows: list[tuple[str, str]] = [
        ("policy", f"{s['policy']} (seed {s['seed']})"),
        ("renders", str(s["renders"])),
        ("tasks done", f"{s['tasks_done']:,} / {s['tasks_total']:,}  ({s['tasks_error']:,} in error)"),
        ("task runs", f"{s['task_runs']:,}  ({s.get('runs_lost', 0):,} lost to render faults)"),
        ("makespan", secs(s["makespan_s"])),
        ("throughput", f"{s['throughput_tasks_per_hour']:,.1f} tasks/h"),
        ("utilization", f"{s['utilization']:.1%}"),
        ("wait mean", secs(s["wait_mean_s"])),
        ("wait p50/p95/p99", f"{s['wait_p50_s']:,.1f} / {s['wait_p95_s']:,.1f} / {s['wait_p99_s']:,.1f} s"),
        ("queue mean", secs(s["queue_mean_s"])),
        ("job turnaround", secs(s["job_turnaround_mean_s"])),
        ("bounded slowdown", f"{s['bounded_slowdown_mean']:.2f}  (tau 10 s)"),
        ("jain fairness", f"{s['jain_fairness']:.3f}"),
    ]
    wall = s["wall_s"]
    rate = s["task_runs"] / wall if wall > 0 else 0.0
    rows.append(("wall clock", f"{wall:.2f} s  ({rate:,.0f} task runs/s, {s['events']:,} messages)"))
    if timings:
        rows.append(("  build/run/summary", " / ".join(f"{timings[k]:.2f}" for k in ("build_s", "run_s", "summary_s"))
                     + " s"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows]
    users = s.get("per_user", {})
    if users:
        name_w = max(4, *(len(u) for u in users))
        lines.append("")
        lines.append(f"{'user':<{name_w}}  {'share':>7}  {'tasks done':>10}  {'wait mean (s)':>13}")
        for user in sorted(users):
            u = users[user]
            lines.append(f"{user:<{name_w}}  {u['share']:>7.1%}  {u['tasks_done']:>10,}  {u['wait_mean_s']:>13,.1f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``farmhand sim`` alone (``python -m farmhand.cli_sim ...``), for use before it is wired in."""
    parser = argparse.ArgumentParser(prog="farmhand")
    add_sim_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["sim", *(sys.argv[1:] if argv is None else argv)])
    code: int = args.func(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
