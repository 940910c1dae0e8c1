"""Evaluation stage: score the exported ONNX model (the artifact users run) on labelled chips."""

from __future__ import annotations

from pathlib import Path

from components.contracts.errors import DatasetError
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import (
    RunLayout,
    atomic_folder,
    read_json,
    update_summary,
    write_json,
)
from components.data.manifest import read_manifest
from components.data.pairs import find_pairs
from components.ml.metrics import METRIC_NAMES
from components.ml.scoring import Predictor, onnx_predictor, score
from components.reporting.figures import save_confusion_matrix, save_overlay


def evaluate_run(run_dir: Path, data_dir: Path | None = None, out_dir: Path | None = None,
                 predictor: Predictor | None = None, overlays: int = 4) -> dict:
    """Evaluate a run's ONNX model.

    Args:
        run_dir: the trained, exported run.
        data_dir: with ``out_dir`` unset, where the run's dataset is now (its test split is
            scored); with ``out_dir`` set, another labelled folder whose chips are all scored.
        out_dir: where to write an evaluation of another folder (default: the run's evaluation/).
        predictor: probabilities function (default: ONNX Runtime on ``models/model.onnx``).
        overlays: how many image/truth/prediction figures to write.

    Returns:
        The metrics document.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.onnx, stage="evaluation")
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    if out_dir is None:
        layout.require(layout.splits, stage="evaluation")
        pairs = [p for p in read_manifest(layout, data_dir) if p.split == "test"]
        split, uri, target = "test", stats["dataset_uri"], layout.evaluation_dir
        if not pairs:
            raise DatasetError(f"{layout.splits}: the test split is empty")
    else:
        pairs = find_pairs(Path(data_dir))
        split, uri, target = "all", str(data_dir), Path(out_dir)
    values, examples = score(pairs, predictor or onnx_predictor(layout.onnx, prep), prep, keep=overlays)
    values.update(split=split, dataset_uri=uri, model=str(layout.onnx))

    with atomic_folder(target) as staging:
        save_confusion_matrix(values["confusion_matrix"], staging / "confusion_matrix.png")
        (staging / "overlays").mkdir()
        for pair, chip, mask, prediction in examples:
            save_overlay(chip, mask, prediction, prep.max_value, staging / "overlays" / f"{pair.stem}.png")
        write_json(staging / "metrics.json", values)
    if out_dir is None:
        update_summary(
            layout,
            metrics=layout.metrics,
            confusion_matrix=layout.confusion_matrix_png,
            overlays=layout.overlays_dir,
            test_metrics={k: values[k] for k in METRIC_NAMES},
        )
    return values
