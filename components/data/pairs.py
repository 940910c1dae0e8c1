"""Find chip/mask pairs in a dataset folder and load them for training and evaluation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from components.contracts.errors import DatasetError
from components.data.imagery import (
    IMAGE_SUFFIXES,
    LOSSY_SUFFIXES,
    Raster,
    check_regular_file,
    read_raster,
    resize_chip,
    resize_mask,
    shown,
)

CHIPS_DIR = "chips"
LABELS_DIR = "labels"
SPLITS = ("train", "val", "test")
#: Mask value of a pixel without a usable label or image (no data): left out of loss and metrics.
IGNORE = 255


@dataclass(frozen=True)
class Pair:
    """One chip and its mask, paired by file stem; ``split`` and ``group`` set by the split step."""

    stem: str
    chip: str
    mask: str
    group: str = ""
    split: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def _images_by_stem(folder: Path, masks: bool = False) -> dict[str, Path]:
    """Regular image files by stem (symlinks followed); every unusable entry named in one error.

    Entries without a known image extension and hidden ones are ignored. A known extension on a
    non-UTF-8 name, a FIFO, a device, a folder, a dangling or looping symlink, or (for masks) a
    lossy JPEG is refused.
    """
    found: dict[str, Path] = {}
    duplicates, problems = [], []
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DatasetError(f"{shown(folder)}: cannot list the folder ({exc.strerror or exc})") from None
    for path in entries:
        if path.name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            problems.append(f"{shown(path)}: file name is not valid UTF-8; rename it")
            continue
        if masks and path.suffix.lower() in LOSSY_SUFFIXES:
            problems.append(
                f"{path}: JPEG masks are refused: lossy compression changes class values at every "
                "edge (camp pixels come out wrong); save masks as PNG or GeoTIFF"
            )
            continue
        try:
            check_regular_file(path)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        if path.stem in found:
            duplicates.append(f"{found[path.stem].name} and {path.name}")
        found[path.stem] = path
    if duplicates:
        problems.append(f"{folder}: several images share a stem: {'; '.join(duplicates)}")
    if problems:
        raise DatasetError(f"{len(problems)} unusable entr{'y' if len(problems) == 1 else 'ies'} in {folder}:\n  "
                           + "\n  ".join(problems))
    return found


def find_pairs(root: Path) -> list[Pair]:
    """Pair ``root/chips/X.*`` with ``root/labels/X.*``; every problem is named in one error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    missing = [name for name in (CHIPS_DIR, LABELS_DIR) if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"dataset folder {root} lacks {' and '.join(d + '/' for d in missing)} (expected chips/ and labels/)")
    found, errors = [], []
    for name in (CHIPS_DIR, LABELS_DIR):
        try:
            found.append(_images_by_stem(root / name, masks=name == LABELS_DIR))
        except DatasetError as exc:
            errors.append(str(exc))
    if errors:
        raise DatasetError("\n".join(errors))
    chips, masks = found
    if not chips and not masks:
        raise DatasetError(f"dataset folder {root} is empty: no PNG, JPEG or GeoTIFF in chips/ or labels/")
    problems = []
    if lonely := sorted(set(chips) - set(masks)):
        problems.append(f"{len(lonely)} chip(s) without a mask in labels/: {_listing(chips[s].name for s in lonely)}")
    if lonely := sorted(set(masks) - set(chips)):
        problems.append(f"{len(lonely)} mask(s) without a chip in chips/: {_listing(masks[s].name for s in lonely)}")
    if problems:
        raise DatasetError(f"dataset folder {root}: " + "; ".join(problems))
    return [Pair(stem, str(chips[stem]), str(masks[stem])) for stem in sorted(chips)]


