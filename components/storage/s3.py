"""Storage URIs: ``s3://bucket/key`` object storage or a local path, behind one small API.

Conventions (see DESIGN.md):

- ``s3://bucket/prefix/`` names object storage; anything else is a local path.
- The endpoint comes from ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``), credentials from
  the standard AWS variables, with path-style addressing (MinIO, SeaweedFS). Only
  :func:`client_from_env` reads the environment; every other function takes an explicit
  ``client`` and falls back to :func:`client_from_env` only when none is given.
- A prefix is a folder: ``s3://b/data`` and ``s3://b/data/`` both mean the keys under ``data/``
  (never ``data2/...``); ``s3://b`` is the whole bucket.
- Failures raise :class:`components.contracts.errors.StorageError`, whose message names the endpoint,
  bucket or key and the cause in plain words, never a credential.

Verification: a downloaded object must have the listed size and, for single-part uploads (an ETag
of 32 hex digits), the MD5 the ETag states. Multipart ETags (``<md5>-<parts>``) are checked by
recomputing them for the usual part sizes; when none matches, the size alone is checked.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal, Mapping

from components.contracts.errors import StorageError

log = logging.getLogger(__name__)

RetryMode = Literal["standard", "adaptive"]

#: Environment variables holding the S3 endpoint, in order of precedence.
ENDPOINT_ENV_VARS = ("AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
DEFAULT_MAX_ATTEMPTS = 5
_CHUNK = 1024 * 1024
_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")
_PART_SUFFIX = ".part"

# botocore error codes, grouped by what they mean to a user.
_MISSING_BUCKET = {"NoSuchBucket", "404", "NotFound"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "AuthorizationHeaderMalformed", "InvalidClientTokenId"}
_DENIED = {"AccessDenied", "403", "Forbidden", "AllAccessDisabled"}


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its full key, size in bytes and ETag (without quotes)."""

    key: str
    size: int
    etag: str


# --------------------------------------------------------------------------------------------
# URIs
# --------------------------------------------------------------------------------------------
def is_s3_uri(uri: str | os.PathLike[str]) -> bool:
    """Whether ``uri`` names object storage (``s3://...``) rather than a local path."""
    return isinstance(uri, str) and uri.startswith("s3://")


def parse_s3_uri(uri: str) -> tuple[str, str]:
    """Split ``s3://bucket/key`` into ``(bucket, key)``; the key may be empty.

    Raises:
        StorageError: ``uri`` is not an ``s3://`` URI or has no bucket.
    """
    if not is_s3_uri(uri):
        raise StorageError(f"{uri!r} is not an s3:// URI (expected s3://bucket/key)")
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise StorageError(f"{uri!r} has no bucket name (expected s3://bucket/key)")
    return bucket, key


def _prefix_of(key: str) -> str:
    """The listing prefix of a folder-like key: '' or ends with '/'."""
    key = key.strip("/")
    return f"{key}/" if key else ""


def join_uri(prefix_uri: str, *parts: str) -> str:
    """``join_uri("s3://b/p/", "a", "b.txt") == "s3://b/p/a/b.txt"``."""
    out = prefix_uri.rstrip("/")
    for p in parts:
        p = p.strip("/")
        if p:
            out = f"{out}/{p}"
    return out


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------
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


def _client(client: Any | None) -> Any:
    return client if client is not None else client_from_env()


def _endpoint(client: Any) -> str:
    return getattr(getattr(client, "meta", None), "endpoint_url", None) or "<default AWS endpoint>"


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------
def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", "") or "")
    if not code:
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        code = str(status or "")
    return code


def _is_transient(exc: BaseException) -> bool:
    """Whether a failure may go away on retry (network trouble, throttling, 5xx)."""
    from botocore import exceptions as bx

    if isinstance(exc, (bx.ConnectionError, bx.HTTPClientError, bx.ReadTimeoutError,
                        bx.ResponseStreamingError, bx.IncompleteReadError, ConnectionError,
                        TimeoutError, _VerificationError)):
        return True
    if isinstance(exc, bx.ClientError):
        code = _error_code(exc)
        status = (getattr(exc, "response", None) or {}).get("ResponseMetadata", {}).get(
            "HTTPStatusCode") or 0
        return status >= 500 or code in {"SlowDown", "Throttling", "RequestTimeout",
                                         "InternalError", "ServiceUnavailable", "RequestTimeTooSkewed"}
    return False


