"""Training history in MLflow: per-epoch metrics with ``step=epoch`` and the best epoch's ``best_*``,
under grouped names (``train/loss``, ``val/iou``, ``train/lr``, ``best/val_iou``: :func:`~components.tracking.runs.metric_key`).

:class:`MlflowEpochLogger` logs live while training (an
:class:`~components.ml.metrics.EpochListener`, no Lightning needed); :func:`log_history` fills any
gap afterwards from ``training_history.json`` without logging a point twice.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping, Sequence

from components.ml.metrics import MONITOR, best_row, row_metrics
from components.tracking.runs import is_number, log_system_info, metric_key, write_metrics
from components.tracking.server import client as make_client
from components.tracking.server import first_line

log = logging.getLogger(__name__)

_SUMMARY_KEYS = ("best_epoch", "best_val_iou", "epochs_run", "train_seconds", "train_images_per_second")


def best_metrics(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any],
                 monitor: str = MONITOR) -> dict[str, float]:
    """``best_<metric>`` of the best epoch, ``best_epoch``, and the training summary's numbers."""
    best: dict[str, float] = {}
    row = best_row(rows, monitor)
    if row is not None:
        best = {f"best_{k}": v for k, v in row_metrics(row).items()}
        best["best_epoch"] = float(row["epoch"])
    for key in _SUMMARY_KEYS:
        if is_number(summary.get(key)):
            best[key] = float(summary[key])
    if rows and "epochs_run" not in best:
        best["epochs_run"] = float(len(rows))
    return best


def log_history(tracking_uri: str, run_id: str, history: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                monitor: str = MONITOR) -> dict[str, float]:
    """Log per-epoch metrics with ``step=epoch``, then the best epoch's metrics as ``best_*``.

    Idempotent: a (metric, epoch) point already present (logged live by
    :class:`MlflowEpochLogger`, or by an earlier try of the step) is not logged again, so the
    metric history keeps one point per epoch.

    Args:
        history: the content of ``training_history.json`` (``{"epochs": [...], "summary": {...}}``)
            or its list of rows (each with ``epoch`` and metrics such as ``train_loss``,
            ``val_loss``, ``val_iou``, ``lr``).
        monitor: the metric that selects the best epoch (maximised).

    Returns:
        The ``best_*`` metrics logged.
    """
    import time

    from mlflow.entities import Metric

    if isinstance(history, Mapping):
        rows = list(history.get("epochs") or [])
        summary = dict(history.get("summary") or {})
    else:
        rows, summary = list(history), {}
    client = make_client(tracking_uri)
    keys = sorted({k for r in rows for k in row_metrics(r)})
    present = {k: {m.step for m in client.get_metric_history(run_id, metric_key(k))} for k in keys}
    now = int(time.time() * 1000)
    todo = [Metric(metric_key(k), v, now, int(r["epoch"])) for r in rows
            for k, v in row_metrics(r).items() if int(r["epoch"]) not in present.get(k, set())]
    for i in range(0, len(todo), 500):
        client.log_batch(run_id, metrics=todo[i:i + 500])
    best = best_metrics(rows, summary, monitor)
    write_metrics(client, run_id, best)
    return best


class MlflowEpochLogger:
    """Logs each epoch's metrics into the pipeline's MLflow run while training.

    An :class:`~components.ml.metrics.EpochListener`: pass it to
    ``components.stages.train.train(..., listeners=[logger])``. At fit start it records the
    training machine as ``system.train.*`` tags; after each epoch (validation included) it logs
    the row's metrics (``train_loss``, ``val_loss``, ``val_iou``, ..., ``lr``) with
    ``step=epoch``; at fit end the best epoch's metrics as ``best_*``. A tracking failure is
    logged as a warning and does not stop training (MLflow's client already retries);
    :func:`log_history` after training fills any gap without duplicating points.

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: the pipeline's run.
        monitor: the metric that selects the best epoch (maximised).
    """

    def __init__(self, tracking_uri: str, run_id: str, monitor: str = MONITOR) -> None:
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.monitor = monitor
        self.rows: list[dict[str, float]] = []
        self.failures = 0

    def _safely(self, what: str, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - tracking must not kill a long training
            self.failures += 1
            log.warning("MLflow: could not %s in run %s (%s: %s)", what, self.run_id,
                        type(e).__name__, first_line(e))

    def _log(self, metrics: Mapping[str, float], step: int = 0) -> None:
        write_metrics(make_client(self.tracking_uri), self.run_id, metrics, step)

    def fit_started(self) -> None:
        self._safely("log system info", log_system_info, self.tracking_uri, self.run_id, "train")

    def epoch_ended(self, row: Mapping[str, float]) -> None:
        self.rows.append(dict(row))
        self._safely("log epoch metrics", self._log, row_metrics(row), int(row["epoch"]))

    def fit_ended(self, rows: Sequence[Mapping[str, float]] = ()) -> None:
        best = best_metrics(list(rows) or self.rows, {}, self.monitor)
        self._safely("log best-epoch metrics", self._log, best)
