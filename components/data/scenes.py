"""Whole scenes for prediction: find them, read them strip by strip, write outputs on their grid as COGs.

A scene is a georeferenced GeoTIFF (or COG) of any size. :class:`SceneReader` reads rows of it
through rasterio windows (optionally through a :class:`~rasterio.vrt.WarpedVRT` at another
resolution), with the pixels' validity from the dataset mask (nodata value, alpha band, internal
mask). :class:`GridWriter` writes a uint8 band on exactly a scene's grid, row strip by row strip, to
a tiled GeoTIFF that :func:`finish_cog` turns into a Cloud-Optimized GeoTIFF with overviews (GDAL's
COG driver); :func:`cog_problems` validates one with rio-cogeo. GDAL's block cache is capped
(:data:`GDAL_CACHE_MB`) so memory does not grow with the scene.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from components.contracts.errors import DatasetError
from components.data.imagery import GEOTIFF_SUFFIXES, check_regular_file, shown

#: GDAL block cache in MB while predicting (its default, 5% of RAM, would grow with the scene).
GDAL_CACHE_MB = 64
#: Internal tile size of the output COGs.
COG_BLOCK = 256
NODATA_OUT = 255


def list_scenes(path: Path) -> list[Path]:
    """``path`` itself (a GeoTIFF) or the GeoTIFFs directly in the folder ``path``, sorted."""
    path = Path(path)
    if path.is_dir():
        scenes = sorted(p for p in path.iterdir() if p.suffix.lower() in GEOTIFF_SUFFIXES and p.is_file())
        if not scenes:
            raise DatasetError(f"{shown(path)}: no GeoTIFF scenes (*.tif, *.tiff) in this folder")
        return scenes
    check_regular_file(path)
    if path.suffix.lower() not in GEOTIFF_SUFFIXES:
        raise DatasetError(f"{shown(path)}: not a GeoTIFF (.tif/.tiff); a scene must be georeferenced")
    return [path]


def ground_sampling_distance(crs: Any, transform: Any, width: int, height: int) -> float:
    """Metres on the ground of one pixel at the scene's centre (the mean of its two sides)."""
    from pyproj import Geod
    from rasterio.warp import transform as warp_points

    col, row = width / 2, height / 2
    xs, ys = zip(*(transform * (c, r) for c, r in ((col, row), (col + 1, row), (col, row + 1))))
    lons, lats = warp_points(crs, "EPSG:4326", list(xs), list(ys))
    geod = Geod(ellps="WGS84")
    _, _, dx = geod.inv(lons[0], lats[0], lons[1], lats[1])
    _, _, dy = geod.inv(lons[0], lats[0], lons[2], lats[2])
    return float((dx + dy) / 2)


def bounds_gsd(bounds_wgs84: tuple[float, float, float, float], width: int, height: int) -> float:
    """Metres per pixel of a north-up image of ``width`` x ``height`` covering ``bounds_wgs84``."""
    from pyproj import Geod

    w, s, e, n = bounds_wgs84
    mid = (s + n) / 2
    geod = Geod(ellps="WGS84")
    _, _, across = geod.inv(w, mid, e, mid)
    _, _, down = geod.inv((w + e) / 2, s, (w + e) / 2, n)
    return float((across / width + down / height) / 2)


def pixel_areas(crs: Any, transform: Any, row0: int, row1: int, col: float) -> np.ndarray:
    """Ground area in m² (WGS 84 ellipsoid) of one pixel in each row ``row0 .. row1 - 1`` at column ``col``.

    Exact where the pixel area depends on the row only (geographic and Web Mercator grids); a
    projected grid's area varies by far less than a percent across a scene.
    """
    from pyproj import Geod
    from rasterio.warp import transform as warp_points

    rows = np.arange(row0, row1 + 1, dtype=np.float64)
    left = [transform * (col, r) for r in rows]
    right = [transform * (col + 1, r) for r in rows]
    xs = [p[0] for p in left] + [p[0] for p in right]
    ys = [p[1] for p in left] + [p[1] for p in right]
    lons, lats = warp_points(crs, "EPSG:4326", xs, ys)
    n = len(rows)
    geod = Geod(ellps="WGS84")
    out = np.empty(n - 1, np.float64)
    for i in range(n - 1):
        ring_lon = [lons[i], lons[n + i], lons[n + i + 1], lons[i + 1]]
        ring_lat = [lats[i], lats[n + i], lats[n + i + 1], lats[i + 1]]
        out[i] = abs(geod.polygon_area_perimeter(ring_lon, ring_lat)[0])
    return out


@dataclass(frozen=True)
class SceneGrid:
    """The grid outputs are written on: CRS, transform and size."""

    crs: Any
    transform: Any
    width: int
    height: int

    @property
    def gsd_m(self) -> float:
        return ground_sampling_distance(self.crs, self.transform, self.width, self.height)

    def footprint_wgs84(self) -> tuple[float, float, float, float]:
        """(west, south, east, north) of the grid in EPSG:4326."""
        from rasterio.transform import array_bounds
        from rasterio.warp import transform_bounds

        west, south, east, north = array_bounds(self.height, self.width, self.transform)
        return tuple(float(v) for v in transform_bounds(self.crs, "EPSG:4326", west, south, east, north))


