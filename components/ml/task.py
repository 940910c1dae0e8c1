"""The Lightning task: the chip dataset, the segmentation module, the epoch history, checkpoint loading."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import Dataset
from torchmetrics import MetricCollection

from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE, Pair, load_example
from components.ml.losses import build_loss
from components.ml.metrics import EpochListener, epoch_row, metric_collection
from components.ml.networks import build_network


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
        example = load_example(self.pairs[index], self.prep.image_size, self.prep.nodata)
        if self.cache is not None:
            self.cache[index] = example
        return example

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised chip (C, S, S) and float mask (1, S, S): 0, 1 or IGNORE (no data).

        No-data pixels enter the network as 0 (the training mean), whatever their raw value.
        """
        chip, mask = self._raw(index)
        chip = chip.astype(np.float32)
        nodata = mask == IGNORE
        if nodata.any():  # a neutral value, so augmentation and normalisation never see NaN
            chip[:, nodata] = self.prep.raw_mean.astype(np.float32)[:, None]
        if self.augment:
            chip, mask = self._augment(chip, mask)
        x = self.prep.normalize(chip)
        if nodata.any():
            x[:, mask == IGNORE] = 0.0
        x = torch.from_numpy(np.ascontiguousarray(x))
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
        low, high = self.prep.raw_range
        chip = np.clip((chip - mean) * contrast + mean + brightness, max(low, 0.0), high)
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
        metrics = metric_collection(self.hparams.threshold)
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x.contiguous(memory_format=torch.channels_last))

    def _step(self, batch, stage: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        probs, target = torch.sigmoid(logits.float()), y.int()
        valid = target != IGNORE
        if not bool(valid.all()):  # no-data pixels count in no metric
            probs, target = probs[valid], target[valid]
        if target.numel():
            metrics.update(probs, target)
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
    """Collect one row of epoch metrics (losses, metrics, learning rate) per epoch.

    Each row also goes to every ``listener`` (:class:`~components.ml.metrics.EpochListener`), which
    is how a tracker sees training live without depending on Lightning.
    """

    def __init__(self, listeners: Sequence[EpochListener] = ()) -> None:
        self.rows: list[dict[str, float]] = []
        self.listeners = list(listeners)
        self.started = time.time()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for listener in self.listeners:
            listener.fit_started()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        row = epoch_row(trainer.current_epoch, trainer.callback_metrics, time.time() - self.started)
        self.rows.append(row)
        for listener in self.listeners:
            listener.epoch_ended(row)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for listener in self.listeners:
            listener.fit_ended(self.rows)


def load_network(checkpoint: Path) -> torch.nn.Module:
    """The logits network of a checkpoint, in eval mode on the CPU."""
    task = SegmentationTask.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return task.network.to(memory_format=torch.contiguous_format).eval()
