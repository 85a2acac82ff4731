"""Progress parsing: the default ``NN%`` pattern, a block's own regex, clamping and bad patterns."""

from __future__ import annotations

import pytest

from farmhand.workers.progress import DEFAULT_PROGRESS, ProgressParser


@pytest.mark.parametrize(
    ("line", "percent"),
    [
        ("Rendering 45%", 45),
        ("progress: 12.7% done", 12),
        ("frame 3/10 (30%) total 12%", 12),  # the last match in a line wins
        ("100%", 100),
        ("no progress here", None),
        ("50 percent", None),
        ("", None),
    ],
)
def test_default_pattern(line: str, percent: int | None) -> None:
    assert ProgressParser().parse(line) == percent


def test_block_pattern_with_one_group() -> None:
    parser = ProgressParser(r"ALF_PROGRESS (\d+)")
    assert parser.parse("ALF_PROGRESS 37") == 37
    assert parser.parse("at 90%") is None


def test_values_are_clamped() -> None:
    parser = ProgressParser(r"p=(-?\d+(?:\.\d+)?)")
    assert parser.parse("p=250") == 100
    assert parser.parse("p=-5") == 0
    assert parser.parse("p=99.99") == 99


def test_a_pattern_without_group_uses_the_whole_match() -> None:
    assert ProgressParser(r"\d+(?=%)").parse("at 64%") == 64


def test_a_pattern_that_does_not_compile_falls_back_to_the_default() -> None:
    parser = ProgressParser("(unclosed")
    assert parser.pattern == DEFAULT_PROGRESS
    assert parser.parse("at 64%") == 64


def test_a_group_that_does_not_match_a_number_is_skipped() -> None:
    parser = ProgressParser(r"step (\w+)")
    assert parser.parse("step one") is None
    assert parser.parse("step 7") == 7
