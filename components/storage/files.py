"""Local files: the walk of a folder and streamed content hashes."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

#: Read size for streaming hashes and downloads.
CHUNK = 1024 * 1024
#: Suffix of a download in progress (``.<name>.<random>.part`` beside its final name).
PART_SUFFIX = ".part"


def is_regular_file(path: Path) -> bool:
    """Whether ``path`` is (or links to) a regular file; FIFOs, devices, dangling or looping links are not."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def local_files(root: Path) -> list[tuple[str, Path]]:
    """``(posix path relative to root, path)`` of every regular file under ``root``, sorted.

    Only regular files count (a FIFO or a link to ``/dev/zero`` would block a reader; a dangling or
    looping link has no content); linked folders are not followed. Interrupted downloads of ours
    (``.<name>...part``) are left out.
    """
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if name.endswith(PART_SUFFIX) and name.startswith("."):
                continue  # an interrupted download of ours
            p = Path(dirpath) / name
            if is_regular_file(p):
                files.append((p.relative_to(root).as_posix(), p))
    files.sort()
    return files


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the file's content, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def md5_file(path: Path) -> str:
    """Hex MD5 of the file's content, streamed (what a single-part ETag states)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()
