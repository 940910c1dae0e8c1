"""S3 clients: path-style addressing (MinIO, SeaweedFS) and botocore retries.

Only :func:`client_from_env` reads the environment; every other storage function takes an
explicit ``client`` and falls back to :func:`client_from_env` only when none is given.
"""

from __future__ import annotations

import os
from typing import Any, Literal, Mapping

from components.contracts.errors import StorageError

RetryMode = Literal["standard", "adaptive"]

#: Environment variables holding the S3 endpoint, in order of precedence.
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
DEFAULT_MAX_ATTEMPTS = 5


def s3_client(
    endpoint_url: str | None = None,
    *,
    access_key_id: str | None = None,
    secret_access_key: str | None = None,
    session_token: str | None = None,
    region: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    retry_mode: RetryMode = "standard",
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    max_pool_connections: int = 32,
) -> Any:
    """A boto3 S3 client with path-style addressing and botocore retries.

    Args:
        endpoint_url: the S3 endpoint (``http://host:port``); ``None`` for AWS itself.
        access_key_id: access key; ``None`` lets boto3 use its default credential chain.
        secret_access_key: secret key matching ``access_key_id``.
        session_token: optional session token.
        region: signing region; ``us-east-1`` when not given (MinIO and SeaweedFS ignore it).
        max_attempts: total attempts per request, first one included (botocore's
            `total_max_attempts`; its `max_attempts` would count retries only).
        retry_mode: botocore retry mode, ``standard`` or ``adaptive`` (client-side rate limiting).
        connect_timeout: seconds to wait for a connection.
        read_timeout: seconds to wait for data on a connection.
        max_pool_connections: HTTP connection pool size; at least the number of transfer workers.
    """
    import boto3
    from botocore.config import Config

    if max_attempts < 1:
        raise StorageError(f"max_attempts must be >= 1, got {max_attempts}")
    config = Config(
        s3={"addressing_style": "path"},
        retries={"total_max_attempts": max_attempts, "mode": retry_mode},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=max_pool_connections,
        # Checksums only where the service requires them: MinIO/SeaweedFS versions differ in
        # their support of the newer default CRC trailers.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    session = boto3.session.Session()
    return session.client(
        "s3",
        endpoint_url=endpoint_url or None,
        aws_access_key_id=access_key_id,
        aws_secret_access_key=secret_access_key,
        aws_session_token=session_token,
        region_name=region or "us-east-1",
        config=config,
    )


def endpoint_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The S3 endpoint from ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` (or ``None``)."""
    env = os.environ if env is None else env
    for var in ENDPOINT_ENV_VARS:
        if env.get(var):
            return env[var]
    return None


def client_from_env(env: Mapping[str, str] | None = None, **kwargs: Any) -> Any:
    """An :func:`s3_client` configured from the environment (the edges' entry point).

    Reads the endpoint (``AWS_ENDPOINT_URL``, else ``MLFLOW_S3_ENDPOINT_URL``), the standard
    ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` / ``AWS_SESSION_TOKEN`` and the region
    (``AWS_REGION`` / ``AWS_DEFAULT_REGION``). Keyword arguments override and pass through to
    :func:`s3_client` (``max_attempts``, ``retry_mode``, timeouts).
    """
    env = os.environ if env is None else env
    args: dict[str, Any] = {
        "endpoint_url": endpoint_from_env(env),
        "access_key_id": env.get("AWS_ACCESS_KEY_ID") or None,
        "secret_access_key": env.get("AWS_SECRET_ACCESS_KEY") or None,
        "session_token": env.get("AWS_SESSION_TOKEN") or None,
        "region": env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or None,
    }
    args.update(kwargs)
    return s3_client(**args)


def resolve_client(client: Any | None) -> Any:
    """``client``, or :func:`client_from_env` when it is ``None``."""
    return client if client is not None else client_from_env()


def endpoint_name(client: Any) -> str:
    """The client's endpoint URL for messages (``<default AWS endpoint>`` when it has none)."""
    return getattr(getattr(client, "meta", None), "endpoint_url", None) or "<default AWS endpoint>"
