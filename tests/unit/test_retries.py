"""Retries only for transient failures: the classification, and that a deterministic error fails at once."""

from __future__ import annotations

import socket

import pytest
import requests
from botocore import exceptions as bx
from mlflow.exceptions import MlflowException, RestException
from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

from components.contracts.errors import (
    DatasetError,
    ParameterError,
    StorageError,
    TrackingError,
    TrackingUnavailable,
    TransientError,
)
from components.kubeflow import steps
from components.kubeflow.retries import BACKOFF_ENV, RETRIES_ENV, is_transient_failure, retry_transient


def client_error(code: str, status: int) -> bx.ClientError:
    return bx.ClientError({"Error": {"Code": code, "Message": code},
                           "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


def raised(exc: BaseException, cause: BaseException | None = None, context: BaseException | None = None):
    """``exc`` as Python leaves it after ``raise exc from cause`` or ``raise exc`` while handling ``context``."""
    try:
        try:
            if context is not None:
                raise context
            raise exc from cause
        except BaseException:
            if context is None:
                raise
            raise exc
    except BaseException as e:  # noqa: BLE001
        return e


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


TRANSIENT = {
    "botocore: endpoint unreachable": bx.EndpointConnectionError(endpoint_url="http://s3:9000"),
    "botocore: read timeout": bx.ReadTimeoutError(endpoint_url="http://s3:9000"),
    "S3 503 SlowDown": client_error("SlowDown", 503),
    "S3 500 InternalError": client_error("InternalError", 500),
    "StorageError from a dropped connection": raised(StorageError("cannot download s3://b/k"),
                                                     cause=ConnectionResetError("reset by peer")),
    "MLflow server unreachable": TrackingUnavailable("MLflow tracking server http://mlflow:5000 is unreachable"),
    "requests: connection refused": requests.exceptions.ConnectionError("refused"),
    "requests: too many 5xx": requests.exceptions.RetryError("too many 503 error responses"),
    "MLflow REST 500": RestException({"error_code": "INTERNAL_ERROR", "message": "database is locked"}),
    "MLflow TEMPORARILY_UNAVAILABLE": MlflowException("busy", error_code=TEMPORARILY_UNAVAILABLE),
    "MLflow client error while a connection failed": raised(MlflowException("API request failed"),
                                                            context=requests.exceptions.ConnectionError("x")),
    "TransientError": TransientError("flaky"),
}
DETERMINISTIC = {
    "ParameterError": ParameterError("train_loss='l2': choose bce_dice, bce, dice or focal"),
    "DatasetError": DatasetError("data/chips: no chips"),
    "DatasetError while a connection failed": raised(DatasetError("labels/a.png: not a mask"),
                                                     context=ConnectionResetError("reset")),
    "missing optional package": ModuleNotFoundError("No module named 'segmentation_models_pytorch'"),
    "S3 404 NoSuchBucket": client_error("NoSuchBucket", 404),
    "S3 403 AccessDenied": client_error("AccessDenied", 403),
    "StorageError: missing bucket": raised(StorageError("bucket 'x' does not exist"),
                                           cause=client_error("NoSuchBucket", 404)),
    "TrackingError: bad credentials": TrackingError("refused the credentials: GET /health answered 401"),
    "MLflow REST 404": RestException({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": "no run"}),
    "MLflow default code": MlflowException("Invalid metric name"),
    "ValueError": ValueError("bad config"),
    "RuntimeError": RuntimeError("training produced no checkpoint"),
}


@pytest.mark.parametrize("exc", TRANSIENT.values(), ids=TRANSIENT.keys())
def test_transient_failures(exc):
    assert is_transient_failure(exc)


@pytest.mark.parametrize("exc", DETERMINISTIC.values(), ids=DETERMINISTIC.keys())
def test_deterministic_failures(exc):
    assert not is_transient_failure(exc)


def test_an_unreachable_mlflow_server_is_transient_bad_url_is_not():
    from components.tracking.server import check_tracking_server

    with pytest.raises(TrackingUnavailable) as unreachable:
        check_tracking_server(f"http://127.0.0.1:{closed_port()}", timeout=2)
    assert is_transient_failure(unreachable.value)
    with pytest.raises(TrackingError) as malformed:
        check_tracking_server("http://127.0.0.1:notaport", timeout=2)
    assert not is_transient_failure(malformed.value)


@pytest.fixture
def retries(monkeypatch):
    monkeypatch.setenv(RETRIES_ENV, "3")
    monkeypatch.setenv(BACKOFF_ENV, "0")


def flaky(failures: list[BaseException]):
    calls = []

    @retry_transient
    def step():
        calls.append(1)
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "done"

    return step, calls


def test_transient_failures_are_retried_until_the_step_succeeds(retries, capsys):
    step, calls = flaky([TRANSIENT["S3 503 SlowDown"], TRANSIENT["requests: connection refused"]])
    assert step() == "done" and len(calls) == 3
    err = capsys.readouterr().err
    assert "retry 1 of 3" in err and "retry 2 of 3" in err


def test_a_deterministic_error_fails_at_once_with_its_message(retries, capsys):
    error = DETERMINISTIC["DatasetError"]
    step, calls = flaky([error, error])
    with pytest.raises(DatasetError) as raised_error:
        step()
    assert raised_error.value is error and str(raised_error.value) == "data/chips: no chips"
    assert len(calls) == 1 and "retry" not in capsys.readouterr().err


def test_transient_failures_outlasting_the_retries_say_so(retries):
    cause = TRANSIENT["botocore: endpoint unreachable"]
    step, calls = flaky([cause] * 4)
    with pytest.raises(TransientError, match="still failing after 4 attempts.*EndpointConnectionError") as error:
        step()
    assert len(calls) == 4 and error.value.__cause__ is cause


def test_without_retry_settings_a_step_does_not_retry(monkeypatch):
    monkeypatch.delenv(RETRIES_ENV, raising=False)
    cause = TRANSIENT["S3 503 SlowDown"]
    step, calls = flaky([cause])
    with pytest.raises(bx.ClientError):
        step()
    assert len(calls) == 1


def test_a_real_step_with_a_dataset_error_is_not_retried(retries, tmp_path, capsys):
    with pytest.raises(DatasetError, match="no such folder"):
        steps.dataset_fingerprint(str(tmp_path / "missing"))
    assert "transient" not in capsys.readouterr().err


def test_an_unwritable_scratch_folder_is_a_configuration_error(monkeypatch, tmp_path):
    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-scratch-volume"))
    with pytest.raises(ParameterError, match="TMPDIR=.*--scratch-volume empty-dir"):
        steps.scratch_dir()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    assert steps.scratch_dir().parent == tmp_path
