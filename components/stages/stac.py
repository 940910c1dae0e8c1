"""STAC generation: one STAC 1.1.0 item with the MLM extension describing the evaluated model.

The item is written to ``metadata/stac_item.json`` of the run folder and lists every artifact of
the run as an asset (href, media type, roles, ``file:size``, ``file:checksum``). Its ``mlm:input``
and ``mlm:output`` are derived from the one preprocessing definition in ``stats.json``, so a
consumer that knows only the item gets the predictions of the evaluation stage. Field choices and
their meaning are documented in ``docs/stac.md``.

The item is validated offline against the official schemas (:mod:`components.standards.stac_validation`)
before it is written; an invalid item raises :class:`~components.contracts.errors.ValidationFailed` and
nothing is written.
"""

from __future__ import annotations

import hashlib
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping

from components import __version__
from components.contracts.errors import ParameterError, RunFolderError
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import (
    RunLayout,
    read_json,
    update_summary,
    write_json,
)
from components.standards.stac_validation import STAC_VERSION, validate_item

MLM = "https://stac-extensions.github.io/mlm/v1.5.2/schema.json"
FILE = "https://stac-extensions.github.io/file/v2.1.0/schema.json"
PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
CLASSIFICATION = "https://stac-extensions.github.io/classification/v1.1.0/schema.json"

ONNX_MEDIA_TYPE = "application/octet-stream; framework=onnx; profile=onnx"
TORCHSCRIPT_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=torchscript"
TORCH_MEDIA_TYPE = "application/octet-stream; framework=pytorch"
CHECKPOINT_MEDIA_TYPE = "application/octet-stream; framework=pytorch; profile=lightning-checkpoint"

#: Output classes of the class map (value, name, description, colour as RRGGBB).
CLASSES = (
    {"value": 0, "name": "background", "description": "Not part of a camp", "color_hint": "000000"},
    {"value": 1, "name": "camp", "description": "Refugee or IDP camp (buildings/shelters)",
     "color_hint": "FF0000"},
)
_SEMVER = re.compile(r"^(\d+)\.(\d+)\.(\d+)(\+[0-9A-Za-z.-]+)?")
_GEOGRAPHIC_CRS = {"EPSG:4326", "OGC:CRS84", "WGS84", "CRS84"}


