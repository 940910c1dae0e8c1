"""Storage URIs: ``s3://bucket/key`` names object storage, anything else a local path.

A prefix is a folder: ``s3://b/data`` and ``s3://b/data/`` both mean the keys under ``data/``
(never ``data2/...``); ``s3://b`` is the whole bucket. Pure string handling, no boto3.
"""

from __future__ import annotations

import os
from pathlib import PurePosixPath

from components.contracts.errors import StorageError


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
    if bucket in (".", "..") or any(part in (".", "..") for part in key.split("/")):
        raise StorageError(f"{uri!r}: '.' and '..' segments are not allowed in an s3:// URI")
    return bucket, key


def prefix_of(key: str) -> str:
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


def relative_key(key: str, prefix: str, uri: str) -> str:
    """``key`` relative to ``prefix``, refused unless it is a safe relative local file name."""
    rel = key[len(prefix):]
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or any(p in ("..", ".") for p in parts):
        raise StorageError(f"object key {key!r} under {uri} cannot be a local file name")
    return rel
