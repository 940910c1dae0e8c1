"""The Lightning task: the chip dataset, the segmentation module, the epoch history, checkpoint loading."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MetricCollection

from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE, Pair, load_example
from components.ml.augmentation import BatchTransform
from components.ml.chip_cache import ChipArrays, memory_budget
from components.ml.losses import build_loss
from components.ml.metrics import EpochListener, epoch_row, metric_collection
from components.ml.networks import build_network


class ChipDataset(Dataset):
    """Raw chips and uint8 masks of one split, decoded once, up front, and kept in memory, or
    memory-mapped on the scratch disk when they exceed ``budget`` (:mod:`components.ml.chip_cache`).

    Chips stay in their stored pixel type (uint8 for 8-bit imagery: a quarter of float32's memory
    and copy time; other integer types as int32, float chips as float32); normalisation and
    augmentation run batched on the training device (:class:`~components.ml.augmentation.BatchTransform`,
    applied by :class:`SegmentationTask`).

    Args:
        pairs: the split's pairs.
        prep: preprocessing from ``stats.json`` (image size and no-data value).
        budget: bytes the split may keep in memory; None: :func:`~components.ml.chip_cache.memory_budget`
            (``$CAMPSEG_CHIP_CACHE_BYTES``, else a share of the available memory).
    """

    def __init__(self, pairs: Sequence[Pair], prep: Preprocessing, budget: int | None = None) -> None:
        self.pairs = list(pairs)
        size, bands = prep.image_size, len(prep.bands)
        self.store = ChipArrays(len(self.pairs), bands, size, _storage_dtype(prep.dtype),
                                memory_budget() if budget is None else budget)
        for i, pair in enumerate(self.pairs):
            self.store.chips[i], self.store.masks[i] = load_example(pair, size, prep.nodata)
        self.store.finish()

    @property
    def chips(self) -> np.ndarray:
        return self.store.chips

    @property
    def masks(self) -> np.ndarray:
        return self.store.masks

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw chip (C, S, S) and mask (S, S): 0, 1 or IGNORE (no data)."""
        chip, mask = self.store.item(index)
        return torch.from_numpy(chip), torch.from_numpy(mask)


def _storage_dtype(dtype: str) -> type:
    kind = np.dtype(dtype)
    if kind == np.uint8:
        return np.uint8
    return np.int32 if np.issubdtype(kind, np.integer) else np.float32


