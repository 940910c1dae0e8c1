"""Shared fixtures: sample data, one trained run of the main job, the compiled pipeline."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import yaml

from tests.support.cli import run_components
from tests.support.paths import SHARED_DATA

pytest_plugins = ["tests.support.server_fixtures"]


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The default synthetic sample dataset (read-only by convention: copy before changing)."""
    from components.cli.stages import SAMPLE_CHIPS, SAMPLE_SIZE
    from components.data.sample_data import generate_sample_dataset

    return generate_sample_dataset(tmp_path_factory.mktemp("sample") / "data", SAMPLE_CHIPS, SAMPLE_SIZE, seed=0)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, sample_data) -> Path:
    """The main job with its defaults on the sample data: a run folder after every stage.

    Read-only by convention; a test that changes files copies it first.
    """
    out = tmp_path_factory.mktemp("trained") / "run"
    run_components("all", "--data", str(sample_data), "--out", str(out))
    return out


@pytest.fixture(scope="session")
def trained_summary(trained_run) -> dict:
    return json.loads((trained_run / "summary.json").read_text())


@pytest.fixture(scope="session")
def hotosm() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def compiled(tmp_path_factory) -> tuple[Path, dict]:
    """The YAML ``pipeline.py --compile`` writes with cluster flags, and its parsed documents.

    Credentials were set in the environment while it compiled (``planted``): none may leak into it.
    """
    import pipeline

    planted = {"AWS_SECRET_ACCESS_KEY": "leak-" + secrets.token_hex(12),
               "AWS_ACCESS_KEY_ID": "leakid-" + secrets.token_hex(6)}
    with pytest.MonkeyPatch.context() as mp:
        for name, value in planted.items():
            mp.setenv(name, value)
        path = tmp_path_factory.mktemp("yaml") / "pipeline.yaml"
        assert pipeline.main(["--compile", "--output", str(path), "--image", "registry.example/campseg:1.2.3",
                              "--gpu-image", "registry.example/campseg-cuda:1.2.3",
                              "--gpu-node-selector", "pool=gpu", "--gpu-toleration", "nvidia.com/gpu:Exists:NoSchedule",
                              "--resources", "train-model=3,6,12Gi,24Gi"]) == 0
    docs = list(yaml.safe_load_all(path.read_text()))
    return path, {"spec": docs[0], "platform": docs[1] if len(docs) > 1 else {}, "planted": planted}
