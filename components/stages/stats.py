"""Dataset statistics stage: validate every pair, split by ground, and stream the statistics.

One pass over the files with memory flat in the dataset's size (only running sums are kept, plus
one small manifest row per chip). ``stats.json`` is the one source of preprocessing.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from components.contracts.errors import DatasetError, ParameterError, RunFolderError
from components.contracts.lineage import dependents, file_digest, pairs_digest
from components.contracts.ownership import open_output, update_marker
from components.contracts.preprocessing import DEFAULT_CLASS_NAME, Preprocessing, check_class_name, check_image_size
from components.contracts.run_layout import RunLayout, artifact_present, read_json, update_summary, write_json
from components.data.imagery import max_pixels
from components.data.manifest import write_manifest
from components.data.pairs import SPLITS, Pair, find_pairs, read_pair
from components.data.scenes import bounds_gsd
from components.data.splits import SplitRatios, assign_splits, group_keys
from components.reporting.progress import ProgressLine, counted

log = logging.getLogger(__name__)

BAND_NAMES = ("red", "green", "blue")
#: 16-bit chips whose training pixels reach less than this share of the dtype's range at the
#: :data:`STRETCH_PERCENTILE` get a percentile stretch instead of the dtype maximum.
STRETCH_BELOW = 0.5
STRETCH_PERCENTILE = 99.9
#: Positive fractions of train and test further apart than this factor are warned about.
LOPSIDED_FACTOR = 10.0


@dataclass
class _Accumulator:
    """Running sums of one split (float64 keeps the sums exact enough for millions of chips).

    ``pixels`` counts labelled pixels with data (the denominator of the positive fraction),
    ``band_pixels`` the chip pixels with data that entered the band sums.
    """

    chips: int = 0
    pixels: int = 0
    positives: int = 0
    nodata: int = 0
    band_pixels: int = 0
    band_sum: np.ndarray | None = None
    band_sq_sum: np.ndarray | None = None
    histogram: np.ndarray | None = field(default=None, repr=False)

    def add(self, chip01: np.ndarray | None, mask: np.ndarray, valid: np.ndarray | None = None,
            chip_valid: np.ndarray | None = None, raw: np.ndarray | None = None) -> None:
        self.chips += 1
        if valid is None:
            self.pixels += mask.size
            self.positives += int(mask.sum())
        else:
            self.pixels += int(valid.sum())
            self.positives += int(mask[valid].sum())
            self.nodata += int(mask.size - valid.sum())
        if chip01 is not None:
            if chip_valid is None:
                flat = chip01.reshape(chip01.shape[0], -1)
            else:
                flat = chip01[:, chip_valid]
            self.band_pixels += flat.shape[1]
            s, sq = flat.sum(axis=1), np.square(flat).sum(axis=1)
            self.band_sum = s if self.band_sum is None else self.band_sum + s
            self.band_sq_sum = sq if self.band_sq_sum is None else self.band_sq_sum + sq
        if raw is not None:  # 16-bit: a histogram of the raw values with data, for the stretch
            values = raw.reshape(raw.shape[0], -1) if chip_valid is None else raw[:, chip_valid]
            counts = np.bincount(values.ravel(), minlength=65536)
            self.histogram = counts if self.histogram is None else self.histogram + counts

    def mean_std(self, scale: float = 1.0) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-band mean and standard deviation, times ``scale`` (a constant band gets std 1: no
        division by zero)."""
        mean = self.band_sum / self.band_pixels
        std = np.sqrt(np.maximum(self.band_sq_sum / self.band_pixels - mean**2, 0.0))
        if scale != 1.0:
            mean, std = mean * scale, std * scale
        std = np.where(std > 1e-6, std, 1.0)
        return tuple(mean.tolist()), tuple(std.tolist())

    @property
    def positive_fraction(self) -> float:
        return self.positives / self.pixels if self.pixels else 0.0


@dataclass
class _Survey:
    bounds: dict[str, tuple | None]
    dtype: np.dtype
    sizes: set[tuple[int, int]]
    nodata_values: set[float]
    alpha_chips: int
    gsd: list[tuple[float, int]]  # metres per pixel and width of each georeferenced chip as stored


