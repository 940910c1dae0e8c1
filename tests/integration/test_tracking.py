"""MLflow tracking and registry (components.tracking) against a real MLflow server.

The server (tests.server_fixtures.mlflow_server) keeps its runs in PostgreSQL and its artifacts
in a SeaweedFS bucket; the tests query MLflow's API and the bucket directly. Two tests need no
server: an unreachable URI, and the embedded SQLite store of a local run.
"""

from __future__ import annotations

import json
import secrets
import socket
import time
from pathlib import Path

import pytest

from components import tracking
from components.contracts.errors import PipelineInputError, TrackingError
from tests.support.runs import copy_with_iou, read_json

pytestmark = pytest.mark.integration

PARAMS = {"architecture": "unet", "learning_rate": 0.003, "epochs": 15, "pipeline": {"margin": 0.0}}


def publish(uri: str, run_dir: Path, model_name: str, *, experiment: str, kfp_run_id: str | None = None,
            margin: float = 0.0) -> dict:
    """Every tracking step of one pipeline run, in pipeline order."""
    tracking.check_tracking_server(uri)
    config = read_json(run_dir / "train_config.json")
    run_id = tracking.start_pipeline_run(uri, experiment, f"run-{secrets.token_hex(3)}",
                                         kfp_run_id or f"kfp-{secrets.token_hex(6)}",
                                         {**config, "pipeline": {"margin": margin}}, None)
    tracking.log_dataset(uri, run_id, read_json(run_dir / "stats.json"))
    tracking.log_history(uri, run_id, read_json(run_dir / "training_history.json"))
    tracking.log_run_artifacts(uri, run_id, run_dir)
    version = tracking.register_model(uri, run_id, model_name, run_dir)
    decision = tracking.promote_if_better(uri, model_name, version, "iou", margin)
    tracking.end_run(uri, run_id, "FINISHED")
    return {"run_id": run_id, "version": version, "decision": decision}


@pytest.fixture(scope="module")
def model_name() -> str:
    return "campseg-" + secrets.token_hex(4)


@pytest.fixture(scope="module")
def first(mlflow_server, trained_run, model_name) -> dict:
    """The trained run published to the server: the model's first version."""
    return publish(mlflow_server.tracking_uri, trained_run, model_name, experiment="campseg-tests",
                   kfp_run_id="kfp-first-" + secrets.token_hex(4))


@pytest.fixture(scope="module")
def client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)


# ------------------------------------------------------------------------------------------
# One published run
# ------------------------------------------------------------------------------------------
def test_params_tags_and_dataset_input(first, client, trained_run):
    run = client.get_run(first["run_id"])
    params, tags = run.data.params, run.data.tags
    config = read_json(trained_run / "train_config.json")
    for key, value in config.items():
        assert params[key] == str(value), key
    assert params["pipeline.margin"] == "0.0"
    stats = read_json(trained_run / "stats.json")
    assert params["dataset.uri"] == stats["dataset_uri"]
    assert params["dataset.preprocessing.image_size"] == str(stats["preprocessing"]["image_size"])
    assert tags["kfp.run_id"].startswith("kfp-first-")
    for key in ("platform", "python", "torch", "lightning", "cpu_count", "memory_gb", "gpu_count"):
        assert tags[f"system.{key}"], key
    assert run.data.metrics["dataset/counts.test"] == stats["counts"]["test"]
    # the dataset as an input: its URI as source and its content fingerprint as digest
    (dataset_input,) = run.inputs.dataset_inputs
    ds = dataset_input.dataset
    assert json.loads(ds.source)["uri"] == stats["dataset_uri"]
    fingerprint = params["dataset.fingerprint"]
    assert fingerprint.startswith("sha256:")
    assert ds.digest == fingerprint.removeprefix("sha256:")[:36]
    assert {t.key: t.value for t in dataset_input.tags}["mlflow.data.context"] == "training"
    assert run.info.status == "FINISHED"


