"""The whole pipeline, run locally (kfp.local), against a real S3 server and a real MLflow server.

The servers come from tests.server_fixtures: SeaweedFS for S3, and ``mlflow server`` with its
runs in PostgreSQL and its artifacts in a bucket on that SeaweedFS. Each test runs the real
pipeline (:func:`run_in_process`, or ``python pipeline.py --run-local`` where the
user's view of a failure matters), then asks MLflow's API and the bucket directly what happened:

- happy path: the dataset read from S3, params, per-epoch metric history, artifacts in the
  MLflow bucket with the local files' sizes, a registered version with a signature, the run
  FINISHED, and the published STAC item whose s3:// hrefs resolve with the stated sizes;
- champion: a first version becomes champion, a worse one is registered but not promoted (and
  says why), a better one takes the alias;
- faults: the object store down, the MLflow server unreachable (both stop at start-tracking
  with a message that names the endpoint, nothing trained, nothing registered), and an upload
  cut mid-body by a proxy (retried; the published files are intact).

Small data and networks keep the whole file at a few minutes on two cores.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import secrets
import socket
import subprocess
import threading
import urllib.parse
import zipfile
from pathlib import Path

import pytest

import pipeline
from components import storage
from components.data.sample_data import generate_sample_dataset
from components.kubeflow.local_runner import LOCAL_SETTINGS, run_local
from tests.support.cli import error_line, run_pipeline
from tests.support.datasets import SMALL_RUN
from tests.support.servers import SeaweedS3, free_port

pytestmark = pytest.mark.integration

#: A small, fast run: 64-pixel chips, a narrow 3-level U-Net.
SMALL = dict(SMALL_RUN, train_patience=10, split_seed=42)
SMALL_FLAGS = ["--dataset-image-size", "0", "--train-base-channels", "8", "--train-depth", "3",
               "--train-batch-size", "8", "--train-epochs", "1"]


def run_in_process(arguments: dict, out: Path) -> dict:
    """The pipeline through kfp.local in this process, as ``--run-local`` runs it; its summary."""
    return run_local(arguments, out, pipeline.build_pipeline(LOCAL_SETTINGS))


def unique(prefix: str) -> str:
    """A model/experiment name no other test uses (letters first, alphanumeric last)."""
    return f"{prefix}-{secrets.token_hex(4)}x"


# --------------------------------------------------------------------------------------------
# Fixtures: the dataset in a bucket, and the environment of a pipeline run
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("srv-data") / "data", n_chips=24, size=64, seed=7)


@pytest.fixture(scope="module")
def data_bucket(s3_server, local_data) -> str:
    """A bucket holding the dataset under ``data/`` (published models go under ``published/``)."""
    bucket = s3_server.create_bucket("campseg-" + secrets.token_hex(5))
    storage.upload_dir(local_data, f"s3://{bucket}/data/", client=s3_server.client())
    return bucket


@contextlib.contextmanager
def server_env(s3: SeaweedS3, tracking_uri: str, **overrides: str):
    """The environment a pipeline run reads: the S3 server's AWS_* variables and MLflow's URI."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in s3.env().items():
            mp.setenv(key, value)
        for key in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            mp.delenv(key, raising=False)
        mp.setenv("MLFLOW_TRACKING_URI", tracking_uri)
        for key, value in overrides.items():
            mp.setenv(key, value)
        yield


def mlflow_client(mlflow_server):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=mlflow_server.tracking_uri, registry_uri=mlflow_server.tracking_uri)


def versions_of(mlflow_server, name: str) -> list:
    return mlflow_client(mlflow_server).search_model_versions(f"name='{name}'")


def run_cli(args: list[str], env: dict[str, str], timeout: int = 300) -> subprocess.CompletedProcess:
    """``python pipeline.py ARGS`` as a user runs it, with exactly the given server variables."""
    full = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MLFLOW_")) or k == "MLFLOW_DISABLE_TELEMETRY"}
    return run_pipeline(*args, env={**full, **env}, timeout=timeout)


def local_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*"))
            if p.is_file() and not p.name.startswith(".")}


def bucket_objects(s3: SeaweedS3, bucket: str, prefix: str) -> dict[str, storage.ObjectInfo]:
    """``{key relative to prefix: ObjectInfo}`` straight from the bucket's listing."""
    return {o.key[len(prefix):]: o for o in storage.list_objects(f"s3://{bucket}/{prefix}", client=s3.client())}


