"""Batched model input on the training device: normalisation and augmentation of raw chip batches.

The loaders hand over raw chips in their stored pixel type (uint8 for 8-bit imagery, a quarter of
float32's memory and copy time) and uint8 masks; :class:`BatchTransform` turns a batch into the
network's float input on whatever device the batch is on, in a few tensor operations per batch
instead of numpy work per chip. The numbers are those of
:meth:`~components.contracts.preprocessing.Preprocessing.normalize`.

The random draws are those of the per-chip numpy path this replaced: one seeded
``numpy.random.Generator`` draws, chip after chip in batch order, a horizontal flip, a vertical
flip, a quarter-turn count, a contrast and a brightness. A seed therefore augments exactly as
before (and alike on the CPU and on a GPU): moving the work onto the device changes no trained
model. This matters on small data: with the few optimizer steps of the 84-chip dev set, another
stream of draws alone moved one 4-epoch run's test IoU from 0.45 to 0.09 (``docs/training.md``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE


class BatchTransform:
    """Raw batch -> (normalised float chips, float masks), optionally augmented.

    Augmentation, per chip: a horizontal and a vertical flip (each with probability 1/2) and a
    rotation by 0, 90, 180 or 270 degrees, the same on chip and mask; contrast x U(0.8, 1.2) about
    the chip's band means and brightness + U(-0.1, 0.1) x ``max_value``, on the chip only, clipped
    to the raw range. No-data pixels (mask :data:`IGNORE`) enter as the training mean before
    augmentation and as 0 after normalisation, so they never carry an extreme value.

    Two optional, stronger augmentations (off by default, the ``TrainConfig`` recipe turns them on):
    a random crop keeping a share U(``crop_scale``, 1) of the chip's area, resized back to the
    chip's size (chip bilinear, mask nearest: labels stay 0, 1 or IGNORE), after the flips and
    turns; and a per-band gain x U(1 - ``color_jitter``, 1 + ``color_jitter``) before contrast and
    brightness. Their draws follow a chip's five base draws, and only when they are on, so a
    recipe without them draws (and trains) exactly as before.

    Args:
        prep: preprocessing from ``stats.json``.
        seed: seed of the augmentation draws.
        crop_scale: smallest kept share of the area of a random crop; 1: no crops.
        color_jitter: largest relative change of a band's gain; 0: none.
    """

    def __init__(self, prep: Preprocessing, seed: int = 0, crop_scale: float = 1.0, color_jitter: float = 0.0) -> None:
        self.prep = prep
        self.crop_scale, self.color_jitter = crop_scale, color_jitter
        low, high = prep.raw_range
        self._clip = (max(low, 0.0), high)
        self._scales: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self.reseed(seed)

    def reseed(self, seed: int) -> None:
        """Restart the augmentation draws from ``seed``."""
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def __getstate__(self) -> dict:
        # Plain data only (a spawned DDP rank gets a copy and reseeds): no generator, no tensors.
        return {"prep": self.prep, "seed": self.seed, "crop_scale": self.crop_scale, "color_jitter": self.color_jitter}

    def __setstate__(self, state: dict) -> None:
        self.__init__(**state)

    def _scale(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The bands' raw mean and std on ``device``, copied there once (a copy per batch waits for the GPU)."""
        if device not in self._scales:
            mean = torch.tensor(self.prep.raw_mean, dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(self.prep.raw_std, dtype=torch.float32).view(1, -1, 1, 1)
            self._scales[device] = (mean.to(device), std.to(device))
        return self._scales[device]

    def __call__(self, chips: torch.Tensor, masks: torch.Tensor, augment: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``chips`` (B, C, S, S) raw, ``masks`` (B, S, S) uint8 -> x (B, C, S, S) float32 and
        y (B, 1, S, S) float32 holding 0, 1 or IGNORE."""
        mean, std = self._scale(chips.device)
        x = chips.float()
        nodata = (masks == IGNORE).unsqueeze(1)
        x = torch.where(nodata, mean, x)  # also replaces NaN no-data of float chips
        if augment:
            draws = self.draw(x.shape[0])
            x, masks = self._geometric(x, masks, draws)
            if "crop_area" in draws:
                x, masks = self._crop(x, masks, draws)
            x = self._photometric(x, draws)
            nodata = (masks == IGNORE).unsqueeze(1)
        x = (x - mean) / std
        x = x.masked_fill(nodata, 0.0)
        return x, masks.unsqueeze(1).float()

    def draw(self, n: int) -> dict[str, np.ndarray]:
        """The next ``n`` chips' draws, chip after chip in the per-chip path's order: ``hflip``,
        ``vflip`` (bool), ``turns`` (0-3), ``contrast`` (x U(0.8, 1.2)) and ``brightness`` (raw units);
        then, when on, ``crop_area`` and the crop's centre ``crop_x``/``crop_y`` (U(-1, 1), a share of
        the room left) and the band ``gain`` (n, bands)."""
        rng = self.rng
        crops, bands = self.crop_scale < 1.0, len(self.prep.bands)
        kinds = [("hflip", bool), ("vflip", bool), ("turns", np.int64), ("contrast", float), ("brightness", float)]
        if crops:
            kinds += [("crop_area", float), ("crop_x", float), ("crop_y", float)]
        draws = {name: np.empty(n, dtype) for name, dtype in kinds}
        if self.color_jitter > 0:
            draws["gain"] = np.empty((n, bands))
        for i in range(n):  # a few scalars per chip: microseconds next to a training step
            draws["hflip"][i] = rng.random() < 0.5
            draws["vflip"][i] = rng.random() < 0.5
            draws["turns"][i] = rng.integers(4)
            draws["contrast"][i] = rng.uniform(0.8, 1.2)
            draws["brightness"][i] = rng.uniform(-0.1, 0.1) * self.prep.max_value
            if crops:
                draws["crop_area"][i] = rng.uniform(self.crop_scale, 1.0)
                draws["crop_x"][i], draws["crop_y"][i] = rng.uniform(-1.0, 1.0, 2)
            if "gain" in draws:
                draws["gain"][i] = rng.uniform(1 - self.color_jitter, 1 + self.color_jitter, bands)
        return draws

    @staticmethod
    def _on(values: np.ndarray, device: torch.device, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.from_numpy(values).to(device, non_blocking=True).view(shape)

    def _geometric(self, x: torch.Tensor, masks: torch.Tensor, draws: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        for dim, name in ((-1, "hflip"), (-2, "vflip")):  # horizontal, then vertical flips
            flip = torch.from_numpy(draws[name]).to(x.device, non_blocking=True)
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(dim), x)
            masks = torch.where(flip.view(-1, 1, 1), masks.flip(dim), masks)
        # Quarter turns grouped by k; the draws are on the CPU, so no device sync picks the groups.
        x, masks = x.clone(), masks.clone()
        for k in (1, 2, 3):
            picked = np.flatnonzero(draws["turns"] == k)
            if picked.size:
                index = torch.from_numpy(picked).to(x.device, non_blocking=True)
                x[index] = torch.rot90(x[index], k, dims=(-2, -1))
                masks[index] = torch.rot90(masks[index], k, dims=(-2, -1))
        return x, masks

    def _crop(self, x: torch.Tensor, masks: torch.Tensor, draws: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Random crops resized back to the chip's size, one affine sampling grid per chip."""
        side = np.sqrt(draws["crop_area"])
        theta = np.zeros((x.shape[0], 2, 3), np.float32)
        theta[:, 0, 0] = theta[:, 1, 1] = side
        theta[:, 0, 2] = draws["crop_x"] * (1 - side)
        theta[:, 1, 2] = draws["crop_y"] * (1 - side)
        grid = F.affine_grid(torch.from_numpy(theta).to(x.device, non_blocking=True), list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        labels = F.grid_sample(masks.unsqueeze(1).float(), grid, mode="nearest", padding_mode="border", align_corners=False)
        return x, labels.squeeze(1).round().to(masks.dtype)

    def _photometric(self, x: torch.Tensor, draws: dict[str, np.ndarray]) -> torch.Tensor:
        if "gain" in draws:
            x = x * torch.from_numpy(draws["gain"].astype(np.float32)).to(x.device, non_blocking=True).view(*x.shape[:2], 1, 1)
        contrast = self._on(draws["contrast"].astype(np.float32), x.device, (-1, 1, 1, 1))
        brightness = self._on(draws["brightness"].astype(np.float32), x.device, (-1, 1, 1, 1))
        band_mean = x.mean(dim=(2, 3), keepdim=True)
        return ((x - band_mean) * contrast + band_mean + brightness).clamp(*self._clip)
