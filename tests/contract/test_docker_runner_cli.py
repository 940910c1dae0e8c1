"""``pipeline.py --run-local --runner docker`` refuses, before anything is written, what cannot work:
no image to run the steps in, and a tracking store the containers cannot reach."""

from __future__ import annotations

import os

import pytest

from components.contracts.errors import ParameterError
from components.kubeflow.local_runner import check_docker_tracking
from tests.support.cli import error_line, run_pipeline


def env(**values: str) -> dict[str, str]:
    """This environment without MLflow settings or CAMPSEG_DEBUG, plus ``values``."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_") and k != "CAMPSEG_DEBUG"},
            **values}


def test_docker_runner_without_an_image_is_refused(tmp_path):
    out = tmp_path / "run"
    proc = run_pipeline("--run-local", "--runner", "docker", "--output-dir", str(out),
                        "--images-file", str(tmp_path / "none.json"), env=env())
    error_line(proc, "--runner docker needs --image")
    assert proc.returncode == 2 and not out.exists()


@pytest.mark.parametrize("uri", ["", "sqlite:////tmp/mlflow.db", "file:///tmp/mlruns"])
def test_docker_runner_without_a_tracking_server_is_refused(tmp_path, uri):
    out = tmp_path / "run"
    proc = run_pipeline("--run-local", "--runner", "docker", "--image", "campseg:never-built",
                        "--output-dir", str(out), env=env(MLFLOW_TRACKING_URI=uri))
    error_line(proc, "--runner docker", "MLFLOW_TRACKING_URI", "tracking server")
    assert proc.returncode == 2 and not out.exists()


def test_a_tracking_server_is_accepted():
    check_docker_tracking({"MLFLOW_TRACKING_URI": "http://127.0.0.1:5000"})
    check_docker_tracking({"MLFLOW_TRACKING_URI": "https://mlflow.example.org"})
    with pytest.raises(ParameterError, match="is not http"):
        check_docker_tracking({"MLFLOW_TRACKING_URI": "mlruns"})


def test_docker_runner_with_an_image_it_cannot_get_is_refused(tmp_path):
    """No engine, or an image neither here nor pullable: one error line naming the image."""
    out = tmp_path / "run"
    proc = run_pipeline("--run-local", "--runner", "docker", "--image", "campseg-never-built:0",
                        "--output-dir", str(out), env=env(MLFLOW_TRACKING_URI="http://127.0.0.1:9"),
                        timeout=600)
    error_line(proc, "--runner docker", "campseg-never-built:0", "unavailable")
    assert proc.returncode == 2 and not out.exists()