# --------------------------------------------------------------------------------------------
# 1. Happy path
# --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def happy(s3_server, mlflow_server, data_bucket, tmp_path_factory) -> dict:
    name = unique("campseg-happy")
    out = tmp_path_factory.mktemp("happy") / "run"
    arguments = dict(SMALL, dataset_uri=f"s3://{data_bucket}/data/", model_publish_uri=f"s3://{data_bucket}/published/",
                     model_name=name, tracking_experiment=name, train_epochs=3)
    with server_env(s3_server, mlflow_server.tracking_uri):
        summary = run_in_process(arguments, out)
    return {"name": name, "out": out, "summary": summary, "arguments": arguments,
            "run": mlflow_client(mlflow_server).get_run(summary["mlflow"]["run_id"])}


def test_happy_run_params_status_and_dataset_input(happy, s3_server):
    run, args = happy["run"], happy["arguments"]
    params = run.data.params
    assert run.info.status == "FINISHED"
    assert run.data.tags.get("kfp.run_id"), run.data.tags
    # pipeline parameters (first step), hyperparameters (training step), dataset (registration step)
    assert params["dataset_uri"] == args["dataset_uri"] and params["model_name"] == happy["name"]
    assert params["publish_uri"] == args["model_publish_uri"]
    assert int(params["train.epochs"]) == 3 and int(params["train.base_channels"]) == 8
    assert int(params["train.depth"]) == 3 and float(params["train.learning_rate"]) == pytest.approx(0.003)
    assert params["dataset.uri"] == args["dataset_uri"]
    assert params["dataset.fingerprint"].startswith("sha256:")
    assert params["dataset.fingerprint"] == storage.fingerprint(args["dataset_uri"], client=s3_server.client())  # listing
    assert int(params["dataset.preprocessing.image_size"]) == 64
    assert any(k.startswith("system.") for k in run.data.tags)
    (dataset_input,) = run.inputs.dataset_inputs
    assert args["dataset_uri"].rstrip("/") in dataset_input.dataset.source
    assert dataset_input.dataset.digest == params["dataset.fingerprint"].split(":", 1)[1][:36]


def test_happy_run_metric_history_has_one_point_per_epoch(happy, mlflow_server):
    history = json.loads((happy["out"] / "training_history.json").read_text())
    rows = history["epochs"]
    assert len(rows) == 3
    client = mlflow_client(mlflow_server)
    for metric in ("val/iou", "train/loss", "val/loss"):
        points = client.get_metric_history(happy["run"].info.run_id, metric)
        assert sorted(p.step for p in points) == sorted(int(r["epoch"]) for r in rows), metric
    by_step = {p.step: p.value for p in client.get_metric_history(happy["run"].info.run_id, "val/iou")}
    for row in rows:
        assert by_step[int(row["epoch"])] == pytest.approx(row["val_iou"], abs=1e-6)
    metrics = happy["run"].data.metrics
    assert metrics["test/iou"] == pytest.approx(happy["summary"]["test_metrics"]["iou"], abs=1e-9)
    assert metrics["best/val_iou"] == pytest.approx(max(r["val_iou"] for r in rows), abs=1e-6)


def test_happy_run_artifacts_in_the_bucket_with_local_sizes(happy, mlflow_server, s3_server):
    out, run = happy["out"], happy["run"]
    expected = {}
    for folder in ("models", "checkpoints", "evaluation", "esri", "metadata"):
        expected |= {f"{folder}/{rel}": p for rel, p in local_files(out / folder).items()}
    for name in ("stats.json", "dataset_manifest.json", "train_config.json", "training_history.json"):
        expected[f"metadata/{name}"] = out / name
    for required in ("models/model.onnx", "models/model.pt", "checkpoints/best.ckpt", "evaluation/metrics.json",
                     "metadata/stac_item.json", f"esri/{happy['name']}.dlpk"):
        assert required in expected, required

    # where MLflow put them: mlflow-artifacts:/<exp>/<run>/artifacts -> s3://<bucket>/mlflow/<exp>/<run>/artifacts
    assert run.info.artifact_uri.startswith("mlflow-artifacts:"), run.info.artifact_uri
    dest_bucket, dest_prefix = storage.parse_s3_uri(mlflow_server.artifacts_destination)
    path = urllib.parse.urlsplit(run.info.artifact_uri).path.strip("/")
    objects = bucket_objects(s3_server, dest_bucket, f"{dest_prefix.strip('/')}/{path}/")
    for rel, local in expected.items():
        assert rel in objects, f"{rel} not in the MLflow bucket (found {sorted(objects)})"
        assert objects[rel].size == local.stat().st_size, rel
        if rel.startswith(("models/", "checkpoints/", "esri/")):
            assert storage.etag_matches(local, objects[rel].etag) is not False, rel

    # MLflow's own view of the run's artifacts agrees with the bucket
    client = mlflow_client(mlflow_server)
    listed, folders = {}, [None]
    while folders:
        for info in client.list_artifacts(run.info.run_id, folders.pop()):
            if info.is_dir:
                folders.append(info.path)
            else:
                listed[info.path] = info.file_size
    assert listed == {rel: o.size for rel, o in objects.items()}


