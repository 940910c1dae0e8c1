"""Evaluation stage: score the exported ONNX model (the artifact users run) on labelled chips."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from components.contracts.errors import DatasetError, RunFolderError
from components.contracts.lineage import dependents, verify
from components.contracts.ownership import EVALUATION, open_output, read_marker
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import (
    ARTIFACT_FILES,
    RunLayout,
    atomic_folder,
    read_json,
    replace_entries,
    retract,
    update_summary,
    write_json,
)
from components.data.manifest import read_manifest
from components.data.pairs import find_pairs, load_examples
from components.ml.metrics import METRIC_NAMES
from components.ml.scoring import Predictor, onnx_predictor, score
from components.ml.tta import check_tta, tta_record, with_tta
from components.reporting.examples import ChipScores
from components.reporting.figures import save_confusion_matrix, save_overlay, save_training_curves
from components.reporting.html_report import evaluation_html
from components.reporting.progress import ProgressLine


def evaluate_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None,
                 predictor: Predictor | None = None, overlays: bool = True, tta: bool = False) -> dict:
    """Evaluate a run's ONNX model.

    Args:
        run_dir: the trained, exported run.
        data_dir: with ``out_dir`` unset, where the run's dataset is now (its test split is
            scored); with ``out_dir`` set, another labelled folder whose chips are all scored.
        out_dir: where to write an evaluation of another folder (default: the run's evaluation/):
            a new or empty folder, or one an earlier ``evaluate --out`` made (it carries the
            marker of kind ``evaluation``); never the dataset, the run or a folder of the user's.
        predictor: probabilities function (default: ONNX Runtime on ``models/model.onnx``).
        overlays: draw the overlays of the best, the median and the worst chip by IoU.
        tta: score the mean probabilities of the four flips of every chip (test-time
            augmentation, :mod:`components.ml.tta`); recorded in ``metrics.json`` either way.

    Returns:
        The metrics document.
    """
    check_tta(tta)
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.onnx, layout.export_report, stage="evaluation")
    if out_dir is None:
        layout.require(layout.splits, stage="evaluation")
        with open_output(layout.root, "evaluate", create=False):
            return _evaluate(layout, data_dir, None, predictor, overlays, tta)
    _check_out(layout, Path(out_dir))
    with open_output(Path(out_dir), "evaluate", EVALUATION, data_dir=Path(data_dir) if data_dir else None):
        return _evaluate(layout, data_dir, Path(out_dir), predictor, overlays, tta)


def _check_out(layout: RunLayout, out_dir: Path) -> None:
    """``--out`` may not be the run folder, nor lie inside one of its artifacts."""
    out, root = out_dir.resolve(), layout.root.resolve()
    for entry in ("", *(e for files in ARTIFACT_FILES.values() for e in files)):
        inner = (root / entry).resolve() if entry else root
        if out == inner or (entry and inner in out.parents):
            raise RunFolderError(f"{out_dir}: is {'the run folder' if not entry else 'inside ' + entry + ' of the run'} "
                                 f"{layout.root}; write the evaluation of another folder elsewhere")


def _evaluate(layout: RunLayout, data_dir: Path | None, out_dir: Path | None, predictor: Predictor | None,
              overlays: bool, tta: bool) -> dict:
    digests = verify(layout, ["statistics", "training", "models"])
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    if out_dir is None:
        pairs = [p for p in read_manifest(layout, data_dir) if p.split == "test"]
        split, uri = "test", stats["dataset_uri"]
        if not pairs:
            raise DatasetError(f"{layout.splits}: the test split is empty")
    else:
        pairs = find_pairs(Path(data_dir))
        split, uri = "all", str(data_dir)
    predictor = with_tta(predictor or onnx_predictor(layout.onnx, prep), tta)
    chips = ChipScores(prep)
    trained_sizes = [tuple(size) for size in stats.get("source_sizes") or []]
    values, _ = score(pairs, predictor, prep, trained_sizes=trained_sizes, on_chip=_counting(chips, len(pairs)))
    values.update(split=split, dataset_uri=uri, model=str(layout.onnx), **tta_record(tta))
    values["lineage"] = {"statistics": digests["statistics"], "models": digests["models"]}
    if out_dir is not None:
        values["lineage"].update(run=str(layout.root.resolve()),
                                 run_id=(read_marker(layout.root) or {}).get("run_id"))

    def write(folder: Path) -> None:
        _figures(folder, layout, values, stats, prep, chips if overlays else None, predictor)
        write_json(folder / "metrics.json", values)

    if out_dir is not None:  # an evaluation folder of its own: its files are replaced, metrics.json last
        staging = Path(tempfile.mkdtemp(prefix=".evaluation.", suffix=".partial", dir=out_dir))
        try:
            write(staging)
            replace_entries(out_dir, staging, last="metrics.json")
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return values
    with atomic_folder(layout.evaluation_dir) as staging:
        write(staging)
        retract(layout, *dependents("evaluation"))
    figures = {"training_curves": layout.training_curves_png, "report": layout.report_html}
    update_summary(
        layout,
        metrics=layout.metrics,
        confusion_matrix=layout.confusion_matrix_png,
        **{key: path for key, path in figures.items() if path.exists()},
        overlays={role: f"evaluation/overlays/{role}.png" for role in values.get("overlays", {})},
        test_metrics={k: values[k] for k in METRIC_NAMES},
    )
    return values


def _counting(chips: ChipScores, total: int):
    """``chips``, also drawing the scoring's progress line on stderr."""
    progress = ProgressLine("evaluate: scoring", unit="chips")
    started, seen = time.monotonic(), 0

    def on_chip(pair, mask, probabilities) -> None:
        nonlocal seen
        chips(pair, mask, probabilities)
        seen += 1
        progress(seen, total, time.monotonic() - started)
    return on_chip


def _figures(folder: Path, layout: RunLayout, values: dict, stats: dict, prep: Preprocessing,
             chips: ChipScores | None, predictor: Predictor) -> None:
    """The confusion matrix, the training curves (when the run has its history), the overlays of
    the best, median and worst chip (their scores go into ``values["overlays"]``) and the report."""
    save_confusion_matrix(values["confusion_matrix"], folder / "confusion_matrix.png", prep.class_name)
    if layout.history.exists():
        save_training_curves(read_json(layout.history), folder / "training_curves.png", prep.class_name)
    (folder / "overlays").mkdir()  # always: it replaces the overlays of an earlier evaluation
    if chips is not None and chips.scores:
        chosen = chips.chosen()
        values["overlays"] = {role: chip.as_dict() for role, chip in chosen.items()}
        for role, chip in chosen.items():
            raw, masks = load_examples([chips.pairs[chip.stem]], prep.image_size, prep.nodata)
            prediction = prep.classify(predictor(raw)[0])
            iou = "no foreground" if chip.iou is None else f"IoU {chip.iou:.3f}"
            save_overlay(raw[0], masks[0], prediction, prep.max_value, folder / "overlays" / f"{role}.png",
                         prep.class_name, f"{role} chip of the {values['split']} split: {chip.stem} ({iou})")
    (folder / "report.html").write_text(evaluation_html(values, folder, stats))
