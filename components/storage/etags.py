"""Verification of transferred files against S3 sizes and ETags.

A downloaded object must have the listed size and, for single-part uploads (an ETag of 32 hex
digits), the MD5 the ETag states. Multipart ETags (``<md5>-<parts>``) are checked by recomputing
them for the usual part sizes; when none matches, the size alone is checked.
"""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

from components.storage.errors import VerificationError
from components.storage.files import md5_file
from components.storage.listing import ObjectInfo

log = logging.getLogger(__name__)

_MD5_ETAG = re.compile(r"^[0-9a-f]{32}$")
_MULTIPART_ETAG = re.compile(r"^([0-9a-f]{32})-(\d+)$")


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
        return md5_file(path) == etag
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


def verify(path: Path, obj: ObjectInfo, md5_hex: str | None = None) -> None:
    """Raise :class:`VerificationError` unless ``path`` has the object's size and checkable ETag.

    Args:
        path: the local file.
        obj: the object's listing entry.
        md5_hex: the file's MD5 when already computed (while downloading).
    """
    size = path.stat().st_size
    if size != obj.size:
        raise VerificationError(f"{obj.key}: got {size} bytes, the listing says {obj.size}")
    etag = obj.etag.lower()
    if _MD5_ETAG.match(etag):
        if (md5_hex or md5_file(path)) != etag:
            raise VerificationError(f"{obj.key}: MD5 differs from the ETag {etag}")
    else:
        match = etag_matches(path, etag)
        if match is None:
            log.debug("%s: ETag %s not checkable, size verified only", obj.key, etag)
        elif not match:
            raise VerificationError(f"{obj.key}: content differs from the multipart ETag {etag}")


def is_cached(path: Path, obj: ObjectInfo) -> bool:
    """Whether ``path`` already holds the object (size and, where checkable, ETag match)."""
    try:
        if not path.is_file() or path.stat().st_size != obj.size:
            return False
        return etag_matches(path, obj.etag) is not False
    except OSError:
        return False
