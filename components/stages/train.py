"""Training stage: fit the Lightning task on the train split, select the best epoch on val IoU."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

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
from components.ml.batch_size import default_batch_size, device_memory
from components.ml.distributed import Launch, choose_strategy, detect_launch
from components.ml.metrics import MONITOR, EpochListener, best_row
from components.ml.progress_bar import StderrProgressBar
from components.ml.task import ChipDataModule, ChipDataset, HistoryCallback, SegmentationTask
from components.reporting.progress import EpochLines


def _utc_iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def on_gpu(config: TrainConfig) -> bool:
    """Whether training runs on GPUs: asked for, or ``auto`` with one visible."""
    return config.accelerator == "gpu" or (config.accelerator == "auto" and torch.cuda.is_available())


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision if config.precision != "32" else "32-true"
    return "bf16-mixed" if on_gpu(config) else "32-true"


def num_workers(config: TrainConfig) -> int:
    """Loader workers per device: ``config.num_workers``, else 0 on the CPU (the chips are decoded in
    memory already; workers would take cores from the convolutions) and, on GPUs, the CPUs per
    device less one for the training process, at most 8."""
    if config.num_workers is not None:
        return config.num_workers
    if not on_gpu(config):
        return 0
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(0, min(8, cpus // config.devices - 1))


def _progress(config: TrainConfig, progress_bar: bool) -> tuple[list[Callback], list[EpochListener]]:
    """Training's progress, on stderr: Lightning's bar on a terminal, else one line per epoch."""
    if not progress_bar:
        return [], []
    if sys.stderr.isatty():
        return [StderrProgressBar()], []
    return [], [EpochLines(config.epochs)]


def _trainer(config: TrainConfig, launch: Launch, callbacks: list[Callback], logger: Any) -> L.Trainer:
    """A Lightning trainer that stops early on the monitored metric; its bar only when ``callbacks``
    hold one."""
    progress_bar = any(isinstance(c, StderrProgressBar) for c in callbacks)
    return L.Trainer(
        max_epochs=config.epochs,
        accelerator=config.accelerator,
        devices=config.devices,
        num_nodes=config.num_nodes,
        strategy=choose_strategy(config.devices, config.num_nodes, launch),
        precision=_precision(config),
        callbacks=[*callbacks, EarlyStopping(monitor=MONITOR, mode="max", patience=config.patience)],
        logger=logger,
        deterministic="warn" if config.deterministic else False,
        benchmark=not config.deterministic,
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        # Each logging step reads the step's values on the host (a wait for the GPU); no logger reads them.
        log_every_n_steps=50,
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
        callbacks: extra Lightning callbacks (e.g. a throughput timer); with ``config.devices`` above
            1 they run in the spawned ranks, so what they record stays there.
        listeners: told of the fit's start, each epoch's row and its end (e.g. a tracker).
        logger: a Lightning logger or False.
        progress_bar: show progress on stderr: Lightning's bar on a terminal, else a line per
            epoch.

    Under a launcher such as torchrun (:func:`~components.ml.distributed.detect_launch`) every
    rank runs this function; global rank 0 alone locks the run folder and publishes, the others
    train and return ``{"rank": r, "published": False}``.

    Returns:
        A summary: best epoch, best val IoU, epochs run, seconds, images per second.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.splits, stage="training")
    launch = detect_launch(os.environ)
    choose_strategy(config.devices, config.num_nodes, launch)  # refuse a bad launch before loading chips
    if not launch.writes:  # another rank of a torchrun job: global rank 0 holds the folder
        return _train(layout, config, launch, data_dir, callbacks, listeners, logger, progress_bar)
    with open_output(layout.root, "train", create=False):
        return _train(layout, config, launch, data_dir, callbacks, listeners, logger, progress_bar)


def _train(layout: RunLayout, config: TrainConfig, launch: Launch, data_dir: Path | None,
           callbacks: Sequence[Callback], listeners: Sequence[EpochListener], logger: Any, progress_bar: bool) -> dict:
    statistics = verify(layout, ["statistics"])["statistics"]
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    check_image_size(prep.image_size, config.network_depth)
    pairs = read_manifest(layout, data_dir)
    by_split = {s: [p for p in pairs if p.split == s] for s in ("train", "val")}
    for split, members in by_split.items():
        if not members:
            raise DatasetError(f"{layout.splits}: the {split} split is empty; re-run the statistics stage")

    ranks = config.devices * config.num_nodes
    if len(by_split["val"]) < ranks:
        raise DatasetError(f"{layout.splits}: the val split has {len(by_split['val'])} chip(s), fewer than "
                           f"the {ranks} training process(es) (devices={config.devices} x num_nodes="
                           f"{config.num_nodes}); every process needs at least one validation chip")

    L.seed_everything(config.seed, workers=True)
    batch_size = config.batch_size or default_batch_size(
        on_gpu(config), prep.image_size, len(prep.bands), len(by_split["train"]), ranks,
        device_memory() if on_gpu(config) else None)
    data = ChipDataModule(ChipDataset(by_split["train"], prep), ChipDataset(by_split["val"], prep),
                          batch_size, num_workers(config), pin_memory=on_gpu(config), seed=config.seed)
    task = SegmentationTask(config.to_dict(), in_channels=len(prep.bands), threshold=prep.threshold,
                            preprocessing=prep.to_dict())
    # Only rank 0 writes, and only here: the checkpoint and the epoch rows. This process publishes
    # them into the run folder after the fit (under ddp_spawn it is not a rank at all; under
    # torchrun only global rank 0 gets past the fit).
    partial_dir = layout.checkpoint.parent / ".partial"
    if launch.writes:
        shutil.rmtree(partial_dir, ignore_errors=True)
    checkpoint = ModelCheckpoint(dirpath=partial_dir, filename="best", monitor=MONITOR, mode="max", save_top_k=1)
    bars, lines = _progress(config, progress_bar)
    history = HistoryCallback(partial_dir / "history.json", [*listeners, *lines])
    trainer = _trainer(config, launch, [checkpoint, history, *bars, *callbacks], logger)
    started = time.time()
    try:
        trainer.fit(task, datamodule=data)
    except BaseException:
        if launch.writes:
            shutil.rmtree(partial_dir, ignore_errors=True)
        raise
    finished = time.time()
    if not launch.writes:
        return {"rank": launch.rank, "published": False}
    seconds = finished - started
    rows = history.collected()
    best = best_row(rows)
    if not checkpoint.best_model_path or not Path(checkpoint.best_model_path).is_file() or best is None:
        shutil.rmtree(partial_dir, ignore_errors=True)
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
    write_json(layout.config, {**config.to_dict(), "batch_size": batch_size})  # the batch size it trained with
    # The checkpoint keeps the first epoch with the highest val IoU, as best_row picks it.
    result = {
        "best_epoch": best["epoch"],
        "best_val_iou": float(best[MONITOR]),
        "epochs_run": len(rows),
        "train_seconds": seconds,
        "train_images_per_second": len(data.train) * len(rows) / seconds if seconds else None,
        "accelerator": "cuda" if on_gpu(config) else "cpu",
        "devices": config.devices,
        "num_nodes": config.num_nodes,
        "precision": _precision(config),
        "batch_size": batch_size,
    }
    lineage = {"statistics": statistics, "checkpoint": file_digest(layout.checkpoint)}
    write_json(layout.history, {"started_at": _utc_iso(started), "finished_at": _utc_iso(finished),
                                "epochs": rows, "summary": result, "lineage": lineage})
    update_summary(layout, checkpoint=layout.checkpoint, train_config=layout.config, history=layout.history, best_val_iou=result["best_val_iou"])
    return result


