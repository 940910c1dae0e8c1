"""Training stage: a Lightning module and data module over the split manifest."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection
from torchmetrics.classification import BinaryF1Score, BinaryJaccardIndex, BinaryPrecision, BinaryRecall

from .config import TrainConfig
from .dataset import Pair, load_example
from .errors import DatasetError
from .losses import build_loss
from .model import build_network
from .preprocessing import Preprocessing, check_image_size
from .run_layout import RunLayout, read_json, update_summary, write_json
from .stats import read_manifest


class ChipDataset(Dataset):
    """Normalised chips and float masks of one split, decoded once and kept in memory.

    Args:
        pairs: the split's pairs.
        prep: preprocessing from ``stats.json``.
        augment: random flips, 90-degree rotations (chip and mask alike) and brightness/contrast
            jitter (chip only).
        seed: seed of the augmentation generator.
        cache: keep decoded chips in memory (the default; a large dataset may turn it off).
    """

    def __init__(self, pairs: Sequence[Pair], prep: Preprocessing, augment: bool = False, seed: int = 0, cache: bool = True) -> None:
        self.pairs = list(pairs)
        self.prep = prep
        self.augment = augment
        self.rng = np.random.default_rng(seed)
        self.cache: dict[int, tuple[np.ndarray, np.ndarray]] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.pairs)

    def _raw(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        example = load_example(self.pairs[index], self.prep.image_size)
        if self.cache is not None:
            self.cache[index] = example
        return example

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        chip, mask = self._raw(index)
        chip = chip.astype(np.float32)
        if self.augment:
            chip, mask = self._augment(chip, mask)
        x = torch.from_numpy(np.ascontiguousarray(self.prep.normalize(chip)))
        y = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32))[None]
        return x, y

    def _augment(self, chip: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rng = self.rng
        if rng.random() < 0.5:
            chip, mask = chip[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            chip, mask = chip[:, ::-1, :], mask[::-1, :]
        k = int(rng.integers(4))
        chip, mask = np.rot90(chip, k, axes=(1, 2)), np.rot90(mask, k)
        contrast = rng.uniform(0.8, 1.2)
        brightness = rng.uniform(-0.1, 0.1) * self.prep.max_value
        mean = chip.mean(axis=(1, 2), keepdims=True)
        chip = np.clip((chip - mean) * contrast + mean + brightness, 0, self.prep.max_value)
        return chip, mask


class SegmentationTask(L.LightningModule):
    """Binary segmentation of camps: the network emits logits; metrics threshold probabilities.

    Args:
        config: the :class:`TrainConfig` as a dict (kept in the checkpoint's hyperparameters, so
            ``SegmentationTask.load_from_checkpoint`` rebuilds the model by itself).
        in_channels: input bands.
        threshold: probability threshold of the metrics.
    """

    def __init__(self, config: dict[str, Any], in_channels: int = 3, threshold: float = 0.5) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = TrainConfig.from_dict(config)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        # channels_last lets the CPU and GPU convolution kernels run their fastest layouts.
        self.network = build_network(self.config, self.hparams.in_channels).to(memory_format=torch.channels_last)

    def configure_losses(self) -> None:
        self.criterion = build_loss(self.config.loss)

    def configure_metrics(self) -> None:
        t = self.hparams.threshold
        metrics = MetricCollection(
            {
                "iou": BinaryJaccardIndex(threshold=t),
                "f1": BinaryF1Score(threshold=t),
                "precision": BinaryPrecision(threshold=t),
                "recall": BinaryRecall(threshold=t),
            }
        )
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=torch.channels_last))

    def _step(self, batch, stage: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics.update(torch.sigmoid(logits.float()), y.int())
        # Metric objects logged with on_epoch=True are computed and reset by Lightning at epoch end.
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        if stage == "train":
            self.log("lr", self.trainer.optimizers[0].param_groups[0]["lr"], on_step=False, on_epoch=True)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def configure_optimizers(self):
        c = self.config
        match c.optimizer:
            case "adam":
                optimizer = torch.optim.Adam(self.parameters(), lr=c.learning_rate)
            case "adamw":
                optimizer = torch.optim.AdamW(self.parameters(), lr=c.learning_rate, weight_decay=c.weight_decay)
            case "sgd":
                optimizer = torch.optim.SGD(
                    self.parameters(), lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay
                )
        match c.lr_schedule:
            case "none":
                return optimizer
            case "cosine":
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(c.epochs, 1))
                return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
            case "plateau":
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
                return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss"}}


class HistoryCallback(Callback):
    """Collect one row of epoch metrics (train/val loss and IoU, learning rate) per epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []
        self.started = time.time()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            row[key.removesuffix("_epoch")] = float(value)
        row["seconds"] = time.time() - self.started
        self.rows.append(row)


