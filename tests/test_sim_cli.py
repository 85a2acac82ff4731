"""``farmhand sim`` end to end: outputs in the contract's formats, plots, exit codes and error messages."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from farmhand.cli_sim import main
from farmhand.core.records import CSV_COLUMNS

SUMMARY_KEYS = [
    "policy", "seed", "scenario", "renders", "tasks_total", "task_runs", "tasks_done", "tasks_error", "makespan_s",
    "throughput_tasks_per_hour", "utilization", "wait_mean_s", "wait_p50_s", "wait_p95_s", "wait_p99_s",
    "queue_mean_s", "job_turnaround_mean_s", "bounded_slowdown_mean", "jain_fairness", "per_user", "wall_s",
    "events",
]
SMALL = ["--jobs", "30", "--tasks", "8", "--renders", "10", "--users", "3", "--quiet"]


def test_outputs_follow_the_contract(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o"
    assert main([*SMALL, "--out", str(out), "--blocks", "2", "--deps", "chain", "--seed", "5"]) == 0
    with (out / "tasks.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 1 + 240
    keys = [(float(r[11]), int(r[0]), r[3], r[4]) for r in rows[1:]]
    assert keys == sorted(keys)  # by starting time, then job id, block, task
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary)[: len(SUMMARY_KEYS)] == SUMMARY_KEYS
    assert summary["tasks_done"] == summary["tasks_total"] == 240
    assert summary["seed"] == 5 and summary["policy"] == "priority"
    assert summary["scenario"]["source"] == "synthetic" and summary["scenario"]["deps"] == "chain"
    assert set(summary["per_user"]) == {"user00", "user01", "user02"}
    assert "wrote" in capsys.readouterr().out


def test_summary_table_and_progress(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [a for a in SMALL if a != "--quiet"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    for label in ("makespan", "utilization", "wait p50/p95/p99", "jain fairness", "task runs/s"):
        assert label in captured.out
    assert "sim [" in captured.err and "240/240" in captured.err


def test_same_seed_same_tasks_csv_through_the_cli(tmp_path: Path) -> None:
    extra = ["--blocks", "3", "--deps", "frames", "--failure-prob", "0.05", "--mtbf", "5000", "--mttr", "300",
             "--heartbeat", "5", "--zombie", "20", "--latency", "0.01", "--jitter", "0.02", "--policy", "fairshare"]
    codes = [main([*SMALL, *extra, "--seed", "9", "--out", str(tmp_path / name)]) for name in ("a", "b")]
    assert codes[0] == codes[1]
    assert (tmp_path / "a" / "tasks.csv").read_bytes() == (tmp_path / "b" / "tasks.csv").read_bytes()


def test_plots_are_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each figure is written as a PNG; what they draw is checked on the figure objects in test_sim_plots.py,
    and here that the run's own records reach them (every done task counted, every user drawn)."""
    import numpy as np
    from matplotlib.figure import Figure

    from farmhand.sim import plots

    saved: dict[str, Figure] = {}
    real_save = plots._save

    def keep(fig: Figure, path: Path) -> Path:
        saved[path.name] = fig
        written: Path = real_save(fig, path)
        return written

    monkeypatch.setattr(plots, "_save", keep)
    assert main([*SMALL, "--out", str(tmp_path), "--plot", "--mtbf", "3000", "--heartbeat", "5", "--zombie", "20"]) == 0
    names = ["throughput", "utilization", "user_share", "wait_cdf", "gantt"]
    assert list(saved) == [f"{name}.png" for name in names]
    for name in names:
        png = tmp_path / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    summary = json.loads((tmp_path / "summary.json").read_text())
    (cumulative,) = saved["throughput.png"].axes[0].get_lines()
    assert np.asarray(cumulative.get_ydata())[-1] == summary["tasks_done"] == 240
    wait_users = [line.get_label() for line in saved["wait_cdf.png"].axes[0].get_lines()]
    assert wait_users == ["user00", "user01", "user02"]
    assert len(saved["user_share.png"].axes[0].collections) == 3
    assert saved["gantt.png"].axes[0].get_title() == "Runs on 10 of 10 renders (priority, seed 0)"


