"""``predict`` on a mosaic of chips: equal to per-chip predictions, georeferenced COGs, polygons, STAC item."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio

from components.contracts.lineage import file_digest
from components.contracts.preprocessing import Preprocessing
from components.data.pairs import find_pairs, load_examples
from components.data.scenes import cog_problems, overview_levels
from components.ml.scoring import onnx_predictor
from components.standards.prediction_item import validate_prediction_item
from tests.support.cli import error_line, run_components
from tests.support.scenes import mosaic, write_scene

COLUMNS = 4  # a 4 x 4 mosaic of chips


def _iou(prediction: np.ndarray, truth: np.ndarray) -> float:
    p, t = prediction == 1, truth == 1
    return float((p & t).sum() / max((p | t).sum(), 1))


@pytest.fixture(scope="module")
def scene(tmp_path_factory, trained_run, sample_data) -> dict:
    """A 4x4 mosaic of 16 sample chips (each one model tile), its labels and the per-chip predictions."""
    stats = json.loads((trained_run / "stats.json").read_text())
    prep = Preprocessing.from_stats(stats)
    pairs = find_pairs(sample_data)[:COLUMNS * COLUMNS]
    chips, masks = load_examples(pairs, prep.image_size, prep.nodata)
    assert chips.shape[-1] == prep.image_size  # every window is exactly one training chip
    per_chip = prep.classify(onnx_predictor(trained_run / "models" / "model.onnx", prep)(chips))
    root = tmp_path_factory.mktemp("scene")
    path = write_scene(root / "scenes" / "mosaic.tif", mosaic(list(chips), COLUMNS))
    return {"path": path, "labels": mosaic(list(masks), COLUMNS), "per_chip": mosaic(list(per_chip), COLUMNS),
            "prep": prep, "root": root}


def _predict(run: Path, scene: Path, out: Path, *extra: str) -> dict:
    run_components("predict", "--run", str(run), "--input", str(scene), "--out", str(out), *extra)
    return json.loads((out / "predictions.json").read_text())


@pytest.fixture(scope="module")
def no_overlap(scene, trained_run) -> tuple[Path, dict]:
    out = scene["root"] / "no-overlap"
    return out, _predict(trained_run, scene["path"], out, "--overlap", "0")


def _read(path: Path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), {"crs": src.crs, "transform": src.transform, "shape": (src.height, src.width),
                             "nodata": src.nodata, "dtype": src.dtypes[0]}


def test_without_overlap_the_mask_equals_the_per_chip_predictions(scene, no_overlap):
    out, doc = no_overlap
    mask, _ = _read(out / "mosaic_mask.tif")
    assert np.array_equal(mask, scene["per_chip"])
    assert doc["scenes"][0]["windows"] == {"windows": 16, "predicted": 16, "skipped": 0}


def test_with_overlap_the_iou_stays_within_two_points(scene, trained_run):
    out = scene["root"] / "overlap"
    _predict(trained_run, scene["path"], out, "--overlap", "32", "--batch-size", "3")
    mask, _ = _read(out / "mosaic_mask.tif")
    per_chip_iou = _iou(scene["per_chip"], scene["labels"])
    assert per_chip_iou > 0.2  # the model finds camps at all
    assert abs(_iou(mask, scene["labels"]) - per_chip_iou) <= 0.02


def test_outputs_lie_on_the_scene_grid_and_are_valid_cogs(scene, no_overlap):
    out, _ = no_overlap
    with rasterio.open(scene["path"]) as src:
        grid = {"crs": src.crs, "transform": src.transform, "shape": (src.height, src.width)}
    for name in ("mosaic_mask.tif", "mosaic_probability.tif"):
        values, meta = _read(out / name)
        assert {k: meta[k] for k in grid} == grid
        assert meta["dtype"] == "uint8" and meta["nodata"] == 255
        assert cog_problems(out / name) == []
        assert overview_levels(out / name)  # 512 px with 256 px tiles: at least one overview
    probability, _ = _read(out / "mosaic_probability.tif")
    mask, _ = _read(out / "mosaic_mask.tif")
    assert probability.max() <= 254
    threshold = scene["prep"].threshold
    assert ((probability / 254.0 >= threshold + 0.01) <= (mask == 1)).all()


def test_polygons_fall_inside_the_footprint_and_match_the_mask_area(scene, no_overlap):
    from shapely.geometry import box, shape

    out, doc = no_overlap
    entry = doc["scenes"][0]
    collection = json.loads((out / "mosaic_polygons.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and collection["features"]
    with rasterio.open(scene["path"]) as src:
        from rasterio.warp import transform_bounds

        footprint = box(*transform_bounds(src.crs, "EPSG:4326", *src.bounds)).buffer(1e-7)
    total = 0.0
    for feature in collection["features"]:
        geometry = shape(feature["geometry"])
        assert geometry.is_valid and footprint.contains(geometry)
        assert 0 <= feature["properties"]["mean_probability"] <= 1
        total += feature["properties"]["area_m2"]
    camp_pixels = int((scene["per_chip"] == 1).sum())
    assert entry["pixels"]["camp"] == camp_pixels
    assert entry["camp_area_m2"] == pytest.approx(camp_pixels * 0.25, rel=0.01)  # 0.5 m pixels in UTM
    assert total == pytest.approx(entry["camp_area_m2"], rel=0.02)


def test_min_area_drops_small_polygons_only(scene, trained_run, no_overlap):
    _, doc = no_overlap
    areas = sorted(f["properties"]["area_m2"] for f in json.loads(
        (no_overlap[0] / "mosaic_polygons.geojson").read_text())["features"])
    k = next(i for i in range(len(areas) // 2, len(areas)) if areas[i] > areas[i - 1])
    cut = (areas[k - 1] + areas[k]) / 2  # between two polygons' (rounded) areas
    out = scene["root"] / "min-area"
    _predict(trained_run, scene["path"], out, "--overlap", "0", "--min-area", str(cut))
    kept = [f["properties"]["area_m2"] for f in json.loads((out / "mosaic_polygons.geojson").read_text())["features"]]
    assert kept and min(kept) >= cut and len(kept) == sum(a >= cut for a in areas)


def test_the_stac_item_validates_and_links_scene_and_model(scene, trained_run, no_overlap):
    out, doc = no_overlap
    item = json.loads((out / "mosaic_item.json").read_text())
    validate_prediction_item(item)
    for key, name in (("mask", "mosaic_mask.tif"), ("probability", "mosaic_probability.tif"),
                      ("polygons", "mosaic_polygons.geojson")):
        asset = item["assets"][key]
        assert (out / asset["href"]).resolve() == (out / name).resolve()
        assert asset["file:size"] == (out / name).stat().st_size
        assert asset["file:checksum"] == "1220" + file_digest(out / name).split(":")[1]
    assert item["properties"]["proj:code"] == "EPSG:32651"
    assert item["properties"]["proj:shape"] == [512, 512]
    links = {link["href"] for link in item["links"] if link["rel"] == "derived_from"}
    assert str(scene["path"].resolve()) in links
    assert str((trained_run / "metadata" / "stac_item.json").resolve()) in links


def test_nodata_stays_nodata_and_empty_windows_are_skipped(scene, trained_run, tmp_path):
    with rasterio.open(scene["path"]) as src:
        pixels = src.read()
    pixels[:, :, :128] = 0  # the first column of windows: no data
    pixels[:, 300:310, 300:310] = 0  # a hole inside a window
    path = write_scene(tmp_path / "holes.tif", pixels, nodata=0)
    doc = _predict(trained_run, path, tmp_path / "out", "--overlap", "0")
    mask, _ = _read(tmp_path / "out" / "holes_mask.tif")
    probability, _ = _read(tmp_path / "out" / "holes_probability.tif")
    nodata = (pixels == 0).all(axis=0)
    assert ((mask == 255) == nodata).all() and ((probability == 255) == nodata).all()
    assert doc["scenes"][0]["windows"]["skipped"] == 4
    assert doc["scenes"][0]["pixels"]["nodata"] == int(nodata.sum())


def test_another_crs_is_handled_on_its_own_grid(scene, trained_run, tmp_path):
    with rasterio.open(scene["path"]) as src:
        pixels = src.read()
    path = write_scene(tmp_path / "geographic.tif", pixels, crs="EPSG:4326", origin=(124.26, 13.97),
                       resolution=0.5 / 111_320)
    _predict(trained_run, path, tmp_path / "out", "--overlap", "0")
    mask, meta = _read(tmp_path / "out" / "geographic_mask.tif")
    assert meta["crs"].to_epsg() == 4326 and meta["shape"] == (512, 512)
    assert np.array_equal(mask, scene["per_chip"])  # same pixels, same windows: same prediction


def _with_training_gsd(trained_run: Path, tmp_path: Path, gsd: float) -> Path:
    """A copy of the run whose statistics record a training resolution (its lineage kept consistent)."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    stats = json.loads((run / "stats.json").read_text())
    stats["ground_sampling_distance_m"] = {"min": gsd, "median": gsd, "max": gsd, "chips": 16}
    (run / "stats.json").write_text(json.dumps(stats, indent=2))
    report_path = run / "models" / "export_report.json"
    report = json.loads(report_path.read_text())
    report["lineage"]["statistics"] = file_digest(run / "stats.json")
    report_path.write_text(json.dumps(report, indent=2))
    history_path = run / "training_history.json"
    history = json.loads(history_path.read_text())
    history["lineage"]["statistics"] = file_digest(run / "stats.json")
    history_path.write_text(json.dumps(history, indent=2))
    return run