class SceneReader:
    """Rows of a scene's image bands and their validity, read through rasterio windows.

    Args:
        path: the GeoTIFF.
        bands: how many image bands the model takes (an alpha band is not counted).
        dtype: the pixel type the model was trained on.
        resolution: when given, the scene is read through a WarpedVRT (bilinear) at this pixel
            size in the scene's CRS units.
    """

    def __init__(self, path: Path, bands: int, dtype: str, resolution: float | None = None) -> None:
        import rasterio
        from rasterio.enums import ColorInterp

        self.path = Path(path)
        self._src = rasterio.open(self.path)
        src = self._src
        try:
            if src.crs is None or src.transform.is_identity:
                raise DatasetError(f"{shown(path)}: not georeferenced (no CRS or geotransform); "
                                   "the outputs could not be placed on the ground")
            interp = list(src.colorinterp)
            self.indexes = [i + 1 for i, c in enumerate(interp) if c != ColorInterp.alpha]
            if len(self.indexes) != bands:
                raise DatasetError(f"{shown(path)}: has {len(self.indexes)} image band(s), the model takes {bands}")
            if np.dtype(src.dtypes[self.indexes[0] - 1]) != np.dtype(dtype):
                raise DatasetError(f"{shown(path)}: pixels are {src.dtypes[0]}, the model was trained on {dtype} "
                                   "chips (its value scaling would not apply)")
            self.grid = SceneGrid(src.crs, src.transform, src.width, src.height)
            self.dataset = src
            if resolution is not None:
                from rasterio.enums import Resampling
                from rasterio.vrt import WarpedVRT

                left, bottom, right, top = src.bounds
                width = max(1, round((right - left) / resolution))
                height = max(1, round((top - bottom) / resolution))
                transform = rasterio.transform.from_bounds(left, bottom, right, top, width, height)
                self.dataset = WarpedVRT(src, crs=src.crs, transform=transform, width=width, height=height,
                                         resampling=Resampling.bilinear)
                self.grid = SceneGrid(src.crs, transform, width, height)
        except Exception:
            self._src.close()
            raise

    @property
    def source_grid(self) -> SceneGrid:
        src = self._src
        return SceneGrid(src.crs, src.transform, src.width, src.height)

    def read(self, row0: int, row1: int) -> tuple[np.ndarray, np.ndarray]:
        """Image bands (C, row1 - row0, W) and valid pixels (row1 - row0, W) of rows ``row0 .. row1``."""
        from rasterio.windows import Window

        window = Window(0, row0, self.grid.width, row1 - row0)
        raw = self.dataset.read(self.indexes, window=window)
        valid = self.dataset.dataset_mask(window=window) > 0
        return raw, valid

    def source_valid(self, row0: int, row1: int) -> np.ndarray:
        """Valid pixels of rows ``row0 .. row1`` of the scene itself (not resampled)."""
        from rasterio.windows import Window

        return self._src.dataset_mask(window=Window(0, row0, self._src.width, row1 - row0)) > 0

    def close(self) -> None:
        if self.dataset is not self._src:
            self.dataset.close()
        self._src.close()

    def __enter__(self) -> "SceneReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class GridWriter:
    """A single-band uint8 tiled GeoTIFF on ``grid`` with nodata 255, written row strip by row strip."""

    def __init__(self, path: Path, grid: SceneGrid) -> None:
        import rasterio

        self.path = Path(path)
        self._dst = rasterio.open(
            self.path, "w", driver="GTiff", width=grid.width, height=grid.height, count=1, dtype="uint8",
            crs=grid.crs, transform=grid.transform, nodata=NODATA_OUT, tiled=True, blockxsize=COG_BLOCK,
            blockysize=COG_BLOCK, compress="deflate", BIGTIFF="IF_SAFER",
        )

    def write(self, row0: int, values: np.ndarray) -> None:
        from rasterio.windows import Window

        self._dst.write(values[None], window=Window(0, row0, values.shape[1], values.shape[0]))

    def close(self) -> None:
        self._dst.close()


def finish_cog(tiled: Path, cog: Path, resampling: str) -> None:
    """Copy the tiled GeoTIFF ``tiled`` to the COG ``cog`` (deflate, overviews with ``resampling``)."""
    import rasterio.shutil

    rasterio.shutil.copy(tiled, cog, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=str(COG_BLOCK),
                         OVERVIEWS="AUTO", OVERVIEW_RESAMPLING=resampling.upper(), BIGTIFF="IF_SAFER")


def cog_problems(path: Path) -> list[str]:
    """rio-cogeo's errors for ``path`` (empty when it is a valid Cloud-Optimized GeoTIFF)."""
    from rio_cogeo.cogeo import cog_validate

    valid, errors, _warnings = cog_validate(str(path), quiet=True)
    return [] if valid else list(errors) or ["not a valid COG"]


def overview_levels(path: Path) -> list[int]:
    """The overview factors of band 1 of ``path``."""
    import rasterio

    with rasterio.open(path) as src:
        return list(src.overviews(1))


def gdal_env():
    """A rasterio environment with the block cache capped (see :data:`GDAL_CACHE_MB`)."""
    import rasterio

    return rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB)


def resolution_ratio(scene_gsd: float, training: tuple[float, float]) -> float | None:
    """How far ``scene_gsd`` lies outside the training range ``(min, max)`` as a factor (None inside).

    Within 25% of the range counts as inside: resampled chips and zoom rounding differ that much.
    """
    low, high = training
    if low / 1.25 <= scene_gsd <= high * 1.25:
        return None
    return scene_gsd / high if scene_gsd > high else low / scene_gsd if scene_gsd > 0 else math.inf
