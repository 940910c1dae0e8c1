"""STAC generation: one STAC 1.1.0 item with the MLM extension describing the evaluated model.

The item is written to ``metadata/stac_item.json`` of the run folder, with the pre/post-processing
code it names (``metadata/campseg_processing.py``) beside it. :func:`build_item` reads like the
item's outline: identity and footprint, its time (the imagery's capture period when given, else the
training's end, said so), license and providers, the overview properties, the ``mlm:*`` model fields (:mod:`components.standards.stac_mlm`, with ``mlm:input``/``mlm:output``
derived from the one preprocessing definition in ``stats.json``, so a consumer that knows only
the item gets the predictions of the evaluation stage), provenance (``processing:*``, the training
time) and ``camp:*`` properties, and every artifact of the run (and the container images) as an asset (:mod:`components.standards.stac_assets`). Field choices and
their meaning are documented in ``docs/stac.md``.

The item is validated offline against the official schemas (:mod:`components.standards.stac_validation`)
before it is written; an invalid item raises :class:`~components.contracts.errors.ValidationFailed` and
nothing is written.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

from components import __version__
from components.contracts.errors import ParameterError, RunFolderError
from components.contracts.lineage import DEPENDS_ON, verify
from components.contracts.naming import check_model_name
from components.contracts.ownership import open_output
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout, atomic_path, read_json, update_summary, write_json
from components.standards import PROCESSING_CODE
from components.standards.stac_assets import FILE, multihash_sha256, run_assets
from components.standards.stac_mlm import CLASSIFICATION, MLM, PROCESSING_MODULE, mlm_properties
from components.standards.stac_validation import STAC_VERSION, validate_item

__all__ = ["build_item", "build_stac_item", "check_model_name", "check_stac_options", "imagery_period",
           "training_period"]

#: The item's ``license`` when none is given: STAC's word for "not an SPDX licence" (say which with --license).
DEFAULT_LICENSE = "other"
_SPDX_LIKE = re.compile(r"^[A-Za-z0-9.+() -]{1,100}$")

PROCESSING = "https://stac-extensions.github.io/processing/v1.2.0/schema.json"
_GEOGRAPHIC_CRS = {"EPSG:4326", "OGC:CRS84", "WGS84", "CRS84"}


def _iso(ts: float | datetime) -> str:
    when = ts if isinstance(ts, datetime) else datetime.fromtimestamp(ts, tz=timezone.utc)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")


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
    """(GeoJSON geometry, bbox, None) of the training data, or (None, None, why there is none)."""
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


def _read_run(layout: RunLayout) -> tuple[dict, dict, dict, dict, Preprocessing]:
    """The JSON files the item is built from, and the preprocessing of ``stats.json``."""
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
    return stats, config, report, metrics, prep


def _test_metrics(layout: RunLayout, metrics: Mapping[str, Any]) -> dict[str, Any]:
    """``camp:test_metrics``: every metric of the table and the evaluation's context fields."""
    from components.ml.metrics import METRIC_NAMES

    missing = [k for k in METRIC_NAMES if k not in metrics]
    if missing:
        raise RunFolderError(f"{layout.metrics}: lacks {', '.join(missing)}")
    keys = (*METRIC_NAMES, "threshold", "num_chips", "num_pixels", "confusion_matrix", "baselines", "split", "tta")
    return {k: metrics[k] for k in keys if k in metrics}


def imagery_period(period: tuple[str, str] | None) -> tuple[str, str] | None:
    """The imagery's capture period (ISO 8601 dates or times) as UTC times; None when unknown.

    Raises:
        ParameterError: a bound is not an ISO 8601 date/time, or the start is after the end.
    """
    if not period:
        return None
    bounds = []
    for label, value in zip(("start", "end"), period):
        parsed = _parse_time(value) if isinstance(value, str) else None
        if parsed is None:
            raise ParameterError(f"imagery {label} {value!r}: expected an ISO 8601 date or time (e.g. 2023-04-01)")
        bounds.append(parsed)
    if bounds[0] > bounds[1]:
        raise ParameterError(f"imagery period {period[0]} .. {period[1]}: the start is after the end")
    return _iso(bounds[0]), _iso(bounds[1])


def _description(prep: Preprocessing, config: Mapping[str, Any], metrics: Mapping[str, Any],
                 footprint_reason: str | None, imagery: tuple[str, str] | None) -> str:
    """The item's ``description``: what the model takes and gives, its test scores, what is unknown."""
    from components.standards.stac_mlm import architecture

    size, n_bands, name = prep.image_size, len(prep.bands), prep.class_name
    description = (
        f"{architecture(config)} for semantic segmentation of {name} in {n_bands}-band "
        f"({', '.join(prep.bands)}) chips of {size}x{size} pixels. Input: float32 "
        f"(N, {n_bands}, {size}, {size}), each band z-scored on raw pixel values as mlm:input "
        f"value_scaling states. Output 'probabilities': float32 (N, 1, H, W) {name} probability in "
        f"[0, 1] (the sigmoid is inside the model); class map = probability >= {prep.threshold} "
        f"(mlm:hyperparameters.threshold) -> 1 {name}, else 0 background. Test IoU "
        f"{float(metrics['iou']):.4f}, F1 {float(metrics['f1']):.4f}."
    )
    if imagery is None:
        description += (" The imagery's capture period is unknown: datetime is when training finished "
                        "(processing:datetime), not when the images were taken.")
    if footprint_reason:
        description += f" No footprint: {footprint_reason}."
    return description


