"""Prediction stage: a trained model over whole scenes, to georeferenced masks, probabilities and polygons.

For each GeoTIFF scene ``S`` it writes into the output folder, on exactly the scene's grid:
``S_mask.tif`` (uint8 COG: 1 camp, 0 background, 255 no data), ``S_probability.tif`` (uint8
COG: probability x 254, 255 no data), ``S_polygons.geojson`` (camp polygons in EPSG:4326 with
``area_m2`` and ``mean_probability``) and ``S_item.json`` (its STAC item); ``predictions.json``
lists every scene. The model is the run's ONNX model with the preprocessing of its ``stats.json``
(:mod:`components.contracts.preprocessing`); scenes are read and written window by window
(:mod:`components.ml.windows`, :mod:`components.data.scenes`). ``docs/predict.md`` describes the
outputs.

Every scene is checked (georeferenced, band count, pixel type, resolution) before anything is
written; outputs are staged in a hidden folder and moved into place together, ``predictions.json``
last, so a failure leaves no half-written result.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from components.contracts.errors import ParameterError
from components.contracts.lineage import verify
from components.contracts.ownership import PREDICTION, open_output
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout, read_json, replace_entries, write_json
from components.data.imagery import shown
from components.data.polygons import PolygonCollector, camp_features, feature_collection
from components.data.scenes import (
    NODATA_OUT,
    GridWriter,
    SceneGrid,
    SceneReader,
    finish_cog,
    gdal_env,
    list_scenes,
    pixel_areas,
    resolution_ratio,
)
from components.ml.inference import onnx_session, run_model
from components.ml.tta import check_tta, tta_record, with_tta
from components.ml.windows import check_overlap, sliding_probabilities
from components.reporting.progress import ProgressLine
from components.standards.prediction_item import build_prediction_item, validate_prediction_item

SUMMARY = "predictions.json"


def output_names(stem: str) -> dict[str, str]:
    """The file names written for the scene ``stem``."""
    return {"mask": f"{stem}_mask.tif", "probability": f"{stem}_probability.tif",
            "polygons": f"{stem}_polygons.geojson", "stac_item": f"{stem}_item.json"}


def training_resolution(stats: Mapping[str, Any]) -> dict | None:
    """``stats.json``'s ground sampling distance of the training chips (m), or None when unknown."""
    gsd = stats.get("ground_sampling_distance_m")
    return gsd if isinstance(gsd, dict) and gsd.get("min") and gsd.get("max") else None


def _check_parameters(prep: Preprocessing, threshold: float, overlap: int, batch_size: int,
                      min_area_m2: float, tta: bool) -> None:
    if not (isinstance(threshold, (int, float)) and 0.0 < threshold < 1.0):
        raise ParameterError(f"--threshold {threshold!r}: must lie strictly between 0 and 1")
    check_overlap(prep.image_size, overlap)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ParameterError(f"--batch-size {batch_size!r}: must be a whole number of at least 1")
    if not (isinstance(min_area_m2, (int, float)) and math.isfinite(min_area_m2) and min_area_m2 >= 0):
        raise ParameterError(f"--min-area {min_area_m2!r}: must be a finite number of m² >= 0")
    check_tta(tta)


def _plan_scene(path: Path, prep: Preprocessing, trained: dict | None, resample: bool) -> dict:
    """Open ``path`` once to check it; return how it will be read (``resolution`` to resample to)."""
    with SceneReader(path, len(prep.bands), prep.dtype) as reader:
        gsd = reader.grid.gsd_m
        res = abs(reader.grid.transform.a)
    plan = {"path": path, "gsd_m": gsd, "resolution": None}
    if trained is None:
        return plan
    off = resolution_ratio(gsd, (float(trained["min"]), float(trained["max"])))
    if off is None:
        return plan
    target = float(trained.get("median") or trained["min"])
    if not resample:
        raise ParameterError(
            f"{shown(path)}: {gsd:.3f} m per pixel, but the model was trained on chips of "
            f"{float(trained['min']):.3f}-{float(trained['max']):.3f} m per pixel ({off:.1f}x off); "
            f"pass --resample to predict at {target:.3f} m, or use imagery of the training resolution")
    plan["resolution"] = res * target / gsd
    return plan


