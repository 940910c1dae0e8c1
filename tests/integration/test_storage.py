"""components.storage against a real SeaweedFS S3 server (and the MLflow server fixture).

Needs the fixtures of tests/server_fixtures.py (registered in tests/conftest.py, or run with
``-p tests.server_fixtures``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from components import storage
from components.contracts.errors import PipelineInputError, StorageError
from tests.support.servers import SeaweedS3


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------
def _client(server: SeaweedS3, **kw):
    return storage.s3_client(server.endpoint, access_key_id=server.access_key,
                             secret_access_key=server.secret_key, **kw)


def _count_calls(client, operation: str) -> Counter:
    """Count real requests of `operation` the client sends (a botocore event hook)."""
    calls: Counter = Counter()

    def hook(**_):
        calls[operation] += 1

    client.meta.events.register(f"before-send.s3.{operation}", hook)
    return calls


def _put_tree(client, bucket: str, prefix: str, files: dict[str, bytes]) -> None:
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda kv: client.put_object(Bucket=bucket, Key=f"{prefix}{kv[0]}",
                                                   Body=kv[1]), files.items()))


def _sample_files(n: int = 24) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        sub = "chips" if i % 2 == 0 else "labels"
        files[f"{sub}/tile_{i:03d}.tif"] = os.urandom(1000 + 997 * i)
    files["chips/empty.tif"] = b""
    return files


def _read_tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------------------
# URIs and clients (no server)
# ------------------------------------------------------------------------------------------
def test_uri_parsing():
    assert storage.is_s3_uri("s3://b/k")
    assert not storage.is_s3_uri("/data/s3://x") and not storage.is_s3_uri(Path("s3:/b"))
    assert storage.parse_s3_uri("s3://bucket/a/b/") == ("bucket", "a/b/")
    assert storage.parse_s3_uri("s3://bucket") == ("bucket", "")
    assert storage.join_uri("s3://b/p/", "a", "/c.txt") == "s3://b/p/a/c.txt"
    for bad in ("s3:///key", "http://b/k", "/local"):
        with pytest.raises(StorageError):
            storage.parse_s3_uri(bad)
    assert issubclass(StorageError, PipelineInputError)


def test_client_from_env_endpoint_precedence():
    env = {"MLFLOW_S3_ENDPOINT_URL": "http://127.0.0.1:1", "AWS_ACCESS_KEY_ID": "k",
           "AWS_SECRET_ACCESS_KEY": "s"}
    client = storage.client_from_env(env, max_attempts=2, retry_mode="adaptive")
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.s3["addressing_style"] == "path"
    assert client.meta.config.retries == {"total_max_attempts": 2, "mode": "adaptive"}
    env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:2"
    assert storage.client_from_env(env).meta.endpoint_url == "http://127.0.0.1:2"


def test_local_fingerprint_tracks_content(tmp_path):
    (tmp_path / "chips").mkdir()
    (tmp_path / "chips" / "a.tif").write_bytes(b"aaaa")
    (tmp_path / "b.tif").write_bytes(b"bb")
    fp = storage.fingerprint(tmp_path)
    assert fp.startswith("sha256:") and fp == storage.fingerprint(str(tmp_path))
    st = (tmp_path / "b.tif").stat()
    (tmp_path / "b.tif").write_bytes(b"bc")  # same size, same mtime: content decides
    os.utime(tmp_path / "b.tif", ns=(st.st_atime_ns, st.st_mtime_ns))
    fp2 = storage.fingerprint(tmp_path)
    assert fp2 != fp
    (tmp_path / "chips" / "c.tif").write_bytes(b"")
    assert storage.fingerprint(tmp_path) not in (fp, fp2)
    with pytest.raises(StorageError, match="no such"):
        storage.fingerprint(tmp_path / "missing")


def test_uris_module_needs_no_boto3():
    import ast

    import components.storage.uris as uris

    tree = ast.parse(Path(uris.__file__).read_text())
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [n for n in names if n.split(".")[0] in ("boto3", "botocore")]


def test_published_files_are_every_artifact_but_the_item():
    from components.contracts.run_layout import ARTIFACTS
    from components.storage.publish import PUBLISHED

    assert set(PUBLISHED) == {"stats.json", "dataset_manifest.json", "train_config.json", "training_history.json",
                              "checkpoints/", "models/", "evaluation/", "esri/"}
    assert set(PUBLISHED) | {"metadata/"} == {f for a in ARTIFACTS for f in a.files}


# ------------------------------------------------------------------------------------------
# Against SeaweedFS
# ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_listing_pages_beyond_1000_keys(s3_server, s3_bucket):
    client = _client(s3_server)
    _put_tree(client, s3_bucket, "many/", {f"k{i:05d}": b"x" for i in range(1005)})
    client.put_object(Bucket=s3_bucket, Key="many-other/k", Body=b"y")  # a sibling prefix
    calls = _count_calls(client, "ListObjectsV2")
    objects = storage.list_objects(f"s3://{s3_bucket}/many", client=client)
    assert len(objects) == 1005 and calls["ListObjectsV2"] == 2
    assert objects[0] == storage.ObjectInfo("many/k00000", 1, hashlib.md5(b"x").hexdigest())
    calls.clear()
    small = storage.list_objects(f"s3://{s3_bucket}/many/", client=client, page_size=250)
    assert small == objects and calls["ListObjectsV2"] == 5
    assert len(storage.list_objects(f"s3://{s3_bucket}", client=client)) == 1006


@pytest.mark.integration
def test_s3_fingerprint_from_listing(s3_server, s3_bucket):
    client = _client(s3_server)
    uri = f"s3://{s3_bucket}/ds/"
    _put_tree(client, s3_bucket, "ds/", {"chips/a.tif": b"aaaa", "labels/a.tif": b"1111"})
    gets = _count_calls(client, "GetObject")
    fp = storage.fingerprint(uri, client=client)
    assert fp.startswith("sha256:") and fp == storage.fingerprint(f"s3://{s3_bucket}/ds", client=client)
    assert gets["GetObject"] == 0  # nothing downloaded
    client.put_object(Bucket=s3_bucket, Key="ds/chips/a.tif", Body=b"aaab")  # same size
    fp2 = storage.fingerprint(uri, client=client)
    assert fp2 != fp
    client.put_object(Bucket=s3_bucket, Key="ds/chips/b.tif", Body=b"b")
    fp3 = storage.fingerprint(uri, client=client)
    assert fp3 not in (fp, fp2)
    client.put_object(Bucket=s3_bucket, Key="elsewhere/x", Body=b"x")  # outside the prefix
    assert storage.fingerprint(uri, client=client) == fp3
    # The same data under another prefix has the same fingerprint (keys are relative).
    for key in ("chips/a.tif", "chips/b.tif", "labels/a.tif"):
        client.copy_object(Bucket=s3_bucket, Key=f"copy/{key}",
                           CopySource={"Bucket": s3_bucket, "Key": f"ds/{key}"})
    assert storage.fingerprint(f"s3://{s3_bucket}/copy", client=client) == fp3
    with pytest.raises(StorageError, match="no objects under"):
        storage.fingerprint(f"s3://{s3_bucket}/nothing-here/", client=client)


@pytest.mark.integration
def test_parallel_download_verified_and_cached(s3_server, s3_bucket, tmp_path):
    client = _client(s3_server)
    files = _sample_files()
    _put_tree(client, s3_bucket, "ds/", files)
    uri = f"s3://{s3_bucket}/ds/"
    gets = _count_calls(client, "GetObject")

    dest = storage.download_prefix(uri, tmp_path / "dl", workers=8, client=client)
    assert _read_tree(dest) == files
    assert gets["GetObject"] == len(files)
    assert not list(dest.rglob(".*.part"))

    gets.clear()  # a second call is served by the cache
    storage.download_prefix(uri, dest, client=client)
    assert gets["GetObject"] == 0

    # A corrupted cached file of the right size and a truncated one are both detected and
    # fetched again; intact files are not.
    same_size = dest / "chips/tile_000.tif"
    same_size.write_bytes(bytes(len(files["chips/tile_000.tif"])))
    truncated = dest / "labels/tile_003.tif"
    truncated.write_bytes(files["labels/tile_003.tif"][:-10])
    storage.download_prefix(uri, dest, client=client)
    assert gets["GetObject"] == 2
    assert _read_tree(dest) == files


@pytest.mark.integration
def test_multipart_object_etag_verified(s3_server, s3_bucket, tmp_path):
    from boto3.s3.transfer import TransferConfig

    client = _client(s3_server)
    src = tmp_path / "big.bin"
    src.write_bytes(os.urandom(6 * 1024 * 1024 + 123))
    mib5 = 5 * 1024 * 1024
    client.upload_file(str(src), s3_bucket, "mp/big.bin",
                       Config=TransferConfig(multipart_threshold=mib5, multipart_chunksize=mib5))
    (obj,) = storage.list_objects(f"s3://{s3_bucket}/mp", client=client)
    assert obj.size == src.stat().st_size
    dest = storage.download_prefix(f"s3://{s3_bucket}/mp", tmp_path / "dl", client=client)
    assert (dest / "big.bin").read_bytes() == src.read_bytes()
    # SeaweedFS gives multipart uploads an `<md5 of part md5s>-<parts>` ETag like AWS.
    assert storage.etag_matches(dest / "big.bin", obj.etag) in (True, None)


@pytest.mark.integration
def test_materialize_mirrors_prefix(s3_server, s3_bucket, tmp_path):
    client = _client(s3_server)
    _put_tree(client, s3_bucket, "ds/", {"chips/a.tif": b"a", "chips/b.tif": b"b"})
    local = storage.materialize(f"s3://{s3_bucket}/ds/", tmp_path / "cache", client=client)
    assert local == tmp_path / "cache" / s3_bucket / "ds"
    assert _read_tree(local) == {"chips/a.tif": b"a", "chips/b.tif": b"b"}
    client.delete_object(Bucket=s3_bucket, Key="ds/chips/b.tif")
    local = storage.materialize(f"s3://{s3_bucket}/ds", tmp_path / "cache", client=client)
    assert _read_tree(local) == {"chips/a.tif": b"a"}  # the removed object left the cache
    assert storage.materialize(str(local), tmp_path / "unused") == local
    with pytest.raises(StorageError, match="no such"):
        storage.materialize(tmp_path / "missing", tmp_path / "cache")


@pytest.mark.integration
def test_upload_retried_after_one_dropped_connection(s3_server, s3_bucket, tmp_path):
    from botocore.exceptions import ConnectionClosedError

    client = _client(s3_server, max_attempts=1)  # no botocore retry: storage's own loop retries
    sent: Counter = Counter()

    def drop_first(request, **_):
        sent["PutObject"] += 1
        if sent["PutObject"] == 1:
            raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.PutObject", drop_first)
    src = tmp_path / "model.onnx"
    src.write_bytes(os.urandom(200_000))
    uri = storage.upload_file(src, f"s3://{s3_bucket}/models/", client=client, backoff=0.05)
    assert uri == f"s3://{s3_bucket}/models/model.onnx"
    assert sent["PutObject"] == 2
    body = client.get_object(Bucket=s3_bucket, Key="models/model.onnx")["Body"].read()
    assert body == src.read_bytes()

    # botocore's own retries (standard mode) absorb the same fault inside one upload call.
    client2 = _client(s3_server, max_attempts=3)
    sent.clear()
    client2.meta.events.register("before-send.s3.PutObject", drop_first)
    storage.upload_file(src, f"s3://{s3_bucket}/models/again.onnx", client=client2)
    assert sent["PutObject"] == 2


@pytest.mark.integration
def test_upload_dir_and_permanent_failure(s3_server, s3_bucket, tmp_path):
    client = _client(s3_server)
    files = {"models/a.pt": b"a" * 10, "metadata/item.json": b"{}", "top.txt": b"t"}
    for rel, data in files.items():
        (tmp_path / "out" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "out" / rel).write_bytes(data)
    uris = storage.upload_dir(tmp_path / "out", f"s3://{s3_bucket}/run/1", client=client)
    assert uris == sorted(f"s3://{s3_bucket}/run/1/{rel}" for rel in files)
    listed = {o.key: o.size for o in storage.list_objects(f"s3://{s3_bucket}/run/1", client=client)}
    assert listed == {f"run/1/{rel}": len(d) for rel, d in files.items()}
    # A missing bucket is permanent: no retries, a plain message.
    sent = _count_calls(client, "PutObject")
    with pytest.raises(StorageError, match="does not exist"):
        storage.upload_file(tmp_path / "out/top.txt", "s3://no-such-bucket-x1/top.txt",
                            client=client, backoff=0.01)
    assert sent["PutObject"] == 1


@pytest.mark.integration
def test_check_bucket_ok_missing_and_bad_credentials(s3_server, s3_bucket):
    storage.check_bucket(f"s3://{s3_bucket}/any/prefix", client=_client(s3_server))

    missing = "missing-" + secrets.token_hex(4)
    with pytest.raises(StorageError) as err:
        storage.check_bucket(f"s3://{missing}/x", client=_client(s3_server))
    msg = str(err.value)
    assert missing in msg and "does not exist" in msg and s3_server.endpoint in msg

    wrong_secret = secrets.token_urlsafe(30)
    bad = storage.s3_client(s3_server.endpoint, access_key_id=s3_server.access_key,
                            secret_access_key=wrong_secret, max_attempts=1)
    with pytest.raises(StorageError) as err:
        storage.check_bucket(f"s3://{s3_bucket}", client=bad)
    msg = str(err.value)
    assert "credentials" in msg and s3_server.endpoint in msg and s3_bucket in msg
    assert wrong_secret not in msg and s3_server.secret_key not in msg

    unknown_key = storage.s3_client(s3_server.endpoint, access_key_id="AKIA" + secrets.token_hex(8),
                                    secret_access_key=wrong_secret, max_attempts=1)
    with pytest.raises(StorageError, match="credentials"):
        storage.check_bucket(f"s3://{s3_bucket}", client=unknown_key)


@pytest.mark.integration
def test_check_bucket_stopped_server():
    """A server that was running and stopped: the message names the endpoint."""
    with SeaweedS3() as server:
        client = _client(server, max_attempts=2, connect_timeout=2)
        bucket = server.create_bucket()
        storage.check_bucket(f"s3://{bucket}", client=client)
    with pytest.raises(StorageError) as err:
        storage.check_bucket(f"s3://{bucket}", client=client)
    msg = str(err.value)
    assert server.endpoint in msg and "unreachable" in msg and bucket in msg
    assert server.secret_key not in msg


@pytest.mark.integration
def test_default_client_from_env(s3_env, s3_bucket):
    storage.check_bucket(f"s3://{s3_bucket}")
    storage.upload_file(__file__, f"s3://{s3_bucket}/src/")
    assert [o.key for o in storage.list_objects(f"s3://{s3_bucket}/src")] == [
        f"src/{Path(__file__).name}"]


# ------------------------------------------------------------------------------------------
# MLflow server fixture smoke test
# ------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_mlflow_server_logs_run_with_artifact_in_bucket(mlflow_server, s3_server, tmp_path):
    from mlflow.tracking import MlflowClient

    mc = MlflowClient(tracking_uri=mlflow_server.tracking_uri)
    exp = mc.create_experiment("smoke-" + secrets.token_hex(4))
    run = mc.create_run(exp)
    mc.log_param(run.info.run_id, "lr", "0.003")
    for step, v in enumerate([0.5, 0.6]):
        mc.log_metric(run.info.run_id, "val_iou", v, step=step)
    artifact = tmp_path / "stats.json"
    artifact.write_text('{"mean": [0.1, 0.2, 0.3]}')
    mc.log_artifact(run.info.run_id, str(artifact), artifact_path="metadata")
    mc.set_terminated(run.info.run_id)

    got = mc.get_run(run.info.run_id)
    assert got.data.params == {"lr": "0.003"} and got.info.status == "FINISHED"
    assert [m.value for m in mc.get_metric_history(run.info.run_id, "val_iou")] == [0.5, 0.6]
    objects = storage.list_objects(f"s3://{mlflow_server.bucket}/mlflow", client=_client(s3_server))
    hits = [o for o in objects
            if o.key.endswith(f"{run.info.run_id}/artifacts/metadata/stats.json")]
    assert len(hits) == 1 and hits[0].size == artifact.stat().st_size