def _survey(pairs: list[Pair], data_dir: Path, nodata: float | None, limit: int) -> _Survey:
    """Pass 1: decode every pair once; their bounds (needed for grouping), one dtype, their sizes.

    Every invalid file is named in one error.
    """
    bounds: dict[str, tuple | None] = {}
    dtypes, sizes, problems, nodata_values, alpha, gsd = set(), set(), [], set(), 0, []
    for pair in counted(pairs, ProgressLine("statistics: checking", unit="chips")):
        try:
            checked = read_pair(pair, nodata, limit)
        except DatasetError as exc:
            problems.append(str(exc))
            continue
        bounds[pair.stem] = checked.bounds_wgs84
        if checked.bounds_wgs84 is not None:
            height, width = checked.chip.size
            gsd.append((bounds_gsd(checked.bounds_wgs84, width, height), width))
        dtypes.add(checked.chip.pixels.dtype.str)
        sizes.add(checked.chip.size)
        if checked.chip.nodata is not None:
            nodata_values.add(checked.chip.nodata)
        alpha += checked.chip.alpha is not None
    if problems:
        raise DatasetError(f"{len(problems)} invalid file(s) in {data_dir}:\n  " + "\n  ".join(problems))
    if len(dtypes) > 1:
        raise DatasetError(f"{data_dir}/chips: chips mix data types {sorted(dtypes)}; use one type")
    dtype = np.dtype(dtypes.pop())
    if dtype == np.bool_ or not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise DatasetError(f"{data_dir}/chips: chips of type {dtype.name} are not imagery; use uint8, uint16 or float")
    return _Survey(bounds, dtype, sizes, nodata_values, alpha, gsd)


def _check_nodata(nodata: float | None, dtype: np.dtype) -> None:
    if nodata is None or not np.issubdtype(dtype, np.integer):
        return
    info = np.iinfo(dtype)
    if not (math.isfinite(nodata) and float(nodata).is_integer() and info.min <= nodata <= info.max):
        raise ParameterError(
            f"nodata={nodata!r}: cannot occur in {dtype.name} chips (whole numbers {info.min} to {info.max})"
        )


def _recorded_nodata(nodata: float | None, survey: _Survey, data_dir: Path) -> float | None:
    """The one nodata value of the preprocessing: the given one, else the chips' GeoTIFF value."""
    if nodata is not None:
        return float(nodata)
    values = survey.nodata_values
    if len({"nan" if math.isnan(v) else v for v in values}) > 1:
        raise DatasetError(
            f"{data_dir}/chips: the GeoTIFF chips declare different nodata values "
            f"{sorted(str(v) for v in values)}; pass --nodata with the one value to record"
        )
    return next(iter(values)) if values else None


def _accumulate(pairs: list[Pair], max_value: float, nodata: float | None = None, limit: int | None = None,
                histogram: bool = False) -> dict[str, _Accumulator]:
    """Pass 2: running sums per split; only train pixels (with data) enter the normalisation."""
    acc = {s: _Accumulator() for s in SPLITS}
    for pair in counted(pairs, ProgressLine("statistics: summing", unit="chips")):
        checked = read_pair(pair, nodata, limit)
        train = pair.split == "train"
        chip01 = checked.chip.pixels.astype(np.float64) / max_value if train else None
        plain = checked.chip_valid is None and checked.label_valid is None
        raw = checked.chip.pixels if train and histogram else None
        acc[pair.split].add(chip01, checked.mask, None if plain else checked.valid, checked.chip_valid, raw)
    return acc


def _max_value(dtype: np.dtype) -> float:
    if np.issubdtype(dtype, np.integer):
        return float(np.iinfo(dtype).max)
    return 1.0


