"""Pixels and files a user may bring (issue #10): NaN chips, nodata, alpha, JPEG masks, 16-bit
imagery, symlinks and FIFOs, oversized headers, lopsided splits, non-UTF-8 names.

Each dataset is written into tmp_path on the fly; most tests call the stage in-process, a few go
through the command line to check what a user sees (``error: ...``, exit 2, no traceback).
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from components.contracts.errors import DatasetError, ParameterError
from components.contracts.preprocessing import Preprocessing, check_image_size
from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.data.pairs import IGNORE, find_pairs, load_example
from components.ml.augmentation import BatchTransform
from components.ml.losses import build_loss
from components.ml.scoring import score
from components.ml.task import ChipDataset
from components.stages.stats import compute_statistics
from tests.support.cli import error_line, run_components
from tests.support.paths import REPO

pytestmark = pytest.mark.filterwarnings("ignore:Dataset has no geotransform")
N = 8
SIZE = 32


def _geotiff(path: Path, pixels: np.ndarray, nodata=None, **extra) -> Path:
    import rasterio

    pixels = pixels if pixels.ndim == 3 else pixels[None]
    profile = dict(driver="GTiff", width=pixels.shape[2], height=pixels.shape[1], count=pixels.shape[0],
                   dtype=pixels.dtype.name, nodata=nodata, **extra)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels)
    return path


def _mask(rng) -> np.ndarray:
    mask = (rng.random((SIZE, SIZE)) > 0.7).astype(np.uint8)
    mask[0, 0] = 1  # every chip has a camp pixel
    return mask


def dataset(root: Path, chip=None, mask=None, chip_suffix=".png", mask_suffix=".png", n: int = N) -> Path:
    """``n`` chips named c0..c{n-1} (each its own group). ``chip(i, rng)``/``mask(i, rng)`` give
    arrays (bands, H, W) / (H, W); GeoTIFF suffixes write GeoTIFFs (a tuple (array, nodata) sets
    nodata), others PIL images."""
    rng = np.random.default_rng(0)
    (root / "chips").mkdir(parents=True)
    (root / "labels").mkdir()
    for i in range(n):
        c = chip(i, rng) if chip else rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8)
        m = mask(i, rng) if mask else _mask(rng) * 255
        for folder, array, suffix in (("chips", c, chip_suffix), ("labels", m, mask_suffix)):
            nodata = None
            if isinstance(array, tuple):
                array, nodata = array
            path = root / folder / f"c{i}{suffix}"
            if suffix == ".tif":
                _geotiff(path, array, nodata)
            else:
                Image.fromarray(np.moveaxis(array, 0, -1) if array.ndim == 3 else array).save(path)
    return root


def refused(data: Path, run: Path, *needles: str, error=DatasetError, **kwargs) -> str:
    with pytest.raises(error) as info:
        compute_statistics(data, run, network_depth=2, **kwargs)
    for needle in needles:
        assert needle in str(info.value), f"{needle!r} not in {info.value}"
    assert not (run / "stats.json").exists() and not (run / "dataset_manifest.json").exists()
    return str(info.value)


def stats_of(data: Path, run: Path, **kwargs) -> dict:
    stats = compute_statistics(data, run, network_depth=2, **kwargs)
    assert json.loads((run / "stats.json").read_text()) == stats  # strict JSON: no bare NaN
    json.loads((run / "stats.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c} in stats.json"))
    return stats


# ---------------------------------------------------------------- 7: non-finite pixels

def test_nan_chip_is_refused_naming_the_file(tmp_path):
    def chip(i, rng):
        c = rng.random((3, SIZE, SIZE), dtype=np.float32)
        if i == 3:
            c[1, 5, 5] = np.nan
        if i == 5:
            c[:, 7, 7] = np.inf
        return c

    data = dataset(tmp_path / "d", chip=chip, chip_suffix=".tif")
    err = refused(data, tmp_path / "run", "c3.tif", "c5.tif", "NaN or infinite")
    assert "2 invalid file(s)" in err


def test_nan_declared_as_nodata_is_left_out(tmp_path):
    def chip(i, rng):
        c = rng.random((3, SIZE, SIZE), dtype=np.float32)
        c[:, :8, :] = np.nan
        return c, float("nan")

    data = dataset(tmp_path / "d", chip=chip, chip_suffix=".tif")
    stats = stats_of(data, tmp_path / "run")
    prep = stats["preprocessing"]
    assert prep["nodata"] == "nan" and np.all(np.isfinite(prep["mean"])) and np.all(np.isfinite(prep["std"]))
    np.testing.assert_allclose(prep["mean"], 0.5, atol=0.02)  # uniform(0, 1) pixels with data only
    assert stats["nodata_pixels"]["train"] == stats["counts"]["train"] * 8 * SIZE
    pairs = read_manifest(RunLayout(tmp_path / "run"))
    raw, mask = ChipDataset(pairs, Preprocessing.from_stats(stats))[0]
    x, y = BatchTransform(Preprocessing.from_stats(stats))(raw[None], mask[None])  # as validation does
    x, y = x[0], y[0]
    assert torch.isfinite(x).all() and (x[:, :8] == 0).all() and (y[0, :8] == IGNORE).all()
    chip, _ = load_example(pairs[0], 16, float("nan"))  # resized: NaN never bleeds into data
    normalized = Preprocessing.from_stats(stats).normalize(chip)
    assert np.isfinite(normalized).all()


# ---------------------------------------------------------------- 8: masks, nodata, balance

def test_jpeg_masks_are_refused_with_the_reason(tmp_path):
    data = dataset(tmp_path / "d", mask_suffix=".jpg")
    refused(data, tmp_path / "run", "c0.jpg", "lossy")


def test_geotiff_mask_nodata_is_not_camp(tmp_path):
    def mask(i, rng):
        m = _mask(rng)
        m[16:, :] = 255  # unlabelled; counted as camp before
        return m, 255

    data = dataset(tmp_path / "d", mask=mask, mask_suffix=".tif")
    stats = stats_of(data, tmp_path / "run")
    assert all(f < 0.5 for f in stats["positive_fraction"].values())
    pair = read_manifest(RunLayout(tmp_path / "run"))[0]
    _, m = load_example(pair, SIZE)
    assert (m[16:] == IGNORE).all() and set(np.unique(m[:16])) <= {0, 1}


def test_chip_geotiff_nodata_is_left_out_of_statistics_and_recorded(tmp_path):
    def chip(i, rng):
        c = np.full((3, SIZE, SIZE), 100, np.uint8)
        c[:, :16, :] = 0  # nodata: would pull the mean to 50
        return c, 0

    data = dataset(tmp_path / "d", chip=chip, chip_suffix=".tif")
    stats = stats_of(data, tmp_path / "run")
    prep = Preprocessing.from_stats(stats)
    assert prep.nodata == 0 and stats["preprocessing"]["nodata"] == 0
    np.testing.assert_allclose(prep.raw_mean, 100)
    raw = np.zeros((3, 4, 4), np.uint8)
    assert (prep.normalize(raw) == 0).all()  # every consumer sees no data as the mean


def test_rgba_alpha_zero_is_no_data(tmp_path):
    def chip(i, rng):
        c = np.full((4, SIZE, SIZE), 200, np.uint8)
        c[:3, :, :10] = 0
        c[3] = 255
        c[3, :, :10] = 0  # transparent
        return c

    def mask(i, rng):
        m = _mask(rng) * 255
        m[:, :10] = 255  # "camp" under the transparent part must not count
        return m

    data = dataset(tmp_path / "d", chip=chip, mask=mask)
    stats = stats_of(data, tmp_path / "run")
    assert stats["preprocessing"]["alpha"] is True
    np.testing.assert_allclose(Preprocessing.from_stats(stats).raw_mean, 200)
    pairs = read_manifest(RunLayout(tmp_path / "run"))
    _, m = load_example(pairs[0], SIZE)
    assert (m[:, :10] == IGNORE).all()
    assert all(f < 0.5 for f in stats["positive_fraction"].values())


def test_user_nodata_value(tmp_path):
    def chip(i, rng):
        c = rng.integers(1, 255, (3, SIZE, SIZE), dtype=np.uint8)
        c[:, :, -4:] = 0
        return c

    data = dataset(tmp_path / "d", chip=chip)
    plain = stats_of(data, tmp_path / "plain")
    given = stats_of(data, tmp_path / "given", nodata=0)
    assert plain["preprocessing"]["nodata"] is None and given["preprocessing"]["nodata"] == 0
    assert given["preprocessing"]["mean"][0] > plain["preprocessing"]["mean"][0]
    assert given["nodata_pixels"]["train"] == given["counts"]["train"] * SIZE * 4
    refused(data, tmp_path / "bad", "nodata=-1", "uint8", error=ParameterError, nodata=-1)


def test_cli_nodata_flag(tmp_path):
    data = dataset(tmp_path / "d")
    run_components("stats", "--data", str(data), "--out", str(tmp_path / "run"), "--nodata", "0", "--depth", "2")
    assert json.loads((tmp_path / "run" / "stats.json").read_text())["preprocessing"]["nodata"] == 0


def test_loss_and_metrics_ignore_no_data():
    target = (torch.rand(2, 1, 16, 16) > 0.6).float()
    logits = (target * 2 - 1) * 6
    ignored = target.clone()
    ignored[:, :, :8] = IGNORE
    wrong = logits.clone()
    wrong[:, :, :8] = -wrong[:, :, :8]  # wrong only where there is no data
    for name in ("bce", "dice", "focal", "bce_dice"):
        loss = build_loss(name)
        assert loss(wrong, ignored) == pytest.approx(float(loss(logits, ignored)), abs=1e-6), name
        assert loss(logits, target) == loss(logits, target.clone())  # no ignore: as before
        assert loss(wrong, target) > loss(logits, target)
    grad = wrong.clone().requires_grad_()
    build_loss("bce_dice")(grad, ignored).backward()
    assert (grad.grad[:, :, :8] == 0).all()


def test_scoring_ignores_no_data(tmp_path):
    def mask(i, rng):
        m = _mask(rng)
        m[:8] = 255
        return m, 255

    data = dataset(tmp_path / "d", mask=mask, mask_suffix=".tif", n=3)
    pairs = find_pairs(data)
    prep = Preprocessing(SIZE, ("red", "green", "blue"), (0.5,) * 3, (0.2,) * 3)
    truth = np.stack([load_example(p, SIZE)[1] for p in pairs])

    def predictor(raw):  # perfect where labelled, "camp" everywhere without a label (one batch)
        assert len(raw) == len(truth)
        return np.where(truth == IGNORE, 1.0, truth).astype(np.float32)

    values, _ = score(pairs, predictor, prep)
    assert values["iou"] == 1.0 and values["num_pixels"] == 3 * (SIZE - 8) * SIZE


def test_all_empty_masks_are_refused(tmp_path):
    data = dataset(tmp_path / "d", mask=lambda i, rng: np.zeros((SIZE, SIZE), np.uint8))
    refused(data, tmp_path / "run", "no mask of the train split", "camp pixel")


def test_lopsided_test_split_is_warned_about(tmp_path, caplog):
    probe = stats_of(dataset(tmp_path / "probe"), tmp_path / "probe_run")
    test_stems = {p.stem for p in read_manifest(RunLayout(tmp_path / "probe_run")) if p.split == "test"}
    assert probe["warnings"] == []

    def mask(i, rng):
        m = _mask(rng) * 255
        return np.zeros_like(m) if f"c{i}" in test_stems else m

    data = dataset(tmp_path / "d", mask=mask)
    with caplog.at_level("WARNING"):
        stats = stats_of(data, tmp_path / "run")
    assert any("test split" in w and "no camp pixel" in w for w in stats["warnings"])
    assert "no camp pixel" in caplog.text
    proc = run_components("stats", "--data", str(data), "--out", str(tmp_path / "cli"), "--depth", "2")
    assert "no camp pixel" in proc.stderr and "no camp pixel" not in proc.stdout.split('"warnings"')[0]


# ---------------------------------------------------------------- 9: 16-bit imagery

def _uint16(high: int):
    return lambda i, rng: rng.integers(0, high, (3, SIZE, SIZE)).astype(np.uint16)


@pytest.mark.parametrize("high, kind", [(4096, "percentile"), (65535, "max")])
def test_uint16_scaling_is_recorded_and_normalizes(tmp_path, high, kind):
    data = dataset(tmp_path / "d", chip=_uint16(high), chip_suffix=".tif")
    stats = stats_of(data, tmp_path / "run")
    prep = Preprocessing.from_stats(stats)
    assert prep.dtype == "uint16" and prep.value_scaling["type"] == kind
    assert prep.max_value == (65535 if kind == "max" else pytest.approx(4096, rel=0.01))
    pairs = [p for p in read_manifest(RunLayout(tmp_path / "run")) if p.split == "train"]
    raw = np.stack([load_example(p, SIZE)[0] for p in pairs]).astype(np.float64)
    x = prep.normalize(raw)  # the one scaling of training, export, evaluation
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-4)
    assert stats["preprocessing"]["dtype"] == "uint16"


def test_uint8_preprocessing_is_unchanged(tmp_path):
    stats = stats_of(dataset(tmp_path / "d"), tmp_path / "run")
    prep = stats["preprocessing"]
    assert prep["max_value"] == 255.0 and prep["dtype"] == "uint8" and prep["value_scaling"] == {"type": "max"}
    assert prep["nodata"] is None and prep["alpha"] is False
    old = {k: prep[k] for k in ("image_size", "bands", "mean", "std", "max_value", "threshold")}
    assert Preprocessing.from_dict(old) == Preprocessing.from_stats(stats)  # old stats.json still read


def _raster_function(tmp_path: Path, prep: Preprocessing):
    spec = importlib.util.spec_from_file_location(
        "CampSegmenter_under_test", REPO / "components" / "standards" / "esri" / "CampSegmenter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = torch.jit.trace(torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Sigmoid()).eval(),
                            torch.zeros(1, 3, prep.image_size, prep.image_size))
    model.save(str(tmp_path / "model.pt"))
    emd = {"ModelFile": "model.pt", "ImageHeight": prep.image_size, "ImageWidth": prep.image_size,
           "ExtractBands": [0, 1, 2], "Preprocessing": prep.to_dict(), "Threshold": prep.threshold}
    (tmp_path / "m.emd").write_text(json.dumps(emd))
    fn = module.CampSegmenter()
    fn.initialize(model=str(tmp_path / "m.emd"))
    fn.getConfiguration(batch_size=1, padding=0)
    return fn, model


def _classify(fn, pixels):
    return fn.updatePixels(None, (1,) + pixels.shape[1:], {}, raster_pixels=pixels)["output_pixels"][0]


def test_raster_function_refuses_pixel_types_it_was_not_trained_on(tmp_path):
    prep = Preprocessing(16, ("red", "green", "blue"), (0.4,) * 3, (0.2,) * 3)
    fn, _ = _raster_function(tmp_path, prep)
    rng = np.random.default_rng(0)
    chip = rng.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    expected = _classify(fn, chip)
    np.testing.assert_array_equal(_classify(fn, chip.astype(np.float32)), expected)  # same values as float
    for bad in (chip.astype(np.uint16) * 200, chip.astype(np.float32) / 255, chip.astype(np.uint16)):
        with pytest.raises(Exception, match="trained on uint8"):
            _classify(fn, bad)
    with pytest.raises(Exception, match="uint16"):
        fn.updateRasterInfo(output_info={}, raster_info={"pixelType": "u2"})


def test_raster_function_takes_uint16_for_a_uint16_model(tmp_path):
    prep = Preprocessing(16, ("red", "green", "blue"), (0.5,) * 3, (0.25,) * 3, max_value=4000.0,
                         dtype="uint16", value_scaling={"type": "percentile", "percentile": 99.9}, nodata=0.0)
    fn, model = _raster_function(tmp_path, prep)
    chip = np.random.default_rng(0).integers(1, 4000, (3, 16, 16)).astype(np.uint16)
    chip[:, :3] = 0
    got = _classify(fn, chip)
    with torch.no_grad():
        want = prep.classify(model(torch.from_numpy(prep.normalize(chip)[None])).numpy()[0, 0])
    want[:3] = 0
    np.testing.assert_array_equal(got, want)
    assert 0 < got.mean() < 1 or got[3:].any()  # not everything camp
    with pytest.raises(Exception, match="trained on uint16"):
        _classify(fn, chip.astype(np.uint8))


# ---------------------------------------------------------------- 10: file types

def _replace_chip(data: Path, make) -> Path:
    target = data / "chips" / "c2.png"
    target.unlink()
    make(target)
    return target


@pytest.mark.timeout(60)
@pytest.mark.parametrize("kind, text", [
    ("fifo", "FIFO"), ("loop", "looping symlink"), ("dangling", "dangling"), ("devzero", "device"),
    ("folder", "is a folder"),
])
def test_non_regular_files_are_refused_without_hanging(tmp_path, kind, text):
    data = dataset(tmp_path / "d")
    makers = {
        "fifo": os.mkfifo,
        "loop": lambda p: (os.symlink(p.with_name("c2b.png"), p), os.symlink(p, p.with_name("c2b.png"))),
        "dangling": lambda p: os.symlink(tmp_path / "nowhere.png", p),
        "devzero": lambda p: os.symlink("/dev/zero", p),
        "folder": lambda p: p.mkdir(),
    }
    _replace_chip(data, makers[kind])
    refused(data, tmp_path / "run", "c2.png", text)


def test_symlinked_chip_is_followed(tmp_path):
    data = dataset(tmp_path / "d")
    real = tmp_path / "elsewhere.png"
    (data / "chips" / "c2.png").rename(real)
    os.symlink(real, data / "chips" / "c2.png")
    assert stats_of(data, tmp_path / "run")["num_chips"] == N


# ---------------------------------------------------------------- 12: size bounds

def test_huge_header_geotiff_is_refused_before_reading(tmp_path):
    import rasterio

    data = dataset(tmp_path / "d", chip_suffix=".tif", chip=lambda i, rng: rng.integers(0, 255, (3, SIZE, SIZE), dtype=np.uint8))
    huge = data / "chips" / "c1.tif"
    huge.unlink()
    with rasterio.open(huge, "w", driver="GTiff", width=60000, height=60000, count=3, dtype="uint8",
                       tiled=True, compress="deflate", sparse_ok=True):
        pass  # nothing written: a tiny file declaring 10.8 GB of pixels
    assert huge.stat().st_size < 1_000_000
    refused(data, tmp_path / "run", "c1.tif", "3600000000 pixels", "64000000")


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    data = dataset(tmp_path / "d")
    refused(data, tmp_path / "a", "c0.png", "above the limit of 1000", max_pixels_per_image=1000)
    monkeypatch.setenv("CAMPSEG_MAX_PIXELS", "500")
    refused(data, tmp_path / "b", "above the limit of 500")
    monkeypatch.setenv("CAMPSEG_MAX_PIXELS", "lots")
    refused(data, tmp_path / "c", "CAMPSEG_MAX_PIXELS", error=ParameterError)
    refused(data, tmp_path / "d2", "max_pixels=0", error=ParameterError, max_pixels_per_image=0)


def test_image_size_is_bounded():
    check_image_size(4096, 4)
    with pytest.raises(ParameterError, match="at most 4096"):
        check_image_size(8192, 4)


# ---------------------------------------------------------------- 13: file names

def test_non_utf8_file_name_gives_an_error_not_a_traceback(tmp_path):
    data = dataset(tmp_path / "d")
    os.rename(data / "chips" / "c3.png", os.path.join(os.fsencode(data / "chips"), b"c\xff3.png"))
    proc = run_components("stats", "--data", str(data), "--out", str(tmp_path / "run"), check=False)
    line = error_line(proc, single=False)
    assert proc.returncode == 2 and "UTF-8" in proc.stderr and "c\\xff3.png" in proc.stderr, line
    assert not (tmp_path / "run" / "stats.json").exists()
