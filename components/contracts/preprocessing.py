"""The one definition of preprocessing, read from ``stats.json`` by every consumer.

Training, export parity, evaluation, the DLPK raster function (through the ``.emd``) and the STAC
item's ``mlm:input`` all derive their numbers from :class:`Preprocessing`, so they cannot drift.

The model input is ``(raw - mean * max_value) / (std * max_value)`` per band, where ``raw`` are the
pixel values as stored in the chips (0-255 for uint8) in the band order of ``bands``, as float32 in
NCHW layout. The exported models output probabilities in [0, 1]; a pixel is camp where the
probability is ``>= threshold``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

from components.contracts.errors import ParameterError


#: Each encoder level halves the image; the size must divide by this factor for every depth used.
def check_image_size(image_size: int, depth: int, parameter: str = "image_size") -> None:
    """Raise ParameterError unless a network of ``depth`` poolings can take ``image_size``."""
    factor = 2**depth
    if not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ParameterError(
            f"{parameter}={image_size!r}: the U-Net with depth {depth} needs a positive multiple "
            f"of {factor} (e.g. {max(factor, (int(image_size or 0) // factor) * factor or factor)})"
        )


@dataclass(frozen=True)
class Preprocessing:
    """Input size, band order, scaling and decision threshold of a trained model."""

    image_size: int
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_value: float = 255.0
    threshold: float = 0.5

    @property
    def raw_mean(self) -> np.ndarray:
        """Per-band mean on the raw pixel scale (0-255 for uint8 chips)."""
        return np.asarray(self.mean, dtype=np.float64) * self.max_value

    @property
    def raw_std(self) -> np.ndarray:
        """Per-band standard deviation on the raw pixel scale."""
        return np.asarray(self.std, dtype=np.float64) * self.max_value

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Scale raw pixels (C, H, W) or (N, C, H, W) to the model's float32 input."""
        raw = np.asarray(raw, dtype=np.float32)
        shape = (-1, 1, 1)
        mean = self.raw_mean.astype(np.float32).reshape(shape)
        std = self.raw_std.astype(np.float32).reshape(shape)
        return ((raw - mean) / std).astype(np.float32)

    def classify(self, probabilities: np.ndarray) -> np.ndarray:
        """Turn model probabilities into a uint8 class map (1 camp, 0 background)."""
        return (np.asarray(probabilities) >= self.threshold).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bands"] = list(self.bands)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> "Preprocessing":
        return cls(
            image_size=int(payload["image_size"]),
            bands=tuple(payload["bands"]),
            mean=tuple(float(v) for v in payload["mean"]),
            std=tuple(float(v) for v in payload["std"]),
            max_value=float(payload.get("max_value", 255.0)),
            threshold=float(payload.get("threshold", 0.5)),
        )

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> "Preprocessing":
        """Read the ``preprocessing`` block of a ``stats.json`` document."""
        return cls.from_dict(stats["preprocessing"])
