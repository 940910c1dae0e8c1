"""Dataset statistics stage: validate every pair, split by ground, and stream the statistics.

One pass over the files with memory flat in the dataset's size (only running sums are kept, plus
one small manifest row per chip). ``stats.json`` is the one source of preprocessing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from components.contracts.errors import DatasetError, ParameterError
from components.contracts.preprocessing import Preprocessing, check_image_size
from components.contracts.run_layout import RunLayout, update_summary, write_json
from components.data.manifest import write_manifest
from components.data.pairs import SPLITS, Pair, find_pairs, read_pair
from components.data.splits import SplitRatios, assign_splits, group_keys

BAND_NAMES = ("red", "green", "blue")


@dataclass
class _Accumulator:
    """Running sums of one split (float64 keeps the sums exact enough for millions of chips)."""

    chips: int = 0
    pixels: int = 0
    positives: int = 0
    band_sum: np.ndarray | None = None
    band_sq_sum: np.ndarray | None = None

    def add(self, chip01: np.ndarray | None, mask: np.ndarray) -> None:
        self.chips += 1
        self.pixels += mask.size
        self.positives += int(mask.sum())
        if chip01 is not None:
            flat = chip01.reshape(chip01.shape[0], -1)
            s, sq = flat.sum(axis=1), np.square(flat).sum(axis=1)
            self.band_sum = s if self.band_sum is None else self.band_sum + s
            self.band_sq_sum = sq if self.band_sq_sum is None else self.band_sq_sum + sq


    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and standard deviation (a constant band gets std 1: no division by zero)."""
        mean = self.band_sum / self.pixels
        std = np.sqrt(np.maximum(self.band_sq_sum / self.pixels - mean**2, 0.0))
        std = np.where(std > 1e-6, std, 1.0)
        return tuple(mean.tolist()), tuple(std.tolist())


def _survey(pairs: list[Pair], data_dir: Path) -> tuple[dict[str, tuple | None], np.dtype, set[tuple[int, int]]]:
    """Pass 1: decode every pair once; their bounds (needed for grouping), one dtype, their sizes.

    Every invalid file is named in one error.
    """
    bounds: dict[str, tuple | None] = {}
    dtypes, sizes, problems = set(), set(), []
    for pair in pairs:
        try:
            checked = read_pair(pair)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        bounds[pair.stem] = checked.bounds_wgs84
        dtypes.add(checked.chip.pixels.dtype.str)
        sizes.add(checked.chip.size)
    if problems:
        raise DatasetError(f"{len(problems)} invalid file(s) in {data_dir}:\n  " + "\n  ".join(problems))
    if len(dtypes) > 1:
        raise DatasetError(f"{data_dir}/chips: chips mix data types {sorted(dtypes)}; use one type")
    return bounds, np.dtype(dtypes.pop()), sizes


def _accumulate(pairs: list[Pair], max_value: float) -> dict[str, _Accumulator]:
    """Pass 2: running sums per split; only train pixels enter the normalisation."""
    acc = {s: _Accumulator() for s in SPLITS}
    for pair in pairs:
        checked = read_pair(pair)
        chip01 = checked.chip.pixels.astype(np.float64) / max_value if pair.split == "train" else None
        acc[pair.split].add(chip01, checked.mask)
    return acc


def _max_value(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def compute_statistics(
    data_dir: Path,
    run_dir: Path,
    image_size: int | None = None,
    network_depth: int = 4,
    ratios: SplitRatios = SplitRatios(),
    seed: int = 42,
    threshold: float = 0.5,
    dataset_uri: str | None = None,
    fingerprint: str | None = None,
    group_zoom: int | None = None,
) -> dict:
    """Validate ``data_dir``, split it and write ``stats.json`` and the manifest into ``run_dir``.

    Args:
        data_dir: local folder with ``chips/`` and ``labels/``.
        run_dir: run folder to write into.
        image_size: network input size; chips of another size are resized to it. Default: the
            chips' own size, when all chips share one square size.
        network_depth: poolings of the network; ``image_size`` must divide by ``2**depth``.
        ratios: train/val/test fractions of the groups.
        seed: seed of the split hash.
        threshold: probability at or above which a pixel is camp; recorded for every consumer.
        dataset_uri: where the data came from (defaults to ``data_dir``).
        fingerprint: content fingerprint of the dataset, recorded for caching and lineage.
        group_zoom: zoom at which XYZ tiles are grouped (default: coarsest present).

    Returns:
        The statistics document.
    """
    if image_size is not None:
        check_image_size(image_size, network_depth)
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold={threshold!r}: must lie strictly between 0 and 1")
    data_dir = Path(data_dir)
    pairs = find_pairs(data_dir)

    bounds, dtype, sizes = _survey(pairs, data_dir)
    if image_size is None:
        image_size = _common_size(sizes, data_dir)
        check_image_size(image_size, network_depth, parameter=f"image_size (the chips' size in {data_dir})")

    group_of = group_keys([p.stem for p in pairs], bounds, group_zoom)
    split_of, repairs = assign_splits(group_of, ratios, seed)
    pairs = [Pair(p.stem, p.chip, p.mask, group_of[p.stem], split_of[p.stem]) for p in pairs]

    max_value = _max_value(dtype)
    acc = _accumulate(pairs, max_value)
    mean, std = acc["train"].mean_std()
    prep = Preprocessing(image_size, BAND_NAMES, mean, std, max_value, threshold)

    footprint, reason = _footprint([b for b in bounds.values() if b is not None])
    stats = {
        "dataset_uri": dataset_uri or str(data_dir),
        "fingerprint": fingerprint,
        "preprocessing": prep.to_dict(),
        "dtype": dtype.name,
        "source_sizes": sorted([list(s) for s in sizes]),
        "num_chips": len(pairs),
        "counts": {s: acc[s].chips for s in SPLITS},
        "groups": {s: len({p.group for p in pairs if p.split == s}) for s in SPLITS},
        "positive_fraction": {s: acc[s].positives / acc[s].pixels for s in SPLITS},
        "split_ratios": ratios.as_dict(),
        "split_repairs": repairs,
        "seed": seed,
        "footprint": footprint,
        "footprint_reason": reason,
    }
    layout = RunLayout(Path(run_dir))
    write_manifest(layout, data_dir, pairs)
    write_json(layout.stats, stats)
    update_summary(layout, stats=layout.stats)
    return stats


def _common_size(sizes: set[tuple[int, int]], data_dir: Path) -> int:
    if len(sizes) == 1 and (size := next(iter(sizes)))[0] == size[1]:
        return size[0]
    raise ParameterError(
        f"image_size is not set and the chips in {data_dir} are not all one square size "
        f"({sorted(sizes)[:5]}): pass an image size to resize them to"
    )


def _footprint(boxes: list[tuple]) -> tuple[dict | None, str | None]:
    if not boxes:
        return None, "no chip or mask is georeferenced, so the training data has no known footprint"
    w = min(b[0] for b in boxes)
    s = min(b[1] for b in boxes)
    e = max(b[2] for b in boxes)
    n = max(b[3] for b in boxes)
    ring = [[w, s], [e, s], [e, n], [w, n], [w, s]]
    return {"crs": "EPSG:4326", "bbox": [w, s, e, n], "geometry": {"type": "Polygon", "coordinates": [ring]},
            "georeferenced_chips": len(boxes)}, None


