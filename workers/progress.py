"""Progress parsing: a percentage read from a task's output lines.

A block may give its own regular expression with one group that captures a number (``"ALF_PROGRESS (\\d+)%"``);
without one the default understands ``NN%`` and ``NN.N%`` anywhere in a line. The last match in a line wins
(``"frame 3/10 (30%) total 12%"`` reads 12), values are clamped to 0..100 and rounded down.
"""

from __future__ import annotations

import functools
import logging
import math
import re

from farmhand.logs import fields

log = logging.getLogger("farmhand.worker")

DEFAULT_PROGRESS = r"(\d+(?:\.\d+)?)%"


@functools.lru_cache(maxsize=256)
def _compile(pattern: str) -> re.Pattern[str] | None:
    try:
        return re.compile(pattern)
    except re.error as exc:
        log.warning("progress regex does not compile, using the default", extra=fields(pattern=pattern, error=str(exc)))
        return None


class ProgressParser:
    """Reads percentages from output lines with one regex (the block's, or the default)."""

    __slots__ = ("pattern", "regex")

    def __init__(self, pattern: str | None = None) -> None:
        regex = _compile(pattern) if pattern else None
        if regex is None:
            regex = _compile(DEFAULT_PROGRESS)
            pattern = DEFAULT_PROGRESS
        assert regex is not None
        self.regex = regex
        self.pattern = pattern

    def parse(self, line: str) -> int | None:
        """The percentage the line reports (0..100), or None if it reports none."""
        found: int | None = None
        for match in self.regex.finditer(line):
            text = match.group(1) if match.re.groups else match.group(0)
            if text is None:
                continue
            try:
                value = float(text.strip().rstrip("%"))
            except ValueError:
                continue
            if math.isnan(value):
                continue
            found = int(min(max(value, 0.0), 100.0))
        return found