def _listing(names: Iterable[str], limit: int = 20) -> str:
    names = list(names)
    text = ", ".join(names[:limit])
    return text + (f" … and {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class CheckedPair:
    """A decoded, validated pair: chip (3, H, W), binary mask (H, W), validity, georeferencing if any.

    ``chip_valid`` is False where the chip has no data (alpha 0, or every band equal to the
    GeoTIFF's or the given nodata value); ``label_valid`` where the mask has none (its alpha 0 or
    its GeoTIFF nodata value). The mask is 0 at invalid pixels.
    """

    chip: Raster
    mask: np.ndarray
    bounds_wgs84: tuple[float, float, float, float] | None
    chip_valid: np.ndarray | None = None
    label_valid: np.ndarray | None = None

    @property
    def valid(self) -> np.ndarray:
        """Pixels that count: image and label both present (H, W) bool."""
        valid = np.ones(self.mask.shape, dtype=bool)
        for part in (self.chip_valid, self.label_valid):
            if part is not None:
                valid &= part
        return valid


def _equals(pixels: np.ndarray, value: float) -> np.ndarray:
    return np.isnan(pixels) if np.isnan(value) else pixels == value


def _chip_valid(chip: Raster, nodata: float | None) -> np.ndarray | None:
    valid = None if chip.alpha is None else chip.alpha > 0
    for value in {v for v in (chip.nodata, nodata) if v is not None}:
        if not np.issubdtype(chip.pixels.dtype, np.floating) and not float(value).is_integer():
            continue  # a fractional nodata cannot occur in integer pixels
        hit = _equals(chip.pixels, value).all(axis=0)
        valid = ~hit if valid is None else valid & ~hit
    return valid


def _label_valid(mask: Raster) -> np.ndarray | None:
    valid = None if mask.alpha is None else mask.alpha > 0
    if mask.nodata is not None:
        hit = _equals(mask.pixels[0], mask.nodata)
        valid = ~hit if valid is None else valid & ~hit
    return valid


def _check_finite(path: str, pixels: np.ndarray, valid: np.ndarray | None, what: str) -> None:
    if not np.issubdtype(pixels.dtype, np.floating):
        return
    bad = ~np.isfinite(pixels).all(axis=0)
    if valid is not None:
        bad &= valid
    if bad.any():
        raise DatasetError(
            f"{shown(path)}: {int(bad.sum())} {what} pixel(s) are NaN or infinite and not marked as no data "
            "(set the GeoTIFF's nodata value, or pass --nodata)"
        )


def read_pair(pair: Pair, nodata: float | None = None, limit: int | None = None) -> CheckedPair:
    """Decode and validate one pair: 3-band chip (RGB, or RGBA with alpha), single-band mask of the
    same size, finite values wherever there is data.

    ``nodata``: a chip pixel whose bands all equal it is no data (besides the GeoTIFF's own nodata
    value and alpha 0). ``limit``: the largest width x height read (see ``imagery.max_pixels``).
    """
    chip = read_raster(Path(pair.chip), limit)
    mask = read_raster(Path(pair.mask), limit)
    if chip.bands != 3:
        raise DatasetError(f"{shown(pair.chip)}: chip has {chip.bands} band(s); expected 3 (RGB) or 4 (RGBA)")
    if mask.bands != 1:
        raise DatasetError(f"{shown(pair.mask)}: mask has {mask.bands} bands; expected a single band")
    if chip.size != mask.size:
        raise DatasetError(
            f"{shown(pair.mask)}: mask is {mask.size[0]}x{mask.size[1]} but chip {shown(Path(pair.chip).name)} is "
            f"{chip.size[0]}x{chip.size[1]} (height x width)"
        )
    chip_valid, label_valid = _chip_valid(chip, nodata), _label_valid(mask)
    _check_finite(pair.chip, chip.pixels, chip_valid, "chip")
    _check_finite(pair.mask, mask.pixels, label_valid, "mask")
    bounds = chip.bounds_wgs84() or mask.bounds_wgs84()
    with np.errstate(invalid="ignore"):
        binary = mask.pixels[0] > 0
    if label_valid is not None:
        binary &= label_valid
    return CheckedPair(chip, binary.astype(np.uint8), bounds, chip_valid, label_valid)


def load_example(pair: Pair, image_size: int, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Chip (3, S, S) in its stored dtype and mask (S, S) uint8, resized to ``image_size``.

    The mask is 1 (camp), 0 (background) or :data:`IGNORE` (no data: leave out of loss and
    metrics). With ``nodata`` (``preprocessing.nodata``), chip pixels without data hold exactly
    that value in every band, so ``Preprocessing.normalize`` sets them to 0. Before a resize,
    no-data chip pixels are filled with the chip's band means, so no extreme value or NaN bleeds
    into its neighbours.
    """
    checked = read_pair(pair, nodata)
    chip, mask = checked.chip.pixels, checked.mask
    chip_valid, valid = checked.chip_valid, checked.valid
    if chip_valid is not None and not chip_valid.all():
        chip = chip.copy()
        if chip.shape[1:] != (image_size, image_size):
            with np.errstate(invalid="ignore"):
                fill = (chip[:, chip_valid].astype(np.float64).mean(axis=1) if chip_valid.any()
                        else np.zeros(chip.shape[0]))
            if np.issubdtype(chip.dtype, np.integer):
                fill = np.rint(fill)
            chip[:, ~chip_valid] = fill.astype(chip.dtype)[:, None]
            chip = resize_chip(chip, image_size)
            chip_valid = resize_mask(chip_valid.astype(np.uint8), image_size).astype(bool)
        if nodata is not None:
            chip[:, ~chip_valid] = nodata
    else:
        chip = resize_chip(chip, image_size)
    mask = resize_mask(mask, image_size)
    if not valid.all():
        mask = np.where(resize_mask(valid.astype(np.uint8), image_size) > 0, mask, IGNORE).astype(np.uint8)
    return chip, mask


def load_examples(pairs: Sequence[Pair], image_size: int, nodata: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Stack :func:`load_example` over ``pairs``: chips (N, 3, S, S) and masks (N, S, S)."""
    chips, masks = zip(*(load_example(p, image_size, nodata) for p in pairs))
    return np.stack(chips), np.stack(masks)