class _SceneOutputs:
    """The mask, the probability, the polygons and the counts of one scene, written strip by strip."""

    def __init__(self, staging: Path, names: dict[str, str], grid: SceneGrid, threshold: float) -> None:
        self.grid, self.threshold = grid, threshold
        self.tiled = {k: staging / f".{names[k]}.tiled.tif" for k in ("mask", "probability")}
        self.writers = {k: GridWriter(p, grid) for k, p in self.tiled.items()}
        self.polygons = PolygonCollector()
        self.pixels = {"camp": 0, "background": 0, "nodata": 0}
        self.camp_area_m2 = 0.0

    def write(self, row0: int, probs: np.ndarray, valid: np.ndarray) -> None:
        """Rows from ``row0``: probabilities in [0, 1] (anything where not ``valid``)."""
        camp = valid & (probs >= self.threshold)
        mask = np.where(valid, camp, NODATA_OUT).astype(np.uint8)
        quantised = np.where(valid, np.rint(np.nan_to_num(probs) * 254), NODATA_OUT).astype(np.uint8)
        self.writers["mask"].write(row0, mask)
        self.writers["probability"].write(row0, quantised)
        self.polygons.add(row0, mask)
        per_row = camp.sum(axis=1)
        self.pixels["camp"] += int(per_row.sum())
        self.pixels["nodata"] += int((~valid).sum())
        self.pixels["background"] += int((valid & ~camp).sum())
        if per_row.any():
            areas = pixel_areas(self.grid.crs, self.grid.transform, row0, row0 + len(per_row), self.grid.width / 2)
            self.camp_area_m2 += float((areas * per_row).sum())

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


