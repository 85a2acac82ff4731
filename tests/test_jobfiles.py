"""Reading job documents: every unreadable or ill-shaped document is a problem naming the file and place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from farmhand.core.spec import SpecError
from farmhand.jobfiles import load_jobs, parse_body_jobs

GOOD = {"name": "j", "blocks": [{"name": "b", "command": "echo {frame}", "frames": {"first": 1, "last": 2}}]}


def problems_of(path: Path) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_jobs(path)
    return err.value.problems


@pytest.mark.parametrize(
    ("name", "content", "problem"),
    [
        ("big.json", b'{"name": ' + b"7" * 5000 + b"}", "big.json: cannot read a value: a number too long to read"),
        ("deep.json", b"[" * 100_000, "deep.json: nested too deeply to read"),
        ("deep.yaml", b"- " * 5000 + b"x", "deep.yaml: nested too deeply to read"),
        ("bytes.json", b"\xff\xfe{}", "bytes.json: not UTF-8 text (byte 0)"),
        ("lone.json", b'{"name": "j\\ud800", "blocks": []}', "lone.json: name: text that is not valid Unicode"),
        ("twice.json", b'{"name": "j", "name": "k", "blocks": []}', "twice.json: invalid JSON (key 'name' given twice"),
        ("twice.yaml", b"name: j\nname: k\nblocks: []\n", "twice.yaml:2:1: invalid YAML (key 'name' given twice"),
        ("shape.json", b'{"jobs": 5}', "shape.json: jobs: must be a list of jobs (got int)"),
        ("extra.json", b'{"jobs": [], "colour": 1}', "extra.json: colour: unknown key (beside a list of jobs"),
        ("none.json", b"[]", "none.json: no job in the file"),
    ],
)
def test_unreadable_documents_name_the_file_and_the_problem(
    tmp_path: Path, name: str, content: bytes, problem: str
) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    got = problems_of(path)
    assert len(got) == 1 and got[0].startswith(f"{tmp_path}/{problem}"), got


def test_a_byte_order_mark_is_not_part_of_the_text(tmp_path: Path) -> None:
    path = tmp_path / "bom.json"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode())
    assert [s.name for s in load_jobs(path)] == ["j"]


def test_yaml_aliases_are_read_once_however_often_they_are_shared(tmp_path: Path) -> None:
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{cur}: &{cur} [{','.join(['*' + prev] * 9)}]")
    lines += ["name: [*i]", "blocks: [*i]"]
    path = tmp_path / "laughs.yaml"
    path.write_text("\n".join(lines) + "\n")
    got = problems_of(path)  # nine to the ninth strings by reference: refused on its shape, without walking them all
    assert any("name: must be a string" in p for p in got)


def test_a_request_body_reads_the_same_way() -> None:
    assert [s.name for s in parse_body_jobs(json.dumps({"jobs": [GOOD, GOOD]}).encode(), "application/json")] == [
        "j", "j"]
    with pytest.raises(SpecError) as err:
        parse_body_jobs(b"name: j\nname: k\n", "application/yaml")
    assert err.value.problems[0].startswith("body:2:1: invalid YAML (key 'name' given twice")


def test_names_hold_no_control_characters_but_any_other_text(tmp_path: Path) -> None:
    path = tmp_path / "nul.json"
    path.write_text(json.dumps({**GOOD, "name": "a\u0000b"}))
    assert problems_of(path) == [f"{path}: name: must not contain control characters or line breaks (got 'a\\x00b')"]
    for name in ("山田\u3000太郎", "no\u00a0break", "👩\u200d🎨", "soft\u00adhyphen"):
        path.write_text(json.dumps({**GOOD, "name": name}))
        assert [s.name for s in load_jobs(path)] == [name]


def test_a_job_accepted_before_a_newer_rule_is_still_read_back() -> None:
    from farmhand.core.spec import parse_job

    data = {**GOOD, "name": "tab\there"}
    with pytest.raises(SpecError):
        parse_job(data)
    assert parse_job(data, accepted=True).name == "tab\there"
