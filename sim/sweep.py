"""Policy sweeps: many simulations (policies x seeds x generator parameters), run in parallel, and their statistics.

A sweep is the cartesian product of

- the policies (registered names or dotted paths, as ``farmhand sim --policy``),
- the seeds (``1-10``, ``1,2,5`` or mixes like ``1-3,7``: :func:`parse_seeds`),
- every option of :data:`OPTIONS` that was given (the synthetic generator's options of ``farmhand sim``, and its
  fault and network options), each with one value or several.

Several values of an option are separated by commas (``--jobs 100,200 --load 0.8,0.95``). The options whose
value is itself a comma list in ``farmhand sim`` (``--mean 60,120`` is one mean per block) keep that meaning;
their sweep values are separated by ``;`` instead (``--mean '60;120'`` sweeps two means). Every option that is
not given, and every value ``none``, keeps ``farmhand sim``'s default (``--mtbf none,3600``: without and with
render crashes).

Each run hands its options to ``farmhand sim``'s own parser and functions (:func:`farmhand.cli_sim.
generator_options`, ``fault_model``, ``network_model``), so a run with seed *s* simulates exactly what
``farmhand sim --seed s`` with the same options does, and every value means what it means there.

:func:`build_sweep` checks everything up front (every value of every option alone, then every combination
through the generator's own checks, every policy) and raises :class:`SweepError` with one line per problem,
each naming the option and the value. :func:`run_sweep` runs the :class:`RunSpec` s in parallel processes
(:class:`concurrent.futures.ProcessPoolExecutor`) or on a dask.distributed cluster (the optional ``dask``
extra), calls back as each one ends, and returns one :class:`RunResult` per run in the sweep's order; a run that
raises (or whose process dies) comes back with its error text and its parameters, never dropped.

:func:`mean_ci` gives the mean and the half-width of the 95 % confidence interval over seeds (Student t: scipy's
quantile when scipy is installed, else the table :data:`T975`), used by the comparison table and the plots.
"""

from __future__ import annotations

import argparse
import csv
import functools
import importlib
import itertools
import json
import math
import os
import statistics
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "EXECUTORS",
    "METRICS",
    "OPTIONS",
    "Metric",
    "RunResult",
    "RunSpec",
    "Sweep",
    "SweepError",
    "SweepOption",
    "build_sweep",
    "comparison_rows",
    "comparison_table",
    "expand",
    "mean_ci",
    "parse_seeds",
    "run_one",
    "run_sweep",
    "split_values",
    "t_quantile_975",
    "write_csv",
    "write_summaries",
]

EXECUTORS = ("local", "dask")

#: summary keys that are not scalar metrics, or that have their own column
_NOT_METRICS = ("policy", "seed", "scenario", "per_user")


