"""Read chips and masks (PNG, JPEG, GeoTIFF) as (bands, H, W) arrays, keeping georeferencing.

Only regular files are read (a symlink is followed to one; a FIFO, a device, a dangling or looping
symlink is refused), and the header is read before the pixels: an image above the pixel limit
(:func:`max_pixels`, 64 megapixels unless ``CAMPSEG_MAX_PIXELS`` or the caller says otherwise) is
refused before anything is allocated. An alpha band (RGBA PNG, or a GeoTIFF band whose colour
interpretation is alpha) is split off into :attr:`Raster.alpha`; a GeoTIFF's nodata value is kept
in :attr:`Raster.nodata`.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from components.contracts.errors import DatasetError, ParameterError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
GEOTIFF_SUFFIXES = (".tif", ".tiff")
#: Lossy formats: fine for chips, refused for masks (compression smears the class edges).
LOSSY_SUFFIXES = (".jpg", ".jpeg")
#: Default bound on width x height of one image; ``CAMPSEG_MAX_PIXELS`` overrides it.
DEFAULT_MAX_PIXELS = 64_000_000
MAX_PIXELS_ENV = "CAMPSEG_MAX_PIXELS"
#: No chip or mask has more bands than this (RGB + alpha is 4); more means a broken or wrong file.
MAX_BANDS = 16


def max_pixels(value: int | None = None) -> int:
    """The pixel limit: ``value`` if given, else ``$CAMPSEG_MAX_PIXELS``, else 64 megapixels."""
    source = "max_pixels"
    if value is None:
        raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not raw:
            return DEFAULT_MAX_PIXELS
        source = MAX_PIXELS_ENV
        try:
            value = int(raw)
        except ValueError:
            raise ParameterError(f"{MAX_PIXELS_ENV}={raw!r}: not a whole number of pixels") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ParameterError(f"{source}={value!r}: must be a positive whole number of pixels")
    return value


@dataclass(frozen=True)
class Raster:
    """Pixels of one file and, for a georeferenced GeoTIFF, its CRS and bounds."""

    pixels: np.ndarray  # (bands, H, W), alpha band removed
    crs: str | None = None
    bounds: tuple[float, float, float, float] | None = None  # in ``crs``
    alpha: np.ndarray | None = None  # (H, W); 0 = no data
    nodata: float | None = None  # the GeoTIFF's nodata value

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


def shown(path: Path | str) -> str:
    """A path for a message: as is, or with undecodable bytes escaped (``\\xff``)."""
    text = str(path)
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return str(os.fsencode(text))[2:-1]


def check_regular_file(path: Path) -> None:
    """Raise DatasetError unless ``path`` is (a symlink to) a regular file; never blocks."""
    try:
        info = os.stat(path)  # follows symlinks; the kernel stops loops (ELOOP)
    except OSError as exc:
        link = os.path.islink(path)
        what = "a dangling or looping symlink" if link else "missing or inaccessible"
        raise DatasetError(f"{shown(path)}: {what} ({exc.strerror or type(exc).__name__})") from None
    if not stat.S_ISREG(info.st_mode):
        kind = ("a folder" if stat.S_ISDIR(info.st_mode) else "a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a device" if stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise DatasetError(f"{shown(path)}: is {kind}, not a regular image file")


def _check_header(path: Path, width: int, height: int, bands: int, limit: int) -> None:
    if width * height > limit:
        raise DatasetError(
            f"{shown(path)}: image is {width}x{height} = {width * height} pixels, above the limit of {limit} "
            f"(raise it with --max-pixels or {MAX_PIXELS_ENV}, or cut the image into chips)"
        )
    if bands > MAX_BANDS:
        raise DatasetError(f"{shown(path)}: image declares {bands} bands; at most {MAX_BANDS} are read")


def read_raster(path: Path, limit: int | None = None) -> Raster:
    """Decode an image completely; a missing, unreadable, truncated or oversized file raises DatasetError.

    ``limit``: largest width x height (default :func:`max_pixels`).
    """
    path = Path(path)
    limit = max_pixels(limit)
    check_regular_file(path)
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            return _read_geotiff(path, limit)
        with Image.open(path) as image:
            _check_header(path, image.size[0], image.size[1], len(image.getbands()), limit)
            image.load()
            alpha = None
            if image.mode in ("RGBA", "LA", "PA"):
                if image.mode == "PA":
                    image = image.convert("RGBA")
                alpha = np.asarray(image.getchannel("A"))
                image = image.convert("L" if image.mode == "LA" else "RGB")
            array = np.asarray(image)
    except DatasetError:
        raise
    except Exception as exc:  # PIL and rasterio raise many types for broken files
        raise DatasetError(f"{shown(path)}: unreadable or truncated image ({type(exc).__name__}: {exc})") from None
    if array.ndim == 2:
        array = array[None]
    else:
        array = np.moveaxis(array, -1, 0)
    return Raster(np.ascontiguousarray(array), alpha=alpha)


def _read_geotiff(path: Path, limit: int) -> Raster:
    import rasterio
    from rasterio.enums import ColorInterp

    with rasterio.open(path) as src:
        _check_header(path, src.width, src.height, src.count, limit)
        pixels = src.read()
        interp = list(src.colorinterp)
        georeferenced = src.crs is not None and not src.transform.is_identity
        crs = src.crs.to_string() if georeferenced else None
        bounds = tuple(src.bounds) if georeferenced else None
        nodata = None if src.nodata is None else float(src.nodata)
    alpha = None
    if len(interp) > 1 and interp[-1] == ColorInterp.alpha:
        alpha, pixels = pixels[-1], pixels[:-1]
    return Raster(np.ascontiguousarray(pixels), crs, bounds, alpha, nodata)


def image_shape(path: Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding the pixels."""
    path = Path(path)
    check_regular_file(path)
    try:
        if path.suffix.lower() in GEOTIFF_SUFFIXES:
            import rasterio

            with rasterio.open(path) as src:
                return src.height, src.width
        with Image.open(path) as image:
            return image.size[1], image.size[0]
    except Exception as exc:  # PIL and rasterio raise many types for broken files
        raise DatasetError(f"{shown(path)}: unreadable image ({type(exc).__name__}: {exc})") from None


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
