"""What both command lines share: how they end on a failure, ``--debug``, and the number checks.

A failure ends in one ``error: ...`` line and an exit status.

A :class:`~components.contracts.errors.CampsegError` (bad input, a failed parity check, an invalid
STAC item, an unusable server) and an ``OSError`` (an unwritable path, a file where a folder
belongs) are failures the user can act on: exit status 2. Anything else is unexpected (a bug):
exit status 1. ``--debug`` on the command line, or ``CAMPSEG_DEBUG=1`` in the environment,
prints the traceback first.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from typing import Collection, Mapping, Sequence, TextIO

from components.contracts.config import check_finite, check_seed
from components.contracts.errors import CampsegError

#: Environment variable that turns on tracebacks like ``--debug``.
DEBUG_ENV = "CAMPSEG_DEBUG"
DEBUG_FLAG = "--debug"
DEBUG_HELP = f"print the traceback of a failure (or set {DEBUG_ENV}=1)"
#: Exit status of a failure the user can act on, and of an unexpected one.
USER_ERROR, UNEXPECTED = 2, 1


def debug_from_env(env: Mapping[str, str] | None = None) -> bool:
    """Whether ``CAMPSEG_DEBUG`` asks for tracebacks (set, and not 0/false/no/off)."""
    value = (os.environ if env is None else env).get(DEBUG_ENV, "").strip().lower()
    return value not in ("", "0", "false", "no", "off")


def pop_debug(argv: Sequence[str] | None) -> tuple[list[str], bool]:
    """``argv`` (default ``sys.argv[1:]``) without ``--debug`` (anywhere before a ``--``), and
    whether tracebacks are wanted (the flag or ``CAMPSEG_DEBUG``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    end = args.index("--") if "--" in args else len(args)
    flagged = DEBUG_FLAG in args[:end]
    kept = [a for a in args[:end] if a != DEBUG_FLAG] + args[end:]
    return kept, flagged or debug_from_env()


def describe_os_error(exc: OSError) -> str:
    """``PATH: what is wrong`` for an OSError that names a path, else its message."""
    what = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return f"{type(exc).__name__}: {what}"
    where = os.fsdecode(exc.filename)
    if exc.filename2 is not None:
        where += f" -> {os.fsdecode(exc.filename2)}"
    return f"{where}: {what}"


def describe(exc: BaseException) -> tuple[str, int]:
    """The message of the ``error:`` line and the exit status for ``exc``."""
    if isinstance(exc, CampsegError):
        return str(exc) or type(exc).__name__, USER_ERROR
    if isinstance(exc, OSError):
        return describe_os_error(exc), USER_ERROR
    return (f"unexpected {type(exc).__name__}: {exc} (rerun with {DEBUG_FLAG} or {DEBUG_ENV}=1 "
            f"for the traceback)", UNEXPECTED)


def report(exc: BaseException, debug: bool, *, message: str | None = None, status: int | None = None,
           stream: TextIO | None = None) -> int:
    """Print the traceback when ``debug``, then one ``error:`` line; return the exit status.

    Args:
        message, status: override what :func:`describe` says about ``exc``.
    """
    stream = sys.stderr if stream is None else stream
    text, code = describe(exc)
    if debug:
        traceback.print_exception(exc, file=stream)
    print(f"error: {text if message is None else message}", file=stream)
    return code if status is None else status


def check_numbers(args: argparse.Namespace | Mapping[str, object], seeds: Collection[str] = ("seed",),
                  nan_allowed: Collection[str] = ()) -> None:
    """Refuse a non-finite float (``--weight-decay nan``, ``--learning-rate inf``) other than those of
    ``nan_allowed``, and a seed outside ``0 .. 2**32-1``, naming the flag.

    Raises:
        ParameterError: for the first offending value.
    """
    values = vars(args) if isinstance(args, argparse.Namespace) else args
    for name, value in values.items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, float) and name not in nan_allowed:
            check_finite(value, flag)
        if name in seeds and value is not None:
            check_seed(value, flag)
