"""Reading job documents (JSON or YAML, from a file or a request body) into parsed job specs.

One reader for every way a document comes in: a job file (``farmhand validate``/``local``/``submit``), a
workload file (``farmhand sim --workload``) and the body of ``POST /api/jobs``. Every problem is named by its
source (the file, or ``body``) and place: syntax errors with their line and column, a number too long to
read, nesting too deep to read, text that is not valid Unicode (a lone surrogate in a ``\\u`` escape), and,
for job documents, the shape of the document itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from farmhand.core.spec import JobSpec, SpecError, parse_job


class _DuplicateKey(ValueError):
    pass


def _json_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"key {key!r} given twice in one object")
        out[key] = value
    return out


class _Loader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML would keep the last silently).

    Only a mapping's own keys count: merging (``<<: *base``) rewrites a mapping's node to hold the merged keys
    too, and an anchored mapping met again through an alias is not checked a second time.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._flattened: set[int] = set()

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        super().flatten_mapping(node)
        self._flattened.add(id(node))

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if id(node) in self._flattened:
            return super().construct_mapping(node, deep)
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key: the base loader says so
                break
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} given twice in one mapping", key_node.start_mark
                )
        return super().construct_mapping(node, deep)


def parse_text(text: str, where: str, json_only: bool = False) -> Any:
    """The JSON (``json_only``) or YAML (which reads JSON too) document in ``text``; SpecError names ``where``."""
    try:
        data = json.loads(text, object_pairs_hook=_json_object) if json_only else yaml.load(text, Loader=_Loader)
    except json.JSONDecodeError as exc:
        raise SpecError([f"{where}:{exc.lineno}:{exc.colno}: invalid JSON ({exc.msg})"]) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        kind = "JSON" if json_only else "YAML"
        raise SpecError([f"{at}: invalid {kind} ({getattr(exc, 'problem', None) or exc})"]) from None
    except RecursionError:
        raise SpecError([f"{where}: nested too deeply to read"]) from None
    except _DuplicateKey as exc:
        raise SpecError([f"{where}: invalid JSON ({exc})"]) from None
    except ValueError as exc:  # an integer of thousands of digits
        reason = "a number too long to read (over 4300 digits)" if "digits" in str(exc) else str(exc)
        raise SpecError([f"{where}: cannot read a value: {reason}"]) from None
    bad = _invalid_text(data)
    if bad is not None:
        raise SpecError([f"{where}: {bad}: text that is not valid Unicode (a lone surrogate)"])
    return data


def _invalid_text(data: Any) -> str | None:
    """The place of the first string (key or value) that cannot be encoded as UTF-8, or None."""
    stack: list[tuple[str, Any]] = [("", data)]
    walked: set[int] = set()  # YAML aliases share one object many times over: look at each once
    while stack:
        place, item = stack.pop()
        if isinstance(item, str):
            if not _encodes(item):
                return place or "(the document)"
            continue
        if id(item) in walked:
            continue
        walked.add(id(item))
        if isinstance(item, dict):
            for key, value in item.items():
                if isinstance(key, str) and not _encodes(key):
                    return f"{place or '(the document)'}: a key"
                stack.append((f"{place}.{key}" if place else str(key), value))
        elif isinstance(item, list):
            stack.extend((f"{place}[{i}]", value) for i, value in enumerate(item))
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def load_data(path: Path) -> Any:
    """The JSON or YAML document in ``path`` (JSON by a ``.json`` suffix; YAML also reads JSON); SpecError."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise SpecError([f"{path}: cannot read ({exc.strerror or exc})"]) from None
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark, as some editors write, is not part of the text
    except UnicodeDecodeError as exc:
        raise SpecError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    return parse_text(text, str(path), json_only=path.suffix.lower() == ".json")


def jobs_from_data(data: Any, where: str) -> list[JobSpec]:
    """The jobs in a document: one job, a list of jobs, or ``{"jobs": [...]}``. All problems at once.

    ``where`` names the source in each problem (a file's path; empty for a request body).
    """
    prefix = f"{where}: " if where else ""
    if isinstance(data, dict) and "jobs" in data and "blocks" not in data:
        extra = sorted(str(k) for k in data if k != "jobs")
        if extra:
            raise SpecError([f"{prefix}{k}: unknown key (beside a list of jobs, only jobs)" for k in extra])
        data = data["jobs"]
        if not isinstance(data, list):
            raise SpecError([f"{prefix}jobs: must be a list of jobs (got {type(data).__name__})"])
    single = not isinstance(data, list)
    items = [data] if single else data
    if not items:
        raise SpecError([f"{prefix}no job in the file" if where else "body: no job"])
    specs: list[JobSpec] = []
    problems: list[str] = []
    for i, item in enumerate(items):
        at = where if single else f"{prefix}jobs[{i}]"
        try:
            specs.append(parse_job(item, where=at))
        except SpecError as exc:
            problems.extend(exc.problems)
    if problems:
        raise SpecError(problems)
    return specs


def load_jobs(path: Path) -> list[JobSpec]:
    """The jobs in a job file: one job, a list of jobs, or ``{"jobs": [...]}``. All problems at once."""
    return jobs_from_data(load_data(path), str(path))


def parse_body_jobs(body: bytes, content_type: str) -> list[JobSpec]:
    """The jobs in a request body (JSON by its content type, else YAML); SpecError, places relative to it."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError([f"body: not UTF-8 text (byte {exc.start})"]) from None
    return jobs_from_data(parse_text(text, "body", json_only="json" in content_type), "")
