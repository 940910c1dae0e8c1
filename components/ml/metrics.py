"""The metrics: one table of names and torchmetrics classes, used by training, evaluation and tracking.

Adding a metric is one line in :data:`METRICS`: training logs it per epoch as ``train_<name>`` and
``val_<name>``, evaluation writes it to ``evaluation/metrics.json``, and the KFP UI, MLflow, the
STAC item and the champion rule read it from there under the same name.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Mapping, Protocol, Sequence

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

#: Name -> binary class of ``torchmetrics.classification`` (each takes ``threshold=``), in the order
#: reports show them; ``BinaryIoU`` is torchmetrics' Jaccard index counted by stat scores
#: (:mod:`components.ml.binary_iou`: no device sync in a training step). Class names, so that the
#: names alone (tracking, pipeline.py) import no torch.
METRICS: dict[str, str] = {
    "iou": "BinaryIoU",
    "f1": "BinaryF1Score",
    "precision": "BinaryPrecision",
    "recall": "BinaryRecall",
    "accuracy": "BinaryAccuracy",
}
METRIC_NAMES: tuple[str, ...] = tuple(METRICS)
#: The epoch metric that selects the best checkpoint and stops training early (maximised).
MONITOR = "val_iou"
#: Keys of an epoch row that are not metrics.
ROW_KEYS = ("epoch", "seconds")


def metric_collection(threshold: float, prefix: str | None = None, ignore_index: int | None = None,
                      validate_args: bool = True) -> MetricCollection:
    """Every metric of :data:`METRICS` at ``threshold`` (on probabilities), optionally prefixed.

    ``ignore_index``: target value that counts in no metric. ``validate_args=False`` skips
    torchmetrics' checks of the values, which wait for the GPU (training's own batches need none).
    """
    import torchmetrics.classification
    from torchmetrics import MetricCollection

    from components.ml import binary_iou

    def build(cls: str):
        metric = getattr(torchmetrics.classification, cls, None) or getattr(binary_iou, cls)
        return metric(threshold=threshold, ignore_index=ignore_index, validate_args=validate_args)

    return MetricCollection({name: build(cls) for name, cls in METRICS.items()}, prefix=prefix)


def epoch_row(epoch: int, logged: Mapping[str, Any], seconds: float | None = None) -> dict[str, float]:
    """One row of ``training_history.json`` from Lightning's epoch-level logged values."""
    row: dict[str, float] = {"epoch": epoch}
    for key, value in logged.items():
        if not key.endswith("_step"):
            row[key.removesuffix("_epoch")] = float(value)
    if seconds is not None:
        row["seconds"] = seconds
    return row


def row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    """The finite metric values of an epoch row (``epoch`` and ``seconds`` left out)."""
    out = {}
    for key, value in row.items():
        if key in ROW_KEYS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(float(value)):
            out[key] = float(value)
    return out


def best_row(rows: Sequence[Mapping[str, Any]], monitor: str = MONITOR) -> Mapping[str, Any] | None:
    """The row where ``monitor`` is highest, or None when no row has it."""
    scored = [r for r in rows if isinstance(r.get(monitor), (int, float))]
    return max(scored, key=lambda r: r[monitor]) if scored else None


class EpochListener(Protocol):
    """Something told about training as it goes (e.g. an experiment tracker); no Lightning needed."""

    def fit_started(self) -> None: ...

    def epoch_ended(self, row: Mapping[str, float]) -> None: ...

    def fit_ended(self, rows: Sequence[Mapping[str, float]]) -> None: ...
