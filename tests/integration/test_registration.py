"""Registration once per pipeline run, and promotion that fails closed (issue 10, cases 5 and 6),
against the real MLflow server (PostgreSQL + SeaweedFS: tests.support.server_fixtures).

The register-model step is retried on a cluster: a retry must find the version its run already
registered instead of registering another, and a retry must not rewrite the promotion decision
of the try that moved the alias. The champion is never replaced when it, or its score, cannot be
read.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

import pytest

from components import tracking
from components.contracts.errors import TrackingError
from tests.support.auth_server import BasicAuthServer
from tests.support.runs import copy_with_iou, read_json

pytestmark = pytest.mark.integration

EXPERIMENT = "campseg-registration-tests"


def logged_run(uri: str, run_dir: Path, kfp_run_id: str | None = None) -> str:
    """A pipeline run with everything logged up to registration; its MLflow run id."""
    run_id = tracking.start_pipeline_run(uri, EXPERIMENT, f"run-{secrets.token_hex(3)}",
                                         kfp_run_id or f"kfp-{secrets.token_hex(6)}",
                                         read_json(run_dir / "train_config.json"), None)
    tracking.log_dataset(uri, run_id, read_json(run_dir / "stats.json"))
    tracking.log_run_artifacts(uri, run_id, run_dir)
    return run_id


def versions_of(client, name: str) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


@pytest.fixture
def name() -> str:
    return "campseg-reg-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)


# ------------------------------------------------------------------------------------------
# Case 6: one version per pipeline run
# ------------------------------------------------------------------------------------------
def test_registering_twice_for_one_run_gives_one_version(mlflow_server, trained_run, client, name):
    uri = mlflow_server.tracking_uri
    run_id = logged_run(uri, trained_run)
    first = tracking.register_model(uri, run_id, name, trained_run)
    again = tracking.register_model(uri, run_id, name, trained_run)
    assert again == first
    assert versions_of(client, name) == [first]
    tags = client.get_run(run_id).data.tags
    assert tags["registered_model.version"] == first
    assert tags["logged_model.uri"].startswith("models:/")
    # another pipeline run is another version
    other = tracking.register_model(uri, logged_run(uri, trained_run), name, trained_run)
    assert other != first and versions_of(client, name) == sorted([first, other])


def test_a_retry_after_a_partly_logged_model_registers_one_version(mlflow_server, trained_run, client, name,
                                                                   monkeypatch):
    import mlflow.onnx

    uri = mlflow_server.tracking_uri
    run_id = logged_run(uri, trained_run)
    real_log_model = mlflow.onnx.log_model

    def log_then_fail(*args, **kwargs):  # the upload went through, then the pod died
        real_log_model(*args, **kwargs)
        raise ConnectionError("connection reset while finishing the model")

    with monkeypatch.context() as patched:
        patched.setattr(mlflow.onnx, "log_model", log_then_fail)
        with pytest.raises(TrackingError, match="nothing registered"):
            tracking.register_model(uri, run_id, name, trained_run)
    assert client.search_model_versions(f"name = '{name}'") == []
    version = tracking.register_model(uri, run_id, name, trained_run)
    assert versions_of(client, name) == [version]
    experiment = client.get_run(run_id).info.experiment_id
    statuses = [str(m.status) for m in client.search_logged_models([experiment],
                                                                    filter_string=f"source_run_id = '{run_id}'")]
    assert any("FAILED" in s for s in statuses), statuses  # the failed try's model is marked, not registered


def test_a_retry_after_the_version_was_created_reuses_it(mlflow_server, trained_run, client, name, monkeypatch):
    """The server created the version, then the step failed (here: describing it)."""
    from mlflow import MlflowClient

    uri = mlflow_server.tracking_uri
    run_id = logged_run(uri, trained_run)

    def unavailable(self, *args, **kwargs):
        raise ConnectionError("503 Service Unavailable")

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "update_model_version", unavailable)
        with pytest.raises(ConnectionError):
            tracking.register_model(uri, run_id, name, trained_run)
    (created,) = versions_of(client, name)
    assert "registered_model.version" not in client.get_run(run_id).data.tags
    assert tracking.register_model(uri, run_id, name, trained_run) == created
    assert versions_of(client, name) == [created]
    assert client.get_run(run_id).data.tags["registered_model.version"] == created
    assert f"MLflow run {run_id}" in client.get_model_version(name, created).description


def test_a_retry_of_the_kfp_run_finds_its_version(mlflow_server, trained_run, client, name):
    """A version found by its ``kfp.run_id`` tag when the MLflow run is another one of the same KFP run."""
    uri = mlflow_server.tracking_uri
    kfp_run_id = "kfp-" + secrets.token_hex(6)
    first_run = logged_run(uri, trained_run, kfp_run_id)
    version = tracking.register_model(uri, first_run, name, trained_run)
    tracking.end_run(uri, first_run, "FINISHED")
    second_run = logged_run(uri, trained_run, kfp_run_id)  # a new run: the old one is not RUNNING
    assert second_run != first_run
    assert tracking.register_model(uri, second_run, name, trained_run) == version
    assert versions_of(client, name) == [version]


def test_the_register_step_retried_registers_once_and_keeps_its_decision(mlflow_server, trained_run, sample_data,
                                                                         client, name, tmp_path, monkeypatch):
    """``kubeflow.steps.register_and_promote`` twice for one run: one version, the same decision."""
    from components.contracts.run_layout import ARTIFACT_FILES
    from components.kubeflow.steps import register_and_promote

    uri = mlflow_server.tracking_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    artifacts = {}
    for kind, entries in ARTIFACT_FILES.items():  # one KFP output folder per artifact
        folder = tmp_path / "artifacts" / kind
        for entry in entries:
            source = trained_run / entry.rstrip("/")
            if source.is_dir():
                shutil.copytree(source, folder / entry.rstrip("/"))
            elif source.exists():
                (folder / entry).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, folder / entry)
        artifacts[kind] = str(folder)
    run_id = tracking.start_pipeline_run(uri, EXPERIMENT, "step-retry", "kfp-" + secrets.token_hex(6),
                                         read_json(trained_run / "train_config.json"), None)
    first = register_and_promote(artifacts, str(sample_data), run_id, name, "iou", 0.0, "")
    again = register_and_promote(artifacts, str(sample_data), run_id, name, "iou", 0.0, "")
    assert again["version"] == first["version"]
    assert versions_of(client, name) == [first["version"]]
    assert (first["decision"], first["rule"]) == ("promoted", "first_champion")
    assert (again["decision"], again["rule"], again["reason"]) == ("promoted", "first_champion", first["reason"])
    tags = client.get_model_version(name, first["version"]).tags
    assert (tags["promotion.decision"], tags["promotion.rule"]) == ("promoted", "first_champion")
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]


# ------------------------------------------------------------------------------------------
# Case 5: an unreadable champion or score is never replaced
# ------------------------------------------------------------------------------------------
def _champion_and_better(uri: str, trained_run: Path, tmp_path: Path, client, name: str) -> tuple[str, str]:
    run_id = logged_run(uri, trained_run)
    first = tracking.register_model(uri, run_id, name, trained_run)
    assert tracking.promote_if_better(uri, name, first)["rule"] == "first_champion"
    iou = float(client.get_model_version(name, first).tags["metric.iou"])
    better_dir = copy_with_iou(trained_run, tmp_path, min(iou + 0.05, 1.0), "better")
    better = tracking.register_model(uri, logged_run(uri, better_dir), name, better_dir)
    return first, better


def test_a_failed_rescore_of_the_champion_keeps_it(mlflow_server, trained_run, tmp_path, client, name, monkeypatch):
    import mlflow

    from components.contracts.run_layout import RunLayout

    uri = mlflow_server.tracking_uri
    first, better = _champion_and_better(uri, trained_run, tmp_path, client, name)

    def broken_download(*args, **kwargs):
        raise OSError("connection reset by peer while downloading the champion")

    with monkeypatch.context() as patched:
        patched.setattr(mlflow.artifacts, "download_artifacts", broken_download)
        score = tracking.champion_score_on(uri, RunLayout(trained_run), name, None, "iou")
    assert isinstance(score, tracking.ChampionUnreadable)
    assert f"v{first}" in score.error and "connection reset" in score.error
    decision = tracking.promote_if_better(uri, name, better, "iou", 0.0, champion_score_on_split=score)
    assert (decision["decision"], decision["rule"]) == ("not_promoted", "champion_unreadable")
    assert "connection reset" in decision["reason"] and "fail closed" in decision["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == first
    # a re-score that measured nothing (nan) compares nothing either
    nan = tracking.promote_if_better(uri, name, better, "iou", 0.0, champion_score_on_split=float("nan"))
    assert (nan["decision"], nan["rule"]) == ("not_promoted", "incomparable")
    assert client.get_model_version_by_alias(name, "champion").version == first


@pytest.mark.parametrize("tag", ["not-a-number", "nan", ""])
def test_a_champion_with_an_unreadable_metric_tag_keeps_it(mlflow_server, trained_run, tmp_path, client, name, tag):
    uri = mlflow_server.tracking_uri
    first, better = _champion_and_better(uri, trained_run, tmp_path, client, name)
    client.set_model_version_tag(name, first, "metric.iou", tag)
    decision = tracking.promote_if_better(uri, name, better, "iou", 0.0)
    assert (decision["decision"], decision["rule"]) == ("not_promoted", "incomparable")
    assert f"champion v{first} has no iou tag that is a finite number" in decision["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == first


# ------------------------------------------------------------------------------------------
# Case 13: a tracking URI with a password, behind basic auth
# ------------------------------------------------------------------------------------------
def test_basic_auth_in_front_of_mlflow(mlflow_server, client, monkeypatch):
    for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    password = "pw-" + secrets.token_hex(6)
    with BasicAuthServer("campseg", password, upstream=mlflow_server.tracking_uri) as proxy:
        uri = proxy.uri()
        tracking.check_tracking_server(uri)
        run_id = tracking.start_pipeline_run(uri, EXPERIMENT, "through-auth", None, {"x": 1}, None)
        tracking.end_run(uri, run_id, "FINISHED")
        with pytest.raises(TrackingError, match="refused the credentials") as err:
            tracking.check_tracking_server(proxy.uri(password="bad-" + password))
        assert password not in str(err.value)
    assert client.get_run(run_id).info.status == "FINISHED"


def test_pipeline_with_a_wrong_password_fails_at_start_tracking_without_printing_it(tmp_path):
    """``pipeline.py --run-local`` through the real command line: the first step's health check
    names the refused credentials, the password appears nowhere, nothing is trained."""
    import os

    from tests.support.cli import error_line, run_pipeline

    password = "pw-" + secrets.token_hex(6)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_TRACKING_") and k != "CAMPSEG_DEBUG"}
    out = tmp_path / "local"
    with BasicAuthServer("campseg", password) as server:
        wrong = server.uri(password="bad-" + password)
        proc = run_pipeline("--run-local", "--output-dir", str(out), env={**env, "MLFLOW_TRACKING_URI": wrong})
        assert proc.returncode == 1, proc.stderr[-3000:]  # a failed local run
        line = error_line(proc, "start-tracking", "refused the credentials", "401", "campseg:***@", single=False)
        assert "bad-" + password not in proc.stdout + proc.stderr, line
        assert any(path == "/health" and not ok for _, path, ok in server.seen)
    assert not list(out.rglob("*.ckpt"))