def _overview(model_name: str, prep: Preprocessing, stats: Mapping[str, Any], description: str,
              trained_end: str, imagery: tuple[str, str] | None) -> dict[str, Any]:
    """Title, description, the imagery's period (or the training's end), ``created``, ``gsd``, ``bands``."""
    when: dict[str, Any] = ({"datetime": None, "start_datetime": imagery[0], "end_datetime": imagery[1]}
                            if imagery else {"datetime": trained_end})
    gsd = (stats.get("ground_sampling_distance_m") or {}).get("median")
    properties = {
        "title": f"{model_name}: {prep.class_name} segmentation",
        "description": description,
        **when,
        "created": _iso(datetime.now(timezone.utc)),
        "bands": [
            {"name": band, "description": f"{band} channel of the chip as stored",
             "data_type": str(stats.get("dtype", "uint8"))}
            for band in prep.bands
        ],
    }
    if isinstance(gsd, (int, float)) and gsd > 0:
        properties["gsd"] = float(gsd)  # metres per pixel of the model input (after any resize)
    return properties


def _provenance(stats: Mapping[str, Any], report: Mapping[str, Any], metrics: Mapping[str, Any],
                history: Mapping[str, Any], start: str, end: str) -> dict[str, Any]:
    """``processing:*``: the lineage in words, when training finished, the software."""
    summary = history.get("summary") or {}
    seconds = summary.get("train_seconds")
    took = f" ({float(seconds):.0f} s" if isinstance(seconds, (int, float)) else " ("
    took += f" on {summary['accelerator']})" if summary.get("accelerator") else ")"
    return {
        "processing:lineage": (
            f"Trained by the campseg pipeline on {stats.get('dataset_uri', 'unknown dataset')} "
            f"(fingerprint {stats.get('fingerprint', 'unknown')}) from {start} to {end}{took}; exported "
            f"to ONNX opset {report.get('opset', '?')}, TorchScript and a state dict; evaluated on the "
            f"{metrics.get('split', 'test')} split."
        ),
        "processing:datetime": end,
        "processing:software": {"campseg": __version__,
                                "torch": str(report.get("torch_version", "unknown"))},
    }


def _providers(providers: Sequence[Mapping[str, Any]] | None) -> list[dict[str, Any]]:
    """The given providers (a name, optional roles, url, description), then campseg as processor."""
    out = []
    for provider in providers or ():
        name = str(provider.get("name") or "").strip()
        if not name:
            raise ParameterError(f"provider {dict(provider)!r}: needs a name")
        entry = {"name": name, "roles": list(provider.get("roles") or ["producer"])}
        entry.update({k: str(provider[k]) for k in ("url", "description") if provider.get(k)})
        out.append(entry)
    out.append({"name": "campseg", "roles": ["processor"],
                "description": f"campseg {__version__}: the pipeline that trained, exported and packaged the model"})
    return out


def _check_license(license: str) -> str:
    if not isinstance(license, str) or not _SPDX_LIKE.match(license):
        raise ParameterError(f"license={license!r}: give an SPDX identifier or expression (e.g. CC-BY-4.0, "
                             "MIT) or 'other'")
    return license


def check_stac_options(license: str = DEFAULT_LICENSE, providers: Sequence[Mapping[str, Any]] | None = None,
                       images: Mapping[str, str] | None = None, imagery: tuple[str, str] | None = None) -> None:
    """Refuse a bad license, provider or imagery period before any stage runs (ParameterError)."""
    _check_license(license)
    _providers(providers)
    imagery_period(imagery)


def _camp_properties(prep: Preprocessing, stats: Mapping[str, Any], report: Mapping[str, Any],
                     test_metrics: dict[str, Any], footprint_reason: str | None,
                     period_source: str, imagery: tuple[str, str] | None) -> dict[str, Any]:
    """The project's ``camp:*`` properties (threshold, test metrics, dataset, export parity...)."""
    return {
        "camp:threshold": float(prep.threshold),
        "camp:output_range": [0.0, 1.0],
        "camp:test_metrics": test_metrics,
        "camp:dataset": {"uri": stats.get("dataset_uri"), "fingerprint": stats.get("fingerprint"),
                         "counts": stats.get("counts"), "split_seed": stats.get("seed")},
        "camp:export_parity": {k: report[k] for k in ("max_abs_diff_onnx", "max_abs_diff_torchscript")
                               if k in report},
        "camp:footprint_reason": footprint_reason,
        "camp:time_source": ("imagery capture period (given)" if imagery else
                             f"datetime = training end; the imagery's capture period is unknown "
                             f"(training times from {period_source})"),
    }


