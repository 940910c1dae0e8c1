"""Training stage: fit the Lightning task on the train split, select the best epoch on val IoU."""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

from components.contracts.config import TrainConfig
from components.contracts.errors import DatasetError, RunFolderError
from components.contracts.lineage import dependents, file_digest, verify
from components.contracts.ownership import open_output
from components.contracts.preprocessing import Preprocessing, check_image_size
from components.contracts.run_layout import (
    RunLayout,
    read_json,
    retract,
    update_summary,
    write_json,
)
from components.data.manifest import read_manifest
from components.ml.metrics import MONITOR, EpochListener, best_row
from components.ml.progress_bar import StderrProgressBar
from components.ml.task import ChipDataset, HistoryCallback, SegmentationTask
from components.reporting.progress import EpochLines


def _utc_iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision if config.precision != "32" else "32-true"
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def _loaders(by_split: dict[str, list], prep: Preprocessing, config: TrainConfig) -> tuple[DataLoader, DataLoader]:
    """Shuffled, augmented train batches (seeded) and plain validation batches."""
    train_ds = ChipDataset(by_split["train"], prep, augment=config.augment, seed=config.seed)
    val_ds = ChipDataset(by_split["val"], prep)
    workers = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True,
                              drop_last=len(train_ds) > config.batch_size, generator=generator, **workers)
    return train_loader, DataLoader(val_ds, batch_size=config.batch_size, **workers)


def _progress(config: TrainConfig, progress_bar: bool) -> tuple[list[Callback], list[EpochListener]]:
    """Training's progress, on stderr: Lightning's bar on a terminal, else one line per epoch."""
    if not progress_bar:
        return [], []
    if sys.stderr.isatty():
        return [StderrProgressBar()], []
    return [], [EpochLines(config.epochs)]


def _trainer(config: TrainConfig, callbacks: list[Callback], logger: Any) -> L.Trainer:
    """A Lightning trainer that stops early on the monitored metric; its bar only when ``callbacks``
    hold one."""
    progress_bar = any(isinstance(c, StderrProgressBar) for c in callbacks)
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=_precision(config),
        callbacks=[*callbacks, EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience)],
        logger=logger,
        deterministic="warn",
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )


def train(
    run_dir: Path,
    config: TrainConfig = TrainConfig(),
    data_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    listeners: Sequence[EpochListener] = (),
    logger: Any = False,
    progress_bar: bool = True,
) -> dict:
    """Train on the run's train split, select the best epoch on val IoU, save the checkpoint.

    Args:
        run_dir: run folder holding ``stats.json`` and the manifest.
        config: hyperparameters.
        data_dir: where the dataset is now (default: where the statistics stage read it).
        callbacks: extra Lightning callbacks (e.g. a throughput timer).
        listeners: told of the fit's start, each epoch's row and its end (e.g. a tracker).
        logger: a Lightning logger or False.
        progress_bar: show progress on stderr: Lightning's bar on a terminal, else a line per
            epoch.

    Returns:
        A summary: best epoch, best val IoU, epochs run, seconds, images per second.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.splits, stage="training")
    with open_output(layout.root, "train", create=False):
        return _train(layout, config, data_dir, callbacks, listeners, logger, progress_bar)


def _train(layout: RunLayout, config: TrainConfig, data_dir: Path | None, callbacks: Sequence[Callback],
           listeners: Sequence[EpochListener], logger: Any, progress_bar: bool) -> dict:
    statistics = verify(layout, ["statistics"])["statistics"]
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    check_image_size(prep.image_size, config.network_depth)
    pairs = read_manifest(layout, data_dir)
    by_split = {s: [p for p in pairs if p.split == s] for s in ("train", "val")}
    for split, members in by_split.items():
        if not members:
            raise DatasetError(f"{layout.splits}: the {split} split is empty; re-run the statistics stage")

    L.seed_everything(config.seed, workers=True)
    train_loader, val_loader = _loaders(by_split, prep, config)
    task = SegmentationTask(config.to_dict(), in_channels=len(prep.bands), threshold=prep.threshold)
    partial_dir = layout.checkpoint.parent / ".partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    checkpoint = ModelCheckpoint(dirpath=partial_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
    bars, lines = _progress(config, progress_bar)
    history = HistoryCallback([*listeners, *lines])
    trainer = _trainer(config, [checkpoint, history, *bars, *callbacks], logger)
    started = time.time()
    try:
        trainer.fit(task, train_loader, val_loader)
    except BaseException:
        shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    finished = time.time()
    seconds = finished - started
    if not checkpoint.best_model_path:
        raise RuntimeError("training produced no checkpoint (no validation epoch finished)")

    # Publish: the checkpoint, config and history appear only after a completed fit, and only if
    # the statistics are still those it was trained on. What was built from an earlier
    # checkpoint goes first, then the history (which vouches for the checkpoint), so a stop half
    # way leaves no training that looks final.
    if file_digest(layout.stats) != statistics:
        raise RunFolderError(f"{layout.stats}: changed while training ran; nothing was published, "
                             "re-run the train stage")
    retract(layout, *dependents("training"))
    layout.history.unlink(missing_ok=True)
    Path(checkpoint.best_model_path).replace(layout.checkpoint)
    shutil.rmtree(partial_dir, ignore_errors=True)
    write_json(layout.config, config.to_dict())
    best = best_row(history.rows)
    best_epoch = best["epoch"] if best else None
    result = {
        "best_epoch": best_epoch,
        "best_val_iou": float(checkpoint.best_model_score),
        "epochs_run": len(history.rows),
        "train_seconds": seconds,
        "train_images_per_second": len(train_loader.dataset) * len(history.rows) / seconds if seconds else None,
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": _precision(config),
    }
    lineage = {"statistics": statistics, "checkpoint": file_digest(layout.checkpoint)}
    write_json(layout.history, {"started_at": _utc_iso(started), "finished_at": _utc_iso(finished),
                                "epochs": history.rows, "summary": result, "lineage": lineage})
    update_summary(layout, checkpoint=layout.checkpoint, train_config=layout.config, history=layout.history, best_val_iou=result["best_val_iou"])
    return result