def test_happy_run_registered_version_has_signature_and_is_champion(happy, mlflow_server):
    import mlflow

    from components.tracking import global_uri

    name, version = happy["name"], happy["summary"]["mlflow"]["model_version"]
    client = mlflow_client(mlflow_server)
    mv = client.get_model_version(name, version)
    assert mv.run_id == happy["run"].info.run_id and mv.status == "READY"
    assert mv.tags["kfp.run_id"] == happy["run"].data.tags["kfp.run_id"]
    assert float(mv.tags["metric.iou"]) == pytest.approx(happy["summary"]["test_metrics"]["iou"], abs=1e-9)
    assert mv.tags["promotion.decision"] == "promoted" and mv.tags["promotion.rule"] == "first_champion"
    assert client.get_model_version_by_alias(name, "champion").version == version
    with global_uri(mlflow_server.tracking_uri):
        info = mlflow.models.get_model_info(f"models:/{name}/{version}")
    assert info.signature is not None
    (inp,) = info.signature.inputs.inputs
    assert tuple(inp.shape) == (-1, 3, 64, 64)
    assert info.saved_input_example_info is not None


def test_happy_run_published_stac_item_resolves_in_the_bucket(happy, data_bucket, s3_server):
    name, version = happy["name"], happy["summary"]["mlflow"]["model_version"]
    base = f"s3://{data_bucket}/published/{name}/{version}/"
    assert base in happy["summary"]["mlflow"]["registration"]
    client = s3_server.client()
    item = json.loads(client.get_object(Bucket=data_bucket, Key=f"published/{name}/{version}/metadata/stac_item.json")
                      ["Body"].read())
    assert item["assets"]
    for key, asset in item["assets"].items():
        href = asset["href"]
        assert href.startswith(base), (key, href)
        bucket, object_key = storage.parse_s3_uri(href)
        head = client.head_object(Bucket=bucket, Key=object_key)  # raises when it does not resolve
        assert head["ContentLength"] == asset["file:size"], (key, href)
        if not href.endswith(".dlpk"):  # the published package is re-made with the registered version
            local = happy["out"] / href[len(base):]
            assert local.stat().st_size == head["ContentLength"], key
    package = next(a["href"] for a in item["assets"].values() if a["href"].endswith(".dlpk"))
    body = client.get_object(Bucket=data_bucket, Key=storage.parse_s3_uri(package)[1])["Body"].read()
    with zipfile.ZipFile(io.BytesIO(body)) as archive:
        emd = json.loads(archive.read(f"{name}.emd"))
    assert emd["Version"] == str(version)