def test_another_resolution_is_refused_naming_both_or_resampled(scene, trained_run, tmp_path):
    run = _with_training_gsd(trained_run, tmp_path, 0.25)  # the scene has 0.5 m pixels
    out = tmp_path / "out"
    proc = run_components("predict", "--run", str(run), "--input", str(scene["path"]), "--out", str(out),
                          check=False)
    line = error_line(proc, "mosaic.tif", "0.500 m", "0.250", "--resample")
    assert "Traceback" not in line and not out.exists()
    doc = _predict(run, scene["path"], out, "--resample", "--overlap", "0")
    assert doc["scenes"][0]["resampled_to"] == pytest.approx(0.25, rel=0.01)
    mask, meta = _read(out / "mosaic_mask.tif")
    with rasterio.open(scene["path"]) as src:
        assert meta["shape"] == (src.height, src.width) and meta["transform"] == src.transform
    assert set(np.unique(mask)) <= {0, 1}
    assert cog_problems(out / "mosaic_mask.tif") == []


def test_bad_input_is_refused_with_one_error_line(scene, trained_run, tmp_path):
    png = tmp_path / "chip.png"
    png.write_bytes(b"not an image")
    proc = run_components("predict", "--run", str(trained_run), "--input", str(png), "--out",
                          str(tmp_path / "o1"), check=False)
    error_line(proc, "chip.png", "GeoTIFF")
    proc = run_components("predict", "--run", str(trained_run), "--input", str(scene["path"]), "--out",
                          str(tmp_path / "o2"), "--overlap", "500", check=False)
    error_line(proc, "--overlap 500")
    gray = write_scene(tmp_path / "gray.tif", np.zeros((1, 64, 64), np.uint8))
    proc = run_components("predict", "--run", str(trained_run), "--input", str(gray), "--out",
                          str(tmp_path / "o3"), check=False)
    error_line(proc, "gray.tif", "1 image band", "takes 3")
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_evaluate_scores_a_large_scene_at_native_resolution_like_predict(scene, trained_run, tmp_path):
    data = tmp_path / "labelled"
    (data / "chips").mkdir(parents=True)
    (data / "labels").mkdir()
    shutil.copy(scene["path"], data / "chips" / "mosaic.tif")
    write_scene(data / "labels" / "mosaic.tif", (scene["labels"] == 1).astype(np.uint8) * 255)
    run_components("evaluate", "--run", str(trained_run), "--data", str(data), "--out", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["num_pixels"] == 512 * 512  # native resolution: nothing shrank
    _predict(trained_run, scene["path"], tmp_path / "pred")  # the same default overlap
    mask, _ = _read(tmp_path / "pred" / "mosaic_mask.tif")
    assert metrics["iou"] == pytest.approx(_iou(mask, scene["labels"]), abs=1e-6)


def test_evaluate_refuses_a_chip_smaller_than_the_tile(trained_run, tmp_path):
    data = tmp_path / "small"
    (data / "chips").mkdir(parents=True)
    (data / "labels").mkdir()
    write_scene(data / "chips" / "tiny.tif", np.zeros((3, 64, 64), np.uint8))
    write_scene(data / "labels" / "tiny.tif", np.zeros((1, 64, 64), np.uint8))
    proc = run_components("evaluate", "--run", str(trained_run), "--data", str(data), "--out",
                          str(tmp_path / "eval"), check=False)
    error_line(proc, "tiny.tif", "64x64", "smaller than the model's 128x128 tile", "never resizes")