def storage_error(exc: BaseException, *, client: Any, uri: str, action: str) -> StorageError:
    """Translate a botocore/boto3 failure into a :class:`StorageError` with a plain message.

    The message names the action, the URI and the endpoint, and the cause; it carries no
    credentials (botocore's own messages for auth failures are not repeated).
    """
    from botocore import exceptions as bx

    endpoint = _endpoint(client)
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
        code = _error_code(exc)
        if code == "NoSuchBucket" or (code in _MISSING_BUCKET and action == "access bucket"):
            msg = f"cannot {where}: bucket {bucket!r} does not exist at {endpoint}"
        elif code in _MISSING_BUCKET:
            msg = f"cannot {where}: not found (404) at {endpoint}"
        elif code in _BAD_CREDENTIALS:
            msg = (f"cannot {where}: the endpoint rejected the credentials ({code}); check "
                   f"AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY")
        elif code in _DENIED:
            msg = (f"cannot {where}: access denied ({code}); the credentials are wrong or lack "
                   f"permission on bucket {bucket!r}")
        elif code == "NoSuchKey":
            msg = f"cannot {where}: no such object"
        else:
            msg = f"cannot {where}: the server answered {code or 'an error'}"
    elif isinstance(exc, _VerificationError):
        msg = f"cannot {where}: {exc}"
    else:
        msg = f"cannot {where}: {type(exc).__name__}"
    err = StorageError(msg)
    err.__cause__ = exc
    return err


class _VerificationError(Exception):
    """A transferred file does not match its listing (size or checksum)."""


# --------------------------------------------------------------------------------------------
# Checks and listing
# --------------------------------------------------------------------------------------------
def check_bucket(uri: str, *, client: Any | None = None) -> None:
    """Fail fast unless the bucket of ``uri`` exists and the credentials may read it.

    Raises:
        StorageError: unreachable endpoint, missing bucket, rejected credentials or no access;
            the message names the endpoint and bucket.
    """
    from botocore import exceptions as bx

    if client is None:
        client = client_from_env(max_attempts=2, connect_timeout=5)
    bucket, _ = parse_s3_uri(uri)
    try:
        client.head_bucket(Bucket=bucket)
        return
    except bx.ClientError as e:
        if _error_code(e) not in _DENIED:
            raise storage_error(e, client=client, uri=f"s3://{bucket}", action="access bucket") from e
        first: BaseException = e
    except (bx.BotoCoreError, OSError) as e:
        raise storage_error(e, client=client, uri=f"s3://{bucket}", action="access bucket") from e
    # HEAD answers carry no error body: a 403 may be bad credentials or a missing permission.
    # A GET-style call tells them apart.
    try:
        client.list_objects_v2(Bucket=bucket, MaxKeys=1)
    except (bx.ClientError, bx.BotoCoreError) as e:
        raise storage_error(e, client=client, uri=f"s3://{bucket}", action="access bucket") from e
    raise storage_error(first, client=client, uri=f"s3://{bucket}", action="access bucket")


def list_objects(uri: str, *, client: Any | None = None, page_size: int = 1000) -> list[ObjectInfo]:
    """Every object under the prefix ``uri`` names, sorted by key; pages through the listing.

    Folder markers (keys ending in ``/``) are left out.

    Args:
        uri: ``s3://bucket/prefix`` (the prefix is a folder; empty for the whole bucket).
        client: an S3 client; :func:`client_from_env` when ``None``.
        page_size: keys per ListObjectsV2 page (1..1000).
    """
    from botocore import exceptions as bx

    client = _client(client)
    bucket, key = parse_s3_uri(uri)
    prefix = _prefix_of(key)
    out: list[ObjectInfo] = []
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix, PaginationConfig={"PageSize": page_size})
        for page in pages:
            for obj in page.get("Contents", []) or []:
                k = obj["Key"]
                if k.endswith("/"):
                    continue
                out.append(ObjectInfo(key=k, size=int(obj["Size"]),
                                      etag=str(obj.get("ETag", "")).strip('"')))
    except (bx.ClientError, bx.BotoCoreError, OSError) as e:
        raise storage_error(e, client=client, uri=uri, action="list") from e
    out.sort(key=lambda o: o.key)
    return out


