"""Who owns an output folder, and who writes into it now: the run marker and the run lock.

A folder the project made carries a marker file, :data:`MARKER` (``.campseg-run.json``): its kind
(``run`` for a run folder, ``evaluation`` for ``evaluate --out``, ``prediction`` for ``predict --out``),
a run id, when it was created, and, once the statistics stage has run, the dataset fingerprint and the statistics digest the run
was built from. A stage writes only into a folder that does not exist yet, is empty, or carries
the marker of its kind; anything else (a user's own folder, a dataset, a file) is refused with a
:class:`~components.contracts.errors.RunFolderError` before anything is written. Only the marker
allows a stage to replace an artifact folder (``models/``, ``evaluation/``...): nothing the
project did not make is ever deleted.

While a stage writes, the folder holds :data:`LOCK` (``.campseg.lock``), created with ``O_EXCL``
and holding the writer's pid, host, stage and start time; a second writer is refused with a
message naming the holder. A lock left by a dead process on the same host is taken over. The same
process may take the lock again (``all`` holds it and runs each stage inside).
"""

from __future__ import annotations

import json
import os
import socket
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from components.contracts.errors import RunFolderError

MARKER = ".campseg-run.json"
LOCK = ".campseg.lock"
RUN, EVALUATION, PREDICTION = "run", "evaluation", "prediction"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder``, or None when it has none (a marker that is not JSON is refused)."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"{path}: unreadable run marker ({exc}); this folder cannot be written to") from None
    if not isinstance(marker, dict):
        raise RunFolderError(f"{path}: not a campseg run marker")
    return marker


def is_owned(folder: Path) -> bool:
    """Whether the project made ``folder`` (it carries a marker of any kind)."""
    try:
        return read_marker(folder) is not None
    except RunFolderError:
        return False


def _inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_output(folder: Path, kind: str = RUN, data_dir: Path | None = None) -> None:
    """Refuse ``folder`` as an output of ``kind`` unless it is new, empty or a folder of that kind.

    Reads only: nothing is created or written.

    Raises:
        RunFolderError: ``folder`` is a file, lies inside or is the dataset ``data_dir``, is a
            folder of another kind, or a non-empty folder without the marker.
    """
    folder = Path(folder)
    resolved = folder.resolve()
    if data_dir is not None and _inside(resolved, Path(data_dir).resolve()):
        raise RunFolderError(
            f"{folder}: is {'the' if resolved == Path(data_dir).resolve() else 'inside the'} dataset folder "
            f"{data_dir}; a dataset is never written to: choose an output folder outside it"
        )
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"{folder}: exists and is not a folder; choose a new or empty folder")
    if not folder.exists():
        for parent in resolved.parents:  # the first existing parent must be a folder
            if parent.exists():
                if not parent.is_dir():
                    raise RunFolderError(f"{folder}: {parent} is a file, not a folder")
                break
        return
    marker = read_marker(folder)
    if marker is None:
        try:
            entries = [e.name for e in folder.iterdir() if e.name != LOCK]
        except OSError as exc:
            raise RunFolderError(f"{folder}: cannot be read ({exc.strerror or exc})") from None
        if entries:
            shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise RunFolderError(
                f"{folder}: not empty and not a campseg {kind} folder (no {MARKER}; it holds {shown}); "
                "nothing was written: choose a new or empty folder"
            )
        return
    if marker.get("kind", RUN) != kind:
        raise RunFolderError(
            f"{folder}: is a campseg {marker.get('kind')} folder, not a {kind} folder; "
            "nothing was written: choose another folder"
        )


def _claim(folder: Path, kind: str, **fields: Any) -> dict:
    """Write the marker of a new or empty folder (under the lock); return the marker."""
    marker = read_marker(folder)
    if marker is not None:
        return marker
    marker = {"campseg": "run-folder-marker", "kind": kind, "run_id": uuid.uuid4().hex,
              "created": _now(), "fingerprint": None, "statistics": None, **fields}
    update_marker(folder, **marker)
    return marker


