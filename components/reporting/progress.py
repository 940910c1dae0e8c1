"""A progress line on stderr, Lightning style: ``label: 45/120 windows [00:12<00:20, 3.71 windows/s]``.

On a terminal the line is redrawn in place; elsewhere (logs, KFP) a line is printed at most every
``every`` seconds and at the end.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def progress_text(label: str, done: int, total: int, elapsed: float, unit: str = "windows") -> str:
    """The progress line for ``done`` of ``total`` after ``elapsed`` seconds (ETA from the rate so far)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    return f"{label}: {done}/{total} {unit} [{_clock(elapsed)}<{_clock(eta)}, {rate:.2f} {unit}/s]"


class ProgressLine:
    """A callable ``(done, total, elapsed)`` that draws :func:`progress_text` on ``stream``."""

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 5.0) -> None:
        self.label, self.stream, self.every = label, stream or sys.stderr, every
        self._last = -float("inf")
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (0.2 if self._tty else self.every):
            return
        self._last = now
        text = progress_text(self.label, done, total, elapsed)
        if self._tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()