class SegmentationTask(L.LightningModule):
    """Binary segmentation of camps: the network emits logits; metrics threshold probabilities.

    Args:
        config: the :class:`TrainConfig` as a dict (kept in the checkpoint's hyperparameters, so
            ``SegmentationTask.load_from_checkpoint`` rebuilds the model by itself).
        in_channels: input bands.
        threshold: probability threshold of the metrics.
        preprocessing: :meth:`Preprocessing.to_dict`; with it, batches arrive raw (as
            :class:`ChipDataset` gives them) and are normalised, and augmented in training, on the
            device after the transfer. Without it, batches must be model input already.
    """

    def __init__(self, config: dict[str, Any], in_channels: int = 3, threshold: float = 0.5,
                 preprocessing: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.config = TrainConfig.from_dict(config)
        self.transform = None if preprocessing is None else BatchTransform(
            Preprocessing.from_dict(preprocessing), self.config.seed, self.config.crop_scale, self.config.color_jitter)
        self.configure_models()
        self.configure_losses()
        self.configure_metrics()

    def configure_models(self) -> None:
        self.network = build_network(self.config, self.hparams.in_channels)
        if self.config.channels_last:  # the CPU and GPU convolution kernels' fastest layout
            self.network = self.network.to(memory_format=torch.channels_last)
        self.ema = None
        if self.config.ema_decay > 0:  # the weights' moving average, in the checkpoint beside the network
            self.ema = AveragedModel(self.network, multi_avg_fn=get_ema_multi_avg_fn(self.config.ema_decay),
                                     use_buffers=True)
            self.ema.requires_grad_(False)

    @property
    def inference_network(self) -> torch.nn.Module:
        """The network that validates, tests and is exported: the moving average when there is one."""
        return self.ema.module if self.ema is not None else self.network

    def configure_losses(self) -> None:
        self.criterion = build_loss(self.config.loss, self.config.dice_weight)

    def configure_metrics(self) -> None:
        # No-data pixels are masked inside the update, and the values need no checks: no step waits for the GPU.
        metrics = metric_collection(self.hparams.threshold, ignore_index=IGNORE, validate_args=False)
        self.train_metrics = metrics.clone(prefix="train_")
        self.val_metrics = metrics.clone(prefix="val_")
        self.test_metrics = metrics.clone(prefix="test_")

    def on_fit_start(self) -> None:
        if self.transform is not None:  # each DDP rank draws its own augmentation
            self.transform.reseed(self.config.seed + self.global_rank)
        if self.config.compile:  # kept out of the module tree: the checkpoint holds the plain network
            self.__dict__["_compiled"] = torch.compile(self.network)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        if self.transform is None:
            return batch
        chips, masks = batch
        augment = self.config.augment and self._trainer is not None and self.trainer.training
        return self.transform(chips, masks, augment=augment)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.config.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if not self.training and self.ema is not None:
            return self.ema.module(x)
        return self.__dict__.get("_compiled", self.network)(x)

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        if self.ema is not None:  # DDP keeps the ranks' networks equal, so their averages stay equal too
            self.ema.update_parameters(self.network)

    def _step(self, batch, stage: str, metrics: MetricCollection) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = self.criterion(logits, y)
        metrics.update(torch.sigmoid(logits.float()), y.int())  # no-data pixels (IGNORE) count in no metric
        # Metric objects logged with on_epoch=True are computed and reset by Lightning at epoch end;
        # under DDP torchmetrics sums their states over the ranks first, so every rank (and so early
        # stopping and the checkpoint's monitor) sees the metric of the whole split. Losses are
        # reduced to the batch-size-weighted mean over the ranks.
        distributed = self._trainer is not None and self.trainer.world_size > 1
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val", batch_size=x.shape[0])
        self.log(f"{stage}_loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=True,
                 batch_size=x.shape[0], sync_dist=distributed)
        if stage == "train":  # a tensor filled on the device: a Python float would be copied there, a wait per step
            lr = torch.full((), self.trainer.optimizers[0].param_groups[0]["lr"], device=loss.device)
            self.log("lr", lr, on_step=False, on_epoch=True, batch_size=x.shape[0])
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train", self.train_metrics)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val", self.val_metrics)

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test", self.test_metrics)

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of the network's parameters (the weight average has none), without its schedule."""
        c = self.config
        params = self.network.parameters()
        match c.optimizer:
            case "adam":
                return torch.optim.Adam(params, lr=c.learning_rate)
            case "adamw":
                return torch.optim.AdamW(params, lr=c.learning_rate, weight_decay=c.weight_decay)
            case "sgd":
                return torch.optim.SGD(params, lr=c.learning_rate, momentum=c.momentum, weight_decay=c.weight_decay)

    def configure_optimizers(self):
        c = self.config
        optimizer = self.build_optimizer()
        if c.warmup_epochs > 0 and c.lr_schedule != "plateau":
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self._warmup_schedule(optimizer),
                                                             "interval": "step"}}
        match c.lr_schedule:
            case "none":
                return optimizer
            case "cosine":
                scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(c.epochs, 1))
                return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}
            case "plateau":
                scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=0.5, patience=2)
                plateau = {"scheduler": scheduler, "monitor": "val_loss"}
                warmup = self._warmup_steps() if c.warmup_epochs > 0 else 1
                if warmup == 1:
                    return {"optimizer": optimizer, "lr_scheduler": plateau}
                # LinearLR scales the current rate (chainable), so the plateau's reductions stand after the warm-up.
                rise = torch.optim.lr_scheduler.LinearLR(optimizer, 1 / warmup, 1.0, total_iters=warmup - 1)
                return [optimizer], [{"scheduler": rise, "interval": "step"}, plateau]

    def _warmup_steps(self) -> int:
        """Optimizer steps of ``warmup_epochs`` (at least 1, at most all of them)."""
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return min(max(round(total * self.config.warmup_epochs / max(self.config.epochs, 1)), 1), total)

    def _warmup_schedule(self, optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_factor(total, self._warmup_steps(),
                                                                          self.config.lr_schedule))