def test_metric_history_has_one_point_per_epoch(first, client, trained_run, mlflow_server):
    history = read_json(trained_run / "training_history.json")
    epochs = [row["epoch"] for row in history["epochs"]]
    for key in ("val/iou", "val/loss", "train/loss", "train/iou", "train/lr"):
        points = client.get_metric_history(first["run_id"], key)
        assert sorted(p.step for p in points) == epochs, key
    val_iou = {p.step: p.value for p in client.get_metric_history(first["run_id"], "val/iou")}
    assert val_iou == pytest.approx({r["epoch"]: r["val_iou"] for r in history["epochs"]})
    metrics = client.get_run(first["run_id"]).data.metrics
    best = max(history["epochs"], key=lambda r: r["val_iou"])
    assert metrics["best/epoch"] == best["epoch"]
    assert metrics["best/val_iou"] == pytest.approx(best["val_iou"])
    assert metrics["best/val_loss"] == pytest.approx(best["val_loss"])
    evaluation = read_json(trained_run / "evaluation" / "metrics.json")
    for key in ("iou", "f1", "precision", "recall", "accuracy"):
        assert metrics[f"test/{key}"] == pytest.approx(evaluation[key])
    # logging the history again (a retried step) adds no point
    tracking.log_history(mlflow_server.tracking_uri, first["run_id"], history)
    assert len(client.get_metric_history(first["run_id"], "val/iou")) == len(epochs)


def test_artifacts_are_in_the_bucket_with_local_sizes(first, client, mlflow_server, s3_server, trained_run):
    run = client.get_run(first["run_id"])
    # proxied artifacts: mlflow-artifacts:/<exp>/<run>/artifacts -> s3://<bucket>/mlflow/<exp>/...
    assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
    prefix = "mlflow/" + run.info.artifact_uri.removeprefix("mlflow-artifacts:/").strip("/") + "/"
    s3 = s3_server.client()
    listed: dict[str, int] = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=mlflow_server.bucket, Prefix=prefix):
        listed |= {o["Key"][len(prefix):]: o["Size"] for o in page.get("Contents", [])}
    expected = tracking.run_artifacts(trained_run)
    for required in ("models/model.onnx", "models/model.pt", "models/model.pth", "models/export_report.json",
                     "metadata/stac_item.json", "metadata/stats.json", "checkpoints/best.ckpt",
                     "evaluation/metrics.json", "evaluation/confusion_matrix.png"):
        assert required in expected, required
    assert any(k.startswith("evaluation/overlays/") for k in expected)
    assert any(k.startswith("esri/") and k.endswith(".dlpk") for k in expected)
    for key, local in expected.items():
        assert key in listed, f"{key} missing under s3://{mlflow_server.bucket}/{prefix}"
        assert listed[key] == local.stat().st_size, key
    assert client.get_run(first["run_id"]).data.tags["campseg.artifacts_logged"] == "true"


def test_registered_version_has_signature_example_and_stac_item(first, client, model_name, mlflow_server, trained_run):
    import mlflow

    version = client.get_model_version(model_name, first["version"])
    assert version.run_id == first["run_id"]
    uri = f"models:/{model_name}/{first['version']}"
    with tracking.global_uri(mlflow_server.tracking_uri):
        info = mlflow.models.get_model_info(uri)
        stac = mlflow.artifacts.download_artifacts(f"{uri}/extra_files/stac_item.json")
        example = mlflow.artifacts.download_artifacts(f"{uri}/input_example.json")
    size = read_json(trained_run / "stats.json")["preprocessing"]["image_size"]
    (inp,) = info.signature.inputs.inputs
    (out,) = info.signature.outputs.inputs
    assert (inp.name, str(inp.type), inp.shape) == ("input", "float32", (-1, 3, size, size))
    assert (out.name, str(out.type), out.shape) == ("probabilities", "float32", (-1, 1, size, size))
    assert "onnx" in info.flavors
    assert Path(example).stat().st_size > 0
    assert read_json(stac) == read_json(trained_run / "metadata" / "stac_item.json")
    tags = version.tags
    assert float(tags["metric.iou"]) == pytest.approx(read_json(trained_run / "evaluation" / "metrics.json")["iou"])
    assert tags["test_split_id"] == tracking.compute_test_split_id(trained_run)