def update_marker(folder: Path, **fields: Any) -> dict:
    """Merge ``fields`` into the marker (written atomically)."""
    folder = Path(folder)
    marker = {**(read_marker(folder) or {}), **fields}
    tmp = folder / f".{MARKER}.{uuid.uuid4().hex[:8]}.partial"
    try:
        tmp.write_text(json.dumps(marker, indent=2) + "\n")
        os.replace(tmp, folder / MARKER)
    finally:
        tmp.unlink(missing_ok=True)
    return marker


# ------------------------------------------------------------------------------------- the lock
def _holder_text(holder: dict) -> str:
    return (f"stage {holder.get('stage', '?')} (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('time', '?')})")


def _read_lock(path: Path) -> dict:
    try:
        holder = json.loads(path.read_text())
        return holder if isinstance(holder, dict) else {}
    except (OSError, ValueError):
        return {}


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _create_lock(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    except OSError as exc:
        raise RunFolderError(f"{path.parent}: cannot be written to ({exc.strerror or exc})") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(json.dumps(holder) + "\n")
    return True


@contextmanager
def _folder_guard(folder: Path) -> Iterator[None]:
    """An flock on the folder itself, serialising stale-lock takeovers (a no-op without fcntl)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextmanager
def run_lock(folder: Path, stage: str) -> Iterator[dict]:
    """Hold ``folder``'s :data:`LOCK` for ``stage``; refuse when another live writer holds it.

    Re-entrant within one process. A lock of a dead process on this host is taken over.

    Raises:
        RunFolderError: another process holds the lock (the message names it), or the folder
            cannot be written to.
    """
    folder = Path(folder)
    path = folder / LOCK
    host = socket.gethostname()
    holder = {"pid": os.getpid(), "host": host, "stage": stage, "time": _now(), "token": uuid.uuid4().hex}
    if not _create_lock(path, holder):
        current = _read_lock(path)
        if current.get("pid") == os.getpid() and current.get("host") == host:
            yield current  # this process holds it already (e.g. ``all`` running a stage)
            return
        taken = False
        if current.get("host") == host and not _alive(current.get("pid")):
            with _folder_guard(folder):
                if _read_lock(path) == current:  # still the same stale lock: take it over
                    path.unlink(missing_ok=True)
                    taken = _create_lock(path, holder)
        if not taken:
            current = _read_lock(path) or current
            raise RunFolderError(
                f"{folder}: another campseg process is writing to it: {_holder_text(current)}; "
                f"wait for it to finish (or, if no such process runs, remove {path})"
            )
    try:
        yield holder
    finally:
        if _read_lock(path).get("token") == holder["token"]:
            path.unlink(missing_ok=True)


@contextmanager
def open_output(folder: Path, stage: str, kind: str = RUN, *, create: bool = True,
                data_dir: Path | None = None) -> Iterator[dict]:
    """Check, lock and (when new or empty) mark ``folder`` as an output of ``kind``; yield its marker.

    With ``create`` false the folder must already be a folder of ``kind``.

    Raises:
        RunFolderError: the folder is not ours to write (see :func:`check_output`), another
            writer holds it, or it cannot be created or written.
    """
    folder = Path(folder)
    check_output(folder, kind, data_dir)
    if not create and read_marker(folder) is None:
        raise RunFolderError(
            f"{folder}: not a campseg {kind} folder (no {MARKER}); run the statistics stage into a new "
            "folder (a run folder of an older campseg version must be re-run)"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"{folder}: cannot be created ({exc.strerror or exc})") from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RunFolderError(f"{folder}: not writable")
    with run_lock(folder, stage):
        check_output(folder, kind, data_dir)  # again, now that no other writer can change it
        try:
            marker = _claim(folder, kind)
        except OSError as exc:
            raise RunFolderError(f"{folder}: cannot be written to ({exc.strerror or exc})") from None
        yield marker


__all__ = ["EVALUATION", "LOCK", "MARKER", "PREDICTION", "RUN", "check_output", "is_owned", "open_output", "read_marker",
           "run_lock", "update_marker"]