def warmup_factor(total: int, warmup: int, schedule: str) -> Callable[[int], float]:
    """The learning rate's factor at each step: a linear rise over ``warmup`` steps, then a cosine
    down to 0 at step ``total`` (``schedule="cosine"``) or a constant 1 (``"none"``)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "none":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total - warmup) / max(total - warmup, 1)))

    return factor


class ChipDataModule(L.LightningDataModule):
    """The train and validation loaders, built in each training process.

    Under DDP Lightning shards the train split with a ``DistributedSampler``; the validation split
    is sharded here without padding (``UnrepeatedDistributedSampler``), so no chip is counted twice
    and the synced validation metrics are those of the whole split.

    Args:
        train: the train split (shuffled with ``seed``).
        val: the validation split.
        batch_size: chips per batch and device.
        num_workers: loader worker processes per device.
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
        seed: seed of the shuffling.
    """

    def __init__(self, train: Dataset, val: Dataset, batch_size: int, num_workers: int = 0,
                 pin_memory: bool = False, seed: int = 0) -> None:
        super().__init__()
        self.train, self.val = train, val
        self.batch_size, self.seed = batch_size, seed
        self.loader_options = dict(num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def train_dataloader(self) -> DataLoader:
        world_size, _ = self._ranks()
        generator = torch.Generator().manual_seed(self.seed)
        shard = len(self.train) // world_size
        return DataLoader(self.train, batch_size=self.batch_size, shuffle=True, drop_last=shard > self.batch_size,
                          generator=generator, **self.loader_options)

    def val_dataloader(self) -> DataLoader:
        world_size, rank = self._ranks()
        sampler = None
        if world_size > 1:
            sampler = UnrepeatedDistributedSampler(self.val, num_replicas=world_size, rank=rank, shuffle=False)
        return DataLoader(self.val, batch_size=self.batch_size, sampler=sampler, **self.loader_options)


class HistoryCallback(Callback):
    """Collect one row of epoch metrics (losses, metrics, learning rate) per epoch, on rank 0.

    Each row also goes to every ``listener`` (:class:`~components.ml.metrics.EpochListener`), which
    is how a tracker sees training live without depending on Lightning. At the end of the fit the
    rows are written to ``spool`` (JSON), which is how they leave a spawned DDP process; other
    ranks neither notify nor write.
    """

    def __init__(self, spool: Path, listeners: Sequence[EpochListener] = ()) -> None:
        self.spool = Path(spool)
        self.rows: list[dict[str, float]] = []
        self.listeners = list(listeners)
        self.started = time.time()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            for listener in self.listeners:
                listener.fit_started()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        row = epoch_row(trainer.current_epoch, trainer.callback_metrics, time.time() - self.started)
        self.rows.append(row)
        for listener in self.listeners:
            listener.epoch_ended(row)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        self.spool.write_text(json.dumps(self.rows))
        for listener in self.listeners:
            listener.fit_ended(self.rows)

    def collected(self) -> list[dict[str, float]]:
        """The rows rank 0 wrote (read back in the launching process after the fit)."""
        return json.loads(self.spool.read_text()) if self.spool.exists() else []


def load_network(checkpoint: Path) -> torch.nn.Module:
    """The logits network of a checkpoint (its moving average, where training kept one), in eval mode on the CPU."""
    task = SegmentationTask.load_from_checkpoint(str(checkpoint), map_location="cpu")
    return task.inference_network.to(memory_format=torch.contiguous_format).eval()