def test_workload_file_and_swf(tmp_path: Path) -> None:
    wl = tmp_path / "wl.yaml"
    wl.write_text(
        "renders:\n  - {name: a, capacity: 2, max_tasks: 2}\n"
        "jobs:\n"
        "  - {submit_at: 0, job: {name: j, blocks: [{name: r, command: x, frames: {first: 1, last: 4}}]},"
        " durations: {r: [1, 2, 3, 4]}}\n"
    )
    assert main(["--workload", str(wl), "--out", str(tmp_path / "w"), "--quiet"]) == 0
    summary = json.loads((tmp_path / "w" / "summary.json").read_text())
    assert summary["tasks_done"] == 4 and summary["renders"] == 1
    assert summary["makespan_s"] == pytest.approx(6.0)  # 1+3 on one slot, 2+4 on the other
    swf = tmp_path / "t.swf"
    swf.write_text("; MaxProcs: 16\n1 0 0 10 8 -1 -1 8 -1 -1 1 1 -1 -1 -1 -1 -1 -1\n"
                   "2 1 0 10 8 -1 -1 8 -1 -1 1 2 -1 -1 -1 -1 -1 -1\n3 2 0 10 8 -1 -1 8 -1 -1 1 1 -1 -1 -1 -1 -1 -1\n")
    assert main(["--swf", str(swf), "--out", str(tmp_path / "s"), "--quiet", "--policy", "fifo"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["renders"] == 2  # MaxProcs 16 / 8 per render
    assert summary["scenario"]["renders_from"] == "trace header (MaxProcs or MaxNodes)"
    assert summary["tasks_done"] == 3 and summary["makespan_s"] == pytest.approx(20.0)
    swf.write_text(swf.read_text().replace("MaxProcs: 16", "MaxProcs: abc"))  # unusable: the default, said so
    assert main(["--swf", str(swf), "--out", str(tmp_path / "s"), "--quiet", "--policy", "fifo"]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["renders"] == 500
    assert summary["scenario"]["renders_from"] == "default (no usable MaxProcs/MaxNodes header)"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--jobs", "0"], "--jobs: must be >= 1"),
        (["--arrival", "poisson", "--rate", "-1"], "--rate: must be > 0"),
        (["--mean", "a,b"], "--mean: a number expected (got 'a')"),
        (["--tags", "gpu"], "--tags: expected TAG=R[:J]"),
        (["--capacity", "4", "--render-capacity", "2"], "--render-capacity: must be >= the largest task capacity 4"),
        (["--failure-prob", "1.5"], "--failure-prob: must be >= 0 and < 1"),
        (["--mtbf", "0"], "--mtbf: must be > 0"),
        (["--loss", "2"], "loss: must be >= 0 and < 1"),
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--priorities", "5-300"], "--priorities: must be 0 <= low <= high <= 255"),
        (["--policy", "weighted", "--policy-option", "half_life_s=abc"],
         "policy 'weighted': half_life_s: must be a number of seconds (got 'abc')"),
    ],
)
def test_bad_options_exit_2_with_a_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "tasks.csv").exists()


