"""Run the two command lines in a fresh process, as a user would, and read their failures."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Mapping

from tests.support.paths import REPO


def run_components(*args: str, check: bool = True, timeout: int = 900,
                   env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m components ARGS``; with ``check``, a non-zero exit fails the test with stderr."""
    full = {**(os.environ if env is None else env), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "components", *args], capture_output=True, text=True,
                          cwd=REPO, env=full, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"components {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def run_pipeline(*args: str, env: Mapping[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """``python pipeline.py ARGS`` with exactly the environment ``env`` (default: this one)."""
    full = {**(os.environ if env is None else env), "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "pipeline.py", *args], cwd=REPO, env=full, capture_output=True,
                          text=True, timeout=timeout)


def error_line(proc: subprocess.CompletedProcess, *needles: str, single: bool = True) -> str:
    """The ``error: ...`` line of a failed command, which must name every one of ``needles``.

    The command must exit non-zero without a Python traceback on stderr; ``single`` also asks
    for exactly one ``error:`` line (a local pipeline run may echo a failed step's own line).
    """
    assert proc.returncode != 0, f"expected a failure, got exit 0:\n{proc.stdout[-2000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert lines, f"no 'error:' line in stderr:\n{proc.stderr[-3000:]}"
    if single:
        assert len(lines) == 1, proc.stderr[-4000:]
    for needle in needles:
        assert needle in lines[-1], f"{needle!r} not in {lines[-1]!r}"
    return lines[-1]
