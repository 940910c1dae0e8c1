"""Find chip/mask pairs in a dataset folder and load them for training and evaluation."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from components.contracts.errors import DatasetError
from components.data.imagery import (
    IMAGE_SUFFIXES,
    Raster,
    read_raster,
    resize_chip,
    resize_mask,
)

CHIPS_DIR = "chips"
LABELS_DIR = "labels"
SPLITS = ("train", "val", "test")


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


def _images_by_stem(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    duplicates = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file() or path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if path.stem in found:
            duplicates.append(f"{found[path.stem].name} and {path.name}")
        found[path.stem] = path
    if duplicates:
        raise DatasetError(f"{folder}: several images share a stem: {'; '.join(duplicates)}")
    return found


def find_pairs(root: Path) -> list[Pair]:
    """Pair ``root/chips/X.*`` with ``root/labels/X.*``; every problem is named in one error."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder {root} does not exist or is not a folder")
    missing = [name for name in (CHIPS_DIR, LABELS_DIR) if not (root / name).is_dir()]
    if missing:
        raise DatasetError(f"dataset folder {root} lacks {' and '.join(d + '/' for d in missing)} (expected chips/ and labels/)")
    chips = _images_by_stem(root / CHIPS_DIR)
    masks = _images_by_stem(root / LABELS_DIR)
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
    shown = ", ".join(names[:limit])
    return shown + (f" … and {len(names) - limit} more" if len(names) > limit else "")


@dataclass(frozen=True)
class CheckedPair:
    """A decoded, validated pair: chip (3, H, W), binary mask (H, W), georeferencing if any."""

    chip: Raster
    mask: np.ndarray
    bounds_wgs84: tuple[float, float, float, float] | None


def read_pair(pair: Pair) -> CheckedPair:
    """Decode and validate one pair: 3-band chip, single-band mask of the same size."""
    chip = read_raster(Path(pair.chip))
    mask = read_raster(Path(pair.mask))
    if chip.bands != 3:
        raise DatasetError(f"{pair.chip}: chip has {chip.bands} band(s); expected 3 (RGB)")
    if mask.bands != 1:
        raise DatasetError(f"{pair.mask}: mask has {mask.bands} bands; expected a single band")
    if chip.size != mask.size:
        raise DatasetError(
            f"{pair.mask}: mask is {mask.size[0]}x{mask.size[1]} but chip {Path(pair.chip).name} is "
            f"{chip.size[0]}x{chip.size[1]} (height x width)"
        )
    bounds = chip.bounds_wgs84() or mask.bounds_wgs84()
    return CheckedPair(chip, (mask.pixels[0] > 0).astype(np.uint8), bounds)


def load_example(pair: Pair, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Chip (3, S, S) in its stored dtype and binary mask (S, S) uint8, resized to ``image_size``."""
    checked = read_pair(pair)
    return resize_chip(checked.chip.pixels, image_size), resize_mask(checked.mask, image_size)


def load_examples(pairs: Sequence[Pair], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack :func:`load_example` over ``pairs``: chips (N, 3, S, S) and masks (N, S, S)."""
    chips, masks = zip(*(load_example(p, image_size) for p in pairs))
    return np.stack(chips), np.stack(masks)
