"""Property: whatever small dataset a user brings, the statistics stage either refuses it with an
error that names a file or parameter and writes nothing, or writes a consistent run.

Random datasets: 1-4 bands, uint8/uint16/float32, sizes, GeoTIFF nodata, NaN pixels, a user nodata
value, odd (but UTF-8) names, empty masks.
"""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from components.contracts.errors import DatasetError, ParameterError
from components.stages.stats import compute_statistics

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")

PARAMETERS = ("image_size", "nodata", "max_pixels", "threshold", "ratio")


@st.composite
def datasets(draw):
    n = draw(st.integers(3, 6))
    dtype = draw(st.sampled_from(["uint8", "uint16", "float32"]))
    bands = draw(st.sampled_from([3, 3, 3, 3, 4, 4, 1, 2]))  # bands 1-4, mostly usable
    sizes = [draw(st.sampled_from([16, 32]))] * n if draw(st.sampled_from([True, True, False])) else \
        [draw(st.sampled_from([12, 16, 32])) for _ in range(n)]
    image_size = draw(st.sampled_from([None, None, 16]))
    file_nodata = draw(st.sampled_from([None, 0.0] + (["nan"] if dtype == "float32" else [])))
    user_nodata = draw(st.sampled_from([None, None, 0.0, 255.0]))
    nan_chip = draw(st.sampled_from([None] + (list(range(n)) if dtype == "float32" else [])))
    nodata_area = draw(st.booleans())
    positives = draw(st.sampled_from([0.3, 0.3, 0.05, 0.0]))
    prefix = draw(st.text(alphabet="abcé ü-_.()ß漢", min_size=0, max_size=5))
    seed = draw(st.integers(0, 2**16))
    return dict(n=n, dtype=dtype, bands=bands, sizes=sizes, file_nodata=file_nodata, user_nodata=user_nodata,
                nan_chip=nan_chip, nodata_area=nodata_area, positives=positives, prefix=prefix, seed=seed,
                image_size=image_size)


def write(root: Path, spec: dict) -> Path:
    import rasterio

    rng = np.random.default_rng(spec["seed"])
    (root / "chips").mkdir(parents=True)
    (root / "labels").mkdir()
    dtype = np.dtype(spec["dtype"])
    high = {"uint8": 256, "uint16": 4096}.get(spec["dtype"], 1)
    nodata = spec["file_nodata"]
    nodata = float("nan") if nodata == "nan" else nodata
    for i, size in enumerate(spec["sizes"]):
        stem = f"c{spec['prefix']}{i}x"
        if dtype.kind == "f":
            chip = rng.random((spec["bands"], size, size), dtype=np.float32)
        else:
            chip = rng.integers(0, high, (spec["bands"], size, size)).astype(dtype)
        if spec["nodata_area"] and nodata is not None:
            chip[:, : size // 4] = nodata
        if spec["bands"] == 4:  # the 4th band is alpha, transparent in one corner
            chip[3] = np.iinfo(dtype).max if dtype.kind == "u" else 1.0
            chip[3, :4, :4] = 0
        if spec["nan_chip"] == i:
            chip[0, size // 2, size // 2] = np.nan
        mask = (rng.random((size, size)) < spec["positives"]).astype(np.uint8)
        if spec["dtype"] == "uint8" and nodata is None and spec["bands"] in (1, 3, 4):
            array = chip[0] if spec["bands"] == 1 else np.moveaxis(chip, 0, -1)
            Image.fromarray(array).save(root / "chips" / f"{stem}.png")
        else:
            with rasterio.open(root / "chips" / f"{stem}.tif", "w", driver="GTiff", width=size, height=size,
                               count=spec["bands"], dtype=dtype.name, nodata=nodata) as dst:
                dst.write(chip)
                if spec["bands"] == 4:
                    from rasterio.enums import ColorInterp

                    dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
        Image.fromarray(mask * 255).save(root / "labels" / f"{stem}.png")
    return root


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=datasets())
def test_statistics_refuse_clearly_or_stay_consistent(spec):
    with tempfile.TemporaryDirectory() as tmp:
        data = write(Path(tmp) / "data", spec)
        run = Path(tmp) / "run"
        try:
            stats = compute_statistics(data, run, image_size=spec["image_size"], network_depth=2,
                                       nodata=spec["user_nodata"])
        except (DatasetError, ParameterError) as exc:
            message = str(exc)
            assert str(data) in message or any(p in message for p in PARAMETERS), message
            assert not (run / "stats.json").exists() and not (run / "dataset_manifest.json").exists()
            return
        written = json.loads((run / "stats.json").read_text(),
                             parse_constant=lambda c: pytest.fail(f"bare {c} in stats.json"))
        assert written == stats
        prep = stats["preprocessing"]
        assert all(math.isfinite(v) for v in prep["mean"] + prep["std"]) and all(v > 0 for v in prep["std"])
        assert sum(stats["counts"].values()) == stats["num_chips"] == spec["n"]
        assert all(0 <= f <= 1 for f in stats["positive_fraction"].values())
        assert prep["dtype"] == spec["dtype"] and spec["bands"] in (3, 4)
        assert (run / "dataset_manifest.json").exists()