# ------------------------------------------------------------------------------------------
# Champion
# ------------------------------------------------------------------------------------------
def test_champion_moves_only_for_a_better_version(first, client, model_name, mlflow_server, trained_run, tmp_path):
    uri = mlflow_server.tracking_uri
    assert first["decision"]["decision"] == "promoted"
    assert first["decision"]["rule"] == "first_champion"
    assert client.get_model_version_by_alias(model_name, "champion").version == first["version"]
    first_iou = float(client.get_model_version(model_name, first["version"]).tags["metric.iou"])

    worse = publish(uri, copy_with_iou(trained_run, tmp_path, first_iou - 0.2, "worse"), model_name,
                    experiment="campseg-tests")
    assert worse["version"] != first["version"]
    assert worse["decision"]["decision"] == "not_promoted"
    assert worse["decision"]["rule"] == "not_better"
    assert client.get_model_version_by_alias(model_name, "champion").version == first["version"]
    for tags in (client.get_model_version(model_name, worse["version"]).tags,
                 client.get_run(worse["run_id"]).data.tags):
        assert tags["promotion.decision"] == "not_promoted"
        assert f"v{first['version']}" in tags["promotion.reason"]
        assert "does not beat" in tags["promotion.reason"]

    # better, but not by the margin: stays
    close = publish(uri, copy_with_iou(trained_run, tmp_path, min(first_iou + 0.01, 1.0), "close"), model_name,
                    experiment="campseg-tests", margin=0.05)
    assert close["decision"]["decision"] == "not_promoted"
    assert client.get_model_version_by_alias(model_name, "champion").version == first["version"]

    better = publish(uri, copy_with_iou(trained_run, tmp_path, first_iou + 0.05, "better"), model_name,
                     experiment="campseg-tests")
    assert better["decision"]["decision"] == "promoted"
    assert better["decision"]["rule"] == "better"
    assert better["decision"]["previous_champion_version"] == first["version"]
    assert client.get_model_version_by_alias(model_name, "champion").version == better["version"]
    tags = client.get_run(better["run_id"]).data.tags
    assert tags["promotion.decision"] == "promoted"
    assert "beats champion" in tags["promotion.reason"]


def test_champion_on_another_test_split_is_kept_unless_reevaluated(mlflow_server, trained_run, tmp_path, client):
    uri = mlflow_server.tracking_uri
    name = "campseg-split-" + secrets.token_hex(4)
    first = publish(uri, trained_run, name, experiment="campseg-tests")
    other = copy_with_iou(trained_run, tmp_path, 0.99, "other-split")
    stats = read_json(other / "stats.json")
    stats["fingerprint"] = "sha256:" + "0" * 64  # another dataset content: another test split
    (other / "stats.json").write_text(json.dumps(stats))
    assert tracking.compute_test_split_id(other) != tracking.compute_test_split_id(trained_run)
    second = publish(uri, other, name, experiment="campseg-tests")
    decision = second["decision"]
    assert (decision["decision"], decision["rule"]) == ("not_promoted", "incomparable")
    assert "not comparable" in decision["reason"]
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]
    # with the champion re-evaluated on the new split, the scores are compared
    again = tracking.promote_if_better(uri, name, second["version"], "iou", 0.0, champion_score_on_split=0.5)
    assert (again["decision"], again["rule"]) == ("promoted", "better")
    assert client.get_model_version_by_alias(name, "champion").version == second["version"]


# ------------------------------------------------------------------------------------------
# Nothing half-published, run lifecycle
# ------------------------------------------------------------------------------------------
def test_no_version_before_all_artifacts_are_logged(mlflow_server, trained_run, client):
    uri = mlflow_server.tracking_uri
    name = "campseg-early-" + secrets.token_hex(4)
    run_id = tracking.start_pipeline_run(uri, "campseg-tests", "early", None, PARAMS, None)
    with pytest.raises(TrackingError, match="log_run_artifacts"):
        tracking.register_model(uri, run_id, name, trained_run)
    assert client.search_model_versions(f"name = '{name}'") == []
    tracking.end_run(uri, run_id, "FAILED", reason="registration refused")
    run = client.get_run(run_id)
    assert run.info.status == "FAILED"
    assert run.data.tags["campseg.end_reason"] == "registration refused"