def multihash_sha256(path: Path) -> str:
    """The ``file:checksum`` of ``path``: multihash sha2-256 (``1220`` + hex SHA-256)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return "1220" + digest.hexdigest()


def _iso(ts: float | datetime) -> str:
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


def _framework_version(raw: str) -> str:
    """A semantic version for ``mlm:framework_version`` (``2.13.0+cpu`` kept, ``2.5.0a0`` → ``2.5.0``)."""
    match = _SEMVER.match(str(raw))
    if not match:
        raise RunFolderError(f"export_report.json: torch_version {raw!r} is not a version number")
    full = match.group(0)
    return full if _SEMVER.fullmatch(str(raw)) else ".".join(match.groups()[:3])


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, (int, float)) and value > 1e9:
        return datetime.fromtimestamp(float(value), tz=timezone.utc)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)
    return None


def training_period(layout: RunLayout) -> tuple[str, str, str]:
    """Start and end (ISO 8601 UTC) of the training run, and where they came from.

    The training stage records ``started_at``/``finished_at`` in ``training_history.json``; a run
    folder without them falls back to file times: start = when ``stats.json`` was written
    (training cannot start earlier), end = when ``training_history.json`` was (written last).
    """
    history = read_json(layout.history)
    start, end = _parse_time(history.get("started_at")), _parse_time(history.get("finished_at"))
    if start and end:
        return _iso(start), _iso(end), "training_history.json started_at/finished_at"
    first, last = layout.stats.stat().st_mtime, layout.history.stat().st_mtime
    return _iso(min(first, last)), _iso(last), "file modification times"


def _weights_summary(layout: RunLayout, config: Mapping[str, Any], report: Mapping[str, Any]) -> tuple[int, int]:
    """(total parameters, bytes of the weights) from the exported state dict.

    The network of ``train_config.json`` is rebuilt and the state dict loaded strictly, so the
    parameter count is that of the weights actually shipped; it must agree with the export report.
    ``mlm:memory_size`` is the bytes of every tensor in the state dict (parameters and buffers).
    """
    import torch

    from components.contracts.config import TrainConfig
    from components.ml.networks import InferenceModel, build_network, count_parameters

    try:
        state = torch.load(layout.state_dict, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - name the file, whatever torch says
        raise RunFolderError(f"{layout.state_dict}: not a loadable state dict ({exc})") from None
    tensors = [v for v in state.values() if isinstance(v, torch.Tensor)]
    memory = int(sum(t.numel() * t.element_size() for t in tensors))
    total = None
    try:
        model = InferenceModel(build_network(TrainConfig.from_dict(config)))
        model.load_state_dict(state, strict=True)
        total = count_parameters(model)
    except ParameterError:  # e.g. smp_unet without the optional extra: trust the export report
        pass
    except RuntimeError as exc:
        raise RunFolderError(
            f"{layout.state_dict}: does not match the network of {layout.config} ({exc})"
        ) from None
    reported = report.get("total_parameters")
    if total is None:
        if not isinstance(reported, int):
            raise RunFolderError(f"{layout.export_report}: total_parameters missing")
        total = reported
    elif isinstance(reported, int) and reported != total:
        raise RunFolderError(
            f"{layout.export_report}: total_parameters={reported} but {layout.state_dict} "
            f"holds {total}"
        )
    return total, memory


def _geometry(stats: Mapping[str, Any], layout: RunLayout) -> tuple[dict | None, list | None, str | None]:
    footprint = stats.get("footprint")
    if not footprint:
        reason = stats.get("footprint_reason") or "stats.json gives no footprint"
        return None, None, reason
    crs = str(footprint.get("crs", "EPSG:4326")).upper()
    if crs not in _GEOGRAPHIC_CRS:
        raise RunFolderError(
            f"{layout.stats}: footprint crs {crs} is not WGS 84 (EPSG:4326), which STAC requires"
        )
    geometry, bbox = footprint.get("geometry"), footprint.get("bbox")
    if not geometry or not bbox or len(bbox) != 4:
        raise RunFolderError(f"{layout.stats}: footprint lacks a GeoJSON geometry or a 4-number bbox")
    return dict(geometry), [float(v) for v in bbox], None


class _Assets:
    """Collects assets with hrefs, sizes and checksums relative to the item or an asset base."""

    def __init__(self, layout: RunLayout, asset_base: str | None) -> None:
        self.layout = layout
        self.base = asset_base if asset_base is None or asset_base.endswith("/") else asset_base + "/"
        self.assets: dict[str, dict] = {}

    def href(self, relative: str) -> str:
        if self.base is not None:
            return self.base + relative
        return os.path.relpath(self.layout.root / relative, self.layout.metadata_dir).replace(os.sep, "/")

    def add(self, key: str, path: Path, media_type: str, roles: list[str], title: str,
            description: str | None = None, **extra: Any) -> None:
        relative = path.relative_to(self.layout.root).as_posix()
        asset = {"href": self.href(relative), "type": media_type, "title": title}
        if description:
            asset["description"] = description
        asset["roles"] = roles
        asset.update(extra)
        asset["file:size"] = path.stat().st_size
        asset["file:checksum"] = multihash_sha256(path)
        asset["file:local_path"] = relative
        self.assets[key] = asset


def _optional_files(paths: Iterable[Path]) -> list[Path]:
    return sorted(p for p in paths if p.is_file())


def check_model_name(model_name: str) -> None:
    """Raise ParameterError unless ``model_name`` is a valid ``mlm:name`` (MLM's pattern)."""
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9_.\-\s]+[a-zA-Z0-9]", model_name):
        raise ParameterError(
            f"model_name={model_name!r}: use at least 3 letters, digits, '_', '.', '-' or spaces, "
            "starting with a letter and ending with a letter or digit"
        )


