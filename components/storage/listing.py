"""Bucket checks and listings: what is under an ``s3://`` prefix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from components.storage.client import client_from_env, resolve_client
from components.storage.errors import DENIED, error_code, storage_error
from components.storage.uris import parse_s3_uri, prefix_of


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its full key, size in bytes and ETag (without quotes)."""

    key: str
    size: int
    etag: str


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
        if error_code(e) not in DENIED:
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

    client = resolve_client(client)
    bucket, key = parse_s3_uri(uri)
    prefix = prefix_of(key)
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