def _relative(key: str, prefix: str, uri: str) -> str:
    rel = key[len(prefix):]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or any(p in ("..", ".") for p in parts):
        raise StorageError(f"object key {key!r} under {uri} cannot be a local file name")
    return rel


# --------------------------------------------------------------------------------------------
# Fingerprints
# --------------------------------------------------------------------------------------------
def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _local_files(root: Path) -> list[tuple[str, Path]]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.endswith(_PART_SUFFIX) and name.startswith("."):
                continue  # an interrupted download of ours
            p = Path(dirpath) / name
            files.append((p.relative_to(root).as_posix(), p))
    files.sort()
    return files


def fingerprint(uri_or_path: str | os.PathLike[str], *, client: Any | None = None) -> str:
    """A content fingerprint ``sha256:<hex>`` of a dataset prefix or folder.

    For ``s3://`` it hashes the listing (keys relative to the prefix, sizes, ETags) and downloads
    nothing; for a local folder it hashes (relative path, size, SHA-256 of the content) of every
    file, streaming; for a local file, its name, size and content. The two kinds of fingerprint
    are not comparable with each other, only with themselves: the same data behind the same kind
    of URI gives the same fingerprint, and any added, removed or changed file changes it.

    Raises:
        StorageError: the prefix holds no object, or the local path does not exist.
    """
    h = hashlib.sha256()
    if is_s3_uri(uri_or_path):
        uri = str(uri_or_path)
        objects = list_objects(uri, client=client)
        if not objects:
            raise StorageError(f"no objects under {uri} (endpoint {_endpoint(_client(client))})")
        prefix = _prefix_of(parse_s3_uri(uri)[1])
        h.update(b"s3-listing-v1\n")
        for o in objects:
            h.update(f"{o.key[len(prefix):]}\t{o.size}\t{o.etag}\n".encode())
        return f"sha256:{h.hexdigest()}"
    path = Path(uri_or_path)
    if path.is_file():
        entries = [(path.name, path)]
    elif path.is_dir():
        entries = _local_files(path)
    else:
        raise StorageError(f"{path}: no such file or folder")
    h.update(b"local-content-v1\n")
    for rel, p in entries:
        h.update(f"{rel}\t{p.stat().st_size}\t{_sha256_file(p)}\n".encode())
    return f"sha256:{h.hexdigest()}"