def test_end_run_failed_is_visible_and_runs_are_reused(mlflow_server, client):
    uri = mlflow_server.tracking_uri
    kfp_id = "kfp-" + secrets.token_hex(6)
    run_id = tracking.start_pipeline_run(uri, "campseg-tests", "fails", kfp_id, PARAMS, None)
    # a retried first step of the same KFP run logs into the same run
    assert tracking.start_pipeline_run(uri, "campseg-tests", "fails", kfp_id, PARAMS, None) == run_id
    # a run injected by KFP's MLflow plugin (MLFLOW_RUN_ID) is used as is
    injected = client.create_run(client.get_experiment_by_name("campseg-tests").experiment_id).info.run_id
    assert tracking.start_pipeline_run(uri, "campseg-tests", "x", "kfp-y", PARAMS, injected) == injected
    assert client.get_run(injected).data.tags["kfp.run_id"] == "kfp-y"
    assert client.get_run(run_id).info.status == "RUNNING"
    tracking.end_run(uri, run_id, "FAILED")
    assert client.get_run(run_id).info.status == "FAILED"
    with pytest.raises(TrackingError, match="FAILED"):
        tracking.start_pipeline_run(uri, "campseg-tests", "x", kfp_id, PARAMS, run_id)
    with pytest.raises(TrackingError, match="status"):
        tracking.end_run(uri, injected, "DONE")  # type: ignore[arg-type]
    tracking.end_run(uri, None, "FAILED")  # no run yet: nothing to do


# ------------------------------------------------------------------------------------------
# No server
# ------------------------------------------------------------------------------------------
def test_unreachable_tracking_server_fails_fast_naming_the_uri():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    refused = f"http://127.0.0.1:{port}"
    t0 = time.monotonic()
    with pytest.raises(TrackingError, match="unreachable") as err:
        tracking.check_tracking_server(refused)
    assert refused in str(err.value)
    assert isinstance(err.value, PipelineInputError)
    assert time.monotonic() - t0 < 15

    # a server that accepts connections and never answers: the timeout, not MLflow's retries
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        uri = f"http://user:secret@127.0.0.1:{silent.getsockname()[1]}"
        t0 = time.monotonic()
        with pytest.raises(TrackingError) as err:
            tracking.check_tracking_server(uri)
        assert time.monotonic() - t0 < 15
        assert f"127.0.0.1:{silent.getsockname()[1]}" in str(err.value)
    assert "secret" not in str(err.value)


