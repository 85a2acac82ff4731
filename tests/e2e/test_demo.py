"""``farmhand demo`` end to end: a server, real worker processes and the sample job, to done."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest

from farmhand.demo import run_demo

pytestmark = pytest.mark.e2e


def test_demo_runs_the_sample_job_to_done(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    farm_logger = logging.getLogger("farmhand")
    before = (list(farm_logger.handlers), farm_logger.level, farm_logger.propagate)
    assert run_demo(workers=2, folder=tmp_path, frames=3, timeout=60) == 0
    # the demo's log file is gone from the logging setup, which is the caller's again (caplog keeps working)
    assert (list(farm_logger.handlers), farm_logger.level, farm_logger.propagate) == before
    out = capsys.readouterr().out
    assert "job 1 done: 5/5 tasks" in out
    rows = list(csv.DictReader((tmp_path / "tasks.csv").open()))
    assert sorted((r["block"], r["task"]) for r in rows) == [
        ("encode", "movie"), ("render", "1"), ("render", "2"), ("render", "3"), ("simulate", "1-3"),
    ]
    assert {r["state"] for r in rows} == {"done"}
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [
        "frame_0001.pgm", "frame_0002.pgm", "frame_0003.pgm", "movie.sha256",
    ]