def _scaling(dtype: np.dtype, train: _Accumulator) -> tuple[float, dict]:
    """``max_value`` and ``value_scaling``: the dtype maximum, or for 16-bit chips that use little
    of their range, the :data:`STRETCH_PERCENTILE` of the training pixels."""
    base = _max_value(dtype)
    if dtype != np.uint16 or train.histogram is None or not train.histogram.any():
        return base, {"type": "max"}
    cumulative = np.cumsum(train.histogram)
    value = float(np.searchsorted(cumulative, cumulative[-1] * STRETCH_PERCENTILE / 100.0))
    if value >= STRETCH_BELOW * base:
        return base, {"type": "max"}
    return max(value, 1.0), {"type": "percentile", "percentile": STRETCH_PERCENTILE}


def _balance(acc: dict[str, _Accumulator], data_dir: Path) -> list[str]:
    """Refuse a train split without a camp pixel; warn about lopsided val/test splits."""
    train = acc["train"]
    if train.positives == 0:
        raise DatasetError(
            f"{data_dir}/labels: no mask of the train split ({train.chips} chip(s)) has a camp pixel; "
            "the model cannot learn camps (are the masks empty, or all 0/255 the wrong way round?)"
        )
    warnings = []
    for split in ("val", "test"):
        if acc[split].chips and acc[split].positives == 0:
            warnings.append(
                f"the {split} split ({acc[split].chips} chip(s)) has no camp pixel: its IoU, F1, precision "
                "and recall will be 0 or undefined; change --seed or the split ratios, or add labelled chips"
            )
    tr, te = train.positive_fraction, acc["test"].positive_fraction
    if te > 0 and max(tr / te, te / tr) > LOPSIDED_FACTOR:
        warnings.append(
            f"camp pixels are {tr:.3%} of the train split but {te:.3%} of the test split (more than "
            f"{LOPSIDED_FACTOR:g}x apart): test metrics may not reflect training; change --seed or the split ratios"
        )
    return warnings


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
    nodata: float | None = None,
    max_pixels_per_image: int | None = None,
    class_name: str = DEFAULT_CLASS_NAME,
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
        nodata: chip value meaning "no data" (a pixel whose bands all equal it), besides the
            GeoTIFFs' own nodata value and alpha 0; recorded in the preprocessing.
        max_pixels_per_image: largest width x height of one image (default ``CAMPSEG_MAX_PIXELS``
            or 64 megapixels).
        class_name: name of the foreground class (value 1), e.g. ``camp`` or ``building``;
            recorded in the preprocessing for the figures, the STAC item and the DLPK.

    Returns:
        The statistics document.

    Raises:
        DatasetError: a file is unusable (named), or the train split has no camp pixel.
        ParameterError: a parameter is out of range.
        RunFolderError: ``run_dir`` is not ours to write (a non-empty folder without the run
            marker, a file, the dataset or inside it), another stage is writing it, or it holds
            artifacts built from other statistics (nothing is written).
    """
    if image_size is not None:
        check_image_size(image_size, network_depth)
    if not 0 < threshold < 1:
        raise ParameterError(f"threshold={threshold!r}: must lie strictly between 0 and 1")
    check_class_name(class_name)
    if nodata is not None and (isinstance(nodata, bool) or not isinstance(nodata, (int, float))
                               or math.isinf(nodata)):
        raise ParameterError(f"nodata={nodata!r}: must be a number (or nan)")
    limit = max_pixels(max_pixels_per_image)
    data_dir = Path(data_dir)
    layout = RunLayout(Path(run_dir))
    with open_output(layout.root, "stats", data_dir=data_dir):
        stats, pairs = _measure(data_dir, image_size, network_depth, ratios, seed, threshold, dataset_uri,
                                fingerprint, group_zoom, nodata, limit, class_name)
        return _publish(layout, data_dir, pairs, stats)


def _measure(data_dir: Path, image_size: int | None, network_depth: int, ratios: SplitRatios, seed: int,
             threshold: float, dataset_uri: str | None, fingerprint: str | None, group_zoom: int | None,
             nodata: float | None, limit: int, class_name: str = DEFAULT_CLASS_NAME) -> tuple[dict, list[Pair]]:
    """Both passes over the dataset: the statistics document and the pairs with group and split."""
    pairs = find_pairs(data_dir)

    survey = _survey(pairs, data_dir, nodata, limit)
    dtype, sizes, bounds = survey.dtype, survey.sizes, survey.bounds
    _check_nodata(nodata, dtype)
    recorded_nodata = _recorded_nodata(nodata, survey, data_dir)
    _check_nodata(recorded_nodata, dtype)
    if image_size is None:
        image_size = _common_size(sizes, data_dir)
        check_image_size(image_size, network_depth, parameter=f"image_size (the chips' size in {data_dir})")

    group_of = group_keys([p.stem for p in pairs], bounds, group_zoom)
    split_of, repairs = assign_splits(group_of, ratios, seed)
    pairs = [Pair(p.stem, p.chip, p.mask, group_of[p.stem], split_of[p.stem]) for p in pairs]

    base = _max_value(dtype)
    acc = _accumulate(pairs, base, nodata, limit, histogram=dtype == np.uint16)
    warnings = _balance(acc, data_dir)
    if acc["train"].band_pixels == 0:
        raise DatasetError(f"{data_dir}/chips: every pixel of the train split is no data")
    max_value, value_scaling = _scaling(dtype, acc["train"])
    mean, std = acc["train"].mean_std(base / max_value)
    prep = Preprocessing(image_size, BAND_NAMES, mean, std, max_value, threshold, dtype=dtype.name,
                         value_scaling=value_scaling, nodata=recorded_nodata, alpha=survey.alpha_chips > 0,
                         class_name=class_name)
    for warning in warnings:
        log.warning("warning: %s", warning)

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
        "positive_fraction": {s: acc[s].positive_fraction for s in SPLITS},
        "nodata_pixels": {s: acc[s].nodata for s in SPLITS},
        "split_ratios": ratios.as_dict(),
        "split_repairs": repairs,
        "seed": seed,
        "footprint": footprint,
        "footprint_reason": reason,
        "ground_sampling_distance_m": _gsd_summary([g * w / image_size for g, w in survey.gsd]),
        "warnings": warnings,
    }
    return stats, pairs


def _publish(layout: RunLayout, data_dir: Path, pairs: list[Pair], stats: dict) -> dict:
    """Write the manifest and ``stats.json`` (with the manifest's digest) into the run folder.

    Re-running with the same result rewrites the same bytes. Different statistics are refused
    when the folder holds artifacts built from the old ones: they would no longer belong to it.
    """
    staging = Path(tempfile.mkdtemp(prefix=".statistics.", suffix=".partial", dir=layout.root))
    try:
        staged = RunLayout(staging)
        write_manifest(staged, data_dir, pairs)
        stats = {**stats, "lineage": {"manifest": pairs_digest(read_json(staged.splits))}}
        write_json(staged.stats, stats)
        digest = file_digest(staged.stats)
        if layout.stats.exists() and file_digest(layout.stats) != digest:
            built = [name for name in dependents("statistics") if artifact_present(layout, name)]
            if built:
                raise RunFolderError(
                    f"{layout.root}: holds {', '.join(built)} built from other statistics "
                    f"({file_digest(layout.stats)[:19]}…); these statistics ({digest[:19]}…) would not "
                    "belong to them. Nothing was written: run the statistics stage into a new folder"
                )
            layout.stats.unlink()  # the old statistics go first: a manifest never pairs with them
        os.replace(staged.splits, layout.splits)
        os.replace(staged.stats, layout.stats)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    update_marker(layout.root, statistics=digest, fingerprint=stats.get("fingerprint"))
    update_summary(layout, stats=layout.stats)
    return stats


def _common_size(sizes: set[tuple[int, int]], data_dir: Path) -> int:
    if len(sizes) == 1 and (size := next(iter(sizes)))[0] == size[1]:
        return size[0]
    raise ParameterError(
        f"image_size is not set and the chips in {data_dir} are not all one square size "
        f"({sorted(sizes)[:5]}): pass an image size to resize them to"
    )


def _gsd_summary(values: list[float]) -> dict | None:
    """Metres per pixel of the georeferenced chips as the model sees them (after any resize to the
    image size): min, median, max; None when no chip is georeferenced."""
    if not values:
        return None
    return {"min": round(min(values), 5), "median": round(float(np.median(values)), 5),
            "max": round(max(values), 5), "chips": len(values)}


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