class SweepError(ValueError):
    """Invalid sweep input; ``problems`` has one line per problem, each naming the option and the value."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


# ================================================================================================ options


@dataclass(frozen=True)
class SweepOption:
    """An option of ``farmhand sim`` that a sweep can vary (``dest`` as in ``farmhand sim``'s parser).

    ``listy`` options take a comma list as one value, so their sweep values are separated by ``;``.
    """

    dest: str
    help: str
    metavar: str = "V,..."
    listy: bool = False

    @property
    def flag(self) -> str:
        """The command-line flag, e.g. ``--burst-size``."""
        return "--" + self.dest.replace("_", "-")

    @property
    def separator(self) -> str:
        """What separates the values of a sweep."""
        return ";" if self.listy else ","


_LIST = "; sweep values separated by ';'"

#: the options a sweep can vary, in the order of their columns in ``sweep.csv``
OPTIONS: tuple[SweepOption, ...] = (
    SweepOption("jobs", "synthetic jobs (1000)", "J,..."),
    SweepOption("tasks", "tasks per job, split over the blocks (100)", "T,..."),
    SweepOption("blocks", "blocks per job (1)", "B,..."),
    SweepOption("renders", "renders (500)", "R,..."),
    SweepOption("users", "users (10)", "U,..."),
    SweepOption("priorities", "job priorities, uniform (0-199)", "LO-HI,..."),
    SweepOption("user_priorities", "users' fair-share priorities, cycled" + _LIST, "P,...;...", listy=True),
    SweepOption("user_weights", "users' weights, cycled" + _LIST, "W,...;...", listy=True),
    SweepOption("arrival", "arrivals: all, poisson or burst (poisson)", "KIND,..."),
    SweepOption("rate", "Poisson arrivals, jobs per second (default: from --load)", "RATE,..."),
    SweepOption("load", "offered load the default Poisson rate aims at (0.9)", "L,..."),
    SweepOption("burst_size", "jobs per burst (50)", "N,..."),
    SweepOption("burst_every", "seconds between bursts (3600)", "S,..."),
    SweepOption("duration", "task durations per block: fixed, exp or lognormal (lognormal)" + _LIST, "KIND,...;...",
                listy=True),
    SweepOption("mean", "mean task duration per block, seconds (60)" + _LIST, "S,...;...", listy=True),
    SweepOption("sigma", "lognormal sigma of log(duration) per block (0.5)" + _LIST, "S,...;...", listy=True),
    SweepOption("deps", "block dependencies: none, chain or frames (none)", "KIND,..."),
    SweepOption("tags", "tag mix TAG=R[:J],..." + _LIST, "TAG=R[:J],...;...", listy=True),
    SweepOption("capacity", "capacity mix of blocks C[=W],... (1)" + _LIST, "C[=W],...;...", listy=True),
    SweepOption("render_capacity", "capacity and max tasks of each render (default: the largest task capacity)",
                "C,..."),
    SweepOption("speeds", "render speed mix S[=W],... (1)" + _LIST, "S[=W],...;...", listy=True),
    SweepOption("failure_prob", "probability that a run fails (0)", "P,..."),
    SweepOption("mtbf", "render mean time between failures, seconds (none: no crashes)", "S,..."),
    SweepOption("mttr", "render mean time to repair, seconds (600)", "S,..."),
    SweepOption("heartbeat", "worker heartbeat interval when renders can fail, seconds (30)", "S,..."),
    SweepOption("zombie", "silence after which a render is lost, seconds (120)", "S,..."),
    SweepOption("latency", "worker<->server latency, seconds (0)", "S,..."),
    SweepOption("jitter", "extra uniform latency, seconds (0)", "S,..."),
    SweepOption("loss", "probability a worker<->server message is lost (0)", "P,..."),
    SweepOption("internal_latency", "latency of messages inside the server, seconds (0)", "S,..."),
    SweepOption("until", "stop each run at this simulated time, seconds", "S,..."),
)

_BY_DEST = {o.dest: o for o in OPTIONS}
#: the value that means "not given": ``farmhand sim``'s default (``--mtbf none,3600``)
NOT_GIVEN = "none"


class _Raising(argparse.ArgumentParser):
    """An argument parser whose errors raise :class:`SweepError` instead of exiting."""

    def error(self, message: str) -> NoReturn:
        raise SweepError([message.replace("argument ", "", 1)])


@functools.cache
def _sim_parser() -> argparse.ArgumentParser:
    """``farmhand sim``'s own parser: each run parses its options exactly as ``farmhand sim`` would."""
    from farmhand.cli_sim import add_sim_parser

    top = _Raising(prog="farmhand", add_help=False)
    return add_sim_parser(top.add_subparsers(parser_class=_Raising))


def _sim_namespace(params: Iterable[tuple[str, str]]) -> argparse.Namespace:
    """The parsed ``farmhand sim`` options of a run (SweepError when argparse refuses one)."""
    argv = [f"{_BY_DEST[d].flag}={v}" for d, v in params if v.lower() != NOT_GIVEN]
    return _sim_parser().parse_args(argv)


def _problems(exc: Exception) -> list[str]:
    """The lines of an error from ``farmhand sim``'s parsing, each naming its option."""
    problems = getattr(exc, "problems", None)
    if problems:
        return list(problems)
    text = str(exc)
    name, sep, rest = text.partition(":")
    if sep and not name.startswith("-") and name.replace("_", "").isalpha():  # NetworkModel says "loss: ..."
        return [f"--{name.replace('_', '-')}:{rest}"]
    return [text]


def _models(params: Iterable[tuple[str, str]]) -> tuple[Any, Any, Any, float | None]:
    """GeneratorOptions, FaultModel, NetworkModel and the time limit of a run, through ``farmhand sim``'s own
    functions; raises SweepError / SpecError / ValueError naming the option when one is bad."""
    from farmhand.cli_sim import fault_model, generator_options, network_model

    ns = _sim_namespace(params)
    return generator_options(ns), fault_model(ns), network_model(ns), ns.until


def split_values(option: SweepOption, text: str) -> tuple[str, ...]:
    """The sweep values of ``option`` given as ``text``; each one is converted once to check it."""
    values = tuple(t.strip() for t in text.split(option.separator))
    if not text.strip() or any(not v for v in values):
        raise SweepError([f"{option.flag}: expected values separated by {option.separator!r} (got {text!r})"])
    if len(set(values)) != len(values):
        twice = sorted({v for v in values if values.count(v) > 1})
        raise SweepError([f"{option.flag}: a value is given twice (got {text!r}: {', '.join(twice)})"])
    problems = [line for value in values for line in _check_value(option, value)]
    if problems:
        raise SweepError(problems)
    return values


def parse_seeds(text: str, option: str = "--seeds") -> tuple[int, ...]:
    """Seeds from ``1-10``, ``1,2,5`` or mixes like ``1-3,7,10-12``: in the order given, each once."""
    seeds: list[int] = []
    for item in (t.strip() for t in text.split(",")):
        low, sep, high = item.partition("-")
        try:
            lo = int(low)
            hi = int(high) if sep else lo
        except ValueError:
            where = f"{item!r}" if item == text.strip() else f"{item!r} in {text!r}"
            raise SweepError([f"{option}: expected seeds like 1-10 or 1,2,5 (got {where})"]) from None
        if lo < 0:
            raise SweepError([f"{option}: seeds must be >= 0 (got {item!r})"])
        if hi < lo:
            raise SweepError([f"{option}: a range must go up (got {item!r})"])
        seeds.extend(range(lo, hi + 1))
    unique = tuple(dict.fromkeys(seeds))
    if len(unique) != len(seeds):
        raise SweepError([f"{option}: a seed is given twice (got {text!r})"])
    return unique


# ================================================================================================ the sweep


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: a policy, a seed and the text of every given option (``(dest, text)`` pairs)."""

    index: int
    policy: str
    seed: int
    params: tuple[tuple[str, str], ...] = ()
    #: the options given with several values (the sweep's axes besides policy and seed)
    varied: tuple[str, ...] = ()
    policy_options: tuple[tuple[str, Any], ...] = ()

    def value(self, dest: str) -> str:
        """The text of option ``dest`` in this run."""
        return dict(self.params)[dest]

    def label(self) -> str:
        """``policy=fifo seed=3 load=0.95``: the policy, the seed and the varied options."""
        parts = [f"policy={self.policy}", f"seed={self.seed}"]
        parts.extend(f"{d}={self.value(d)}" for d in self.varied)
        return " ".join(parts)

    def estimated_tasks(self) -> int:
        """The tasks the run simulates (to start the big runs first)."""
        given = dict(self.params)

        def count(dest: str, default: int) -> int:
            text = given.get(dest, NOT_GIVEN)
            return default if text.lower() == NOT_GIVEN else int(text)

        return count("jobs", 1000) * count("tasks", 100)


@dataclass
class RunResult:
    """What one run gave: its summary (``summary.json``'s mapping), or the error that stopped it."""

    spec: RunSpec
    summary: dict[str, Any] | None = None
    ok: bool = False
    error: str | None = None

    @property
    def failed(self) -> bool:
        """The run raised (or its process died): no summary."""
        return self.summary is None


@dataclass(frozen=True)
class Sweep:
    """A checked sweep: what to run and how to describe it."""

    policies: tuple[str, ...]
    seeds: tuple[int, ...]
    #: every given option and its values, in :data:`OPTIONS` order
    axes: tuple[tuple[str, tuple[str, ...]], ...] = ()
    policy_options: tuple[tuple[str, Any], ...] = ()
    runs: tuple[RunSpec, ...] = field(default=())

    @property
    def varied(self) -> tuple[str, ...]:
        """The options given with several values."""
        return tuple(d for d, values in self.axes if len(values) > 1)

    @property
    def fixed(self) -> dict[str, str]:
        """The options given with one value."""
        return {d: values[0] for d, values in self.axes if len(values) == 1}


def expand(
    policies: Sequence[str],
    seeds: Sequence[int],
    axes: Sequence[tuple[str, Sequence[str]]] = (),
    policy_options: Sequence[tuple[str, Any]] = (),
) -> list[RunSpec]:
    """The cartesian product policies x option values x seeds, as run specs numbered in that order."""
    dests = [d for d, _ in axes]
    varied = tuple(d for d, values in axes if len(values) > 1)
    runs: list[RunSpec] = []
    for policy in policies:
        for combo in itertools.product(*(values for _, values in axes)):
            params = tuple(zip(dests, combo, strict=True))
            for seed in seeds:
                runs.append(RunSpec(len(runs), policy, seed, params, varied, tuple(policy_options)))
    return runs


def _check_value(option: SweepOption, value: str) -> list[str]:
    """The problems of one value alone (its type, its choices, its list syntax)."""
    from farmhand.cli_sim import generator_options

    try:
        generator_options(_sim_namespace([(option.dest, value)]))
    except (SweepError, ValueError) as exc:
        return _problems(exc)
    return []


def _check_combination(params: tuple[tuple[str, str], ...]) -> list[str]:
    """The problems of one combination of values (what only shows with the others, like --blocks > --tasks)."""
    try:
        options, _faults, _network, limit = _models(params)
        options.check()
    except (SweepError, ValueError) as exc:  # SpecError and WorkloadError are ValueErrors
        return _problems(exc)
    if limit is not None and not limit > 0:
        return [f"--until: must be > 0 seconds (got {limit})"]
    return []


def build_sweep(
    policies: str,
    seeds: str,
    options: Mapping[str, str | None] | None = None,
    policy_options: Sequence[tuple[str, Any]] = (),
) -> Sweep:
    """Check the sweep's input (option texts by ``dest``; None is not given) and expand it into runs.

    Raises :class:`SweepError` with every problem found, each naming the option and the value.
    """
    from farmhand.policy_loader import load_policy

    problems: list[str] = []
    names = tuple(t.strip() for t in policies.split(","))
    if not policies.strip() or any(not n for n in names):
        problems.append(f"--policy: expected policies separated by ',' (got {policies!r})")
        names = ()
    elif len(set(names)) != len(names):
        problems.append(f"--policy: a policy is given twice (got {policies!r})")
    for name in names:
        try:
            load_policy(name, dict(policy_options))
        except ValueError as exc:
            problems.append(f"--policy: {exc}")
    seed_list: tuple[int, ...] = ()
    try:
        seed_list = parse_seeds(seeds)
    except SweepError as exc:
        problems.extend(exc.problems)
    axes: list[tuple[str, tuple[str, ...]]] = []
    given = {k: v for k, v in (options or {}).items() if v is not None}
    unknown = sorted(set(given) - set(_BY_DEST))
    if unknown:
        raise ValueError(f"not sweep options: {', '.join(unknown)}")
    for option in OPTIONS:
        if option.dest in given:
            try:
                axes.append((option.dest, split_values(option, given[option.dest])))
            except SweepError as exc:
                problems.extend(exc.problems)
    if problems:
        raise SweepError(problems)
    varied = [d for d, values in axes if len(values) > 1]
    combos = list(itertools.product(*(values for _, values in axes)))
    where: dict[str, list[str]] = {}
    for combo in combos:
        params = tuple(zip([d for d, _ in axes], combo, strict=True))
        text = ", ".join(f"{_BY_DEST[d].flag} {v}" for d, v in params if d in varied)
        for line in _check_combination(params):
            where.setdefault(line, []).append(text)
    for line, places in where.items():
        if len(places) == len(combos):  # whatever the varied values: the fixed options are wrong
            problems.append(line)
        else:
            more = f" and {len(places) - 3} more" if len(places) > 3 else ""
            problems.append(f"{line} (with {'; '.join(places[:3])}{more})")
    if problems:
        raise SweepError(problems)
    runs = expand(names, seed_list, axes, policy_options)
    return Sweep(names, seed_list, tuple(axes), tuple(policy_options), tuple(runs))


# ================================================================================================ running


def run_one(spec: RunSpec) -> RunResult:
    """Simulate one run of a sweep (in whichever process or dask worker runs it); errors come back as text."""
    try:
        from farmhand.policy_loader import load_policy
        from farmhand.sim.run import run_sim
        from farmhand.sim.workload import generate

        options, faults, network, max_time = _models(spec.params)
        workload = generate(options, seed=spec.seed)
        policy = load_policy(spec.policy, dict(spec.policy_options))
        result = run_sim(workload, policy, seed=spec.seed, network=network, faults=faults, max_time=max_time)
        return RunResult(spec, result.summary, result.ok)
    except Exception as exc:  # reported with the run's parameters by the caller
        return RunResult(spec, error=_error_text(exc))


def _error_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)).rstrip()


