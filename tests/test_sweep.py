"""``farmhand sweep``: seeds and value lists, the cartesian expansion, real sweeps through local processes and a
local dask cluster (same rows both ways, and the same again), confidence intervals, failures and bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path
from typing import Any

import pytest

from farmhand.cli_sim import main as sim_main
from farmhand.cli_sweep import main
from farmhand.sim.sweep import (
    METRICS,
    OPTIONS,
    RunSpec,
    SweepError,
    build_sweep,
    expand,
    mean_ci,
    parse_seeds,
    run_sweep,
    split_values,
    t_quantile_975,
)

TINY = ["--jobs", "6", "--tasks", "4", "--renders", "3", "--users", "2"]
OPTION = {o.dest: o for o in OPTIONS}


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def without_wall(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]


# ------------------------------------------------------------------------------------------------ parsing


@pytest.mark.parametrize(
    ("text", "seeds"),
    [
        ("1-10", tuple(range(1, 11))),
        ("1,2,5", (1, 2, 5)),
        ("1-3,7,10-11", (1, 2, 3, 7, 10, 11)),
        (" 0 ", (0,)),
        ("5-5", (5,)),
        ("9,2-3", (9, 2, 3)),
    ],
)
def test_seeds(text: str, seeds: tuple[int, ...]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("3-1", "--seeds: a range must go up (got '3-1')"),
        ("a", "--seeds: expected seeds like 1-10 or 1,2,5 (got 'a')"),
        ("1,,2", "(got '' in '1,,2')"),
        ("1-x", "(got '1-x')"),
        ("-1", "--seeds: expected seeds like 1-10 or 1,2,5 (got '-1')"),
        ("1-3,2", "--seeds: a seed is given twice (got '1-3,2')"),
        ("", "--seeds: expected seeds"),
    ],
)
def test_bad_seeds(text: str, message: str) -> None:
    with pytest.raises(SweepError) as info:
        parse_seeds(text)
    assert message in info.value.problems[0]


def test_values_split_on_commas_or_on_semicolons_for_list_options() -> None:
    assert split_values(OPTION["jobs"], "100, 200") == ("100", "200")
    assert split_values(OPTION["load"], "0.9") == ("0.9",)
    assert split_values(OPTION["priorities"], "0-199,100-100") == ("0-199", "100-100")
    # --mean 60,120 is one mean per block, as in farmhand sim; ';' separates the sweep's values
    assert split_values(OPTION["mean"], "60,120;30") == ("60,120", "30")
    assert split_values(OPTION["capacity"], "1=3,4=1;1") == ("1=3,4=1", "1")
    assert split_values(OPTION["tags"], "gpu=0.5:0.2;gpu=1") == ("gpu=0.5:0.2", "gpu=1")
    for dest, text, message in [
        ("jobs", "10,x", "--jobs: invalid int value: 'x'"),
        ("load", "0.8,,0.9", "--load: expected values separated by ',' (got '0.8,,0.9')"),
        ("load", "0.8,0.8", "--load: a value is given twice"),
        ("mean", "60;x", "--mean: a number expected (got 'x')"),
        ("tags", "gpu", "--tags: expected TAG=R[:J] (got 'gpu')"),
        ("priorities", "a-b", "--priorities: LO-HI expected (got 'a')"),
        ("arrival", "all,soon", "--arrival: invalid choice: 'soon'"),
    ]:
        with pytest.raises(SweepError) as info:
            split_values(OPTION[dest], text)
        assert info.value.problems == [message] or message in info.value.problems[0], (dest, text)


def test_every_generator_fault_and_network_option_of_farmhand_sim_can_be_swept() -> None:
    import argparse

    from farmhand.cli_sim import add_fault_arguments, add_generator_arguments

    parser = argparse.ArgumentParser()
    add_generator_arguments(parser)
    add_fault_arguments(parser)
    sim = {a.dest for a in parser._actions if a.option_strings and a.dest != "help"} | {"jobs", "renders", "until"}
    assert sim == set(OPTION)


def test_none_means_farmhand_sims_default() -> None:
    sweep = build_sweep("fifo", "1", {"jobs": "3", "tasks": "2", "renders": "2", "mtbf": "none,50000"})
    results = run_sweep(sweep.runs, jobs_parallel=1)
    assert [r.summary["scenario"]["faults"]["mtbf_s"] for r in results if r.summary] == [None, 50000.0]


def test_the_expansion_is_the_cartesian_product() -> None:
    axes = [("jobs", ("10", "20")), ("load", ("0.5", "0.8", "0.95")), ("users", ("3",))]
    runs = expand(["fifo", "priority"], [1, 2, 3], axes)
    assert len(runs) == 2 * 2 * 3 * 1 * 3
    assert [r.index for r in runs] == list(range(len(runs)))
    got = {(r.policy, r.value("jobs"), r.value("load"), r.value("users"), r.seed) for r in runs}
    assert got == set(itertools.product(["fifo", "priority"], ["10", "20"], ["0.5", "0.8", "0.95"], ["3"], [1, 2, 3]))
    assert all(r.varied == ("jobs", "load") for r in runs)  # users has one value: fixed, not an axis
    assert runs[0].label() == "policy=fifo seed=1 jobs=10 load=0.5"
    assert expand(["fifo"], [7]) == [RunSpec(0, "fifo", 7)]


def test_build_sweep_checks_every_combination() -> None:
    sweep = build_sweep("fifo,fairshare", "1-2", {"jobs": "5,6", "tasks": "4", "load": None})
    assert sweep.policies == ("fifo", "fairshare") and sweep.seeds == (1, 2)
    assert sweep.varied == ("jobs",) and sweep.fixed == {"tasks": "4"}
    assert len(sweep.runs) == 8
    with pytest.raises(SweepError) as info:
        build_sweep("fifo,nope", "2-1", {"jobs": "0"})
    problems = info.value.problems
    assert any(p.startswith("--policy: unknown policy 'nope'") for p in problems)
    assert "--seeds: a range must go up (got '2-1')" in problems
    with pytest.raises(SweepError) as info:  # only one combination is wrong: it is named
        build_sweep("fifo", "1", {"tasks": "2,8", "blocks": "4"})
    assert info.value.problems == ["--blocks: must be <= --tasks (got 4 > 2) (with --tasks 2)"]
    with pytest.raises(SweepError) as info:  # wrong whatever the varied values: said once
        build_sweep("fifo", "1", {"tasks": "2", "blocks": "4", "load": "0.5,0.9"})
    assert info.value.problems == ["--blocks: must be <= --tasks (got 4 > 2)"]


# ------------------------------------------------------------------------------------------------ statistics


def test_student_t_quantiles_and_confidence_intervals() -> None:
    assert t_quantile_975(1, use_scipy=False) == 12.706
    assert t_quantile_975(4, use_scipy=False) == 2.776
    assert t_quantile_975(30, use_scipy=False) == 2.042
    assert 2.000 < t_quantile_975(45, use_scipy=False) < 2.021
    assert 1.960 < t_quantile_975(1000, use_scipy=False) < 1.963
    for df in (1, 2, 5, 9, 29, 50, 200):  # the table agrees with scipy where scipy is installed
        assert t_quantile_975(df) == pytest.approx(t_quantile_975(df, use_scipy=False), abs=2e-3)
    mean, half = mean_ci([1.0, 2.0, 3.0, 4.0, 5.0])
    assert mean == 3.0
    assert half == pytest.approx(t_quantile_975(4) * math.sqrt(2.5) / math.sqrt(5))
    mean, half = mean_ci([4.0])
    assert mean == 4.0 and math.isnan(half)
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 0.0)
    assert all(math.isnan(v) for v in mean_ci([]))


# ------------------------------------------------------------------------------------------------ real sweeps


def test_a_local_sweep_writes_rows_plots_and_a_table_and_is_deterministic(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["--policy", "fifo,fairshare", "--seeds", "1-3", *TINY, "--load", "0.5,0.95", "--jobs-parallel", "2"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    captured = capsys.readouterr()
    assert "sweep [" in captured.err and "12/12" in captured.err  # the progress line
    table = captured.out
    assert "policy" in table and "throughput tasks/h" in table and "±" in table
    assert sum(1 for line in table.splitlines() if line.startswith(("fifo ", "fairshare "))) == 4

    rows = read_csv(tmp_path / "a" / "sweep.csv")
    assert len(rows) == 2 * 3 * 2
    columns = list(rows[0])
    assert columns[:3] == ["load", "policy", "seed"]
    for key in ("tasks_total", "task_runs", "tasks_done", "makespan_s", "throughput_tasks_per_hour", "utilization",
                "wait_mean_s", "wait_p95_s", "job_turnaround_mean_s", "bounded_slowdown_mean", "jain_fairness",
                "wall_s", "events", "ok"):
        assert key in columns, key
    assert "per_user" not in columns and "scenario" not in columns
    assert {(r["policy"], r["load"], r["seed"]) for r in rows} == set(
        itertools.product(["fifo", "fairshare"], ["0.5", "0.95"], ["1", "2", "3"])
    )
    assert all(r["tasks_done"] == r["tasks_total"] == "24" and r["ok"] == "true" for r in rows)
    lines = (tmp_path / "a" / "summaries.jsonl").read_text().splitlines()
    assert len(lines) == 12 and all("per_user" in json.loads(line)["summary"] for line in lines)
    for name in ("comparison.png", "by_load.png"):
        png = tmp_path / "a" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000, name

    # the same sweep again (runs finishing in another order) gives the same rows, wall clock apart
    assert main([*argv, "--out", str(tmp_path / "b"), "--quiet", "--no-plot"]) == 0
    assert without_wall(read_csv(tmp_path / "b" / "sweep.csv")) == without_wall(rows)
    assert not (tmp_path / "b" / "comparison.png").exists()

    # and a run is exactly what farmhand sim does with the same options and seed
    assert sim_main([*TINY, "--load", "0.95", "--policy", "fairshare", "--seed", "2", "--quiet",
                     "--out", str(tmp_path / "sim")]) == 0
    alone = json.loads((tmp_path / "sim" / "summary.json").read_text())
    entry = next(json.loads(line) for line in lines
                 if '"fairshare"' in line and json.loads(line)["seed"] == 2 and '"0.95"' in line)
    assert without_wall([entry["summary"]]) == without_wall([alone])


def test_the_engine_keeps_the_sweep_order_and_reports_failed_runs_with_their_parameters() -> None:
    good = build_sweep("fifo", "1-2", {"jobs": "4", "tasks": "2", "renders": "2"}).runs
    bad = [
        RunSpec(2, "fifo", 1, (("jobs", "0"),), ("jobs",)),  # refused by the generator inside the run
        RunSpec(3, "no_such_module.Policy", 1, (("jobs", "4"), ("tasks", "2"))),
    ]
    seen: list[int] = []
    results = run_sweep([*good, *bad], jobs_parallel=2, on_result=lambda r, done, total: seen.append(done))
    assert seen == [1, 2, 3, 4]
    assert [r.spec.index for r in results] == [0, 1, 2, 3]
    assert [r.failed for r in results] == [False, False, True, True]
    assert results[0].ok and results[0].summary is not None and results[0].summary["seed"] == 1
    assert "--jobs: must be >= 1 (got 0)" in (results[2].error or "")
    assert "cannot import 'no_such_module'" in (results[3].error or "")
    assert results[2].spec.label() == "policy=fifo seed=1 jobs=0"


def test_a_failing_run_is_reported_and_exits_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import farmhand.sim.run as sim_run

    real = sim_run.run_sim

    def flaky(*args: Any, **kw: Any) -> Any:
        if kw["seed"] == 2:
            raise RuntimeError("boom in the simulation")
        return real(*args, **kw)

    monkeypatch.setattr(sim_run, "run_sim", flaky)  # seen by the runs in this process (--jobs-parallel 1)
    code = main(["--policy", "fifo", "--seeds", "1-3", *TINY, "--jobs-parallel", "1", "--quiet",
                 "--out", str(tmp_path)])
    assert code == 1
    err = capsys.readouterr().err
    assert "run 1 failed (policy=fifo seed=2): RuntimeError: boom in the simulation" in err
    assert "1 of 3 run(s) failed" in err
    assert "boom in the simulation" in (tmp_path / "failures.log").read_text()
    assert [r["seed"] for r in read_csv(tmp_path / "sweep.csv")] == ["1", "3"]
    assert json.loads((tmp_path / "summaries.jsonl").read_text().splitlines()[1])["error"].endswith(
        "RuntimeError: boom in the simulation")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--policy", "fifo,nope", "--seeds", "1"], "--policy: unknown policy 'nope'"),
        (["--policy", "fifo", "--seeds", "5-1"], "--seeds: a range must go up (got '5-1')"),
        (["--policy", "fifo", "--seeds", "1,x"], "--seeds: expected seeds like 1-10 or 1,2,5 (got 'x' in '1,x')"),
        (["--policy", "fifo", "--seeds", "1", "--jobs", "10,x"], "--jobs: invalid int value: 'x'"),
        (["--policy", "fifo", "--seeds", "1", "--load", "0.8,0"], "--load: must be > 0 (got 0.0) (with --load 0)"),
        (["--policy", "fifo", "--seeds", "1", "--mean", "60,120"], None),  # valid: one mean per block
        (["--policy", "fifo", "--seeds", "1", "--arrival", "poisson,soon"], "--arrival: invalid choice: 'soon'"),
        (["--policy", "fifo", "--seeds", "1", "--load", "nan"], "--load: must be > 0 (got nan)"),
        (["--policy", "fifo", "--seeds", "1", "--loss", "0.1,1"], "--loss: must be >= 0 and < 1 (got 1.0)"),
        (["--policy", "fifo", "--seeds", "1", "--jobs-parallel", "0"], "--jobs-parallel: must be >= 1 (got 0)"),
        (["--policy", "fifo", "--seeds", "1", "--executor", "dask"], "--executor dask: needs --scheduler ADDRESS"),
        (["--policy", "fifo", "--seeds", "1", "--executor", "local", "--scheduler", "tcp://127.0.0.1:9"],
         "--scheduler: only with --executor dask"),
        (["--policy", "fifo", "--seeds", "1", "--policy-option", "x"], "--policy-option: policy option 'x'"),
    ],
)
def test_bad_input_exits_2_naming_the_option_and_value(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str | None
) -> None:
    if message is None:  # the control: the same shape of input, valid
        assert main([*argv, *TINY, "--blocks", "2", "--quiet", "--no-plot", "--out", str(tmp_path)]) == 0
        return
    assert main([*argv, "--quiet", "--out", str(tmp_path)]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "sweep.csv").exists()


def test_an_output_folder_that_cannot_be_made_is_a_usage_error_before_any_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main(["--policy", "fifo", "--seeds", "1", *TINY, "--quiet", "--out", str(tmp_path / "file" / "o")]) == 2
    assert "--out: cannot create the folder" in capsys.readouterr().err


def test_metrics_have_titles_and_units() -> None:
    assert [m.key for m in METRICS] == [
        "throughput_tasks_per_hour", "utilization", "wait_mean_s", "wait_p95_s", "job_turnaround_mean_s",
        "bounded_slowdown_mean", "jain_fairness",
    ]
    assert all(m.title and m.unit and m.axis_label.endswith(f"({m.unit})") for m in METRICS)


# ------------------------------------------------------------------------------------------------ dask


def test_the_same_sweep_on_a_local_dask_cluster(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    LocalCluster = pytest.importorskip("distributed", reason="the optional dask extra").LocalCluster

    argv = ["--policy", "fifo,priority", "--seeds", "1-3", *TINY, "--quiet", "--no-plot"]
    assert main([*argv, "--jobs-parallel", "2", "--out", str(tmp_path / "local")]) == 0
    cluster = LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                           dashboard_address=":0")
    try:
        address = cluster.scheduler_address
        assert address.startswith("tcp://127.0.0.1:")
        assert main([*argv, "--executor", "dask", "--scheduler", address, "--out", str(tmp_path / "dask")]) == 0
        # --scheduler alone implies --executor dask
        assert main([*argv, "--scheduler", address, "--out", str(tmp_path / "dask2")]) == 0
    finally:
        cluster.close()
    rows = read_csv(tmp_path / "dask" / "sweep.csv")
    assert len(rows) == 6 and [(r["policy"], r["seed"]) for r in rows] == list(
        itertools.product(["fifo", "priority"], ["1", "2", "3"])
    )
    assert without_wall(rows) == without_wall(read_csv(tmp_path / "local" / "sweep.csv"))
    assert without_wall(read_csv(tmp_path / "dask2" / "sweep.csv")) == without_wall(rows)


def test_an_unreachable_scheduler_is_a_usage_error() -> None:
    pytest.importorskip("distributed", reason="the optional dask extra")
    runs = build_sweep("fifo", "1", {"jobs": "2", "tasks": "2", "renders": "2"}).runs
    with pytest.raises(SweepError) as info:
        run_sweep(runs, executor="dask", scheduler="tcp://127.0.0.1:9", connect_timeout_s=1.0)
    assert info.value.problems[0].startswith("--scheduler: cannot reach the dask scheduler at 'tcp://127.0.0.1:9'")


def test_a_confidence_interval_past_100_percent_utilization_is_not_cut_off() -> None:
    from matplotlib.figure import Figure

    from farmhand.sim.sweep_plots import _decorate

    utilization = next(m for m in METRICS if m.key == "utilization")
    ax = Figure().subplots()
    ax.bar([0], [90.0], yerr=[20.0])
    _decorate(ax, utilization)
    assert ax.get_ylim()[0] == 0 and ax.get_ylim()[1] >= 110
    ax = Figure().subplots()
    ax.bar([0], [50.0], yerr=[5.0])
    _decorate(ax, utilization)
    assert ax.get_ylim() == (0, 105)  # the natural top when nothing reaches past it
