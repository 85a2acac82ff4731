"""A small terminal progress line: redrawn in place on a terminal, a plain line now and then otherwise."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class ProgressLine:
    """Shows ``done/total`` with a bar and a free-text tail; quiet when ``enabled`` is false."""

    def __init__(self, total: int, label: str = "", stream: TextIO | None = None, enabled: bool = True,
                 every_s: float = 0.2) -> None:
        self.total = max(total, 0)
        self.label = label
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = self.stream.isatty()
        self.every_s = every_s if self.tty else 2.0
        self._last = 0.0
        self._start = time.monotonic()

    def update(self, done: int, tail: str = "", force: bool = False) -> None:
        """Redraw if enough time passed (or ``force``)."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._last < self.every_s:
            return
        self._last = now
        frac = done / self.total if self.total else 1.0
        width = 28
        filled = round(frac * width)
        bar = "#" * filled + "-" * (width - filled)
        line = f"{self.label} [{bar}] {done}/{self.total} {frac * 100:5.1f}% {now - self._start:6.1f}s {tail}"
        if self.tty:
            self.stream.write("\r" + line[:160].ljust(120))
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def close(self, done: int, tail: str = "") -> None:
        """Draw the final state and end the line."""
        if not self.enabled:
            return
        self.update(done, tail, force=True)
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
