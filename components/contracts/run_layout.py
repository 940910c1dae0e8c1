"""Where each stage reads and writes inside a run folder: the contract between stages.

A run folder is self-describing: every stage reads what earlier stages wrote here and can be
re-run alone. :data:`ARTIFACTS` is the one table of what each stage produces: the KFP output of
that name carries exactly these files, MLflow logs them under the same relative paths, and
publishing uploads them. ``summary.json`` maps the public artifact keys to paths relative to the
folder. Files are written to a temporary name and renamed into place, so a failed stage never
leaves a file that looks final. Which folders a stage may write at all (the run marker, the lock)
is :mod:`components.contracts.ownership`; which artifacts belong together (the lineage) is
:mod:`components.contracts.lineage`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from components.contracts.errors import RunFolderError
from components.contracts.ownership import is_owned


@dataclass(frozen=True)
class Artifact:
    """What one stage produces: its name (the KFP output's too) and its files in the run folder."""

    name: str
    stage: str
    files: tuple[str, ...]  # relative paths; folders end with "/"
    description: str


#: Every artifact of a run, in pipeline order. Adding a file to a folder listed here needs no
#: change anywhere else: KFP outputs, MLflow and publishing copy whole folders.
ARTIFACTS: tuple[Artifact, ...] = (
    Artifact("statistics", "stats", ("stats.json", "dataset_manifest.json"),
             "dataset statistics and preprocessing; validated pairs with their group and split"),
    Artifact("training", "train", ("checkpoints/", "train_config.json", "training_history.json"),
             "best Lightning checkpoint, hyperparameters, per-epoch metrics"),
    Artifact("models", "export", ("models/",), "state dict, TorchScript, ONNX and the export report"),
    Artifact("evaluation", "evaluate", ("evaluation/",),
             "test metrics, confusion matrix, training curves, overlays, the HTML report"),
    Artifact("dlpk", "dlpk", ("esri/",), "the Esri deep learning package"),
    Artifact("stac", "stac", ("metadata/",), "the STAC item with the MLM extension"),
)
ARTIFACT_FILES: dict[str, tuple[str, ...]] = {a.name: a.files for a in ARTIFACTS}
#: The ``summary.json`` keys each artifact's stage writes (removed when the artifact is retracted).
SUMMARY_KEYS: dict[str, tuple[str, ...]] = {
    "statistics": ("stats",),
    "training": ("checkpoint", "train_config", "history", "best_val_iou"),
    "models": ("state_dict", "torchscript", "onnx", "export_report"),
    "evaluation": ("metrics", "confusion_matrix", "training_curves", "report", "overlays", "test_metrics"),
    "dlpk": ("dlpk",),
    "stac": ("stac_item",),
}


@dataclass(frozen=True)
class RunLayout:
    """Paths of every artifact of one run."""

    root: Path

    @property
    def stats(self) -> Path:
        return self.root / "stats.json"

    @property
    def splits(self) -> Path:
        """Manifest of validated pairs: stem, chip and mask paths, group and split."""
        return self.root / "dataset_manifest.json"

    @property
    def config(self) -> Path:
        """The training configuration (hyperparameters, architecture) as JSON."""
        return self.root / "train_config.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoints" / "best.ckpt"

    @property
    def history(self) -> Path:
        """Per-epoch training and validation metrics as JSON."""
        return self.root / "training_history.json"

    @property
    def models_dir(self) -> Path:
        return self.root / "models"

    @property
    def state_dict(self) -> Path:
        return self.models_dir / "model.pth"

    @property
    def torchscript(self) -> Path:
        return self.models_dir / "model.pt"

    @property
    def onnx(self) -> Path:
        return self.models_dir / "model.onnx"

    @property
    def export_report(self) -> Path:
        return self.models_dir / "export_report.json"

    @property
    def evaluation_dir(self) -> Path:
        return self.root / "evaluation"

    @property
    def metrics(self) -> Path:
        return self.evaluation_dir / "metrics.json"

    @property
    def confusion_matrix_png(self) -> Path:
        return self.evaluation_dir / "confusion_matrix.png"

    @property
    def training_curves_png(self) -> Path:
        """Loss, IoU and learning rate per epoch."""
        return self.evaluation_dir / "training_curves.png"

    @property
    def report_html(self) -> Path:
        """The self-contained evaluation report (the KFP UI's)."""
        return self.evaluation_dir / "report.html"

    @property
    def overlays_dir(self) -> Path:
        return self.evaluation_dir / "overlays"

    @property
    def esri_dir(self) -> Path:
        return self.root / "esri"

    @property
    def metadata_dir(self) -> Path:
        return self.root / "metadata"

    @property
    def stac_item(self) -> Path:
        return self.metadata_dir / "stac_item.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def require(self, *paths: Path, stage: str) -> None:
        """Raise a RunFolderError naming every missing artifact that ``stage`` needs."""
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise RunFolderError(
                f"run folder {self.root} lacks what the {stage} stage needs: "
                + ", ".join(missing)
                + " (run the earlier stages first)"
            )


def read_json(path: Path) -> Any:
    """Read a JSON artifact, naming the file when it is missing or malformed."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise RunFolderError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise RunFolderError(f"{path}: not valid JSON ({exc})") from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextmanager
def atomic_folder(target: Path) -> Iterator[Path]:
    """Yield an empty staging folder beside ``target``; it becomes ``target`` only if the block succeeds.

    An existing ``target`` is replaced only inside a folder the project made (one with the run
    marker, :mod:`components.contracts.ownership`); anywhere else it is refused before the block
    runs, so nothing a user made is ever deleted. The old folder is renamed aside, the staging
    folder renamed into place, then the old one removed: readers see the old folder or the new
    one, never a mix. A failure leaves ``target`` as it was and removes the staging folder.
    """
    target = Path(target)
    if _present(target) and not is_owned(target.parent):
        raise RunFolderError(
            f"{target}: exists in {target.parent}, which is not a campseg run folder; it is never replaced"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)
        aside = _move_aside(target)
        staging.rename(target)
        _remove(aside)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _present(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def _move_aside(path: Path) -> Path | None:
    """Rename ``path`` to a hidden name beside it (None when there is nothing there)."""
    if not _present(path):
        return None
    aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.old")
    os.rename(path, aside)
    return aside


def _remove(path: Path | None) -> None:
    if path is None:
        return
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def replace_entries(folder: Path, staging: Path, last: str) -> None:
    """Move every entry of ``staging`` into ``folder`` (which the caller owns), replacing namesakes.

    ``last`` (the file that makes the result look final, e.g. ``metrics.json``) is removed first
    and moved in last, so a stop half way leaves nothing that looks final.
    """
    folder, staging = Path(folder), Path(staging)
    (folder / last).unlink(missing_ok=True)
    for entry in sorted(staging.iterdir(), key=lambda p: p.name == last):
        aside = _move_aside(folder / entry.name)
        entry.rename(folder / entry.name)
        _remove(aside)


def artifact_present(layout: RunLayout, name: str) -> bool:
    """Whether any file of artifact ``name`` is in the run folder (hidden staging names aside)."""
    for entry in ARTIFACT_FILES[name]:
        path = layout.root / entry.rstrip("/")
        if entry.endswith("/") and path.is_dir() and not path.is_symlink():
            if any(not child.name.startswith(".") for child in path.iterdir()):
                return True
        elif _present(path):
            return True
    return False


def retract(layout: RunLayout, *names: str) -> None:
    """Remove the artifacts ``names`` (latest first) and their ``summary.json`` entries.

    Used before a stage publishes an artifact that others were built from: what remains never
    pairs a new input with an output of the old one. Only a marked run folder is touched.
    """
    present = [n for n in names if artifact_present(layout, n)]
    if not present:
        return
    if not is_owned(layout.root):
        raise RunFolderError(f"{layout.root}: not a campseg run folder; its files are never removed")
    if layout.summary.exists():
        summary = read_json(layout.summary)
        keys = {k for n in present for k in SUMMARY_KEYS.get(n, ())}
        write_json(layout.summary, {k: v for k, v in summary.items() if k not in keys})
    by_order = [a.name for a in ARTIFACTS if a.name in present]
    for name in reversed(by_order):
        for entry in ARTIFACT_FILES[name]:
            _remove(_move_aside(layout.root / entry.rstrip("/")))


def write_json(path: Path, payload: Any) -> Path:
    """Write JSON atomically (indent 2, sorted keys off so the document reads in order)."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=2) + "\n")
    return Path(path)


def update_summary(layout: RunLayout, **entries: Any) -> dict:
    """Merge ``entries`` into ``summary.json``; artifact paths are stored relative to the run."""
    summary = read_json(layout.summary) if layout.summary.exists() else {}
    for key, value in entries.items():
        if isinstance(value, Path):
            value = os.path.relpath(value, layout.root)
        summary[key] = value
    write_json(layout.summary, summary)
    return summary
