"""A step downloads only what it reads, onto its scratch folder; an unreachable store is retried, then reported.

Real SeaweedFS S3 (tests/support/server_fixtures.py): the statistics stage splits a dataset in a
bucket, then the download path every data step shares (``steps.staged_run``) fetches, into a fresh
scratch folder, exactly the chips and masks of the splits that step reads (``SPLITS_READ``).
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from components import storage
from components.contracts.errors import StorageError, TransientError
from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.data.sample_data import generate_sample_dataset
from components.kubeflow import steps
from components.kubeflow.retries import BACKOFF_ENV, RETRIES_ENV

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def local_data(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("split-data") / "data", n_chips=24, size=64, seed=3)


@pytest.fixture
def dataset(s3_server, s3_env, s3_bucket, local_data, tmp_path) -> tuple[str, Path, dict]:
    """The dataset under s3://bucket/data/, its statistics artifact, and its manifest's files per split."""
    uri = f"s3://{s3_bucket}/data/"
    storage.upload_dir(local_data, uri, client=s3_server.client())
    statistics = tmp_path / "statistics"
    params = dict(image_size=0, network_depth=4, train_ratio=0.7, val_ratio=0.15, test_ratio=0.15, seed=42,
                  threshold=0.5)
    steps.run_stats(uri, steps.dataset_fingerprint(uri), str(statistics), params)
    layout = RunLayout(statistics)
    files = {split: set(steps.split_files(layout, (split,)) or ()) for split in ("train", "val", "test")}
    return uri, statistics, files


def downloaded(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}


@pytest.mark.parametrize("stage", ["export", "evaluate", "register", "train"])
def test_a_step_downloads_only_the_splits_it_reads(dataset, stage, tmp_path, monkeypatch):
    uri, statistics, files = dataset
    scratch = tmp_path / "scratch"  # the scratch volume on a cluster
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    wanted = set().union(*(files[s] for s in steps.SPLITS_READ[stage]))
    everything = set().union(*files.values())
    assert files["test"] and wanted < everything
    with steps.staged_run(uri, splits=steps.SPLITS_READ[stage], statistics=str(statistics)) as (layout, data):
        assert scratch in data.parents
        assert downloaded(data) == wanted
        pairs = [p for p in read_manifest(layout, data) if p.split in steps.SPLITS_READ[stage]]
        assert pairs and all(Path(p.chip).is_file() and Path(p.mask).is_file() for p in pairs)
    assert not list(scratch.iterdir())  # cleaned up


def test_evaluation_steps_read_the_test_split_only():
    assert steps.SPLITS_READ["export"] == steps.SPLITS_READ["evaluate"] == steps.SPLITS_READ["register"] == ("test",)
    assert steps.SPLITS_READ["stats"] is None


def test_without_splits_the_whole_dataset_is_downloaded(dataset, tmp_path, monkeypatch):
    uri, statistics, files = dataset
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    with steps.staged_run(uri, statistics=str(statistics)) as (_, data):
        assert downloaded(data) == set().union(*files.values())


def test_a_file_of_the_split_gone_from_the_bucket_is_named(dataset, s3_server, tmp_path, monkeypatch):
    uri, statistics, files = dataset
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    gone = sorted(files["test"])[0]
    bucket, key = storage.parse_s3_uri(uri)
    s3_server.client().delete_object(Bucket=bucket, Key=key + gone)
    with pytest.raises(StorageError, match=f"not there, e.g. '{gone}'"):
        with steps.staged_run(uri, splits=("test",), statistics=str(statistics)):
            pass


def test_an_unreachable_store_is_retried_then_reported(monkeypatch, capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in {RETRIES_ENV: "1", BACKOFF_ENV: "0", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
                        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test"}.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(TransientError, match="still failing after 2 attempts") as error:
        steps.dataset_fingerprint("s3://campseg-data/data/")
    assert isinstance(error.value.__cause__, StorageError)
    assert "retry 1 of 1" in capsys.readouterr().err
