"""Progress on stderr, never on stdout (stdout carries results only).

Two kinds of line:

- a stage line, ``[3/7] train ...`` when a stage starts and ``[3/7] train ... done in 42.1 s``
  when it ends (:func:`stage_text`, :class:`StageLines`);
- a loop's progress line, Lightning style: ``label: 45/120 windows [00:12<00:20, 3.71 windows/s]``
  (:class:`ProgressLine`). On a terminal it is redrawn in place; elsewhere (a pipe, a log file,
  KFP) a line is printed at most every ``every`` seconds and at the end.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager, redirect_stdout
from typing import Iterator, TextIO


def _clock(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    return (f"{hours}:" if hours else "") + f"{rest // 60:02d}:{rest % 60:02d}"


def duration_text(seconds: float) -> str:
    """``42.1 s`` under a minute, ``2 min 05 s`` under an hour, ``1 h 02 min`` beyond."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    return f"{whole // 3600} h {whole % 3600 // 60:02d} min"


def stage_text(index: int, total: int | None, name: str, seconds: float | None = None, failed: bool = False) -> str:
    """``[3/7] train ...`` (started), ``[3/7] train ... done in 42.1 s`` or ``... failed after 3.0 s``
    (``[3] train ...`` when the total is unknown)."""
    text = f"[{index}/{total}] {name} ..." if total else f"[{index}] {name} ..."
    return text if seconds is None else text + stage_end(seconds, failed)


def stage_end(seconds: float, failed: bool = False) -> str:
    """What a stage line ends with: `` done in 42.1 s`` or `` failed after 3.0 s``."""
    return f" failed after {duration_text(seconds)}" if failed else f" done in {duration_text(seconds)}"


class StageLines:
    """The stage lines of a command that runs ``total`` stages, on ``stream`` (default stderr).

    ``with lines.stage("train"): ...`` numbers the stage, prints its start line when
    ``announce`` (the chain of ``all``; a single-stage command prints its end line only) and its
    end line with the duration, or ``failed after`` when the block raises.
    """

    def __init__(self, total: int, stream: TextIO | None = None, announce: bool = True) -> None:
        self.total, self.stream, self.announce = total, stream, announce
        self.done = 0

    def _print(self, text: str) -> None:
        stream = self.stream or sys.stderr  # looked up late: the caller may have redirected stderr
        stream.write(text + "\n")
        stream.flush()

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self.done += 1
        index = self.done
        if self.announce:
            self._print(stage_text(index, self.total, name))
        started = time.monotonic()
        try:
            yield
        except BaseException:
            self._print(stage_text(index, self.total, name, time.monotonic() - started, failed=True))
            raise
        self._print(stage_text(index, self.total, name, time.monotonic() - started))


def progress_text(label: str, done: int, total: int, elapsed: float, unit: str = "windows") -> str:
    """The progress line for ``done`` of ``total`` after ``elapsed`` seconds (ETA from the rate so far)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    eta = (total - done) / rate if rate > 0 else 0.0
    return f"{label}: {done}/{total} {unit} [{_clock(elapsed)}<{_clock(eta)}, {rate:.2f} {unit}/s]"


class ProgressLine:
    """A callable ``(done, total, elapsed)`` that draws :func:`progress_text` on ``stream``.

    On a terminal the line is redrawn at most five times a second; elsewhere a line is printed
    once ``every`` seconds have passed since the last one (or since the start), and at the end, so
    a short loop leaves one line in a log.
    """

    def __init__(self, label: str, stream: TextIO | None = None, every: float = 5.0, unit: str = "windows") -> None:
        self.label, self.stream, self.every, self.unit = label, stream or sys.stderr, every, unit
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -float("inf") if self._tty else time.monotonic()

    def __call__(self, done: int, total: int, elapsed: float) -> None:
        now = time.monotonic()
        final = done >= total
        if not final and now - self._last < (0.2 if self._tty else self.every):
            return
        self._last = now
        text = progress_text(self.label, done, total, elapsed, self.unit)
        if self._tty:
            self.stream.write("\r" + text + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def counted(items: list, progress: ProgressLine | None) -> Iterator:
    """``items`` one by one, telling ``progress`` after each (nothing when ``progress`` is None)."""
    started = time.monotonic()
    total = len(items)
    for done, item in enumerate(items, 1):
        yield item
        if progress is not None:
            progress(done, total, time.monotonic() - started)


class EpochLines:
    """An epoch listener (:class:`~components.ml.metrics.EpochListener`) that prints one line per
    epoch on ``stream``: training's progress where a redrawn bar would only clutter a log
    (``train: epoch 3/15 [00:12] train_loss 0.412, val_loss 0.398, val_iou 0.611``)."""

    SHOWN = ("train_loss", "val_loss", "val_iou")

    def __init__(self, epochs: int, stream: TextIO | None = None) -> None:
        self.epochs, self.stream = epochs, stream

    def fit_started(self) -> None:
        pass

    def epoch_ended(self, row) -> None:
        values = ", ".join(f"{key} {row[key]:.3f}" for key in self.SHOWN if key in row)
        clock = f" [{_clock(row['seconds'])}]" if "seconds" in row else ""
        stream = self.stream or sys.stderr
        stream.write(f"train: epoch {int(row['epoch']) + 1}/{self.epochs}{clock} {values}\n")
        stream.flush()

    def fit_ended(self, rows) -> None:
        pass


@contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send whatever the block prints to stdout to stderr instead, so that a command's stdout holds
    its result only: ``sys.stdout`` and, where there is one, file descriptor 1 (libraries that
    write there directly) are stderr until the block ends."""
    sys.stdout.flush()
    try:
        saved = os.dup(1)
        os.dup2(2, 1)
    except OSError:  # no file descriptors to redirect (an embedding host): Python's stream only
        saved = None
    try:
        with redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stderr.flush()
        if saved is not None:
            os.dup2(saved, 1)
            os.close(saved)
