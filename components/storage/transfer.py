"""Verified transfers: parallel prefix downloads (a cache that mirrors a prefix) and uploads.

Every download is written to a temporary name, verified (:mod:`components.storage.etags`) and
renamed into place; every upload is checked with a HEAD request. Transient failures are retried
on top of botocore's per-request retries; permanent ones fail at once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Collection

from components.contracts.errors import StorageError
from components.storage.client import endpoint_name, resolve_client
from components.storage.errors import VerificationError, is_transient, storage_error
from components.storage.etags import etag_matches, is_cached, verify
from components.storage.files import CHUNK, PART_SUFFIX, local_files
from components.storage.listing import ObjectInfo, list_objects
from components.storage.uris import is_s3_uri, join_uri, parse_s3_uri, prefix_of, relative_key

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------
# Downloads
# --------------------------------------------------------------------------------------------
def _download_one(client: Any, bucket: str, obj: ObjectInfo, dest: Path, attempts: int) -> bool:
    """Download one object atomically and verified; returns False when the cache had it."""
    if is_cached(dest, obj):
        return False
    dest.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(1, attempts + 1):
        tmp = dest.parent / f".{dest.name}.{secrets.token_hex(4)}{PART_SUFFIX}"
        try:
            resp = client.get_object(Bucket=bucket, Key=obj.key)
            md5 = hashlib.md5(usedforsecurity=False)
            with open(tmp, "wb") as f:
                for chunk in resp["Body"].iter_chunks(CHUNK):
                    md5.update(chunk)
                    f.write(chunk)
            verify(tmp, obj, md5.hexdigest())
            os.replace(tmp, dest)
            return True
        except Exception as e:
            tmp.unlink(missing_ok=True)
            if attempt == attempts or not is_transient(e):
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
    only: Collection[str] | None = None,
) -> Path:
    """Download every object under ``uri`` (or the ``only`` ones) into ``dest_dir``, keeping relative keys as paths.

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
        only: keys relative to the prefix (``chips/a.tif``) to download; ``None`` for all. Each
            must be in the listing.

    Returns:
        ``dest_dir`` as a Path.

    Raises:
        StorageError: the listing is empty, or a download failed or did not verify.
    """
    from botocore import exceptions as bx

    client = resolve_client(client)
    bucket, key = parse_s3_uri(uri)
    prefix = prefix_of(key)
    dest = Path(dest_dir)
    objects = list_objects(uri, client=client)
    if not objects:
        raise StorageError(f"no objects under {uri} (endpoint {endpoint_name(client)})")
    targets = [(o, dest / relative_key(o.key, prefix, uri)) for o in objects]
    if only is not None:
        wanted = {Path(k).as_posix() for k in only}
        targets = [(o, p) for o, p in targets if p.relative_to(dest).as_posix() in wanted]
        missing = wanted - {p.relative_to(dest).as_posix() for _, p in targets}
        if missing:
            raise StorageError(f"{uri}: {len(missing)} file(s) to download are not there, e.g. "
                               f"{sorted(missing)[0]!r} (endpoint {endpoint_name(client)})")
    dest.mkdir(parents=True, exist_ok=True)

    def one(item: tuple[ObjectInfo, Path]) -> bool:
        obj, path = item
        try:
            return _download_one(client, bucket, obj, path, attempts)
        except (bx.ClientError, bx.BotoCoreError, OSError, VerificationError) as e:
            raise storage_error(e, client=client, uri=f"s3://{bucket}/{obj.key}",
                                action="download") from e

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        fetched = sum(pool.map(one, targets))
    log.info("%s: %d objects, %d downloaded, %d from cache", uri, len(targets), fetched,
             len(targets) - fetched)
    if prune:
        wanted = {p.resolve() for _, p in targets}
        for _, p in local_files(dest):
            if p.resolve() not in wanted:
                p.unlink()
    return dest


def materialize(
    uri: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    *,
    client: Any | None = None,
    workers: int = 8,
    only: Collection[str] | None = None,
) -> Path:
    """A local folder holding the data ``uri`` names.

    A local path is returned as is (it must exist). An ``s3://bucket/prefix`` is mirrored into
    ``cache_dir/bucket/prefix`` (verified, reusing files already there, removing files that left
    the prefix, or are not among ``only``: keys relative to the prefix, ``None`` for all) and that
    folder is returned.
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
    return download_prefix(str(uri), dest, workers=workers, client=client, prune=True, only=only)


# --------------------------------------------------------------------------------------------
# Uploads
# --------------------------------------------------------------------------------------------
def _put_and_check(client: Any, src: Path, size: int, bucket: str, key: str, transfer: Any) -> None:
    """Upload ``src`` (``size`` bytes) to ``bucket/key`` once, then check its size and ETag (HEAD)."""
    from boto3.exceptions import S3UploadFailedError

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
        raise VerificationError(f"{key}: {obj.size} bytes stored, {size} sent")
    if etag_matches(src, obj.etag) is False:
        raise VerificationError(f"{key}: stored ETag {obj.etag} does not match the file")


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

    client = resolve_client(client)
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
            _put_and_check(client, src, size, bucket, key, transfer)
            return uri
        except (bx.ClientError, bx.BotoCoreError, S3UploadFailedError, OSError,
                VerificationError) as e:
            if attempt == attempts or not is_transient(e):
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
    client = resolve_client(client)
    root = Path(local_dir)
    if not root.is_dir():
        raise StorageError(f"{root}: no such folder to upload")
    parse_s3_uri(uri_prefix)
    files = local_files(root)
    if not files:
        raise StorageError(f"{root}: nothing to upload (empty folder)")

    def one(item: tuple[str, Path]) -> str:
        rel, p = item
        return upload_file(p, join_uri(uri_prefix, rel), client=client, attempts=attempts)

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sorted(pool.map(one, files))
