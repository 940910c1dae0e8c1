"""Which MLflow and HTTP failures may pass by themselves (the rest of a step's retry rule is
:mod:`components.kubeflow.retries`)."""

from __future__ import annotations

from components.contracts.errors import TransientError

#: MLflow error codes that mean "try again later" (never a default code).
_TRANSIENT_CODES = {"TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}


def is_transient(exc: BaseException) -> bool:
    """Whether one exception (not its chain) is an MLflow/HTTP failure worth retrying: no answer
    (connection refused or dropped, timeout), a 5xx or 429 answer, or MLflow's "try again" codes.

    A client-side MLflow error (bad parameter, missing run, no permission) is not.
    """
    import requests
    from mlflow.exceptions import MlflowException, RestException

    if isinstance(exc, TransientError):
        return True
    if isinstance(exc, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                        requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, requests.exceptions.HTTPError) and exc.response is not None:
        return exc.response.status_code >= 500 or exc.response.status_code == 429
    if isinstance(exc, MlflowException):
        if str(exc.error_code) in _TRANSIENT_CODES:
            return True
        if isinstance(exc, RestException):  # the server answered: its status says what kind of failure
            status = exc.get_http_status_code()
            return status >= 500 or status == 429
    return False
