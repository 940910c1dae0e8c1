"""Read chips and masks (PNG, JPEG, GeoTIFF) as (bands, H, W) arrays, keeping georeferencing."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.contracts.errors import DatasetError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
GEOTIFF_SUFFIXES = (".tif", ".tiff")


@dataclass(frozen=True)
class Raster:
    """Pixels of one file and, for a georeferenced GeoTIFF, its CRS and bounds."""

    pixels: np.ndarray  # (bands, H, W)
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None  # in ``crs``

    @property
    def bands(self) -> int:
        return self.pixels.shape[0]

    @property
    def size(self) -> tuple[int, int]:
        return self.pixels.shape[1], self.pixels.shape[2]

    def bounds_wgs84(self) -> tuple[float, float, float, float] | None:
        """Bounds (west, south, east, north) in EPSG:4326, or None when not georeferenced."""
        if self.crs is None or self.bounds is None:
            return None
        from rasterio.warp import transform_bounds

        return tuple(float(v) for v in transform_bounds(self.crs, "EPSG:4326", *self.bounds))


def read_raster(path: Path) -> Raster:
    """Decode an image completely; a missing, unreadable or truncated file raises DatasetError."""
    path = Path(path)
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            return _read_geotiff(path)
        with Image.open(path) as image:
            image.load()
            array = np.asarray(image)
    except DatasetError:
        raise
    except Exception as exc:  # PIL and rasterio raise many types for broken files
        raise DatasetError(f"{path}: unreadable or truncated image ({type(exc).__name__}: {exc})") from None
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    return Raster(np.ascontiguousarray(array))


def _read_geotiff(path: Path) -> Raster:
    import rasterio

    with rasterio.open(path) as src:
        pixels = src.read()
        georeferenced = src.crs is not None and not src.transform.is_identity
        crs = src.crs.to_string() if georeferenced else None
        bounds = tuple(src.bounds) if georeferenced else None
    return Raster(pixels, crs, bounds)


def resize_chip(chip: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of a (bands, H, W) chip to (bands, size, size), keeping its dtype."""
    if chip.shape[1:] == (size, size):
        return chip
    bands = [
        np.asarray(Image.fromarray(band.astype(np.float32), mode="F").resize((size, size), Image.BILINEAR))
        for band in chip
    ]
    out = np.stack(bands)
    if np.issubdtype(chip.dtype, np.integer):
        info = np.iinfo(chip.dtype)
        out = np.clip(np.rint(out), info.min, info.max)
    return out.astype(chip.dtype)


def resize_mask(mask: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (H, W) mask to (size, size)."""
    if mask.shape == (size, size):
        return mask
    return np.asarray(Image.fromarray(mask).resize((size, size), Image.NEAREST))
