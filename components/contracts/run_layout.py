"""Where each stage reads and writes inside a run folder: the contract between stages.

A run folder is self-describing: every stage reads what earlier stages wrote here and can be
re-run alone. :data:`ARTIFACTS` is the one table of what each stage produces: the KFP output of
that name carries exactly these files, MLflow logs them under the same relative paths, and
publishing uploads them. ``summary.json`` maps the public artifact keys to paths relative to the
folder. Files are written to a temporary name and renamed into place, so a failed stage never
leaves a file that looks final.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from components.contracts.errors import RunFolderError


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
    Artifact("evaluation", "evaluate", ("evaluation/",), "test metrics, confusion matrix, overlays"),
    Artifact("dlpk", "dlpk", ("esri/",), "the Esri deep learning package"),
    Artifact("stac", "stac", ("metadata/",), "the STAC item with the MLM extension"),
)
ARTIFACT_FILES: dict[str, tuple[str, ...]] = {a.name: a.files for a in ARTIFACTS}


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

    Whatever was at ``target`` is replaced as a whole, so readers see the old folder or the new
    one, never a mix; a failure leaves ``target`` as it was and removes the staging folder.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        yield staging
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
