"""Storage failures in plain words: botocore errors become :class:`StorageError`.

A message names the action, the endpoint, bucket or key and the cause, never a credential.
"""

from __future__ import annotations

from typing import Any

from components.contracts.errors import StorageError
from components.storage.client import endpoint_name
from components.storage.uris import is_s3_uri, parse_s3_uri

# botocore error codes, grouped by what they mean to a user.
MISSING_BUCKET = {"NoSuchBucket", "404", "NotFound"}
BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                   "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}
_TRANSIENT_CODES = {"SlowDown", "Throttling", "RequestTimeout", "InternalError", "ServiceUnavailable",
                    "RequestTimeTooSkewed"}


class VerificationError(Exception):
    """A transferred file does not match its listing (size or checksum)."""


def error_code(exc: BaseException) -> str:
    """The S3 error code of a botocore error (or its HTTP status); '' when it has none."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away on retry (network trouble, throttling, 5xx)."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError,
                        bx.ResponseStreamingError, bx.IncompleteReadError, ConnectionError,
                        TimeoutError, VerificationError)):
        return True
    if isinstance(exc, bx.ClientError):
        code = error_code(exc)
        status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get(
            "HTTPStatusCode") or 0
        return status >= 500 or code in _TRANSIENT_CODES
    return False


def _client_error_message(exc: BaseException, where: str, endpoint: str, bucket: str, action: str) -> str:
    code = error_code(exc)
    if code == "NoSuchBucket" or (code in MISSING_BUCKET and action == "access bucket"):
        return f"cannot {where}: bucket {bucket!r} does not exist at {endpoint}"
    if code in MISSING_BUCKET:
        return f"cannot {where}: not found (404) at {endpoint}"
    if code in BAD_CREDENTIALS:
        return (f"cannot {where}: the endpoint rejected the credentials ({code}); check "
                f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
    if code in DENIED:
        return (f"cannot {where}: access denied ({code}); the credentials are wrong or lack "
                f"permission on bucket {bucket!r}")
    if code == "NoSuchKey":
        return f"cannot {where}: no such object"
    return f"cannot {where}: the server answered {code or 'an error'}"


def storage_error(exc: BaseException, *, client: Any, uri: str, action: str) -> StorageError:
    """Translate a botocore/boto3 failure into a :class:`StorageError` with a plain message.

    The message names the action, the URI and the endpoint, and the cause; it carries no
    credentials (botocore's own messages for auth failures are not repeated).
    """
    from botocore import exceptions as bx

    endpoint = endpoint_name(client)
    bucket = parse_s3_uri(uri)[0] if is_s3_uri(uri) else uri
    where = f"{action} {uri} (endpoint {endpoint})"
    if isinstance(exc, StorageError):
        return exc
    if isinstance(exc, bx.NoCredentialsError):
        msg = (f"cannot {where}: no S3 credentials found; set AWS_ACCESS_KEY_ID and "
               f"AWS_SECRET_ACCESS_KEY")
    elif isinstance(exc, (bx.EndpointConnectionError, bx.ConnectTimeoutError)):
        msg = (f"cannot {where}: the object storage endpoint {endpoint} is unreachable "
               f"({type(exc).__name__}); is the server running and AWS_ENDPOINT_URL "
               f"(or MLFLOW_S3_ENDPOINT_URL) right?")
    elif isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError)):
        msg = (f"cannot {where}: connection to {endpoint} failed ({type(exc).__name__}) "
               f"after retries")
    elif isinstance(exc, bx.ClientError):
        msg = _client_error_message(exc, where, endpoint, bucket, action)
    elif isinstance(exc, VerificationError):
        msg = f"cannot {where}: {exc}"
    else:
        msg = f"cannot {where}: {type(exc).__name__}"
    err = StorageError(msg)
    err.__cause__ = exc
    return err
