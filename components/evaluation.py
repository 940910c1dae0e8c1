"""Evaluation stage: score the exported ONNX model (the artifact users run) on labelled chips."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    BinaryAccuracy,
    BinaryConfusionMatrix,
    BinaryF1Score,
    BinaryJaccardIndex,
    BinaryPrecision,
    BinaryRecall,
)

from .dataset import Pair, find_pairs, load_examples
from .errors import DatasetError
from .inference import batched, onnx_session, predict_probabilities
from .preprocessing import Preprocessing
from .run_layout import RunLayout, read_json, update_summary, write_json
from .stats import read_manifest

Predictor = Callable[[np.ndarray], np.ndarray]  # raw chips (N, C, H, W) -> probabilities (N, H, W)


def onnx_predictor(onnx_path: Path, prep: Preprocessing) -> Predictor:
    """Probabilities from ONNX Runtime, the path every consumer of the ONNX artifact takes."""
    session = onnx_session(onnx_path)
    return lambda raw: predict_probabilities(session, prep, raw)


def torch_predictor(model: torch.nn.Module, prep: Preprocessing) -> Predictor:
    """Probabilities from an eager PyTorch inference model (for parity checks)."""
    model = model.eval()

    def predict(raw: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(prep.normalize(raw))).numpy()[:, 0]

    return predict


def score(pairs: Sequence[Pair], predictor: Predictor, prep: Preprocessing, batch_size: int = 8,
          keep: int = 0) -> tuple[dict, list[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]]:
    """Metrics over all pixels of ``pairs`` at the threshold; also returns ``keep`` examples."""
    t = prep.threshold
    metrics = MetricCollection(
        {
            "iou": BinaryJaccardIndex(threshold=t),
            "f1": BinaryF1Score(threshold=t),
            "precision": BinaryPrecision(threshold=t),
            "recall": BinaryRecall(threshold=t),
            "accuracy": BinaryAccuracy(threshold=t),
        }
    )
    confusion = BinaryConfusionMatrix(threshold=t)
    examples = []
    for batch in batched(pairs, batch_size):
        raw, masks = load_examples(batch, prep.image_size)
        probs = torch.from_numpy(np.ascontiguousarray(predictor(raw), dtype=np.float32))
        target = torch.from_numpy(masks.astype(np.int64))
        metrics.update(probs, target)
        confusion.update(probs, target)
        for pair, chip, mask, prob in zip(batch, raw, masks, probs.numpy()):
            if len(examples) < keep:
                examples.append((pair, chip, mask, prep.classify(prob)))
    values = {k: float(v) for k, v in metrics.compute().items()}
    (tn, fp), (fn, tp) = confusion.compute().tolist()
    total = tn + fp + fn + tp
    values.update(
        threshold=t,
        num_chips=len(pairs),
        num_pixels=total,
        confusion_matrix={"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        baselines={
            "all_background_iou": 0.0,
            "all_foreground_iou": (tp + fn) / total if total else 0.0,
            "positive_fraction": (tp + fn) / total if total else 0.0,
        },
    )
    return values, examples


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

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        from .figures import save_confusion_matrix, save_overlay

        save_confusion_matrix(values["confusion_matrix"], staging / "confusion_matrix.png")
        (staging / "overlays").mkdir()
        for pair, chip, mask, prediction in examples:
            save_overlay(chip, mask, prediction, prep.max_value, staging / "overlays" / f"{pair.stem}.png")
        write_json(staging / "metrics.json", values)
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if out_dir is None:
        update_summary(
            layout,
            metrics=layout.metrics,
            confusion_matrix=layout.confusion_matrix_png,
            overlays=layout.overlays_dir,
            test_metrics={k: values[k] for k in ("iou", "f1", "precision", "recall", "accuracy")},
        )
    return values
