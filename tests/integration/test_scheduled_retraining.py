"""Scheduled retraining does no needless work: three runs of the whole pipeline (kfp.local) against
the real S3 and MLflow servers, as a nightly schedule would start them.

1. the first run trains, registers a version and makes it champion;
2. the next run on the same data with the same parameters records "no new data" (run tag, log
   line), skips statistics, training, export, evaluation, packaging, STAC and registration, and
   its MLflow run still ends FINISHED; no version is added;
3. after chips are added to the dataset, the next run trains and its version competes for the
   alias.
"""

from __future__ import annotations

import secrets
from pathlib import Path

import pytest

import pipeline
from components import storage
from components.data.sample_data import generate_sample_dataset
from components.kubeflow.local_runner import LOCAL_SETTINGS, run_local
from components.tracking.retraining import PARAMS_DIGEST_TAG, PARAMS_TAG
from tests.support.datasets import SMALL_RUN

pytestmark = pytest.mark.integration

SKIPPED_STEPS = ("dataset-statistics", "train-model", "export-model", "evaluate-model", "package-dlpk",
                 "generate-stac-item", "register-model")


@pytest.fixture
def nightly(s3_server, mlflow_server, tmp_path, monkeypatch):
    """A dataset of 24 chips in a bucket, 8 more chips to add later, and the run's environment."""
    full = generate_sample_dataset(tmp_path / "data-32", n_chips=32, size=64, seed=11)  # chip i depends on (seed, i)
    first = generate_sample_dataset(tmp_path / "data-24", n_chips=24, size=64, seed=11)
    bucket = s3_server.create_bucket("campseg-" + secrets.token_hex(5))
    storage.upload_dir(first, f"s3://{bucket}/data/", client=s3_server.client())
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    name = f"campseg-nightly-{secrets.token_hex(4)}x"
    return {"bucket": bucket, "full": full, "name": name,
            "arguments": dict(SMALL_RUN, train_epochs=1, split_seed=42, dataset_uri=f"s3://{bucket}/data/",
                              model_name=name, tracking_experiment=name)}


def test_unchanged_data_skips_training_and_grown_data_trains_and_competes(nightly, mlflow_server, s3_server,
                                                                         tmp_path):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)
    name, arguments = nightly["name"], nightly["arguments"]

    def run(tag: str) -> dict:
        return run_local(arguments, tmp_path / "runs" / tag, pipeline.build_pipeline(LOCAL_SETTINGS))

    def versions() -> set[str]:
        return {v.version for v in client.search_model_versions(f"name='{name}'")}

    # 1. the first run trains and registers the champion, tagged with its data and parameters
    first = run("first")
    assert first["retraining"]["decision"] == "train"
    v1 = first["mlflow"]["model_version"]
    assert versions() == {v1}
    assert client.get_model_version_by_alias(name, "champion").version == v1
    tags = client.get_model_version(name, v1).tags
    first_run = client.get_run(first["mlflow"]["run_id"])
    assert tags["dataset.fingerprint"] == storage.fingerprint(arguments["dataset_uri"], client=s3_server.client())
    assert tags[PARAMS_DIGEST_TAG] == first_run.data.tags[PARAMS_DIGEST_TAG]
    assert tags[PARAMS_TAG] == first_run.data.tags[PARAMS_TAG]
    assert first_run.data.tags["retraining.rule"] == "no_champion"

    # 2. same data, same parameters: "no new data", nothing trained or registered, the run FINISHED
    second = run("second")
    assert second["retraining"]["decision"] == "skip" and second["outcome"] == "no new data"
    # the step's own line: in the run's log (the console shows a line per step)
    assert "decide-training: skip (no_new_data): no new data" in Path(second["kfp_local_log"]).read_text()
    assert f"champion v{v1}" in second["retraining"]["reason"]
    root = Path(second["kfp_local_run"])
    for step in SKIPPED_STEPS:
        assert not (root / step).exists(), f"{step} ran"
    assert (root / "end-tracking").exists()
    run2 = client.get_run(second["mlflow"]["run_id"])
    assert run2.info.status == "FINISHED"
    assert run2.data.tags["campseg.outcome"] == "no new data"
    assert run2.data.tags["retraining.decision"] == "skip" and run2.data.tags["retraining.rule"] == "no_new_data"
    assert "registered_model.version" not in run2.data.tags
    assert versions() == {v1}
    assert client.get_model_version_by_alias(name, "champion").version == v1

    # 3. chips added to the dataset: the run trains, registers, and its version competes for the alias
    grown = nightly["full"]
    added = sorted(set(p.name for p in (grown / "chips").iterdir()) - {f"sample-{i:04d}.png" for i in range(24)})
    assert len(added) == 8
    s3 = s3_server.client()
    for stem in added:
        for folder in ("chips", "labels"):
            s3.upload_file(str(grown / folder / stem), nightly["bucket"], f"data/{folder}/{stem}")
    third = run("third")
    assert third["retraining"]["decision"] == "train"
    run3 = client.get_run(third["mlflow"]["run_id"])
    assert run3.data.tags["retraining.rule"] == "new_data" and "campseg.outcome" not in run3.data.tags
    v3 = third["mlflow"]["model_version"]
    assert versions() == {v1, v3}
    new_tags = client.get_model_version(name, v3).tags
    assert new_tags["dataset.fingerprint"] != tags["dataset.fingerprint"]
    assert new_tags["promotion.decision"] in ("promoted", "not_promoted")  # it competed
    assert new_tags["promotion.rule"] in ("better", "not_better"), new_tags["promotion.reason"]
    assert new_tags["promotion.previous_champion_version"] == v1
    assert run3.info.status == "FINISHED"