def test_bad_files_exit_2_naming_file_line_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    wl = tmp_path / "wl.json"
    wl.write_text(json.dumps({"jobs": [{"job": {"name": "j", "blocks": [{"name": "r", "command": "x",
                                                                           "frames": {"first": 1, "last": 2}}]},
                                        "durations": {"r": [1]}}]}))
    assert main(["--workload", str(wl), "--out", str(tmp_path), "--quiet"]) == 2
    assert f"{wl}: jobs[0].durations.r: must have one duration per task: 2 (got 1)" in capsys.readouterr().err
    swf = tmp_path / "t.swf"
    swf.write_text("; header\n1 0 0 10 8\n")
    assert main(["--swf", str(swf), "--out", str(tmp_path), "--quiet"]) == 2
    assert f"{swf}:2: expected 18 fields, got 5" in capsys.readouterr().err
    assert main(["--swf", str(swf), "--blocks", "2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--blocks: a synthetic generator option" in capsys.readouterr().err
    assert main(["--workload", str(tmp_path / "none.json"), "--out", str(tmp_path), "--quiet"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_an_output_folder_that_cannot_be_made_is_a_usage_error_before_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "file").write_text("")
    assert main([*SMALL, "--out", str(tmp_path / "file" / "out")]) == 2
    assert f"--out: cannot create the folder '{tmp_path / 'file' / 'out'}'" in capsys.readouterr().err


def test_render_options_with_a_workload_that_lists_renders_name_the_option(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    wl = tmp_path / "wl.yaml"
    wl.write_text("renders: [{name: a}]\njobs:\n  - {job: {name: j, blocks: [{name: r, command: x, "
                  "frames: {first: 1, last: 1}}]}, durations: {r: 1}}\n")
    assert main(["--workload", str(wl), "--render-capacity", "2", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--render-capacity: not with a workload file that lists its renders" in capsys.readouterr().err


def test_tasks_in_error_exit_1(tmp_path: Path) -> None:
    assert main([*SMALL, "--failure-prob", "0.7", "--out", str(tmp_path)]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["tasks_error"] > 0


def test_runs_as_a_module_with_exit_codes(tmp_path: Path) -> None:
    ok = subprocess.run([sys.executable, "-m", "farmhand.cli_sim", *SMALL, "--out", str(tmp_path)],
                        capture_output=True, text=True, check=False)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "farmhand.cli_sim", "--users", "0", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and "--users: must be >= 1" in bad.stderr


def test_farmhand_sim_runs_through_the_farmhand_command(tmp_path: Path) -> None:
    """``farmhand sim`` is wired into the ``farmhand`` command: any exit, ``SystemExit`` included, fails."""
    from farmhand import cli

    code = cli.main(["sim", *SMALL, "--out", str(tmp_path)])
    assert code == 0 and (tmp_path / "tasks.csv").exists()


def test_same_seed_same_tasks_csv_across_processes_and_hash_seeds(tmp_path: Path) -> None:
    """String hashing differs between processes: nothing may depend on set or dict order of strings."""
    import os

    args = [*SMALL, "--blocks", "2", "--deps", "frames", "--mtbf", "4000", "--heartbeat", "5", "--zombie", "20",
            "--failure-prob", "0.05", "--jitter", "0.01", "--policy", "fairshare", "--seed", "3"]
    outputs = []
    for hash_seed in ("1", "2"):
        out = tmp_path / hash_seed
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        done = subprocess.run([sys.executable, "-m", "farmhand.cli_sim", *args, "--out", str(out)],
                              capture_output=True, text=True, check=False, env=env)
        assert done.returncode == 0, done.stderr
        outputs.append((out / "tasks.csv").read_bytes())
    assert outputs[0] == outputs[1]


def test_farmhand_local_checks_its_output_folder_before_running(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from farmhand.cli import main as farmhand

    job = tmp_path / "job.json"
    block = {"name": "b", "command": "x", "frames": {"first": 1, "last": 2}}
    job.write_text(json.dumps({"name": "j", "blocks": [block]}))
    (tmp_path / "file").write_text("")
    assert farmhand(["local", str(job), "--out", str(tmp_path / "file" / "out"), "--quiet"]) == 2
    assert f"farmhand local: --out: cannot create the folder '{tmp_path / 'file' / 'out'}'" in capsys.readouterr().err
    for option, value, message in (("--renders", "100000000", "--renders: must be 1-1000 (got 100000000)"),
                                   ("--task-seconds", "1e308", "--task-seconds: must be 0-3600 (got 1e+308)")):
        assert farmhand(["local", str(job), option, value, "--out", str(tmp_path / "o"), "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_a_server_url_that_is_not_http_is_refused_by_name() -> None:
    from farmhand.client import ApiClient, ApiError

    with pytest.raises(ApiError) as err:
        ApiClient("notaurl")
    assert "server URL 'notaurl' (--api or FARMHAND_API): must be http://HOST:PORT" in str(err.value.lines())


def test_a_tight_zombie_time_is_warned_about(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--jobs", "2", "--tasks", "3", "--renders", "2", "--mtbf", "1e12", "--heartbeat", "30", "--zombie", "40"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    assert "farmhand sim: warning: the zombie time (40 s) is under 3 heartbeats" in capsys.readouterr().err
