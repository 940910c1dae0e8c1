"""The multi-node training step end to end: it submits the job through the real ``kubernetes``
client to a stub API (tests/support/kube_api_stub.py), waits, and collects the run folder from a
real S3 (SeaweedFS).

On the success path the stub plays node 0 of the job when the job is created: it runs the
manifest's own command (``python -m components.kubeflow.train_node ...``, which stages the inputs
from S3, trains under ``torchrun -m components train`` on this CPU and uploads the run folder),
shrunk to the one node this machine has. The failure and timeout paths never train.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import pytest

from components import storage
from components.contracts.errors import ParameterError
from components.contracts.run_layout import RunLayout
from components.data.sample_data import generate_sample_dataset
from components.kubeflow import steps
from components.kubeflow.cluster import ClusterSettings, Resources, train_job_settings
from components.kubeflow.job_launcher import TrainJobFailed
from components.kubeflow.train_jobs import job_name
from tests.support import crd_schemas
from tests.support.kube_api_stub import TRAINJOB_SUCCEEDS, KubeApiStub, failing

pytestmark = pytest.mark.integration

RUN_ID = "7d1e0c44-9b2a-4f0e-8c3d-0a1b2c3d4e5f"
CONFIG = dict(architecture="unet", base_channels=4, depth=2, loss="bce_dice", optimizer="adamw",
              learning_rate=0.01, weight_decay=0.0, lr_schedule="none", augment=False, epochs=1,
              batch_size=8, patience=1, seed=3, precision="32")


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("job-data") / "data", n_chips=16, size=32, seed=5)


@pytest.fixture
def dataset(s3_server, s3_env, s3_bucket, local_data, tmp_path, monkeypatch) -> tuple[str, Path]:
    """The dataset under s3://bucket/data/ and its statistics artifact."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    uri = f"s3://{s3_bucket}/data/"
    storage.upload_dir(local_data, uri, client=s3_server.client())
    statistics = tmp_path / "statistics"
    params = dict(image_size=0, network_depth=2, train_ratio=0.5, val_ratio=0.25, test_ratio=0.25, seed=3,
                  threshold=0.5)
    steps.run_stats(uri, steps.dataset_fingerprint(uri), str(statistics), params)
    return uri, statistics


def job_json(bucket: str, kind: str = "trainjob", **changes) -> str:
    s = ClusterSettings(image="r/cpu:1", gpu_image="r/cuda:1", train_nodes=2, train_gpus_per_node=1,
                        train_job_kind=kind, train_job_prefix=f"s3://{bucket}/jobs/")
    return dataclasses.replace(train_job_settings(s.check(), Resources("1", "2", "1Gi", "2Gi")),
                               poll_s=0.05, **changes).to_json()


def _train_flags_known() -> set[str]:
    from components.cli.stages import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    return {option for action in train._actions for option in action.option_strings}


def play_node_zero(manifest: dict) -> None:
    """Run the job's command as its node 0 would, on one node of one process (this machine)."""
    from components.kubeflow import train_node

    command = manifest["spec"]["trainer"]["command"]
    assert command[:3] == ["python", "-m", "components.kubeflow.train_node"]
    args = command[3:]
    for flag in ("--nodes", "--procs-per-node"):
        args[args.index(flag) + 1] = "1"
    if "--devices" not in _train_flags_known():  # the multi-GPU flags are another branch's
        args = args[:args.index("--devices")]
    else:
        args[args.index("--num-nodes") + 1] = "1"
    env = {"PET_NODE_RANK": "0", "PET_MASTER_ADDR": "127.0.0.1", "PET_MASTER_PORT": "29517",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[2]),
                                                       os.environ.get("PYTHONPATH")]))}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        assert train_node.main(args) == 0


def test_the_step_waits_for_the_job_and_collects_its_run_folder_from_s3(dataset, s3_bucket, tmp_path):
    uri, statistics = dataset
    training = tmp_path / "training"
    with KubeApiStub(TRAINJOB_SUCCEEDS, on_create=play_node_zero) as stub:
        summary = steps.run_train_job(uri, str(statistics), str(training), CONFIG, job_json(s3_bucket), RUN_ID,
                                      api=(stub.api_client(), "team-a"))
        created = stub.requests[0][2]
    assert crd_schemas.errors("trainjob", created) == []
    assert summary["epochs_run"] == 1 and 0 <= summary["best_val_iou"] <= 1
    layout = RunLayout(training)
    assert layout.checkpoint.is_file() and layout.config.is_file() and layout.history.is_file()
    work = f"s3://{s3_bucket}/jobs/{job_name(RUN_ID)}/"
    keys = {o.key for o in storage.list_objects(work)}
    assert any(k.endswith("statistics/stats.json") for k in keys)
    assert any(k.endswith("run/training_history.json") for k in keys)


def test_a_failed_job_fails_the_step_with_its_reason(dataset, s3_bucket, tmp_path):
    uri, statistics = dataset
    training = tmp_path / "training"
    script = failing("pytorchjob", "BackoffLimitExceeded", "pytorch container of master-0 exited with code 1")
    with KubeApiStub(script) as stub:
        with pytest.raises(TrainJobFailed) as caught:
            steps.run_train_job(uri, str(statistics), str(training), CONFIG, job_json(s3_bucket, "pytorchjob"),
                                RUN_ID, api=(stub.api_client(), "team-a"))
        assert stub.objects  # left for inspection
    text = str(caught.value)
    assert f"PyTorchJob {job_name(RUN_ID)} in namespace team-a failed" in text
    assert "BackoffLimitExceeded" in text and "exited with code 1" in text
    assert not training.exists() or not any(training.iterdir())


def test_a_job_that_does_not_finish_in_time_fails_the_step_and_is_deleted(dataset, s3_bucket, tmp_path):
    uri, statistics = dataset
    with KubeApiStub([{}, {"jobsStatus": [{"name": "node", "active": 2}]}]) as stub:
        with pytest.raises(TrainJobFailed, match=re.escape(f"TrainJob {job_name(RUN_ID)} in namespace team-a "
                                                           "did not finish within 1s")):
            steps.run_train_job(uri, str(statistics), str(tmp_path / "training"), CONFIG,
                                job_json(s3_bucket, timeout_s=1), RUN_ID, api=(stub.api_client(), "team-a"))
        assert not stub.objects


def test_a_job_that_succeeds_without_a_run_folder_is_named(dataset, s3_bucket, tmp_path):
    uri, statistics = dataset
    with KubeApiStub(TRAINJOB_SUCCEEDS) as stub:  # nobody plays node 0: nothing is uploaded
        with pytest.raises(TrainJobFailed, match=r"succeeded but s3://.*/run lacks checkpoints/"):
            steps.run_train_job(uri, str(statistics), str(tmp_path / "training"), CONFIG, job_json(s3_bucket),
                                RUN_ID, api=(stub.api_client(), "team-a"))


def test_a_local_dataset_is_refused_before_any_job(s3_bucket, tmp_path, local_data):
    with pytest.raises(ParameterError, match="every node: pass an s3:// prefix"):
        steps.run_train_job(str(local_data), str(tmp_path), str(tmp_path / "t"), CONFIG, job_json(s3_bucket),
                            RUN_ID, api=(None, "team-a"))