# --------------------------------------------------------------------------------------------
# 2. Champion logic with real scores
# --------------------------------------------------------------------------------------------
def test_champion_moves_only_to_a_better_version(s3_server, mlflow_server, data_bucket, tmp_path):
    name = unique("campseg-champion")
    client = mlflow_client(mlflow_server)
    base = dict(SMALL, dataset_uri=f"s3://{data_bucket}/data/", model_name=name, tracking_experiment=name,
                tracking_promotion_metric="iou", tracking_promotion_margin=0.0)

    def run(tag: str, **params) -> dict:
        with server_env(s3_server, mlflow_server.tracking_uri):
            summary = run_in_process({**base, **params}, tmp_path / tag)
        version = summary["mlflow"]["model_version"]
        return {"summary": summary, "version": version, "iou": summary["test_metrics"]["iou"],
                "tags": client.get_model_version(name, version).tags}

    first = run("first", train_epochs=2)
    assert first["tags"]["promotion.decision"] == "promoted"
    assert first["tags"]["promotion.rule"] == "first_champion"
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]

    # At this size both weak runs may predict every pixel as camp (IoU = the positive fraction):
    # a tie, which the rule treats as not better (the incumbent keeps the alias).
    worse = run("worse", train_epochs=1, train_learning_rate=1e-6)
    assert worse["iou"] <= first["iou"], (worse["iou"], first["iou"])
    assert worse["tags"]["test_split_id"] == first["tags"]["test_split_id"]  # the same test split
    assert {v.version for v in versions_of(mlflow_server, name)} == {first["version"], worse["version"]}
    assert client.get_model_version_by_alias(name, "champion").version == first["version"]
    assert worse["tags"]["promotion.decision"] == "not_promoted"
    assert worse["tags"]["promotion.rule"] == "not_better"
    assert worse["tags"]["promotion.champion_version"] == first["version"]
    reason = worse["tags"]["promotion.reason"]
    assert f"does not beat champion v{first['version']}" in reason and f"{first['iou']:.4f}" in reason
    run_tags = client.get_run(worse["summary"]["mlflow"]["run_id"]).data.tags
    assert run_tags["promotion.reason"] == reason  # the run says why, too
    assert "not promoted" in worse["summary"]["mlflow"]["registration"]  # and the KFP UI's Markdown

    better = run("better", train_epochs=8)
    assert better["iou"] > first["iou"], (better["iou"], first["iou"])
    assert better["tags"]["promotion.decision"] == "promoted" and better["tags"]["promotion.rule"] == "better"
    assert client.get_model_version_by_alias(name, "champion").version == better["version"]
    assert len(versions_of(mlflow_server, name)) == 3


# --------------------------------------------------------------------------------------------
# 3. Faults
# --------------------------------------------------------------------------------------------
def assert_nothing_trained(out: Path) -> None:
    assert not list(out.glob("kfp-local/*/train-model")), "a training task ran"
    assert not list(out.glob("kfp-local/*/start-tracking/executor_output.json")), "start-tracking succeeded"
    assert not (out / "summary.json").exists()


def test_object_store_down_fails_at_start_tracking(mlflow_server, local_data, tmp_path):
    name = unique("campseg-s3down")
    with SeaweedS3() as dead:
        bucket = dead.create_bucket("gone-" + secrets.token_hex(4))
        storage.upload_dir(local_data, f"s3://{bucket}/data/", client=dead.client())
        env = dead.env()
    assert not dead.running
    out = tmp_path / "run"
    proc = run_cli(["--run-local", "--dataset-uri", f"s3://{bucket}/data/", "--output-dir", str(out),
                    "--model-name", name, "--tracking-experiment", name, *SMALL_FLAGS],
                   {**env, "MLFLOW_TRACKING_URI": mlflow_server.tracking_uri})
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc, single=False)
    assert "start-tracking" in line and env["AWS_ENDPOINT_URL"] in line and "unreachable" in line, line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert_nothing_trained(out)
    assert versions_of(mlflow_server, name) == []
    client = mlflow_client(mlflow_server)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:  # a run, if one was created, was closed by the exit handler
        assert all(r.info.status != "RUNNING" for r in client.search_runs([experiment.experiment_id]))


def test_mlflow_unreachable_fails_at_start_tracking(s3_server, mlflow_server, data_bucket, tmp_path):
    name = unique("campseg-mlfdown")
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    out = tmp_path / "run"
    proc = run_cli(["--run-local", "--dataset-uri", f"s3://{data_bucket}/data/", "--output-dir", str(out),
                    "--model-name", name, "--tracking-experiment", name, *SMALL_FLAGS],
                   {**s3_server.env(), "MLFLOW_TRACKING_URI": closed}, timeout=240)
    assert proc.returncode == 1, proc.stderr[-3000:]
    line = error_line(proc, single=False)
    assert "start-tracking" in line and closed in line and "unreachable" in line, line
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert_nothing_trained(out)
    assert versions_of(mlflow_server, name) == []  # nothing registered anywhere, the real server included
    assert mlflow_client(mlflow_server).get_experiment_by_name(name) is None


