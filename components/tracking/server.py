"""Where the tracking store is and whether it answers: URIs from the environment, clients, the health check.

Only :func:`tracking_uri_from_env`, :func:`run_id_from_env` and :func:`http_credentials` read the
environment. Every message names the URI through :func:`redact`, never with its password.
"""

from __future__ import annotations

import base64
import contextlib
import math
import os
import socket
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterator, Mapping

from components.contracts.errors import TrackingError, TrackingUnavailable

#: Seconds the health check waits for the server.
CHECK_TIMEOUT_S = 5.0


def tracking_uri_from_env(default_local_dir: str | os.PathLike[str],
                          env: Mapping[str, str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded store ``sqlite:///<dir>/mlflow.db``.

    Args:
        default_local_dir: folder of the local SQLite store (usually the run's output folder);
            created when missing. Artifacts of a local store go to ``<dir>/mlartifacts``.
        env: the environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if uri:
        return uri
    folder = Path(default_local_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def run_id_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The run id KFP's MLflow plugin injected (``MLFLOW_RUN_ID``), or ``None``."""
    env = os.environ if env is None else env
    return (env.get("MLFLOW_RUN_ID") or "").strip() or None


def client(tracking_uri: str):
    """An ``MlflowClient`` for the tracking store and registry at ``tracking_uri``."""
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def global_uri(tracking_uri: str) -> Iterator[None]:
    """Point mlflow's module-level (fluent) API at ``tracking_uri`` for the block, then restore.

    Model logging (``mlflow.onnx.log_model``) and ``mlflow.register_model`` use the global URIs.
    """
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    old_tracking = _tracking_service.utils._tracking_uri
    old_registry = _model_registry.utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        _tracking_service.utils._tracking_uri = old_tracking
        _model_registry.utils._registry_uri = old_registry


def _split(uri: str) -> urllib.parse.SplitResult | None:
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    return parts


def redact(uri: str) -> str:
    """``uri`` without a password (``http://user:***@host``)."""
    parts = _split(uri)
    if parts is None:  # malformed: keep nothing between the scheme and the last "@"
        head, sep, tail = uri.rpartition("@")
        return f"{head.split('://', 1)[0]}://***@{tail}" if sep else uri
    if parts.password is not None:
        host = parts.netloc.rpartition("@")[2]
        return urllib.parse.urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))
    return uri


def redact_text(text: str, uri: str) -> str:
    """``text`` with the password of ``uri`` (as written, and percent-decoded) replaced by ``***``."""
    parts = _split(uri)
    secrets = []
    if parts is not None and parts.password:
        secrets = [parts.password, urllib.parse.unquote(parts.password)]
    elif parts is None and "@" in uri:
        secrets = [uri.rpartition("@")[0].split("://", 1)[-1]]
    for secret in sorted(set(secrets), key=len, reverse=True):
        if secret:
            text = text.replace(secret, "***")
    return text


def http_credentials(tracking_uri: str, env: Mapping[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """The URL to request (without user info) and the authorization header MLflow's client
    would send to ``tracking_uri``.

    Like MLflow's client: ``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (basic auth)
    or ``MLFLOW_TRACKING_TOKEN`` (bearer) from the environment, else the user and password in
    the URI (``http://user:password@host:port``).
    """
    env = os.environ if env is None else env
    parts = _split(tracking_uri)
    if parts is None:
        raise TrackingError(f"MLFLOW_TRACKING_URI {redact(tracking_uri)} is not a valid URL")
    url = urllib.parse.urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    user, password = env.get("MLFLOW_TRACKING_USERNAME"), env.get("MLFLOW_TRACKING_PASSWORD")
    token = env.get("MLFLOW_TRACKING_TOKEN")
    if not (user or password) and not token and (parts.username or parts.password):
        user, password = urllib.parse.unquote(parts.username or ""), urllib.parse.unquote(parts.password or "")
    if user or password:
        pair = f"{user or ''}:{password or ''}".encode()
        return url, {"Authorization": "Basic " + base64.b64encode(pair).decode("ascii")}
    if token:
        return url, {"Authorization": f"Bearer {token}"}
    return url, {}


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message, cut to ``limit`` characters."""
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


def sqlite_dir(tracking_uri: str) -> Path | None:
    """The folder holding the database of a ``sqlite:///`` URI (``None`` for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):]
    if not path or path == ":memory:":
        return None
    return Path(path).parent


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _check_http(tracking_uri: str, timeout: float) -> None:
    """``GET /health`` with a short timeout; a TrackingError when it does not answer 200."""
    shown = redact(tracking_uri)
    url, headers = http_credentials(tracking_uri)
    request = urllib.request.Request(url.rstrip("/") + "/health", headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if response.status != 200:
                raise TrackingError(f"MLflow tracking server {shown} is unhealthy: GET /health "
                                    f"answered {response.status}")
    except urllib.error.HTTPError as e:
        if e.code in (401, 403):
            raise TrackingError(f"MLflow tracking server {shown} refused the credentials: GET /health "
                                f"answered {e.code} {e.reason}; check the user and password in the URI "
                                f"or MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD") from None
        error = TrackingUnavailable if e.code >= 500 else TrackingError
        raise error(f"MLflow tracking server {shown} is unhealthy: GET /health answered "
                    f"{e.code} {e.reason}; is MLFLOW_TRACKING_URI right?") from None
    except (urllib.error.URLError, OSError, socket.timeout, ValueError) as e:
        cause = redact_text(str(getattr(e, "reason", e)), tracking_uri)
        error = TrackingError if isinstance(e, ValueError) else TrackingUnavailable  # a malformed URL stays
        raise error(f"MLflow tracking server {shown} is unreachable ({cause}); is the "
                    f"server running and MLFLOW_TRACKING_URI right?") from None


def check_tracking_server(tracking_uri: str, timeout: float = CHECK_TIMEOUT_S) -> None:
    """Fail fast unless the tracking store at ``tracking_uri`` answers.

    For ``http(s)://`` it GETs ``/health`` with a short timeout, then makes one API call
    (search experiments) without retries, so wrong credentials or a proxy that is not MLflow show
    up here too. For ``sqlite:///`` it creates the folder and opens (and migrates) the database.

    Raises:
        TrackingError: the message names the URI (without password) and the cause.
    """
    shown = redact(tracking_uri)
    if urllib.parse.urlsplit(tracking_uri).scheme in ("http", "https"):
        _check_http(tracking_uri, timeout)
        env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(math.ceil(timeout))))}
    else:
        folder = sqlite_dir(tracking_uri)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"local MLflow store {shown}: cannot create {folder} ({e})") from None
        env = {}
    try:
        with _env(**env):
            client(tracking_uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
        raise TrackingError(f"MLflow tracking store {shown} does not answer its API "
                            f"({type(e).__name__}: {redact_text(first_line(e), tracking_uri)})") from None