def build_item(layout: RunLayout, model_name: str = "camp-segmentation", asset_base: str | None = None, *,
               license: str = DEFAULT_LICENSE, providers: Sequence[Mapping[str, Any]] | None = None,
               images: Mapping[str, str] | None = None,
               imagery: tuple[str, str] | None = None) -> dict:
    """Build (without validating or writing) the STAC item dict for the run in ``layout``.

    ``metadata/campseg_processing.py`` (the source-code asset) must already be in the run folder
    when ``build_stac_item`` calls this; see there for the other arguments.
    """
    stats, config, report, metrics, prep = _read_run(layout)
    lineage = verify(layout, DEPENDS_ON["stac"])
    check_model_name(model_name)
    _check_license(license)
    period = imagery_period(imagery)
    total_parameters, memory_size = _weights_summary(layout, config, report)
    geometry, bbox, footprint_reason = _geometry(stats, layout)
    start, end, period_source = training_period(layout)
    item_id = f"{model_name.replace(' ', '-')}-{multihash_sha256(layout.onnx)[4:16]}"
    test_metrics = _test_metrics(layout, metrics)
    resized = any(list(s) != [prep.image_size, prep.image_size] for s in stats.get("source_sizes") or [])

    description = _description(prep, config, metrics, footprint_reason, period)
    properties = _overview(model_name, prep, stats, description, end, period)
    properties["license"] = license
    properties["providers"] = _providers(providers)
    properties.update(mlm_properties(model_name, prep, config, report, total_parameters=total_parameters,
                                     memory_size=memory_size, resized=resized))
    properties.update(_provenance(stats, report, metrics, read_json(layout.history), start, end))
    properties.update(_camp_properties(prep, stats, report, test_metrics, footprint_reason, period_source, period))
    properties["campseg:lineage"] = lineage  # the digests of every artifact the item describes
    code = layout.metadata_dir / PROCESSING_CODE.name
    assets = run_assets(layout, asset_base, prep.bands, prep.class_name,
                        source_code=(code, f"{PROCESSING_MODULE}:classify") if code.is_file() else None,
                        images=images)

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


def build_stac_item(run_dir: Path, model_name: str = "camp-segmentation", asset_base: str | None = None, *,
                    license: str = DEFAULT_LICENSE, providers: Sequence[Mapping[str, Any]] | None = None,
                    images: Mapping[str, str] | None = None,
                    imagery: tuple[str, str] | None = None) -> Path:
    """Write ``metadata/stac_item.json`` (and the processing code beside it) for the run in ``run_dir``
    and record it in the summary.

    Args:
        run_dir: the run folder (see ``docs/artifacts.md``).
        model_name: ``mlm:name`` of the model and the prefix of the item id.
        asset_base: when given (e.g. ``s3://bucket/prefix/model/1/``), asset hrefs are
            ``asset_base`` + the run-relative path and a ``self`` link is added; otherwise hrefs
            are relative to the item's folder (``../models/model.onnx``).
        license: the item's ``license``: an SPDX identifier or expression, or ``other``.
        providers: who made the data or the model: mappings with ``name`` and optional ``roles``
            (default ``["producer"]``), ``url``, ``description``; campseg is added as processor.
        images: the container images the pipeline ran in (``{"cpu": ref, "cuda": ref}``), as assets.
        imagery: the imagery's capture period (start, end; ISO 8601) when known: the item's
            ``start_datetime``/``end_datetime``. Unknown: ``datetime`` is when training finished,
            and the description says so.

    Returns:
        The path of the item.

    Raises:
        RunFolderError: a required artifact is missing or inconsistent, or the artifacts do not
            belong together (their lineage differs; nothing written).
        ParameterError: a bad license, provider or imagery period.
        ValidationFailed: the item does not validate against the schemas (nothing written).
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.stats, stage="stac")
    with open_output(layout.root, "stac", create=False):
        code = layout.metadata_dir / PROCESSING_CODE.name
        with atomic_path(code) as tmp:  # the item's source-code asset: its checksum is taken from here
            tmp.write_bytes(PROCESSING_CODE.read_bytes())
        try:
            item = build_item(layout, model_name=model_name, asset_base=asset_base, license=license,
                              providers=providers, images=images, imagery=imagery)
            validate_item(item)
        except BaseException:
            code.unlink(missing_ok=True)  # no item, no code beside it
            raise
        path = write_json(layout.stac_item, item)
        update_summary(layout, stac_item=path)
    return path
