"""Georeferenced scenes made on the fly: chips laid side by side into one GeoTIFF, with its labels."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np


def mosaic(tiles: Sequence[np.ndarray], columns: int) -> np.ndarray:
    """(C, rows*T, columns*T) from tiles (C, T, T) in row-major order (or (H, W) tiles -> (H', W'))."""
    rows = [np.concatenate(list(tiles[i:i + columns]), axis=-1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=-2)


def write_scene(path: Path, pixels: np.ndarray, *, crs: str = "EPSG:32651", origin: tuple[float, float] = (
        500_000.0, 1_550_000.0), resolution: float = 0.5, nodata: float | None = None) -> Path:
    """A north-up GeoTIFF of ``pixels`` (C, H, W) with its top-left corner at ``origin`` in ``crs``."""
    import rasterio
    from rasterio.transform import from_origin

    if pixels.ndim == 2:
        pixels = pixels[None]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    transform = from_origin(origin[0], origin[1], resolution, resolution)
    with rasterio.open(path, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=pixels.shape[0], dtype=pixels.dtype, crs=crs, transform=transform,
                       nodata=nodata) as dst:
        dst.write(pixels)
    return Path(path)
