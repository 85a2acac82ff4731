"""The production client commands against an in-process server: output, exit codes (0, 1, 2), tokens."""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from farm_fixture import Farm, job_spec, running_farm

from farmhand.cli_server import add_server_parsers
from farmhand.core.records import CSV_COLUMNS


def farmhand(*argv: str) -> int:
    parser = argparse.ArgumentParser(prog="farmhand")
    add_server_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code: int = args.func(args)
    return code


@pytest.fixture
def farm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Farm]:
    with running_farm(tmp_path) as f:
        monkeypatch.setenv("FARMHAND_API", f.server.api_url)
        monkeypatch.setenv("FARMHAND_USER_TOKEN", f.admin.token or "")
        yield f


def test_submit_list_show_act_and_export(farm: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm.add_render("r1")
    path = tmp_path / "job.yaml"
    path.write_text(json.dumps(job_spec(frames=2)))  # JSON is YAML too
    assert farmhand("submit", str(path)) == 0
    assert capsys.readouterr().out == "1\n"
    farm.wait_job(1)
    assert farmhand("jobs") == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:5] == ["ID", "USER", "STATE", "PRI", "DONE"] and out[1].split()[:5] == [
        "1", "admin", "done", "99", "4/4",
    ]
    assert farmhand("job", "1", "--block", "prep", "--task", "1", "--lines", "2") == 0
    out = capsys.readouterr().out
    assert "job 1 'shot': user admin, done, priority 99" in out
    assert "block render after prep (frames): 2 done" in out and "| bye" in out
    assert farmhand("job", "1", "--offset", "1", "--limit", "2") == 0
    assert "(tasks 2-3 of 4 shown: --offset and --limit page through them)" in capsys.readouterr().out
    assert farmhand("priority", "1", "7") == 0 and capsys.readouterr().out == "job 1: priority 7\n"
    assert farmhand("restart", "1", "--block", "render", "--tasks", "1,2") == 0
    assert capsys.readouterr().out == "job 1: restarted 2 task(s)\n"
    farm.wait_runs(1, 6)
    farm.wait_job(1)
    assert farmhand("renders") == 0 and "r1" in capsys.readouterr().out
    assert farmhand("render", "pause", "r1") == 0 and capsys.readouterr().out == "render r1: paused\n"
    assert farmhand("render", "resume", "r1", "nope") == 2
    assert capsys.readouterr().out == "render r1: resumed\n"
    assert farmhand("export-runs", "--out", str(tmp_path / "api.csv")) == 0
    farm.store.flush()
    with (tmp_path / "api.csv").open() as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 1 + 6


def test_refusals_exit_2_and_an_unreachable_server_exits_1(
    farm: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "blocks": []}))
    assert farmhand("submit", str(bad)) == 2
    assert "blocks" in capsys.readouterr().err
    assert farmhand("job", "42") == 2 and "no job 42" in capsys.readouterr().err
    assert farmhand("pause", "42") == 2
    monkeypatch.setenv("FARMHAND_USER_TOKEN", "wrong")
    assert farmhand("jobs") == 2 and "token" in capsys.readouterr().err
    monkeypatch.setenv("FARMHAND_API", "http://127.0.0.1:9")
    assert farmhand("jobs") == 1 and "cannot reach" in capsys.readouterr().err


def test_admin_user_add_directly_on_the_store_and_through_the_api(
    farm: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert farmhand("admin", "user", "add", "ann", "--db", str(tmp_path / "farm.db")) == 0
    token = capsys.readouterr().out.strip()
    assert farmhand("jobs", "--token", token) == 0
    assert farmhand("admin", "user", "add", "bob", "--admin") == 0
    assert len(capsys.readouterr().out.strip()) >= 40
    assert farmhand("admin", "user", "add", "bob") == 2 and "exists" in capsys.readouterr().err
    assert farmhand("admin", "user", "list", "--db", str(tmp_path / "farm.db")) == 0
    assert capsys.readouterr().out.split("\n")[:3] == ["admin (admin)", "ann", "bob (admin)"]
    assert farmhand("admin", "log-level", "--token", token) == 2  # ann is no admin


def test_admin_worker_credentials_through_the_api_and_on_the_store(
    farm: Farm, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "farm.db")
    assert farmhand("admin", "worker", "add", "r1") == 0
    out = capsys.readouterr()
    token = out.out.strip()
    assert len(token) == 64 and "--name r1" in out.err
    assert farm.store.worker_for_token(token) == "r1"
    assert farmhand("admin", "worker", "add", "r1") == 2 and "enrolled already" in capsys.readouterr().err
    assert farmhand("admin", "worker", "add", "r2", "--db", db) == 0
    capsys.readouterr()
    assert farmhand("admin", "worker", "list") == 0
    assert [line.split()[0] for line in capsys.readouterr().out.splitlines()] == ["r1", "r2"]
    assert farmhand("admin", "worker", "remove", "r1") == 0
    assert "revoked" in capsys.readouterr().out and farm.store.worker_for_token(token) is None
    assert farmhand("admin", "worker", "remove", "r1") == 2 and "no worker 'r1'" in capsys.readouterr().err
    assert farmhand("admin", "worker", "remove", "r2", "--db", db) == 0
    assert farmhand("admin", "worker", "list", "--db", db) == 0
    assert capsys.readouterr().out.endswith("revoked the credential of worker 'r2'\n")
    ann = farm.client("ann")
    assert farmhand("admin", "worker", "add", "r3", "--token", ann.token or "") == 2  # not an admin
    assert "not an admin" in capsys.readouterr().err


def test_server_timings_that_cannot_work_are_refused_before_it_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = str(tmp_path / "farm.db")
    assert farmhand("server", "--heartbeat", "5", "--zombie", "1", "--db", db) == 2
    assert "--zombie greater than it" in capsys.readouterr().err
    assert not (tmp_path / "farm.db").exists()
