"""Reading job files (JSON or YAML) into parsed job specs, with every problem named by file and place."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from farmhand.core.spec import JobSpec, SpecError, parse_job


def load_data(path: Path) -> Any:
    """The JSON or YAML document in ``path`` (by suffix; YAML also reads JSON); SpecError if unreadable."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        if path.suffix.lower() == ".json":
            return json.loads(text)
        return yaml.safe_load(text)
    except json.JSONDecodeError as exc:
        raise SpecError([f"{path}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise SpecError([f"{where}: invalid YAML ({getattr(exc, 'problem', None) or exc})"]) from None


def load_jobs(path: Path) -> list[JobSpec]:
    """The jobs in a job file: one job, or a list of jobs, or ``{"jobs": [...]}``. All problems at once."""
    data = load_data(path)
    if isinstance(data, dict) and "jobs" in data and "blocks" not in data:
        data = data["jobs"]
    items = data if isinstance(data, list) else [data]
    if not items:
        raise SpecError([f"{path}: no job in the file"])
    specs: list[JobSpec] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        where = f"{path}" if len(items) == 1 and not isinstance(data, list) else f"{path}: jobs[{i}]"
        try:
            specs.append(parse_job(item, where=where))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return specs
