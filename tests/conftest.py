"""Shared fixtures: sample data and one trained run of the main job, made once per session."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["tests.server_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data" / "hotosm-philippines"


def run_cli(*args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run ``python -m components ARGS`` in a fresh process, as a user would."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "components", *args], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"components {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The default synthetic sample dataset (read-only by convention: copy before changing)."""
    from components.cli import SAMPLE_CHIPS, SAMPLE_SIZE
    from components.sample_data import generate_sample_dataset

    return generate_sample_dataset(tmp_path_factory.mktemp("sample") / "data", SAMPLE_CHIPS, SAMPLE_SIZE, seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, sample_data) -> Path:
    """The main job with its defaults on the sample data: a run folder after every stage.

    Read-only by convention; a test that changes files copies it first.
    """
    out = tmp_path_factory.mktemp("trained") / "run"
    run_cli("all", "--data", str(sample_data), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def trained_summary(trained_run) -> dict:
    return json.loads((trained_run / "summary.json").read_text())


@pytest.fixture(scope="session")
def hotosm() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA
