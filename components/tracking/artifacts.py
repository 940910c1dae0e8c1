"""A run folder's artifacts in MLflow: the files of :data:`~components.contracts.run_layout.ARTIFACTS`
uploaded into the run, and the test metrics.

Folders of the table keep their relative paths (``models/model.onnx``, ``evaluation/overlays/…``);
files at the top of the run folder (``stats.json``, the manifest, the training config and
history) and ``summary.json`` go into ``metadata/`` beside the STAC item.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from components.contracts.errors import TrackingError
from components.contracts.run_layout import ARTIFACTS, RunLayout, read_json
from components.tracking.runs import flatten, is_number, write_metrics
from components.tracking.server import client as make_client
from components.tracking.server import first_line, redact

#: Run tag set by :func:`log_run_artifacts` when every artifact is uploaded; registration needs it.
ARTIFACTS_LOGGED_TAG = "campseg.artifacts_logged"
#: Where files from the top of the run folder go in the run's artifacts.
TOP_LEVEL_FOLDER = "metadata"


def _files_under(folder: Path) -> Iterable[Path]:
    """Files under ``folder``, skipping hidden and partial ones (``.x.partial``, ``.partial/``)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith(".partial"):
                yield Path(dirpath) / name


def _artifact_path(relative: str) -> str:
    """The MLflow artifact path of a file at ``relative`` in the run folder."""
    return relative if "/" in relative else f"{TOP_LEVEL_FOLDER}/{relative}"


def run_artifacts(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """What :func:`log_run_artifacts` uploads: artifact path -> local file, sorted by path."""
    layout = RunLayout(Path(run_dir))
    entries = [entry for artifact in ARTIFACTS for entry in artifact.files]
    entries.append(layout.summary.name)  # the run's index, when the folder has one
    out: dict[str, Path] = {}
    for entry in entries:
        local = layout.root / entry
        if entry.endswith("/"):
            if local.is_dir():
                for f in _files_under(local):
                    out[f.relative_to(layout.root).as_posix()] = f
        elif local.is_file():
            out[_artifact_path(entry)] = local
    return dict(sorted(out.items()))


def _test_metrics(layout: RunLayout) -> dict[str, float]:
    """``test_*`` of ``evaluation/metrics.json`` and ``export_*`` parity numbers of the export report."""
    metrics = read_json(layout.metrics)
    test = {f"test_{k}": v for k, v in metrics.items() if is_number(v)}
    test |= {f"test_{k}": v for k, v in (metrics.get("confusion_matrix") or {}).items()}
    test |= {f"test_baseline_{k}": v for k, v in (metrics.get("baselines") or {}).items()}
    if layout.export_report.exists():
        report = read_json(layout.export_report)
        test |= {f"export_{k}": v for k, v in flatten(report).items()
                 if is_number(v) and ("diff" in k or "param" in k)}
    return test


def log_run_artifacts(tracking_uri: str, run_id: str, run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Upload the run folder's artifacts in folders, and the test metrics as ``test_*``.

    Layout in the run's artifact store: ``models/`` (``model.onnx``, ``model.pt``,
    ``model.pth``, ``export_report.json``), ``metadata/`` (``stac_item.json``, ``stats.json``,
    the manifest, training config and history, ``summary.json``), ``checkpoints/best.ckpt``,
    ``evaluation/`` (``metrics.json``, figures, ``overlays/``), ``esri/`` (the ``.dlpk``).
    The last action is the tag ``campseg.artifacts_logged=true``, which registration
    requires: a run whose upload failed half-way is never registered.

    Raises:
        RunFolderError: the run folder lacks the evaluation metrics or the ONNX model.
        TrackingError: an upload failed (after the client's retries).
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.metrics, layout.onnx, stage="MLflow artifact upload")
    client = make_client(tracking_uri)
    client.set_tag(run_id, ARTIFACTS_LOGGED_TAG, "false")
    files = run_artifacts(layout.root)
    for artifact_path, local in files.items():
        parent = str(Path(artifact_path).parent.as_posix())
        try:
            client.log_artifact(run_id, str(local), parent if parent != "." else None)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"uploading {local} to MLflow run {run_id} ({redact(tracking_uri)}) "
                                f"failed: {type(e).__name__}: {first_line(e)}") from e
    write_metrics(client, run_id, _test_metrics(layout))
    client.set_tag(run_id, ARTIFACTS_LOGGED_TAG, "true")
    return files