def test_local_sqlite_store_without_server(trained_run, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    from components.contracts.config import TrainConfig
    from components.stages.stats import compute_statistics
    from components.stages.train import train
    from tests.support.datasets import make_dataset

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    uri = tracking.tracking_uri_from_env(out)
    assert uri == f"sqlite:///{out.resolve()}/mlflow.db"
    assert tracking.tracking_uri_from_env(out, env={"MLFLOW_TRACKING_URI": "http://x:5000"}) == "http://x:5000"
    result = publish(uri, trained_run, "campseg-local", experiment="campseg-local")
    client = MlflowClient(uri, registry_uri=uri)
    assert result["decision"]["decision"] == "promoted"
    assert str(client.get_model_version_by_alias("campseg-local", "champion").version) == result["version"] == "1"
    artifact_uri = client.get_run(result["run_id"]).info.artifact_uri
    assert artifact_uri.startswith((out / "mlartifacts").resolve().as_uri())
    assert (out / "mlartifacts" / result["run_id"] / "artifacts" / "models" / "model.onnx").is_file()
    assert not (tmp_path / "mlruns").exists()  # nothing in the working directory

    # the epoch listener, driven by a real (tiny) training: one point per epoch, live
    run_id = tracking.start_pipeline_run(uri, "campseg-local", "callback", None, PARAMS, None)
    tiny = tmp_path / "tiny-run"
    compute_statistics(make_dataset(tmp_path / "tiny-data", n_groups=6, per_group=4, size=32), tiny,
                       network_depth=2)
    logger = tracking.MlflowEpochLogger(uri, run_id)
    train(tiny, TrainConfig(base_channels=4, depth=2, epochs=3, batch_size=4, patience=10),
          listeners=[logger], progress_bar=False)
    assert logger.failures == 0
    assert [row["epoch"] for row in logger.rows] == [0, 1, 2]
    for key in ("train/loss", "val/loss", "val/iou", "train/lr"):
        assert [p.step for p in client.get_metric_history(run_id, key)] == [0, 1, 2], key
    assert client.get_metric_history(run_id, "seconds") == []  # a row's time is not a metric
    run = client.get_run(run_id)
    best = max(logger.rows, key=lambda r: r["val_iou"])
    assert run.data.metrics["best/epoch"] == best["epoch"]
    assert run.data.metrics["best/val_iou"] == pytest.approx(best["val_iou"])
    assert run.data.tags["system.train.python"]
    # log_history afterwards fills nothing twice
    tracking.log_history(uri, run_id, logger.rows)
    assert len(client.get_metric_history(run_id, "val/iou")) == 3
    tracking.end_run(uri, run_id, "FINISHED")


def test_unreadable_champion_is_never_replaced(trained_run, tmp_path, monkeypatch):
    """Only a missing alias means "no champion"; any other registry error keeps the alias (fail closed)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from components.contracts.run_layout import RunLayout

    monkeypatch.chdir(tmp_path)
    uri = tracking.tracking_uri_from_env(tmp_path / "out", env={})
    name = "campseg-unreadable"
    # no registered model at all: no champion, nothing to re-score
    assert tracking.champion_score_on(uri, RunLayout(trained_run), name, None, "iou") is None
    first = publish(uri, trained_run, name, experiment="campseg-local")
    assert first["decision"]["rule"] == "first_champion"  # the model exists, the alias does not
    client = MlflowClient(uri, registry_uri=uri)
    first_iou = float(client.get_model_version(name, first["version"]).tags["metric.iou"])

    # the champion re-scored on the run's own test split: the same score as its evaluation
    rescored = tracking.champion_score_on(uri, RunLayout(trained_run), name, None, "iou")
    assert (rescored.version, rescored.rescored) == (first["version"], True)
    assert rescored.value == pytest.approx(first_iou, abs=1e-5)

    def unavailable(self, model_name, alias):
        raise MlflowException("API request failed with error code 503 != 200", error_code=TEMPORARILY_UNAVAILABLE)

    with monkeypatch.context() as patched:
        patched.setattr(MlflowClient, "get_model_version_by_alias", unavailable)
        unreadable = tracking.champion_score_on(uri, RunLayout(trained_run), name, None, "iou")
        assert isinstance(unreadable, tracking.ChampionUnreadable) and "503" in unreadable.error
        better = publish(uri, copy_with_iou(trained_run, tmp_path, first_iou + 0.05, "better"), name,
                         experiment="campseg-local")
    decision = better["decision"]
    assert (decision["decision"], decision["rule"]) == ("not_promoted", "champion_unreadable")
    assert "503" in decision["reason"] and "fail closed" in decision["reason"]
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["version"]
    assert client.get_model_version(name, better["version"]).tags["promotion.rule"] == "champion_unreadable"

    # an unreadable re-score fails closed too, even when the alias itself reads fine
    again = tracking.promote_if_better(uri, name, better["version"], "iou", 0.0,
                                       champion_score_on_split=unreadable)
    assert again["rule"] == "champion_unreadable"
    assert str(client.get_model_version_by_alias(name, "champion").version) == first["version"]
    # once the registry answers, the better version is promoted as usual
    assert tracking.promote_if_better(uri, name, better["version"], "iou", 0.0)["rule"] == "better"
    assert str(client.get_model_version_by_alias(name, "champion").version) == better["version"]
