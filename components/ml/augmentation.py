"""Batched model input on the training device: normalisation and augmentation of raw chip batches.

The loaders hand over raw chips in their stored pixel type (uint8 for 8-bit imagery, a quarter of
float32's memory and copy time) and uint8 masks; :class:`BatchTransform` turns a batch into the
network's float input on whatever device the batch is on, in a few tensor operations per batch
instead of numpy work per chip. The numbers are those of
:meth:`~components.contracts.preprocessing.Preprocessing.normalize`; the random draws come from a
seeded CPU generator, so a seed augments alike on the CPU and on a GPU.
"""

from __future__ import annotations

import torch

from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE


class BatchTransform:
    """Raw batch -> (normalised float chips, float masks), optionally augmented.

    Augmentation, per chip: a horizontal and a vertical flip (each with probability 1/2) and a
    rotation by 0, 90, 180 or 270 degrees, the same on chip and mask; contrast x U(0.8, 1.2) about
    the chip's band means and brightness + U(-0.1, 0.1) x ``max_value``, on the chip only, clipped
    to the raw range. No-data pixels (mask :data:`IGNORE`) enter as the training mean before
    augmentation and as 0 after normalisation, so they never carry an extreme value.

    Args:
        prep: preprocessing from ``stats.json``.
        seed: seed of the augmentation draws.
    """

    def __init__(self, prep: Preprocessing, seed: int = 0) -> None:
        self.prep = prep
        low, high = prep.raw_range
        self._clip = (max(low, 0.0), high)
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation draws from ``seed``."""
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)

    def __getstate__(self) -> dict:
        # Plain data only (a spawned DDP rank gets a copy and reseeds): no generator, no tensors.
        return {"prep": self.prep, "seed": self.seed}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["prep"], state["seed"])

    def _scale(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.prep.raw_mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(self.prep.raw_std, dtype=torch.float32).view(1, -1, 1, 1)
        return mean.to(device), std.to(device)

    def __call__(self, chips: torch.Tensor, masks: torch.Tensor, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``chips`` (B, C, S, S) raw, ``masks`` (B, S, S) uint8 -> x (B, C, S, S) float32 and
        y (B, 1, S, S) float32 holding 0, 1 or IGNORE."""
        mean, std = self._scale(chips.device)
        x = chips.float()
        nodata = (masks == IGNORE).unsqueeze(1)
        x = torch.where(nodata, mean, x)  # also replaces NaN no-data of float chips
        if augment:
            x, masks = self._geometric(x, masks)
            x = self._photometric(x)
            nodata = (masks == IGNORE).unsqueeze(1)
        x = (x - mean) / std
        x = x.masked_fill(nodata, 0.0)
        return x, masks.unsqueeze(1).float()

    def _draw(self, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, generator=self.generator).to(device, non_blocking=True)

    def _geometric(self, x: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        for dim in (-1, -2):  # horizontal, then vertical flips
            flip = self._draw(n, x.device) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(dim), x)
            masks = torch.where(flip.view(-1, 1, 1), masks.flip(dim), masks)
        # Quarter turns grouped by k; the draws stay on the CPU, so no device sync picks the groups.
        turns = torch.randint(4, (n,), generator=self.generator)
        x, masks = x.clone(), masks.clone()
        for k in (1, 2, 3):
            picked = (turns == k).nonzero().flatten()
            if picked.numel():
                index = picked.to(x.device, non_blocking=True)
                x[index] = torch.rot90(x[index], k, dims=(-2, -1))
                masks[index] = torch.rot90(masks[index], k, dims=(-2, -1))
        return x, masks

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        contrast = (0.8 + 0.4 * self._draw(n, x.device)).view(-1, 1, 1, 1)
        brightness = ((self._draw(n, x.device) * 0.2 - 0.1) * self.prep.max_value).view(-1, 1, 1, 1)
        band_mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - band_mean) * contrast + band_mean + brightness).clamp(*self._clip)