#: (the result of a run that just ended, runs ended so far, runs in all) -> None
OnResult = Callable[[RunResult, int, int], None]


def run_sweep(
    runs: Sequence[RunSpec],
    *,
    executor: str = "local",
    jobs_parallel: int | None = None,
    scheduler: str | None = None,
    on_result: OnResult | None = None,
    connect_timeout_s: float = 10.0,
) -> list[RunResult]:
    """Run every spec; the results in the order of ``runs``.

    ``local``: ``jobs_parallel`` worker processes (default: the CPU count; one run at a time in this process
    when it is 1). ``dask``: the dask.distributed cluster whose scheduler listens at ``scheduler`` (its workers
    need farmhand installed). The biggest runs are started first. Raises :class:`SweepError` when the executor
    cannot start (dask missing, scheduler unreachable); a failing run never raises, it comes back failed.
    """
    if executor not in EXECUTORS:
        raise SweepError([f"--executor: must be one of {', '.join(EXECUTORS)} (got {executor!r})"])
    order = sorted(runs, key=lambda s: (-s.estimated_tasks(), s.index))
    results: dict[int, RunResult] = {}

    def finished(result: RunResult) -> None:
        results[result.spec.index] = result
        if on_result is not None:
            on_result(result, len(results), len(runs))

    if executor == "dask":
        if not scheduler:
            raise SweepError(["--executor dask: needs --scheduler ADDRESS"])
        _run_dask(order, scheduler, finished, connect_timeout_s)
    else:
        workers = jobs_parallel if jobs_parallel is not None else _cpu_count()
        if workers < 1:
            raise SweepError([f"--jobs-parallel: must be >= 1 (got {workers})"])
        _run_local(order, min(workers, max(1, len(runs))), finished)
    return [results[s.index] for s in runs]