def _predict_scene(plan: dict, session: Any, prep: Preprocessing, staging: Path, threshold: float, overlap: int,
                   batch_size: int, min_area_m2: float, show_progress: bool, tta: bool = False,
                   ) -> tuple[dict, SceneGrid]:
    """Write one scene's outputs into ``staging``; return its entry of ``predictions.json`` and its grid."""
    path: Path = plan["path"]
    names = output_names(path.stem)
    started = time.monotonic()
    tile = prep.image_size
    progress = ProgressLine(f"predict {path.name}") if show_progress else None

    def normalize(raw: np.ndarray) -> np.ndarray:
        return prep.normalize(raw)

    def model(inputs: np.ndarray) -> np.ndarray:
        return run_model(session, inputs)

    predict = with_tta(model, tta)  # per batch of windows, before they are blended

    with SceneReader(path, len(prep.bands), prep.dtype, resolution=plan["resolution"]) as reader:
        grid = reader.source_grid

        def read(r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
            raw, valid = reader.read(r0, r1)
            invalid = prep.nodata_pixels(raw)
            return raw, valid if invalid is None else valid & ~invalid

        outputs = _SceneOutputs(staging, names, grid, threshold)
        try:
            if plan["resolution"] is None:
                windows = sliding_probabilities(read, outputs.write, grid.height, grid.width, tile, overlap,
                                                predict, normalize, batch_size, progress)
            else:
                windows = _predict_resampled(reader, read, outputs, staging, tile, overlap, predict, normalize,
                                             batch_size, progress)
        finally:
            outputs.close()
    for key, resampling in (("mask", "nearest"), ("probability", "average")):
        finish_cog(outputs.tiled[key], staging / names[key], resampling)
        outputs.tiled[key].unlink()
    features = camp_features(outputs.polygons.polygons(), grid, staging / names["probability"], min_area_m2)
    (staging / names["polygons"]).write_text(json.dumps(feature_collection(features)) + "\n")
    return {
        "scene": str(path), "outputs": names, "crs": grid.crs.to_string(), "width": grid.width,
        "height": grid.height, "transform": [float(v) for v in list(grid.transform)[:6]],
        "ground_sampling_distance_m": round(plan["gsd_m"], 4),
        "resampled_to": plan["resolution"], "pixels": outputs.pixels,
        "camp_area_m2": round(outputs.camp_area_m2, 2),
        "polygons": len(features), "polygon_area_m2": round(sum(f["properties"]["area_m2"] for f in features), 2),
        "windows": windows, "seconds": round(time.monotonic() - started, 2),
    }, grid


def _predict_resampled(reader: SceneReader, read, outputs: _SceneOutputs, staging: Path, tile: int, overlap: int,
                       predict, normalize, batch_size: int, progress) -> dict:
    """Predict on the resampled grid into a temporary probability raster, then warp it back (bilinear)
    onto the scene's grid strip by strip; the mask is the warped probability at the threshold."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.vrt import WarpedVRT
    from rasterio.windows import Window

    work = reader.grid
    temp = staging / ".resampled_probability.tif"
    writer = GridWriter(temp, work)
    try:
        def write(r0: int, probs: np.ndarray, valid: np.ndarray) -> None:
            writer.write(r0, np.where(valid, np.rint(np.nan_to_num(probs) * 254), NODATA_OUT).astype(np.uint8))

        windows = sliding_probabilities(read, write, work.height, work.width, tile, overlap, predict, normalize,
                                        batch_size, progress)
    finally:
        writer.close()
    grid = outputs.grid
    with rasterio.open(temp) as src, WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                                               height=grid.height, resampling=Resampling.bilinear,
                                               nodata=NODATA_OUT) as vrt:
        for r0 in range(0, grid.height, tile):
            n = min(tile, grid.height - r0)
            values = vrt.read(1, window=Window(0, r0, grid.width, n))
            valid = reader.source_valid(r0, r0 + n) & (values != NODATA_OUT)
            outputs.write(r0, values.astype(np.float32) / 254.0, valid)
    temp.unlink()
    return windows


def _model_item_href(layout: RunLayout, model_item: str | None) -> str | None:
    if model_item:
        return model_item
    return str(layout.stac_item.resolve()) if layout.stac_item.is_file() else None


def predict_scenes(run_dir: Path, input_path: Path, out_dir: Path, *, threshold: float | None = None,
                   overlap: int | None = None, batch_size: int = 8, min_area_m2: float = 0.0, device: str = "cpu",
                   resample: bool = False, tta: bool = False, scene_uris: Mapping[str, str] | None = None,
                   model_item: str | None = None, model_reference: str | None = None,
                   progress: bool = True) -> dict:
    """Predict every scene of ``input_path`` with the model of ``run_dir`` into ``out_dir``.

    Args:
        run_dir: a run folder (or a model folder laid out like one) with ``stats.json`` and
            ``models/model.onnx``.
        input_path: a GeoTIFF/COG scene or a folder of them.
        out_dir: a new or empty folder, or one an earlier ``predict`` made (its files are replaced).
        threshold: camp probability threshold (default: the model's, from ``stats.json``).
        overlap: pixels neighbouring windows share (default: a quarter of the tile).
        batch_size: windows per ONNX Runtime call.
        min_area_m2: polygons smaller than this are dropped from the GeoJSON (not from the mask).
        device: ``cpu`` or ``cuda`` (the CUDA provider when ONNX Runtime has it; CPU otherwise).
        resample: predict a scene of another resolution at the training resolution instead of
            refusing it.
        tta: test-time augmentation: each batch of windows is predicted with its four flips and
            the mean probability taken (:mod:`components.ml.tta`), before windows are blended;
            four times the model calls.
        scene_uris: where each scene came from (e.g. its ``s3://`` URI), by local path, for links.
        model_item: the model's STAC item href (default: the run's ``metadata/stac_item.json``).
        model_reference: how the model was named (e.g. ``models:/NAME@champion``), recorded.
        progress: draw a progress line on stderr.

    Returns:
        The ``predictions.json`` document.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, layout.onnx, stage="predict")
    digests = verify(layout, ["statistics", "models"])
    stats = read_json(layout.stats)
    prep = Preprocessing.from_stats(stats)
    threshold = prep.threshold if threshold is None else threshold
    overlap = prep.image_size // 4 if overlap is None else overlap
    _check_parameters(prep, threshold, overlap, batch_size, min_area_m2, tta)
    trained = training_resolution(stats)
    input_path, out_dir = Path(input_path), Path(out_dir)
    scenes = list_scenes(input_path)
    plans = [_plan_scene(p, prep, trained, resample) for p in scenes]  # every scene checked first
    stems = [p.stem for p in scenes]
    if len(set(stems)) != len(stems):
        raise ParameterError(f"{shown(input_path)}: two scenes share a name ({', '.join(sorted(stems))})")
    session = onnx_session(layout.onnx, device=device)
    provider = session.get_providers()[0]
    if device == "cuda" and provider != "CUDAExecutionProvider":
        print("warning: --device cuda: ONNX Runtime has no CUDA provider here; predicting on the CPU",
              file=sys.stderr)
    data_dir = input_path if input_path.is_dir() else None  # never write into a folder of scenes
    with open_output(out_dir, "predict", PREDICTION, data_dir=data_dir), gdal_env():
        staging = Path(tempfile.mkdtemp(prefix=".predict.", suffix=".partial", dir=out_dir))
        try:
            entries = []
            for plan in plans:
                entry, grid = _predict_scene(plan, session, prep, staging, threshold, overlap, batch_size,
                                             min_area_m2, progress, tta)
                names = entry["outputs"]
                href = (scene_uris or {}).get(str(plan["path"]), str(Path(plan["path"]).resolve()))
                item = build_prediction_item(
                    Path(plan["path"]).stem, href, grid, grid.footprint_wgs84(),
                    {k: staging / names[k] for k in ("mask", "probability", "polygons")},
                    staging / names["stac_item"], _model_item_href(layout, model_item),
                    {"camp:threshold": threshold, "camp:tta": tta, "camp:camp_area_m2": entry["camp_area_m2"],
                     "camp:pixels": entry["pixels"], "camp:polygons": entry["polygons"]})
                validate_prediction_item(item)
                write_json(staging / names["stac_item"], item)
                entry["scene"] = href
                entries.append(entry)
            document = {
                "model": {"reference": model_reference or str(run_dir), "run": str(layout.root.resolve()),
                          "onnx": str(layout.onnx.resolve()),
                          "lineage": {"statistics": digests["statistics"], "models": digests.get("models")},
                          "tile": prep.image_size, "bands": list(prep.bands),
                          "training_ground_sampling_distance_m": trained},
                "parameters": {"threshold": threshold, "overlap": overlap, "batch_size": batch_size,
                               "min_area_m2": min_area_m2, "device": device, "provider": provider,
                               "resample": resample, **tta_record(tta)},
                "scenes": entries,
            }
            write_json(staging / SUMMARY, document)
            replace_entries(out_dir, staging, last=SUMMARY)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return document

