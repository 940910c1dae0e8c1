"""The closest thing to a cluster that runs here: the whole compiled pipeline in the CPU image.

``pipeline.py --compile`` writes the YAML a cluster gets (CPU-only: ``--accelerator-count 0``);
kfp.local's DockerRunner runs every step of it in the image built by the session fixture
``cpu_image``, with nothing from this machine but what a cluster step gets: the image, the S3 and
MLflow variables of its Secrets and ConfigMap (passed by name at run time), and the pipeline
root kfp.local mounts. The servers are the real ones the tests start (SeaweedFS S3, MLflow on
PostgreSQL with its artifacts in S3), reached over the host network. The same YAML then runs
with the SubprocessRunner on the same data and seed: the test metrics must agree.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from pathlib import Path

import pytest

import pipeline
from components import storage
from components.data.sample_data import generate_sample_dataset
from components.kubeflow.local_runner import STEP_ENV, run_local
from tests.support.datasets import SMALL_RUN

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@contextlib.contextmanager
def server_env(s3_server, tracking_uri: str):
    """The S3 server's variables and MLflow's URI, and no other AWS/MLflow setting of this shell."""
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith(("AWS_", "MLFLOW_"))]:
            mp.delenv(key)
        for key, value in s3_server.env().items():
            mp.setenv(key, value)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        yield


def mlflow_client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)


def test_whole_compiled_pipeline_in_the_image_matches_the_subprocess_run(
        cpu_image, docker_client, s3_server, mlflow_server, tmp_path):
    bucket = s3_server.create_bucket("campseg-docker-" + secrets.token_hex(4))
    data = generate_sample_dataset(tmp_path / "data", n_chips=24, size=64, seed=7)
    storage.upload_dir(data, f"s3://{bucket}/data/", client=s3_server.client())
    package = tmp_path / "pipeline.yaml"
    # kfp.local mounts no volume: compiled without the scratch volume (its TMPDIR would not exist)
    assert pipeline.main(["--compile", "--output", str(package), "--image", cpu_image, "--accelerator-count", "0",
                          "--scratch-size", ""]) == 0
    from kfp.components import load_component_from_file

    compiled = load_component_from_file(str(package))
    assert cpu_image in package.read_text()

    def arguments(name: str) -> dict:
        return dict(SMALL_RUN, dataset_uri=f"s3://{bucket}/data/", model_publish_uri=f"s3://{bucket}/published/",
                    model_name=name, tracking_experiment=name, split_seed=42, train_epochs=2, train_patience=10)

    in_image_name, on_host_name = (f"campseg-{kind}-{secrets.token_hex(3)}x" for kind in ("docker", "host"))
    with server_env(s3_server, mlflow_server.tracking_uri):
        in_image = run_local(arguments(in_image_name), tmp_path / "docker", compiled, docker_image=cpu_image)
        on_host = run_local(arguments(on_host_name), tmp_path / "host", compiled)

    # Every step ran in a container of the image: its files belong to the image's user (the
    # containers run as that user when the tests run as root, as in .ci/run).
    run_root = Path(in_image["kfp_local_run"])
    tasks = {p.parent.name: p for p in run_root.glob("*/executor_output.json")}
    assert len(tasks) >= 10 and {"start-tracking", "train-model", "register-model"} <= set(tasks), sorted(tasks)
    if os.geteuid() == 0:
        image_uid = int(docker_client.images.get(cpu_image).attrs["Config"]["User"].split(":")[0])
        assert image_uid != 0
        assert {task: path.stat().st_uid for task, path in tasks.items()} == dict.fromkeys(tasks, image_uid)
    host_tasks = {p.parent.name for p in Path(on_host["kfp_local_run"]).glob("*/executor_output.json")}
    assert host_tasks == set(tasks)

    # Same data, seed and YAML: the same training, to the float. Both runs use this machine's
    # cores (the containers are not CPU-limited), so torch picks the same thread count, and the
    # image's torch is the host's (2.13.0+cpu): the same kernels in the same order. The losses
    # prove it: at this size the test metrics may be those of an all-camp prediction, which any
    # two weak models share, but a loss differs with any difference in the weights.
    docker_history = json.loads((tmp_path / "docker" / "training_history.json").read_text())["epochs"]
    host_history = json.loads((tmp_path / "host" / "training_history.json").read_text())["epochs"]
    assert len(docker_history) == len(host_history) == 2
    for a, b in zip(docker_history, host_history):
        for key in ("train_loss", "val_loss", "val_iou", "train_iou"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (a["epoch"], key)
    assert in_image["test_metrics"].keys() == on_host["test_metrics"].keys()
    for metric, value in on_host["test_metrics"].items():
        assert in_image["test_metrics"][metric] == pytest.approx(value, rel=1e-6, abs=1e-9), metric
    assert (json.loads((tmp_path / "docker" / "stats.json").read_text())["counts"]
            == json.loads((tmp_path / "host" / "stats.json").read_text())["counts"])

    # The MLflow server holds the container run: finished, its test metric, a registered champion.
    client = mlflow_client(mlflow_server)
    run = client.get_run(in_image["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.metrics["test/iou"] == pytest.approx(in_image["test_metrics"]["iou"], abs=1e-9)
    version = client.get_model_version(in_image_name, in_image["mlflow"]["model_version"])
    assert version.run_id == run.info.run_id and version.status == "READY"
    assert client.get_model_version_by_alias(in_image_name, "champion").version == version.version
    # ... and the bucket the published STAC item the container wrote.
    prefix = f"published/{in_image_name}/{version.version}/metadata/stac_item.json"
    item = json.loads(s3_server.client().get_object(Bucket=bucket, Key=prefix)["Body"].read())
    assert item["assets"]


def test_docker_runner_passes_only_the_step_variables(cpu_image, docker_client, tmp_path, monkeypatch):
    """The containers get the cluster's variables by name from this environment, nothing else."""
    from components.kubeflow.local_runner import docker_image_user, docker_runner

    for name in STEP_ENV:
        monkeypatch.setenv(name, f"value-of-{name}")
    monkeypatch.setenv("CAMPSEG_NOT_A_STEP_VARIABLE", "host-only")
    user = docker_image_user(cpu_image, client=docker_client)
    assert user == docker_client.images.get(cpu_image).attrs["Config"]["User"] and user.split(":")[0] != "0"
    runner = docker_runner(user, tmp_path / "root", read_only=[tmp_path])
    args = runner.container_run_args
    assert args["network_mode"] == "host"
    environment = {k: v for k, v in args["environment"].items() if k != "HOME"}
    assert environment == {name: f"value-of-{name}" for name in STEP_ENV}
    assert [(m["Source"], m["Target"], m["ReadOnly"]) for m in args["mounts"]] == [(str(tmp_path),) * 2 + (True,)]
