"""The console of a ``kfp.local`` run: everything into a log file, one line per step on the console.

kfp.local logs through Python's root logger onto ``sys.stdout`` (its handler is made when the
pipeline starts), prints each step's streamed output (the child process's stdout and stderr,
executor-input dumps included) with ``print``, and warns through :mod:`warnings` onto
``sys.stderr``. :func:`captured_run` points ``sys.stdout`` and ``sys.stderr`` at a
:class:`RunLog` for the run: every byte goes to the log file; quiet, the console shows only
``[3/11] train-model ... done in 40.2 s`` per step; verbose, it shows everything as well.
"""

from __future__ import annotations

import collections
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence, TextIO

from components.reporting.progress import stage_end, stage_text

#: Lines of a failed step's log shown on the console.
TAIL_LINES = 40

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_STARTED = re.compile(r"Executing task '([\w.-]+)'")
_FINISHED = re.compile(r"Task '([\w.-]+)' finished with status (\w+)")
_SKIPPED = re.compile(r"Skipping conditional task ([\w.-]+)")
_INDENT = "    "  # kfp.local indents a step's streamed output by four spaces


def clean(line: str) -> str:
    """``line`` without kfp.local's colour codes."""
    return _ANSI.sub("", line)


class RunLog:
    """A text stream for ``sys.stdout``/``sys.stderr`` during a run: writes go to ``log`` (and to
    ``echo`` when verbose); kfp.local's task lines become step lines on ``console`` when quiet.

    Keeps the last lines (:attr:`lines`, colour codes removed) to name a failed step's error and
    show its log's tail.
    """

    def __init__(self, log: TextIO, console: TextIO, total: int | None, echo: TextIO | None = None,
                 max_lines: int = 20000) -> None:
        self.log, self.console, self.total, self.echo = log, console, total, echo
        self.lines: collections.deque[str] = collections.deque(maxlen=max_lines)
        self._partial = ""
        self._step: tuple[str, int, float] | None = None  # running step: name, number, start
        self._count = 0

    # -- the stream interface
    def write(self, text: str) -> int:
        self.log.write(text)
        if self.echo is not None:
            self.echo.write(text)
        *done, self._partial = (self._partial + text).split("\n")
        for line in done:
            line = clean(line)
            self.lines.append(line)
            if self.echo is None:
                self._event(line)
        return len(text)

    def flush(self) -> None:
        self.log.flush()
        if self.echo is not None:
            self.echo.flush()

    def isatty(self) -> bool:
        return False

    def __getattr__(self, name: str):  # fileno, buffer, encoding...: the log file's (bytes go there)
        if name == "log":  # not set yet (a copy being made): no recursion
            raise AttributeError(name)
        return getattr(self.log, name)

    # -- step lines
    def _event(self, line: str) -> None:
        if found := _STARTED.search(line):
            self._count += 1
            self._step = (found.group(1), self._count, time.monotonic())
            self._say(stage_text(self._count, self.total, found.group(1)), end="")
        elif (found := _FINISHED.search(line)) and self._step and self._step[0] == found.group(1):
            started = self._step[2]
            self._step = None
            self._say(stage_end(time.monotonic() - started, failed=found.group(2) != "SUCCESS"))
        elif found := _SKIPPED.search(line):
            self._say(f"      {found.group(1)} skipped (its condition is false)")

    def end(self) -> None:
        """End a step line left open (the run stopped inside a step)."""
        if self._step is not None and self.echo is None:
            self._say(" stopped")
        self._step = None

    def _say(self, text: str, end: str = "\n") -> None:
        self.console.write(text + end)
        self.console.flush()

    # -- a failed step
    def step_lines(self, task: str) -> list[str] | None:
        """The log lines of ``task``'s last run (its streamed output), or None when it never ran."""
        lines = list(self.lines)
        end = max((i for i, line in enumerate(lines) if _FINISHED.search(line)
                   and _FINISHED.search(line).group(1) == task), default=None)
        if end is None:
            return None
        start = max((i for i, line in enumerate(lines[:end]) if (m := _STARTED.search(line)) and m.group(1) == task),
                    default=-1)
        return lines[start + 1:end]


def condensed(lines: Sequence[str]) -> list[str]:
    """A step's own output for a person: the lines kfp.local streamed from it (indented; its own
    log lines and warnings left out) without the indent, each Python traceback's frames and each
    executor-input dump shortened to one line (the log file keeps them)."""
    out: list[str] = []
    skipping = None  # the kind of block being left out
    for raw in lines:
        if raw.strip() and not raw.startswith(_INDENT):
            continue
        line = raw[len(_INDENT):]
        if skipping == "traceback":
            if line.startswith(" "):
                continue
            skipping = None
        elif skipping == "executor input":
            if line.rstrip() == "}":
                skipping = None
            continue
        if line.startswith("Traceback (most recent call last):"):
            out.append("(traceback in the log file)")
            skipping = "traceback"
        elif line.rstrip().endswith("Got executor_input:"):
            out.append(line.rstrip() + " (in the log file)")
            skipping = "executor input"
        elif line.strip() or (out and out[-1].strip()):
            out.append(line)
    while out and not out[-1].strip():
        out.pop()
    return out


def failure_tail(run_log: RunLog, task: str, log_path: Path, lines: int = TAIL_LINES) -> str:
    """What the console shows of a failed step: the tail of its log and where the whole log is."""
    own = run_log.step_lines(task)
    if own is None:
        return f"(step {task} left no log; the run's log: {log_path})"
    tail = condensed(own)[-lines:]
    head = f"--- the last {len(tail)} lines of step {task}'s log (all of it in {log_path}) ---"
    return "\n".join([head, *tail, "---"])


@contextmanager
def captured_run(log_path: Path, total: int | None, verbose: bool) -> Iterator[RunLog]:
    """``sys.stdout`` and ``sys.stderr`` go to a :class:`RunLog` writing ``log_path`` for the block.

    Quiet, step lines go to the real stderr; verbose, both streams are also echoed where they
    went before (stdout to stdout, stderr to stderr) and no step lines are added.
    """
    stdout, stderr = sys.stdout, sys.stderr
    stdout.flush()
    stderr.flush()
    with open(log_path, "w", encoding="utf-8", errors="replace") as log:
        out = RunLog(log, stderr, total, echo=stdout if verbose else None)
        err = out if not verbose else RunLog(log, stderr, total, echo=stderr)
        sys.stdout, sys.stderr = out, err
        try:
            yield out  # kfp.local's task lines and the steps' output: all on stdout
        finally:
            sys.stdout, sys.stderr = stdout, stderr
            out.end()