class CuttingProxy:
    """A threaded TCP forwarder on 127.0.0.1 to ``target_port`` that cuts one upload mid-body.

    The first connection that sends a PUT request with a body is closed (both ways) after the
    headers and half of the body's first chunk went through; every other byte is forwarded
    as is. ``cuts`` lists ``(request line, content length, body bytes forwarded)`` of the cut.
    """

    def __init__(self, target_port: int) -> None:
        self.target = ("127.0.0.1", target_port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.endpoint = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.cuts: list[tuple[str, int, int]] = []
        self.puts = 0
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "CuttingProxy":
        self._spawn(self._accept)
        return self

    def __exit__(self, *exc) -> None:
        self.listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for s in sockets:
            self._close(s)
        for t in self._threads:
            t.join(timeout=5)

    def _spawn(self, target, *args) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(t)
        t.start()

    @staticmethod
    def _close(s: socket.socket) -> None:
        with contextlib.suppress(OSError):
            s.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            s.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return  # closed
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                self._close(client)
                continue
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._client_to_server, client, upstream)
            self._spawn(self._pipe, upstream, client)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            self._close(src)
            self._close(dst)

    def _claim_cut(self) -> bool:
        with self._lock:
            if self.cuts:
                return False
            self.cuts.append(("", 0, 0))  # placeholder; filled in by the cutting thread
            return True

    def _client_to_server(self, client: socket.socket, upstream: socket.socket) -> None:
        armed: tuple[str, int] | None = None  # (request line, content length) of the PUT to cut
        try:
            while data := client.recv(65536):
                body = b""
                if armed is None and data.startswith(b"PUT "):
                    with self._lock:
                        self.puts += 1
                    end = data.find(b"\r\n\r\n")
                    length = re.search(rb"(?im)^content-length:\s*(\d+)", data[:end] if end >= 0 else b"")
                    if end >= 0 and length and int(length.group(1)) > 1 and self._claim_cut():
                        armed = (data.split(b"\r\n", 1)[0].decode(), int(length.group(1)))
                        upstream.sendall(data[:end + 4])  # the headers (an Expect: 100-continue waits here)
                        body = data[end + 4:]
                        if not body:
                            continue
                if armed is not None:
                    body = body or data
                    half = max(1, min(len(body), armed[1]) // 2)
                    upstream.sendall(body[:half])
                    with self._lock:
                        self.cuts[0] = (armed[0], armed[1], half)
                    return  # cut: finally closes both sides mid-body
                upstream.sendall(data)
        except OSError:
            pass
        finally:
            self._close(client)
            self._close(upstream)


def test_upload_cut_once_is_retried_and_published_files_are_intact(s3_server, mlflow_server, data_bucket, tmp_path):
    name = unique("campseg-cut")
    out = tmp_path / "run"
    publish = f"s3://{data_bucket}/published/"
    arguments = dict(SMALL, dataset_uri=f"s3://{data_bucket}/data/", model_publish_uri=publish, model_name=name,
                     tracking_experiment=name, train_epochs=1)
    with CuttingProxy(s3_server.s3_port) as proxy:
        with server_env(s3_server, mlflow_server.tracking_uri, AWS_ENDPOINT_URL=proxy.endpoint,
                        MLFLOW_S3_ENDPOINT_URL=proxy.endpoint):
            summary = run_in_process(arguments, out)
    assert len(proxy.cuts) == 1, proxy.cuts
    request_line, length, forwarded = proxy.cuts[0]
    assert request_line.startswith(f"PUT /{data_bucket}/published/{name}/"), request_line
    assert 0 < forwarded < length, proxy.cuts
    assert proxy.puts > 1  # the cut one, its retry and the rest went through the proxy

    version = summary["mlflow"]["model_version"]
    assert [v.version for v in versions_of(mlflow_server, name)] == [version]
    prefix = f"published/{name}/{version}/"
    objects = bucket_objects(s3_server, data_bucket, prefix)
    cut_key = request_line.split()[1].split("?", 1)[0][len(f"/{data_bucket}/{prefix}"):]
    assert cut_key in objects, (cut_key, sorted(objects))
    compared = 0
    for rel, obj in objects.items():
        if rel == "metadata/stac_item.json" or rel.endswith(".dlpk"):
            continue  # rebuilt with s3:// hrefs / re-made with the registered version: checked below
        local = out / rel
        assert local.is_file(), rel
        assert obj.size == local.stat().st_size, rel
        assert storage.etag_matches(local, obj.etag) is True, rel
        compared += 1
    assert compared >= 8 and "models/model.onnx" in objects and f"esri/{name}.dlpk" in objects
    item = json.loads(s3_server.client().get_object(Bucket=data_bucket, Key=prefix + "metadata/stac_item.json")
                      ["Body"].read())
    for asset in item["assets"].values():
        rel = asset["href"][len(f"s3://{data_bucket}/{prefix}"):]
        assert objects[rel].size == asset["file:size"], rel