def _utc_iso(timestamp: float) -> str:
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat().replace("+00:00", "Z")


def _precision(config: TrainConfig) -> str:
    if config.precision != "auto":
        return config.precision if config.precision != "32" else "32-true"
    return "bf16-mixed" if torch.cuda.is_available() else "32-true"


def train(
    run_dir: Path,
    config: TrainConfig = TrainConfig(),
    data_dir: Path | None = None,
    callbacks: Sequence[Callback] = (),
    logger: Any = False,
    progress_bar: bool = True,
) -> dict:
    """Train on the run's train split, select the best epoch on val IoU, save the checkpoint.

    Args:
        run_dir: run folder holding ``stats.json`` and the manifest.
        config: hyperparameters.
        data_dir: where the dataset is now (default: where the statistics stage read it).
        callbacks: extra Lightning callbacks (e.g. for tracking).
        logger: a Lightning logger or False.
        progress_bar: show Lightning's progress bar.

    Returns:
        A summary: best epoch, best val IoU, epochs run, seconds, images per second.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.splits, stage="training")
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    check_image_size(prep.image_size, config.network_depth)
    pairs = read_manifest(layout, data_dir)
    by_split = {s: [p for p in pairs if p.split == s] for s in ("train", "val")}
    for split, members in by_split.items():
        if not members:
            raise DatasetError(f"{layout.splits}: the {split} split is empty; re-run the statistics stage")

    L.seed_everything(config.seed, workers=True)
    train_ds = ChipDataset(by_split["train"], prep, augment=config.augment, seed=config.seed)
    val_ds = ChipDataset(by_split["val"], prep)
    loaders = dict(num_workers=config.num_workers, persistent_workers=config.num_workers > 0)
    generator = torch.Generator().manual_seed(config.seed)
    train_loader = DataLoader(train_ds, batch_size=config.batch_size, shuffle=True, drop_last=len(train_ds) > config.batch_size, generator=generator, **loaders)
    val_loader = DataLoader(val_ds, batch_size=config.batch_size, **loaders)

    task = SegmentationTask(config.to_dict(), in_channels=len(prep.bands), threshold=prep.threshold)
    partial_dir = layout.checkpoint.parent / ".partial"
    shutil.rmtree(partial_dir, ignore_errors=True)
    checkpoint = ModelCheckpoint(dirpath=partial_dir, filename="best", monitor="val_iou", mode="max", save_top_k=1)
    history = HistoryCallback()
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="auto",
        devices=1,
        precision=_precision(config),
        callbacks=[checkpoint, EarlyStopping(monitor="val_iou", mode="max", patience=config.patience), history, *callbacks],
        logger=logger,
        deterministic="warn",
        enable_progress_bar=progress_bar,
        enable_model_summary=False,
        log_every_n_steps=1,
        num_sanity_val_steps=0,
    )
    started = time.time()
    trainer.fit(task, train_loader, val_loader)
    finished = time.time()
    seconds = finished - started
    if not checkpoint.best_model_path:
        raise RuntimeError("training produced no checkpoint (no validation epoch finished)")

    # Publish: the checkpoint, config and history appear only after a completed fit.
    Path(checkpoint.best_model_path).replace(layout.checkpoint)
    shutil.rmtree(partial_dir, ignore_errors=True)
    write_json(layout.config, config.to_dict())
    best_epoch = max(history.rows, key=lambda r: r.get("val_iou", -1))["epoch"] if history.rows else None
    result = {
        "best_epoch": best_epoch,
        "best_val_iou": float(checkpoint.best_model_score),
        "epochs_run": len(history.rows),
        "train_seconds": seconds,
        "train_images_per_second": len(train_ds) * len(history.rows) / seconds if seconds else None,
        "accelerator": "cuda" if torch.cuda.is_available() else "cpu",
        "precision": _precision(config),
    }
    write_json(layout.history, {"started_at": _utc_iso(started), "finished_at": _utc_iso(finished),
                                "epochs": history.rows, "summary": result})
    update_summary(layout, checkpoint=layout.checkpoint, train_config=layout.config, history=layout.history, best_val_iou=result["best_val_iou"])
    return result


def load_network(checkpoint: Path) -> torch.nn.Module:
    """The logits network of a checkpoint, in eval mode on the CPU."""
    task = SegmentationTask.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return task.network.to(memory_format=torch.contiguous_format).eval()
