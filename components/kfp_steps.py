"""The glue between KFP artifacts and the stage logic: plain functions, testable without KFP.

Each KFP component body calls one function here. An artifact is a folder holding its stage's part
of a run folder (``docs/artifacts.md``): the prepared dataset holds ``stats.json`` and the
manifest, the training artifact ``checkpoints/`` and the history, and so on. A step assembles a
scratch run folder from its input artifacts, runs the stage, and copies what the stage wrote into
its output artifact. Data reaches a step from ``dataset_uri`` itself (a local folder, or an S3
prefix downloaded in parallel into the pod's scratch space), checked against the fingerprint the
first step took, so a step never reads other data than the run was keyed on.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Mapping

from .errors import DatasetError
from .run_layout import RunLayout, read_json

#: Which files of a run folder each artifact carries (relative paths, folders end with "/").
ARTIFACT_CONTENTS: dict[str, tuple[str, ...]] = {
    "prepared": ("stats.json", "dataset_manifest.json"),
    "training": ("checkpoints/", "train_config.json", "training_history.json"),
    "models": ("models/",),
    "evaluation": ("evaluation/",),
    "dlpk": ("esri/",),
    "stac": ("metadata/",),
}


def scratch_dir() -> Path:
    """A scratch folder for a step (on a cluster, the pod's ephemeral storage)."""
    return Path(tempfile.mkdtemp(prefix="campseg-"))


def dataset_fingerprint(dataset_uri: str) -> str:
    """Content fingerprint of the dataset (for S3 from the listing alone, nothing downloaded)."""
    from .storage import fingerprint, is_s3_uri

    if not is_s3_uri(dataset_uri) and not Path(dataset_uri).is_dir():
        raise DatasetError(f"dataset_uri={dataset_uri!r}: no such folder (and not an s3:// URI)")
    return fingerprint(dataset_uri)


def materialize_dataset(dataset_uri: str, expected_fingerprint: str | None, cache_dir: Path) -> Path:
    """A local folder with the dataset; fails if its content is not what the run was keyed on."""
    from .storage import fingerprint, is_s3_uri, materialize

    local = materialize(dataset_uri, cache_dir) if is_s3_uri(dataset_uri) else Path(dataset_uri)
    if expected_fingerprint:
        found = fingerprint(dataset_uri if is_s3_uri(dataset_uri) else local)
        if found != expected_fingerprint:
            raise DatasetError(
                f"dataset_uri={dataset_uri!r} changed during the run (fingerprint {found} != {expected_fingerprint}); "
                "start a new run"
            )
    return local


def assemble(run_dir: Path, **artifacts: str | os.PathLike | None) -> RunLayout:
    """Lay out input artifacts as one run folder (files are linked, not copied, where possible)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for name, path in artifacts.items():
        if path is None:
            continue
        if name not in ARTIFACT_CONTENTS:
            raise ValueError(f"unknown artifact kind {name!r}")
        src = Path(path)
        for source in sorted(src.rglob("*")):
            if source.is_file():
                target = run_dir / source.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    return RunLayout(run_dir)


def collect(layout: RunLayout, kind: str, artifact_dir: str | os.PathLike) -> None:
    """Copy the files of artifact ``kind`` from the run folder into the output artifact folder."""
    out = Path(artifact_dir)
    out.mkdir(parents=True, exist_ok=True)
    for entry in ARTIFACT_CONTENTS[kind]:
        source = layout.root / entry
        if entry.endswith("/"):
            shutil.copytree(source, out / entry, dirs_exist_ok=True)
        else:
            shutil.copy2(source, out / entry)


def run_stats(dataset_uri: str, fingerprint: str, prepared_dir: str, params: Mapping[str, Any]) -> dict:
    """Statistics stage into the ``prepared`` artifact."""
    from .splits import SplitRatios
    from .stats import compute_statistics

    work = scratch_dir()
    try:
        data = materialize_dataset(dataset_uri, fingerprint, work / "data")
        run = work / "run"
        stats = compute_statistics(
            data, run, params.get("image_size") or None, int(params["network_depth"]),
            SplitRatios(params["train_ratio"], params["val_ratio"], params["test_ratio"]),
            int(params["seed"]), float(params["threshold"]), dataset_uri=dataset_uri, fingerprint=fingerprint,
        )
        collect(RunLayout(run), "prepared", prepared_dir)
        return stats
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_train(dataset_uri: str, prepared_dir: str, training_dir: str, config: Mapping[str, Any], callbacks=()) -> dict:
    """Training stage from the ``prepared`` artifact into the ``training`` artifact."""
    from .config import TrainConfig
    from .training import train

    work = scratch_dir()
    try:
        layout = assemble(work / "run", prepared=prepared_dir)
        stats = read_json(layout.stats)
        data = materialize_dataset(dataset_uri, stats.get("fingerprint"), work / "data")
        result = train(layout.root, TrainConfig.from_dict(config), data, callbacks=callbacks, progress_bar=True)
        collect(layout, "training", training_dir)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_export(dataset_uri: str, prepared_dir: str, training_dir: str, models_dir: str) -> dict:
    """Export stage into the ``models`` artifact (parity on real chips of the test split)."""
    from .export import export_models

    work = scratch_dir()
    try:
        layout = assemble(work / "run", prepared=prepared_dir, training=training_dir)
        data = materialize_dataset(dataset_uri, read_json(layout.stats).get("fingerprint"), work / "data")
        report = export_models(layout.root, data)
        collect(layout, "models", models_dir)
        return report
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_evaluate(dataset_uri: str, prepared_dir: str, models_dir: str, evaluation_dir: str) -> dict:
    """Evaluation stage (ONNX Runtime on the test split) into the ``evaluation`` artifact."""
    from .evaluation import evaluate_run

    work = scratch_dir()
    try:
        layout = assemble(work / "run", prepared=prepared_dir, models=models_dir)
        data = materialize_dataset(dataset_uri, read_json(layout.stats).get("fingerprint"), work / "data")
        metrics = evaluate_run(layout.root, data)
        collect(layout, "evaluation", evaluation_dir)
        return metrics
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_dlpk(prepared_dir: str, models_dir: str, dlpk_dir: str, model_name: str) -> Path:
    """DLPK packaging into the ``dlpk`` artifact; returns the package's path inside it."""
    from .dlpk import package_dlpk

    work = scratch_dir()
    try:
        layout = assemble(work / "run", prepared=prepared_dir, models=models_dir)
        package = package_dlpk(layout.root, model_name)
        collect(layout, "dlpk", dlpk_dir)
        return Path(dlpk_dir) / package.relative_to(layout.root)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_stac(artifacts: Mapping[str, str], stac_dir: str, model_name: str, asset_base: str | None = None) -> dict:
    """STAC-MLM item over every artifact, into the ``stac`` artifact; returns the item."""
    from .stac_item import build_stac_item

    work = scratch_dir()
    try:
        layout = assemble(work / "run", **artifacts)
        item_path = build_stac_item(layout.root, model_name, asset_base=asset_base or None)
        collect(layout, "stac", stac_dir)
        return json.loads(item_path.read_text())
    finally:
        shutil.rmtree(work, ignore_errors=True)


def gather_run(artifacts: Mapping[str, str | os.PathLike], out_dir: Path) -> dict:
    """Copy a finished pipeline's artifacts into one run folder and write its ``summary.json``."""
    from .run_layout import update_summary

    layout = RunLayout(Path(out_dir))
    if layout.root.exists():
        for kind in ARTIFACT_CONTENTS:
            for entry in ARTIFACT_CONTENTS[kind]:
                target = layout.root / entry
                if target.is_dir():
                    shutil.rmtree(target)
    layout.root.mkdir(parents=True, exist_ok=True)
    for kind, path in artifacts.items():
        shutil.copytree(Path(path), layout.root, dirs_exist_ok=True)
    metrics = read_json(layout.metrics)
    entries = {
        "stats": layout.stats, "checkpoint": layout.checkpoint, "train_config": layout.config,
        "history": layout.history, "state_dict": layout.state_dict, "torchscript": layout.torchscript,
        "onnx": layout.onnx, "export_report": layout.export_report, "metrics": layout.metrics,
        "confusion_matrix": layout.confusion_matrix_png, "overlays": layout.overlays_dir,
        "dlpk": next(layout.esri_dir.glob("*.dlpk")), "stac_item": layout.stac_item,
    }
    return update_summary(
        layout, **entries,
        test_metrics={k: metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy")},
        best_val_iou=read_json(layout.history)["summary"]["best_val_iou"],
    )


def tracking_callbacks(mlflow_run_id: str) -> list:
    """Lightning callbacks that log each epoch into the pipeline's MLflow run (none without one)."""
    if not mlflow_run_id:
        return []
    from .tracking import MlflowEpochLogger

    return [MlflowEpochLogger(mlflow_run_id)]
