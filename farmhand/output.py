"""Writing the per-run records (``tasks.csv``) and the summary (``summary.json``)."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from farmhand.core.messages import RunRecord
from farmhand.core.records import CSV_COLUMNS, csv_row, sort_records


def prepare_out(path: Path, option: str = "--out") -> None:
    """Create the output folder before anything runs, so a bad ``--out`` is a usage error, not a crash at the end
    of a long run (``ValueError`` naming the option)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{option}: cannot create the folder {str(path)!r} ({exc.strerror or exc})") from None


def write_tasks_csv(path: Path, records: Iterable[RunRecord]) -> int:
    """Write ``tasks.csv`` (sorted as the contract says); returns the number of rows."""
    rows = sort_records(records)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for r in rows:
            writer.writerow(csv_row(r))
    return len(rows)


def write_summary(path: Path, summary: Mapping[str, Any]) -> None:
    """Write ``summary.json``, keys in the contract's order, pretty-printed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