def _cpu_count() -> int:
    """The CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _run_local(order: Sequence[RunSpec], workers: int, finished: Callable[[RunResult], None]) -> None:
    if workers == 1:
        for spec in order:
            finished(run_one(spec))
        return
    import multiprocessing

    # forkserver: workers do not inherit this process's threads (pykka, dask, the test runner's) as fork would
    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(method)
    if method == "forkserver":
        context.set_forkserver_preload(["farmhand.sim.sweep", "farmhand.sim.run", "farmhand.sim.workload"])
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context)
    try:
        pending: dict[Future[RunResult], RunSpec] = {pool.submit(run_one, spec): spec for spec in order}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                spec = pending.pop(future)
                try:
                    finished(future.result())
                except Exception as exc:  # the worker process died (BrokenProcessPool) or could not unpickle
                    finished(RunResult(spec, error=_error_text(exc)))
    except BaseException:  # interrupted: do not wait for the runs not started yet
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown()


def _run_dask(
    order: Sequence[RunSpec], scheduler: str, finished: Callable[[RunResult], None], timeout_s: float
) -> None:
    try:
        import distributed
    except ImportError:
        raise SweepError(
            ["--executor dask: dask.distributed is not installed (pip install 'farmhand[dask]')"]
        ) from None
    dask: Any = distributed  # an untyped library
    try:
        client = dask.Client(scheduler, timeout=f"{timeout_s}s", set_as_default=False)
    except (OSError, TimeoutError, ValueError) as exc:
        raise SweepError([f"--scheduler: cannot reach the dask scheduler at {scheduler!r} ({exc})"]) from None
    prefix = f"farmhand-sweep-{os.getpid()}-{id(order):x}"
    futures: dict[Any, RunSpec] = {}
    try:
        for spec in order:
            futures[client.submit(run_one, spec, key=f"{prefix}-{spec.index}", pure=False)] = spec
        for future in dask.as_completed(futures, loop=client.loop):
            spec = futures.pop(future)
            try:
                finished(future.result())
            except Exception as exc:  # the worker died, or the task could not be run there
                finished(RunResult(spec, error=_error_text(exc)))
    finally:
        if futures:  # interrupted: the cluster need not run the rest
            client.cancel(list(futures))
        client.close()


# ================================================================================================ statistics

#: Student t quantiles t(0.975, df) for df = 1..30; larger df use :func:`t_quantile_975`'s interpolation
T975 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
    2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
    2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)
#: (df, t(0.975, df)) beyond the table, down to the normal quantile
_T975_TAIL = ((30, 2.042), (40, 2.021), (60, 2.000), (120, 1.980), (math.inf, 1.960))


def t_quantile_975(df: int, use_scipy: bool = True) -> float:
    """The 97.5 % quantile of Student's t with ``df`` degrees of freedom (scipy's when installed)."""
    if df < 1:
        raise ValueError(f"df must be >= 1 (got {df})")
    if use_scipy:
        try:
            stats: Any = importlib.import_module("scipy.stats")
        except ImportError:
            pass
        else:
            return float(stats.t.ppf(0.975, df))
    if df <= len(T975):
        return T975[df - 1]
    for (d0, t0), (d1, t1) in itertools.pairwise(_T975_TAIL):
        if df <= d1:
            if d1 == math.inf:  # interpolate in 1/df, where t is nearly linear
                return t0 + (t1 - t0) * (1 / d0 - 1 / df) / (1 / d0)
            return t0 + (t1 - t0) * (1 / d0 - 1 / df) / (1 / d0 - 1 / d1)
    return 1.960


def mean_ci(values: Sequence[float]) -> tuple[float, float]:
    """The mean and the half-width of its 95 % confidence interval (Student t); half-width nan for one value."""
    clean = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    if not clean:
        return math.nan, math.nan
    mean = math.fsum(clean) / len(clean)
    if len(clean) < 2:
        return mean, math.nan
    sd = statistics.stdev(clean)
    return mean, t_quantile_975(len(clean) - 1) * sd / math.sqrt(len(clean))


@dataclass(frozen=True)
class Metric:
    """A summary metric compared across policies: its key, a title, its unit and a display scale."""

    key: str
    title: str
    unit: str
    #: the comparison table's column head
    short: str
    scale: float = 1.0
    fmt: str = ",.1f"

    @property
    def axis_label(self) -> str:
        """``Mean wait (s)``."""
        return f"{self.title} ({self.unit})"


#: the metrics the comparison table and the plots show
METRICS: tuple[Metric, ...] = (
    Metric("throughput_tasks_per_hour", "Throughput", "tasks/h", "throughput tasks/h"),
    Metric("utilization", "Utilization", "%", "util %", 100.0),
    Metric("wait_mean_s", "Mean wait", "s", "wait mean s"),
    Metric("wait_p95_s", "95th percentile wait", "s", "wait p95 s"),
    Metric("job_turnaround_mean_s", "Mean job turnaround", "s", "turnaround s"),
    Metric("bounded_slowdown_mean", "Bounded slowdown, tau 10 s", "ratio", "slowdown", fmt=",.2f"),
    Metric("jain_fairness", "Jain fairness", "index, 1 = fair", "jain", fmt=".3f"),
)


@dataclass
class Group:
    """The runs of one policy and one value of every varied option (their seeds are the samples)."""

    policy: str
    params: tuple[tuple[str, str], ...]
    results: list[RunResult] = field(default_factory=list)

    def stats(self, metric: Metric) -> tuple[float, float, int]:
        """Mean and 95 % CI half-width of ``metric`` (scaled for display) over the seeds, and the count."""
        values = [r.summary[metric.key] * metric.scale for r in self.results if r.summary is not None]
        mean, half = mean_ci(values)
        return mean, half, len(values)


def comparison_rows(results: Sequence[RunResult], varied: Sequence[str]) -> list[Group]:
    """The successful runs grouped by policy and varied options, in the sweep's order."""
    groups: dict[tuple[str, tuple[tuple[str, str], ...]], Group] = {}
    for r in results:
        params = tuple((d, r.spec.value(d)) for d in varied)
        group = groups.setdefault((r.spec.policy, params), Group(r.spec.policy, params))
        if not r.failed:
            group.results.append(r)
    return list(groups.values())


