"""Retries only for transient failures: a step retries what may pass by itself and fails at once on the rest.

KFP's retry policy reruns a pod on any failure, so it would repeat a ``DatasetError`` or a missing
optional package as faithfully as a dropped connection. The pipeline therefore leaves it off
(``--pod-retries``, default 0) and each step that talks to storage or MLflow wraps its work in
:func:`retry_transient`: a failure is transient when it, or an exception in its chain (``raise
... from`` or raised while handling it), is a :class:`~components.contracts.errors.TransientError`,
a botocore connection error, throttling or 5xx (:func:`components.storage.errors.is_transient`), or
an MLflow/HTTP connection failure, 5xx or 429 (:func:`components.tracking.transient.is_transient`).
Errors that name bad input or configuration (:data:`DETERMINISTIC`) are never retried, whatever
their cause. The number of retries and the first delay come from the step's environment
(:data:`RETRIES_ENV`, :data:`BACKOFF_ENV`, set by ``cluster.configure`` from ``--retries`` and
``--retry-backoff``); without them a step does not retry.
"""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import Callable, Iterator, TypeVar

from components.contracts.errors import (
    DatasetError,
    ParameterError,
    ParityError,
    RunFolderError,
    TransientError,
    ValidationFailed,
)

RETRIES_ENV, BACKOFF_ENV = "CAMPSEG_TRANSIENT_RETRIES", "CAMPSEG_RETRY_BACKOFF_SECONDS"
#: Failures that no retry can mend: bad input or configuration, a missing package, a broken model.
DETERMINISTIC = (ParameterError, DatasetError, RunFolderError, ParityError, ValidationFailed, ImportError,
                 SyntaxError, TypeError, AttributeError, KeyError)
F = TypeVar("F", bound=Callable)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and its causes and contexts (each once)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def is_transient_failure(exc: BaseException) -> bool:
    """Whether retrying may help (see the module's docstring for the rule)."""
    from components.storage.errors import is_transient as storage_transient
    from components.tracking.transient import is_transient as tracking_transient

    if isinstance(exc, DETERMINISTIC) and not isinstance(exc, TransientError):
        return False
    return any(storage_transient(e) or tracking_transient(e) for e in _chain(exc))


def retry_settings() -> tuple[int, float]:
    """(retries, first delay in seconds) from the step's environment; (0, 0) when unset."""
    try:
        return max(0, int(os.environ.get(RETRIES_ENV, "0"))), max(0.0, float(os.environ.get(BACKOFF_ENV, "0")))
    except ValueError:
        raise ParameterError(f"{RETRIES_ENV}/{BACKOFF_ENV}: expected a count and seconds, got "
                             f"{os.environ.get(RETRIES_ENV)!r}/{os.environ.get(BACKOFF_ENV)!r}") from None


def retry_transient(fn: F) -> F:
    """Run ``fn`` again, with exponential backoff, when it fails transiently; re-raise any other
    failure at once. When transient failures outlast the retries, raise a
    :class:`TransientError` saying so, from the last one."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        retries, delay = retry_settings()
        for attempt in range(retries + 1):
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                if not is_transient_failure(exc):
                    raise
                if attempt == retries:
                    if retries == 0:
                        raise
                    raise TransientError(f"{fn.__name__}: still failing after {retries + 1} attempts, each time "
                                         f"transiently; the last: {type(exc).__name__}: {exc}") from exc
                first_line = (str(exc).splitlines() or [""])[0][:300]
                print(f"{fn.__name__}: transient failure ({type(exc).__name__}: {first_line}); "
                      f"retry {attempt + 1} of {retries} in {delay:g} s", file=sys.stderr, flush=True)
                time.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    return wrapper  # type: ignore[return-value]
