"""Content fingerprints of a dataset: an ``s3://`` prefix (from its listing) or a local folder."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from components.contracts.errors import StorageError
from components.storage.client import endpoint_name, resolve_client
from components.storage.files import is_regular_file, local_files, sha256_file
from components.storage.listing import list_objects
from components.storage.uris import is_s3_uri, parse_s3_uri, prefix_of


def fingerprint(uri_or_path: str | os.PathLike[str], *, client: Any | None = None) -> str:
    """A content fingerprint ``sha256:<hex>`` of a dataset prefix or folder.

    For ``s3://`` it hashes the listing (keys relative to the prefix, sizes, ETags) and downloads
    nothing; for a local folder it hashes (relative path, size, SHA-256 of the content) of every
    regular file, streaming (FIFOs, devices and broken links are not data and are skipped); for a
    local file, its name, size and content. The two kinds of fingerprint
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
            raise StorageError(f"no objects under {uri} (endpoint {endpoint_name(resolve_client(client))})")
        prefix = prefix_of(parse_s3_uri(uri)[1])
        h.update(b"s3-listing-v1\n")
        for o in objects:
            h.update(f"{o.key[len(prefix):]}\t{o.size}\t{o.etag}\n".encode())
        return f"sha256:{h.hexdigest()}"
    path = Path(uri_or_path)
    if is_regular_file(path):
        entries = [(path.name, path)]
    elif path.is_dir():
        entries = local_files(path)
    else:
        raise StorageError(f"{path}: no such file or folder")
    h.update(b"local-content-v1\n")
    for rel, p in entries:
        h.update(os.fsencode(rel) + f"\t{p.stat().st_size}\t{sha256_file(p)}\n".encode())
    return f"sha256:{h.hexdigest()}"