def build_item(layout: RunLayout, model_name: str = "camp-segmentation",
               asset_base: str | None = None) -> dict:
    """Build (without validating or writing) the STAC item dict for the run in ``layout``."""
    required = (layout.stats, layout.config, layout.onnx, layout.torchscript, layout.state_dict,
                layout.checkpoint, layout.export_report, layout.metrics, layout.history)
    layout.require(*required, stage="stac")
    stats = read_json(layout.stats)
    config = read_json(layout.config)
    report = read_json(layout.export_report)
    metrics = read_json(layout.metrics)
    try:
        prep = Preprocessing.from_stats(stats)
    except (KeyError, TypeError, ValueError) as exc:
        raise RunFolderError(f"{layout.stats}: bad preprocessing block ({exc})") from None
    check_model_name(model_name)

    total_parameters, memory_size = _weights_summary(layout, config, report)
    geometry, bbox, footprint_reason = _geometry(stats, layout)
    start, end, period_source = training_period(layout)
    size = prep.image_size
    n_bands = len(prep.bands)
    onnx_checksum = multihash_sha256(layout.onnx)
    item_id = f"{model_name.replace(' ', '-')}-{onnx_checksum[4:16]}"
    metric_names = ("iou", "f1", "precision", "recall", "accuracy")
    test_metrics = {k: metrics[k] for k in (*metric_names, "threshold", "num_chips", "num_pixels",
                                            "confusion_matrix", "baselines", "split") if k in metrics}
    missing_metrics = [k for k in metric_names if k not in metrics]
    if missing_metrics:
        raise RunFolderError(f"{layout.metrics}: lacks {', '.join(missing_metrics)}")

    description = (
        f"U-Net semantic segmentation of refugee/IDP camps in {n_bands}-band ({', '.join(prep.bands)}) "
        f"aerial chips of {size}x{size} pixels, trained from scratch. Input: float32 "
        f"(N, {n_bands}, {size}, {size}), each band z-scored on raw pixel values as mlm:input "
        "value_scaling states. Output 'probabilities': float32 (N, 1, H, W) camp probability in "
        f"[0, 1] (the sigmoid is inside the model); class map = probability >= {prep.threshold} "
        "(camp:threshold) -> 1 camp, else 0 background. Test IoU "
        f"{float(metrics['iou']):.4f}, F1 {float(metrics['f1']):.4f}."
    )
    if footprint_reason:
        description += f" No footprint: {footprint_reason}."

    value_scaling = [
        {"type": "z-score", "mean": float(m), "stddev": float(s)}
        for m, s in zip(prep.raw_mean.tolist(), prep.raw_std.tolist())
    ]
    properties: dict[str, Any] = {
        "title": f"{model_name}: camp segmentation U-Net",
        "description": description,
        "datetime": None,
        "start_datetime": start,
        "end_datetime": end,
        "created": _iso(datetime.now(timezone.utc)),
        "bands": [
            {"name": band, "description": f"{band} channel of the chip as stored",
             "data_type": str(stats.get("dtype", "uint8"))}
            for band in prep.bands
        ],
        "mlm:name": model_name,
        "mlm:architecture": "U-Net",
        "mlm:tasks": ["semantic-segmentation"],
        "mlm:framework": "PyTorch",
        "mlm:framework_version": _framework_version(report.get("torch_version", "")),
        "mlm:memory_size": memory_size,
        "mlm:total_parameters": total_parameters,
        "mlm:pretrained": False,
        "mlm:pretrained_source": None,
        "mlm:batch_size_suggestion": int(config.get("batch_size", 8)),
        "mlm:accelerator": "amd64",
        "mlm:accelerator_constrained": False,
        "mlm:accelerator_summary": (
            "The ONNX model (main asset) runs on CPU with ONNX Runtime's CPUExecutionProvider; the "
            "PyTorch artifacts also run on CUDA GPUs."
        ),
        "mlm:input": [{
            "name": "input",
            "description": (
                f"Chip pixels as stored (0-{prep.max_value:g}) in band order {list(prep.bands)}, "
                "NCHW float32, each band scaled as (raw - mean) / stddev with the per-band "
                "value_scaling below (training-split statistics on the raw pixel scale)."
            ),
            "bands": list(prep.bands),
            "input": {"shape": [-1, n_bands, size, size],
                      "dim_order": ["batch", "bands", "height", "width"],
                      "data_type": "float32"},
            "value_scaling": value_scaling,
            "resize_type": None,
            "pre_processing_function": None,
        }],
        "mlm:output": [{
            "name": "probabilities",
            "description": (
                "Camp probability per pixel in [0, 1] (sigmoid inside the model; apply no second "
                f"sigmoid). Class map: probability >= {prep.threshold} -> 1 (camp), else 0 "
                "(background); the threshold is also given as camp:threshold."
            ),
            "tasks": ["semantic-segmentation"],
            "result": {"shape": [-1, 1, size, size],
                       "dim_order": ["batch", "channel", "height", "width"],
                       "data_type": "float32"},
            "classification:classes": [dict(c) for c in CLASSES],
            "post_processing_function": {
                "format": "python",
                "expression": "components.contracts.preprocessing:Preprocessing.classify",
                "description": f"class_map = (probabilities >= {prep.threshold}).astype(uint8)",
            },
        }],
        "mlm:hyperparameters": dict(config),
        "processing:lineage": (
            f"Trained by the campseg pipeline on {stats.get('dataset_uri', 'unknown dataset')} "
            f"(fingerprint {stats.get('fingerprint', 'unknown')}); exported to ONNX opset "
            f"{report.get('opset', '?')}, TorchScript and a state dict; evaluated on the "
            f"{metrics.get('split', 'test')} split."
        ),
        "processing:software": {"campseg": __version__,
                                "torch": str(report.get("torch_version", "unknown"))},
        "camp:threshold": float(prep.threshold),
        "camp:output_range": [0.0, 1.0],
        "camp:test_metrics": test_metrics,
        "camp:dataset": {"uri": stats.get("dataset_uri"), "fingerprint": stats.get("fingerprint"),
                         "counts": stats.get("counts"), "split_seed": stats.get("seed")},
        "camp:export_parity": {k: report[k] for k in ("max_abs_diff_onnx", "max_abs_diff_torchscript")
                               if k in report},
        "camp:footprint_reason": footprint_reason,
        "camp:time_source": period_source,
    }

    assets = _Assets(layout, asset_base)
    # STAC 1.1 allows Item-level ``bands`` only when some asset carries ``bands`` too, and MLM
    # needs the Item-level list for the names in mlm:input: the model assets name the bands.
    model_bands = {"bands": [{"name": band} for band in prep.bands]}
    assets.add("model", layout.onnx, ONNX_MEDIA_TYPE, ["mlm:model", "mlm:compiled", "model", "data"],
               "ONNX model (main runtime)",
               "InferenceModel (U-Net + sigmoid) in ONNX; input 'input', output 'probabilities', "
               "dynamic batch. Runs with ONNX Runtime on CPU.",
               **model_bands, **{"mlm:artifact_type": "onnx"})
    assets.add("torchscript", layout.torchscript, TORCHSCRIPT_MEDIA_TYPE,
               ["mlm:model", "mlm:compiled", "model"], "TorchScript model",
               "TorchScript of InferenceModel (saved with torch.jit.save); load with torch.jit.load.",
               **model_bands, **{"mlm:artifact_type": "torch.jit.save"})
    assets.add("weights", layout.state_dict, TORCH_MEDIA_TYPE, ["mlm:model", "mlm:weights", "weights"],
               "State dict", "torch.save of InferenceModel.state_dict(); needs the network definition "
               "(components.ml.networks) and mlm:hyperparameters to rebuild.",
               **model_bands, **{"mlm:artifact_type": "torch.save"})
    assets.add("checkpoint", layout.checkpoint, CHECKPOINT_MEDIA_TYPE,
               ["mlm:model", "mlm:checkpoint", "checkpoint"], "Lightning checkpoint (best val IoU)",
               "Lightning checkpoint with optimizer state and hyperparameters.",
               **model_bands, **{"mlm:artifact_type": "lightning.pytorch.Trainer.save_checkpoint"})
    json_files = [
        ("stats", layout.stats, "Dataset statistics and preprocessing definition"),
        ("dataset-manifest", layout.splits, "Validated chip/mask pairs and their splits"),
        ("train-config", layout.config, "Training configuration"),
        ("training-history", layout.history, "Per-epoch training and validation metrics"),
        ("export-report", layout.export_report, "Export parity report"),
        ("metrics", layout.metrics, "Evaluation metrics"),
    ]
    for key, path, title in json_files:
        if path.is_file():
            assets.add(key, path, "application/json", ["metadata"], title)
    for path in _optional_files(layout.evaluation_dir.glob("*.png")):
        assets.add(f"figure-{path.stem}", path, "image/png", ["overview", "visual"],
                   path.stem.replace("_", " ").capitalize())
    for path in _optional_files(layout.overlays_dir.glob("*.png")):
        assets.add(f"overlay-{path.stem}", path, "image/png", ["overview", "visual"],
                   f"Overlay {path.stem}: image, truth, prediction")
    for path in _optional_files(layout.esri_dir.glob("*.dlpk")):
        assets.add(f"dlpk-{path.stem}", path, "application/zip", ["mlm:model", "model", "esri"],
                   f"Esri deep learning package {path.name}",
                   "Esri model definition (.emd), Python raster function and the ONNX/PyTorch model.",
                   **{"mlm:artifact_type": "esri.dlpk"})

    links = []
    if asset_base is not None:
        links.append({"rel": "self", "href": assets.href("metadata/stac_item.json"),
                      "type": "application/geo+json"})
    item: dict[str, Any] = {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [MLM, FILE, PROCESSING, CLASSIFICATION],
        "id": item_id,
        "geometry": geometry,
    }
    if bbox is not None:
        item["bbox"] = bbox
    item.update({"properties": properties, "links": links, "assets": assets.assets})
    return item


def build_stac_item(run_dir: Path, model_name: str = "camp-segmentation",
                    asset_base: str | None = None) -> Path:
    """Write ``metadata/stac_item.json`` for the run in ``run_dir`` and record it in the summary.

    Args:
        run_dir: the run folder (see ``docs/artifacts.md``).
        model_name: ``mlm:name`` of the model and the prefix of the item id.
        asset_base: when given (e.g. ``s3://bucket/prefix/model/1/``), asset hrefs are
            ``asset_base`` + the run-relative path and a ``self`` link is added; otherwise hrefs
            are relative to the item's folder (``../models/model.onnx``).

    Returns:
        The path of the item.

    Raises:
        RunFolderError: a required artifact is missing or inconsistent (nothing written).
        ValidationFailed: the item does not validate against the schemas (nothing written).
    """
    layout = RunLayout(Path(run_dir))
    item = build_item(layout, model_name=model_name, asset_base=asset_base)
    validate_item(item)
    path = write_json(layout.stac_item, item)
    update_summary(layout, stac_item=path)
    return path
