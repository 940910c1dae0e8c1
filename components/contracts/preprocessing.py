"""The one definition of preprocessing, read from ``stats.json`` by every consumer.

Training, export parity, evaluation, the DLPK raster function (through the ``.emd``) and the STAC
item's ``mlm:input`` all derive their numbers from :class:`Preprocessing`, so they cannot drift.

The model input is ``(raw - mean * max_value) / (std * max_value)`` per band, where ``raw`` are the
pixel values as stored in the chips (0-255 for uint8) in the band order of ``bands``, as float32 in
NCHW layout. The exported models output probabilities in [0, 1]; a pixel is camp where the
probability is ``>= threshold``.

``dtype`` is the pixel type the model was trained on (``uint8``, ``uint16``, ``float32``...), and
``value_scaling`` says how the statistics stage chose ``max_value``: ``{"type": "max"}`` is the
dtype's maximum (255 for uint8, 65535 for uint16; 1.0 for float chips, taken as 0-1), and
``{"type": "percentile", "percentile": p}`` the p-th percentile of the training pixels (16-bit
imagery that uses only part of the range, e.g. 12-bit sensors). The scaling is linear either way:
no value is clipped, so the z-score on the raw scale (``raw_mean``/``raw_std``) is the whole story.

``nodata`` (or None): a pixel whose bands all equal it (NaN matches NaN) is no data; it is left out
of the statistics, the loss and the metrics, and :meth:`Preprocessing.normalize` sets it to 0 (the
training mean) so it never reaches the network as an extreme value. ``alpha``: the chips carried
an alpha band (RGBA); pixels with alpha 0 were treated as no data. ``class_name`` names the
foreground class (value 1; background is 0): ``camp`` by default, ``building`` for building
footprints. Figures, the STAC item's classes and the DLPK's ``Classes`` all read it from here.
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from components.contracts.errors import ParameterError

#: The foreground class's name when none is given.
DEFAULT_CLASS_NAME = "camp"
_CLASS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]{0,63}$")

#: Largest network input size: a 4096 x 4096 x 3 float32 batch of one is already 200 MB.
MAX_IMAGE_SIZE = 4096


#: Each encoder level halves the image; the size must divide by this factor for every depth used.
def check_image_size(image_size: int, depth: int, parameter: str = "image_size") -> None:
    """Raise ParameterError unless a network of ``depth`` poolings can take ``image_size``."""
    factor = 2**depth
    if not isinstance(image_size, int) or image_size < factor or image_size % factor:
        raise ParameterError(
            f"{parameter}={image_size!r}: the U-Net with depth {depth} needs a positive multiple "
            f"of {factor} (e.g. {max(factor, (int(image_size or 0) // factor) * factor or factor)})"
        )
    if image_size > MAX_IMAGE_SIZE:
        raise ParameterError(
            f"{parameter}={image_size!r}: at most {MAX_IMAGE_SIZE}; cut larger images into chips"
        )


def check_class_name(name: str, parameter: str = "class_name") -> str:
    """Return ``name`` when it can label the foreground class everywhere (files, legends, STAC, .emd)."""
    if not isinstance(name, str) or not _CLASS_NAME.match(name) or name.strip().lower() == "background":
        raise ParameterError(
            f"{parameter}={name!r}: name the foreground class with 1-64 letters, digits, spaces, '_' or "
            f"'-', starting with a letter or digit, and not 'background' (e.g. camp, building)"
        )
    return name


def _json_number(value: float | None) -> float | str | None:
    """A float for JSON: NaN and infinities as strings (``"nan"``), never a bare ``NaN``."""
    if value is None or math.isfinite(value):
        return value
    return str(value)


@dataclass(frozen=True)
class Preprocessing:
    """Input size, band order, scaling and decision threshold of a trained model."""

    image_size: int
    bands: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_value: float = 255.0
    threshold: float = 0.5
    dtype: str = "uint8"
    value_scaling: Mapping[str, Any] = field(default_factory=lambda: {"type": "max"})
    nodata: float | None = None
    alpha: bool = False
    class_name: str = DEFAULT_CLASS_NAME

    @property
    def raw_range(self) -> tuple[float, float]:
        """The range of raw values: the dtype's for integers, (0, max_value) for float chips."""
        kind = np.dtype(self.dtype)
        if np.issubdtype(kind, np.integer):
            info = np.iinfo(kind)
            return float(info.min), float(info.max)
        return 0.0, float(self.max_value)

    def nodata_pixels(self, raw: np.ndarray) -> np.ndarray | None:
        """Boolean (H, W) or (N, H, W): pixels whose bands all equal ``nodata``; None without nodata."""
        if self.nodata is None:
            return None
        raw = np.asarray(raw)
        hit = np.isnan(raw) if math.isnan(self.nodata) else raw == self.nodata
        return hit.all(axis=-3)

    @property
    def raw_mean(self) -> np.ndarray:
        """Per-band mean on the raw pixel scale (0-255 for uint8 chips)."""
        return np.asarray(self.mean, dtype=np.float64) * self.max_value

    @property
    def raw_std(self) -> np.ndarray:
        """Per-band standard deviation on the raw pixel scale."""
        return np.asarray(self.std, dtype=np.float64) * self.max_value

    def normalize(self, raw: np.ndarray) -> np.ndarray:
        """Scale raw pixels (C, H, W) or (N, C, H, W) to the model's float32 input.

        With ``nodata`` set, no-data pixels become 0 in every band (the training mean).
        """
        invalid = self.nodata_pixels(raw)
        raw = np.asarray(raw, dtype=np.float32)
        shape = (-1, 1, 1)
        mean = self.raw_mean.astype(np.float32).reshape(shape)
        std = self.raw_std.astype(np.float32).reshape(shape)
        if invalid is None:
            return ((raw - mean) / std).astype(np.float32)
        with np.errstate(invalid="ignore"):
            out = ((raw - mean) / std).astype(np.float32)
        return np.where(np.expand_dims(invalid, -3), np.float32(0), out).astype(np.float32)

    def classify(self, probabilities: np.ndarray) -> np.ndarray:
        """Turn model probabilities into a uint8 class map (1 ``class_name``, 0 background)."""
        return (np.asarray(probabilities) >= self.threshold).astype(np.uint8)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["bands"] = list(self.bands)
        out["mean"] = list(self.mean)
        out["std"] = list(self.std)
        out["value_scaling"] = dict(self.value_scaling)
        out["nodata"] = _json_number(self.nodata)
        return out

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any], dtype: str | None = None) -> "Preprocessing":
        """The block as ``to_dict`` writes it; older blocks without dtype/scaling/nodata still read
        (``dtype`` is the fallback pixel type, e.g. the top-level ``dtype`` of stats.json)."""
        max_value = float(payload.get("max_value", 255.0))
        nodata = payload.get("nodata")
        return cls(
            image_size=int(payload["image_size"]),
            bands=tuple(payload["bands"]),
            mean=tuple(float(v) for v in payload["mean"]),
            std=tuple(float(v) for v in payload["std"]),
            max_value=max_value,
            threshold=float(payload.get("threshold", 0.5)),
            dtype=str(np.dtype(payload.get("dtype") or dtype or ("uint8" if max_value == 255.0 else "float32"))),
            value_scaling=dict(payload.get("value_scaling") or {"type": "max"}),
            nodata=None if nodata is None else float(nodata),
            alpha=bool(payload.get("alpha", False)),
            class_name=str(payload.get("class_name") or DEFAULT_CLASS_NAME),
        )

    @classmethod
    def from_stats(cls, stats: Mapping[str, Any]) -> "Preprocessing":
        """Read the ``preprocessing`` block of a ``stats.json`` document."""
        return cls.from_dict(stats["preprocessing"], dtype=stats.get("dtype"))