# --------------------------------------------------------------------------------------------
# Verification helpers
# --------------------------------------------------------------------------------------------
def _md5_file(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _multipart_etag(path: Path, part_size: int) -> str:
    digests = []
    with open(path, "rb") as f:
        while True:
            part = f.read(part_size)
            if not part:
                break
            digests.append(hashlib.md5(part, usedforsecurity=False).digest())
    return f"{hashlib.md5(b''.join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"


def etag_matches(path: Path, etag: str) -> bool | None:
    """Whether the local file's content matches an S3 ETag.

    Returns ``True``/``False`` when the ETag could be checked, ``None`` when it could not (a
    multipart ETag whose part size is none of the usual ones, or a non-MD5 ETag).
    """
    etag = etag.strip('"').lower()
    if _MD5_ETAG.match(etag):
        return _md5_file(path) == etag
    m = _MULTIPART_ETAG.match(etag)
    if not m:
        return None
    n = int(m.group(2))
    size = path.stat().st_size
    mib = 1024 * 1024
    candidates = {8 * mib, 5 * mib, 16 * mib, 15 * mib, 32 * mib, 64 * mib, 100 * mib}
    if n > 0:
        candidates.add(-(-size // n // mib) * mib or mib)
    for ps in sorted(candidates):
        if -(-size // ps) == n and _multipart_etag(path, ps) == etag:
            return True
    return None


def _verify(path: Path, obj: ObjectInfo, md5_hex: str | None = None) -> None:
    size = path.stat().st_size
    if size != obj.size:
        raise _VerificationError(f"{obj.key}: got {size} bytes, the listing says {obj.size}")
    etag = obj.etag.lower()
    if _MD5_ETAG.match(etag):
        if (md5_hex or _md5_file(path)) != etag:
            raise _VerificationError(f"{obj.key}: MD5 differs from the ETag {etag}")
    else:
        match = etag_matches(path, etag)
        if match is None:
            log.debug("%s: ETag %s not checkable, size verified only", obj.key, etag)
        elif not match:
            raise _VerificationError(f"{obj.key}: content differs from the multipart ETag {etag}")


def _cached(path: Path, obj: ObjectInfo) -> bool:
    """Whether ``path`` already holds the object (size and, where checkable, ETag match)."""
    try:
        if not path.is_file() or path.stat().st_size != obj.size:
            return False
        return etag_matches(path, obj.etag) is not False
    except OSError:
        return False


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------
def _download_one(client: Any, bucket: str, obj: ObjectInfo, dest: Path, attempts: int) -> bool:
    """Download one object atomically and verified; returns False when the cache had it."""
    if _cached(dest, obj):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}{_PART_SUFFIX}"
        try:
            resp = client.get_object(Bucket=bucket, Key=obj.key)
            md5 = hashlib.md5(usedforsecurity=False)
            with open(tmp, "wb") as f:
                for chunk in resp["Body"].iter_chunks(_CHUNK):
                    md5.update(chunk)
                    f.write(chunk)
            _verify(tmp, obj, md5.hexdigest())
            os.replace(tmp, dest)
            return True
        except Exception as e:
            tmp.unlink(missing_ok=True)
            if attempt == attempts or not _is_transient(e):
                raise
            log.warning("download of s3://%s/%s failed (%s), retrying", bucket, obj.key,
                        type(e).__name__)
            time.sleep(min(0.5 * 2 ** (attempt - 1), 8.0))
    raise AssertionError("unreachable")


def download_prefix(
    uri: str,
    dest_dir: str | os.PathLike[str],
    *,
    workers: int = 8,
    client: Any | None = None,
    prune: bool = False,
    attempts: int = 3,
) -> Path:
    """Download every object under ``uri`` into ``dest_dir``, keeping relative keys as paths.

    Parallel (``workers`` threads sharing one client); each file is written to a temporary name,
    verified against the listing's size and ETag, then renamed into place, so a file under its
    final name is always complete. Files already present with matching size and ETag are not
    downloaded again.

    Args:
        uri: ``s3://bucket/prefix``.
        dest_dir: local folder; created when missing.
        workers: parallel downloads.
        client: an S3 client; :func:`client_from_env` when ``None``.
        prune: delete local files under ``dest_dir`` that are not in the listing (a cache that
            mirrors the prefix).
        attempts: tries per file on transient failures or failed verification, on top of
            botocore's per-request retries.

    Returns:
        ``dest_dir`` as a Path.

    Raises:
        StorageError: the listing is empty, or a download failed or did not verify.
    """
    from botocore import exceptions as bx

    client = _client(client)
    bucket, key = parse_s3_uri(uri)
    prefix = _prefix_of(key)
    dest = Path(dest_dir)
    objects = list_objects(uri, client=client)
    if not objects:
        raise StorageError(f"no objects under {uri} (endpoint {_endpoint(client)})")
    targets = [(o, dest / _relative(o.key, prefix, uri)) for o in objects]
    dest.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[ObjectInfo, Path]) -> bool:
        obj, path = item
        try:
            return _download_one(client, bucket, obj, path, attempts)
        except (bx.ClientError, bx.BotoCoreError, OSError, _VerificationError) as e:
            raise storage_error(e, client=client, uri=f"s3://{bucket}/{obj.key}",
                                action="download") from e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fetched = sum(pool.map(one, targets))
    log.info("%s: %d objects, %d downloaded, %d from cache", uri, len(targets), fetched,
             len(targets) - fetched)
    if prune:
        wanted = {p.resolve() for _, p in targets}
        for _, p in _local_files(dest):
            if p.resolve() not in wanted:
                p.unlink()
    return dest


def materialize(
    uri: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    client: Any | None = None,
    workers: int = 8,
) -> Path:
    """A local folder holding the data ``uri`` names.

    A local path is returned as is (it must exist). An ``s3://bucket/prefix`` is mirrored into
    ``cache_dir/bucket/prefix`` (verified, reusing files already there, removing files that left
    the prefix) and that folder is returned.
    """
    if not is_s3_uri(uri):
        path = Path(uri)
        if not path.exists():
            raise StorageError(f"{path}: no such file or folder")
        return path
    bucket, key = parse_s3_uri(str(uri))
    dest = Path(cache_dir) / bucket
    if key.strip("/"):
        dest = dest / key.strip("/")
    return download_prefix(str(uri), dest, workers=workers, client=client, prune=True)


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------
def upload_file(
    path: str | os.PathLike[str],
    uri: str,
    *,
    client: Any | None = None,
    attempts: int = 4,
    backoff: float = 0.5,
) -> str:
    """Upload one file to ``uri`` and verify it arrived; returns the object's URI.

    A ``uri`` ending in ``/`` is a prefix: the file's name is appended. Transient failures
    (connection errors, 5xx, throttling, a size or ETag mismatch after upload) are retried with
    exponential backoff, on top of botocore's own per-request retries; permanent ones (missing
    bucket, rejected credentials) fail at once.

    Raises:
        StorageError: the upload failed on every attempt or permanently.
    """
    from boto3.exceptions import S3UploadFailedError
    from boto3.s3.transfer import TransferConfig
    from botocore import exceptions as bx

    client = _client(client)
    src = Path(path)
    if not src.is_file():
        raise StorageError(f"{src}: no such file to upload")
    if uri.endswith("/"):
        uri = uri + src.name
    bucket, key = parse_s3_uri(uri)
    if not key or key.endswith("/"):
        raise StorageError(f"{uri!r} names no object key to upload {src} to")
    size = src.stat().st_size
    transfer = TransferConfig(multipart_threshold=64 * 1024 * 1024,
                              multipart_chunksize=8 * 1024 * 1024, use_threads=False)
    for attempt in range(1, attempts + 1):
        try:
            try:
                client.upload_file(str(src), bucket, key, Config=transfer)
            except S3UploadFailedError as e:
                # boto3 wraps the botocore error; classify the original one.
                cause = e.__cause__ or e.__context__
                raise (cause if isinstance(cause, BaseException) else e) from None
            head = client.head_object(Bucket=bucket, Key=key)
            obj = ObjectInfo(key=key, size=int(head["ContentLength"]),
                             etag=str(head.get("ETag", "")).strip('"'))
            if obj.size != size:
                raise _VerificationError(f"{key}: {obj.size} bytes stored, {size} sent")
            if etag_matches(src, obj.etag) is False:
                raise _VerificationError(f"{key}: stored ETag {obj.etag} does not match the file")
            return uri
        except (bx.ClientError, bx.BotoCoreError, S3UploadFailedError, OSError,
                _VerificationError) as e:
            if attempt == attempts or not _is_transient(e):
                raise storage_error(e, client=client, uri=uri, action=f"upload {src} to") from e
            log.warning("upload of %s to %s failed (%s), retry %d of %d", src, uri,
                        type(e).__name__, attempt, attempts - 1)
            time.sleep(backoff * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def upload_dir(
    local_dir: str | os.PathLike[str],
    uri_prefix: str,
    *,
    client: Any | None = None,
    workers: int = 8,
    attempts: int = 4,
) -> list[str]:
    """Upload every file under ``local_dir`` below ``uri_prefix``, keeping relative paths.

    Returns:
        The URIs of the uploaded objects, sorted.
    """
    client = _client(client)
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"{root}: no such folder to upload")
    parse_s3_uri(uri_prefix)
    files = _local_files(root)
    if not files:
        raise StorageError(f"{root}: nothing to upload (empty folder)")

    def one(item: tuple[str, Path]) -> str:
        rel, p = item
        return upload_file(p, join_uri(uri_prefix, rel), client=client, attempts=attempts)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sorted(pool.map(one, files))


__all__ = [
    "ObjectInfo", "is_s3_uri", "parse_s3_uri", "join_uri", "s3_client", "client_from_env",
    "endpoint_from_env", "check_bucket", "list_objects", "fingerprint", "etag_matches",
    "download_prefix", "materialize", "upload_file", "upload_dir", "storage_error",
]