def _cell(mean: float, half: float, fmt: str) -> str:
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return format(mean, fmt)
    return f"{format(mean, fmt)} ± {format(half, fmt)}"


def comparison_table(results: Sequence[RunResult], varied: Sequence[str]) -> str:
    """Mean ± 95 % CI half-width of each metric per policy (and varied option values), aligned for a terminal."""
    head = ["policy", *varied, "runs", *(m.short for m in METRICS)]
    rows = [head]
    for group in comparison_rows(results, varied):
        cells = [group.policy, *(v for _, v in group.params), str(len(group.results))]
        cells.extend(_cell(*group.stats(m)[:2], m.fmt) for m in METRICS)
        rows.append(cells)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    left = len(varied) + 1  # the policy and the varied options are text: left-aligned; numbers right-aligned
    text = [
        "  ".join(c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    ]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text) + "\n(mean ± half-width of the 95% confidence interval over seeds, Student t)"


# ================================================================================================ outputs


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, results: Sequence[RunResult], varied: Sequence[str]) -> list[str]:
    """``sweep.csv``: one row per successful run in the sweep's order; returns the columns.

    Columns: the varied options, ``policy``, ``seed``, then every scalar summary metric in ``summary.json``'s
    order (``scenario`` and ``per_user`` are left out: see ``summaries.jsonl``), then ``ok``.
    """
    metrics: list[str] = []
    for r in results:
        for key, value in (r.summary or {}).items():
            if key not in _NOT_METRICS and key not in metrics and not isinstance(value, dict | list):
                metrics.append(key)
    columns = [*varied, "policy", "seed", *metrics, "ok"]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for r in results:
            if r.summary is None:
                continue
            row = [r.spec.value(d) for d in varied] + [r.spec.policy, str(r.spec.seed)]
            row.extend(_csv_value(r.summary.get(k)) for k in metrics)
            row.append(_csv_value(r.ok))
            writer.writerow(row)
    return columns


def write_summaries(path: Path, results: Sequence[RunResult]) -> None:
    """``summaries.jsonl``: one line per run: its parameters and its whole summary (or its error)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for r in results:
            line = {
                "run": r.spec.index,
                "policy": r.spec.policy,
                "seed": r.spec.seed,
                "params": dict(r.spec.params),
                "ok": r.ok,
                "summary": r.summary,
                "error": r.error,
            }
            f.write(json.dumps(line, sort_keys=False) + "\n")
