"""Every user-facing failure of both command lines ends in one ``error: ...`` line and exit 2,
without a traceback unless ``--debug`` or ``CAMPSEG_DEBUG=1`` asks for one (issue 10, case 13).

Each case runs the real command line in a fresh process (tests.support.cli).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from components.contracts.errors import (
    CampsegError,
    ParityError,
    PipelineInputError,
    TrackingError,
    ValidationFailed,
)
from tests.support.auth_server import BasicAuthServer
from tests.support.cli import error_line, run_components, run_pipeline
from tests.support.datasets import make_dataset

USER, PASSWORD = "alice", "pw-" + "x7Q2k9"


def env(**values: str) -> dict[str, str]:
    """This environment without tracking credentials or CAMPSEG_DEBUG, plus ``values``."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith("MLFLOW_TRACKING_") and k not in ("CAMPSEG_DEBUG", "MLFLOW_RUN_ID")}
    return {**base, **values}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, Path]:
    """A tiny dataset and a run folder trained on it for one epoch (stats and train only)."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_dataset(root / "data", n_groups=6, per_group=4, size=32)
    run = root / "run"
    run_components("stats", "--data", str(data), "--out", str(run), "--depth", "2", env=env())
    run_components("train", "--run", str(run), "--base-channels", "4", "--depth", "2", "--epochs", "1",
                   "--batch-size", "4", "--no-augment", env=env())
    return {"data": data, "run": run}


def test_every_campseg_error_is_one_family():
    for cls in (PipelineInputError, TrackingError, ParityError, ValidationFailed):
        assert issubclass(cls, CampsegError)
    assert issubclass(ParityError, RuntimeError)  # callers that caught RuntimeError still do


# ------------------------------------------------------------------------------------------
# python -m components
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "args, needle",
    [
        (("train", "--weight-decay", "nan"), "--weight-decay=nan"),
        (("train", "--learning-rate", "inf"), "--learning-rate=inf"),
        (("train", "--learning-rate=-inf"), "--learning-rate=-inf"),
        (("train", "--seed", "-1"), "--seed=-1"),
        (("train", "--seed", str(2**32)), f"--seed={2**32}"),
        (("stats", "--seed", "-1"), "--seed=-1"),
        (("stats", "--threshold", "nan"), "--threshold=nan"),
        (("all", "--weight-decay", "nan"), "--weight-decay=nan"),
    ],
)
def test_bad_numbers_are_refused_before_any_work(tiny, tmp_path, args, needle):
    stage, *flags = args
    out = tmp_path / "out"
    where = ("--run", str(tiny["run"])) if stage == "train" else ("--data", str(tiny["data"]), "--out", str(out))
    before = sorted(p.name for p in tiny["run"].iterdir())
    proc = run_components(stage, *where, *flags, check=False, env=env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_line(proc, needle)
    assert not out.exists()
    assert sorted(p.name for p in tiny["run"].iterdir()) == before


def test_nodata_nan_is_still_a_value(tiny, tmp_path):
    """The finiteness check leaves --nodata alone: the stage itself judges it (against uint8 chips)."""
    proc = run_components("stats", "--data", str(tiny["data"]), "--out", str(tmp_path / "run"), "--depth", "2",
                          "--nodata", "nan", check=False, env=env())
    assert proc.returncode == 2
    error_line(proc, "nodata=nan", "uint8")


@pytest.mark.parametrize("below", ["", "sub"])
def test_out_that_is_a_file(tiny, tmp_path, below):
    target = tmp_path / "taken"
    target.write_text("a file, not a folder")
    out = target / below if below else target
    proc = run_components("stats", "--data", str(tiny["data"]), "--out", str(out), check=False, env=env())
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_line(proc, str(target))
    assert target.read_text() == "a file, not a folder"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes anywhere")
def test_out_in_an_unwritable_folder(tiny, tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        proc = run_components("stats", "--data", str(tiny["data"]), "--out", str(locked / "run"), check=False,
                              env=env())
    finally:
        locked.chmod(0o700)
    assert proc.returncode == 2, proc.stderr[-2000:]
    error_line(proc, str(locked))


#: The real command line, with the export's comparison forced to disagree beyond any tolerance
#: (the models are still written, exported and compared; only the differences are replaced).
PARITY_FAILS = """
import sys
import components.stages.export as export
compare = export._write_and_compare
export._write_and_compare = lambda *args: {key: 0.5 for key in compare(*args)}
from components.cli.stages import main
sys.exit(main(sys.argv[1:]))
"""


def test_parity_failure_is_an_error_line_and_publishes_nothing(tiny, tmp_path):
    import shutil
    import subprocess
    import sys

    from tests.support.paths import REPO

    run = tmp_path / "run"
    shutil.copytree(tiny["run"], run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    proc = subprocess.run([sys.executable, "-c", PARITY_FAILS, "export", "--run", str(run), "--data", str(tiny["data"])],
                          capture_output=True, text=True, cwd=REPO, env=env(PYTHONWARNINGS="ignore"), timeout=600)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_line(proc, "parity failed", "no model was published")
    assert not (run / "models").exists()
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before  # no staging left behind


def test_debug_flag_and_environment_print_the_traceback(tmp_path):
    missing = str(tmp_path / "no-such-data")
    args = ("stats", "--data", missing, "--out", str(tmp_path / "out"))
    plain = run_components(*args, check=False, env=env())
    assert plain.returncode == 2
    line = error_line(plain, missing)
    for proc in (run_components(*args, "--debug", check=False, env=env()),
                 run_components("--debug", *args, check=False, env=env()),
                 run_components(*args, check=False, env=env(CAMPSEG_DEBUG="1"))):
        assert proc.returncode == 2
        assert "Traceback (most recent call last)" in proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == line  # the traceback first, the error line last
    quiet = run_components(*args, check=False, env=env(CAMPSEG_DEBUG="0"))
    assert "Traceback" not in quiet.stderr


# ------------------------------------------------------------------------------------------
# pipeline.py
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "flags, needle",
    [
        (("--tracking-promotion-margin", "-1"), "margin=-1.0"),
        (("--tracking-promotion-margin", "nan"), "--tracking-promotion-margin=nan"),
        (("--tracking-promotion-metric", "loss"), "promotion metric 'loss'"),
        (("--train-learning-rate", "inf"), "--train-learning-rate=inf"),
        (("--train-weight-decay", "nan"), "--train-weight-decay=nan"),
        (("--train-epochs", "0"), "--train-epochs=0"),
        (("--split-seed", "-1"), "--split-seed=-1"),
        (("--split-train-ratio", "nan"), "--split-train-ratio=nan"),
        (("--model-threshold", "1.5"), "--model-threshold=1.5"),
        (("--model-name", "m1"), "model_name='m1'"),
    ],
)
def test_pipeline_refuses_bad_parameters_before_running(tmp_path, flags, needle):
    out = tmp_path / "local"
    proc = run_pipeline("--run-local", "--output-dir", str(out), *flags, env=env())
    assert proc.returncode == 2, proc.stderr[-3000:]
    error_line(proc, needle)
    assert not out.exists()  # no sample data, no step, no training


def test_pipeline_submit_checks_parameters_before_contacting_kfp():
    proc = run_pipeline("--submit", "--host", "http://127.0.0.1:9", "--dataset-uri", "s3://b/d",
                        "--tracking-promotion-margin", "-0.5", env=env())
    assert proc.returncode == 2
    error_line(proc, "margin=-0.5")


def test_pipeline_flag_errors_and_debug(tmp_path):
    proc = run_pipeline("--compile", "--output", str(tmp_path / "p.yaml"), "--resources", "nope=1,2,3Gi,4Gi",
                        env=env())
    assert proc.returncode == 2
    error_line(proc, "unknown step 'nope'")
    proc = run_pipeline("--compile", "--output", str(tmp_path / "p.yaml"), "--gpu-toleration", "a:b",
                        "--debug", env=env())
    assert proc.returncode == 2 and "Traceback" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --gpu-toleration")


# ------------------------------------------------------------------------------------------
# The tracking server's health check with credentials
# ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def auth_server():
    with BasicAuthServer(USER, PASSWORD) as server:
        yield server


def test_health_check_uses_the_uri_credentials(auth_server, monkeypatch):
    from components.tracking import check_tracking_server

    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    auth_server.seen.clear()
    check_tracking_server(auth_server.uri())
    assert ("GET", "/health", True) in auth_server.seen
    assert any("experiments/search" in path and ok for _, path, ok in auth_server.seen)

    with pytest.raises(TrackingError, match="refused the credentials") as err:
        check_tracking_server(auth_server.uri(password="wrong-" + PASSWORD))
    assert "401" in str(err.value) and PASSWORD not in str(err.value)
    assert f"{USER}:***@127.0.0.1:{auth_server.port}" in str(err.value)
    with pytest.raises(TrackingError, match="401"):
        check_tracking_server(auth_server.plain_uri)


def test_health_check_uses_the_environment_credentials(auth_server, monkeypatch):
    from components.tracking import check_tracking_server

    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", USER)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", PASSWORD)
    check_tracking_server(auth_server.plain_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "wrong")
    with pytest.raises(TrackingError, match="refused the credentials"):
        check_tracking_server(auth_server.plain_uri)


def test_redaction_of_passwords_in_uris_and_messages():
    from components.tracking.server import redact, redact_text

    assert redact("http://u:p%40ss@host:5000/x") == "http://u:***@host:5000/x"
    assert redact("http://host:5000") == "http://host:5000"
    assert "p@ss" not in redact_text("failed for http://u:p%40ss@host (p@ss)", "http://u:p%40ss@host")
    assert "pw" not in redact("http://u:pw@host:port")  # malformed port: still no password
