"""STAC generation: the item validates offline, describes every artifact, and is enough on its own.

The run folder is a copy of the shared ``trained_run`` fixture (the main job on the sample data),
so these tests never alter it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest

from components.contracts.errors import RunFolderError, ValidationFailed
from components.contracts.run_layout import RunLayout
from components.stages.stac import build_item, build_stac_item
from components.standards.stac_validation import VENDORED_SCHEMAS_DIR, validate_item
from tests.support.paths import SHARED


@pytest.fixture(scope="module")
def source_run(trained_run, tmp_path_factory) -> Path:
    """A copy of the shared trained run (after every stage), private to this module."""
    target = tmp_path_factory.mktemp("stac_trained") / "run"
    shutil.copytree(trained_run, target)
    return target


@pytest.fixture
def run_dir(source_run, tmp_path) -> Path:
    """A private copy of the run, so a test may break it."""
    target = tmp_path / "run"
    shutil.copytree(source_run, target)
    shutil.rmtree(RunLayout(target).metadata_dir)  # the item and the code beside it
    return target


@pytest.fixture(scope="module")
def item(source_run, tmp_path_factory) -> tuple[Path, dict]:
    target = tmp_path_factory.mktemp("stac_item") / "run"
    shutil.copytree(source_run, target)
    path = build_stac_item(target)
    return path, json.loads(path.read_text())


def test_item_validates_and_is_recorded(item):
    path, doc = item
    validate_item(doc)
    layout = RunLayout(path.parents[1])
    assert path == layout.stac_item
    assert json.loads(layout.summary.read_text())["stac_item"] == "metadata/stac_item.json"
    props = doc["properties"]
    assert doc["stac_version"] == "1.1.0"
    assert "https://stac-extensions.github.io/mlm/v1.5.2/schema.json" in doc["stac_extensions"]
    config = json.loads(layout.config.read_text())
    assert props["mlm:architecture"].startswith("U-Net (") and config["architecture"] == "unet"
    assert props["mlm:tasks"] == ["semantic-segmentation"]
    assert props["mlm:pretrained"] is False and props["mlm:pretrained_source"] is None
    report = json.loads(layout.export_report.read_text())
    assert props["mlm:total_parameters"] == report["total_parameters"]
    assert props["mlm:memory_size"] > 4 * props["mlm:total_parameters"] * 0.99
    stats = json.loads(layout.stats.read_text())
    if stats.get("footprint"):
        assert doc["bbox"] == stats["footprint"]["bbox"] and doc["geometry"]["type"] == "Polygon"
    history = json.loads(layout.history.read_text())
    # no imagery period given: datetime is the training's end, and the item says the period is unknown
    assert "start_datetime" not in props and props["datetime"] == history["finished_at"]
    assert props["processing:datetime"] == history["finished_at"]
    assert "capture period is unknown" in props["description"] and "unknown" in props["camp:time_source"]
    assert history["started_at"] in props["processing:lineage"]
    metrics = json.loads(layout.metrics.read_text())
    assert props["camp:test_metrics"]["iou"] == metrics["iou"]
    roles = {k: a["roles"] for k, a in doc["assets"].items()}
    assert "mlm:model" in roles["model"] and "mlm:weights" in roles["weights"]
    assert "mlm:checkpoint" in roles["checkpoint"]
    assert any(k.startswith("overlay-") for k in doc["assets"])


def test_assets_sizes_and_checksums_match_files(item):
    path, doc = item
    for key, asset in doc["assets"].items():
        target = (path.parent / asset["href"]).resolve()
        assert target.is_file(), key
        data = target.read_bytes()
        assert asset["file:size"] == len(data), key
        assert asset["file:checksum"] == "1220" + hashlib.sha256(data).hexdigest(), key
        assert asset["file:local_path"] == target.relative_to(path.parents[1]).as_posix()
    expected = {"models/model.onnx", "models/model.pt", "models/model.pth", "checkpoints/best.ckpt",
                "models/export_report.json", "evaluation/metrics.json", "stats.json",
                "train_config.json", "training_history.json"}
    assert expected <= {a["file:local_path"] for a in doc["assets"].values()}


def test_consumer_reproduces_evaluation_predictions_from_the_item_alone(item):
    """Uses only the item JSON, numpy, PIL and onnxruntime; compares with the project's path."""
    import onnxruntime as ort
    from PIL import Image

    path, doc = item
    props = doc["properties"]
    onnx_asset = next(a for a in doc["assets"].values()
                      if "mlm:model" in a["roles"] and a.get("mlm:artifact_type") == "onnx")
    spec = props["mlm:input"][0]
    out = props["mlm:output"][0]
    assert spec["input"]["dim_order"] == ["batch", "bands", "height", "width"]
    band_index = {"red": 0, "green": 1, "blue": 2}
    # real chips of the run's test split, as stored (the manifest is plain JSON)
    manifest = json.loads((path.parents[1] / "dataset_manifest.json").read_text())
    test_chips = [Path(manifest["dataset_root"]) / p["chip"] for p in manifest["pairs"] if p["split"] == "test"]
    chips = []
    for chip_path in test_chips[:3]:
        rgb = np.asarray(Image.open(chip_path).convert("RGB"))
        chips.append(np.stack([rgb[:, :, band_index[b]] for b in spec["bands"]]))
    raw = np.stack(chips).astype(np.float32)
    assert list(raw.shape[1:]) == spec["input"]["shape"][1:]
    scaled = np.empty_like(raw)
    for i, scaling in enumerate(spec["value_scaling"]):
        assert scaling["type"] == "z-score"
        scaled[:, i] = (raw[:, i] - np.float32(scaling["mean"])) / np.float32(scaling["stddev"])
    session = ort.InferenceSession(str(path.parent / onnx_asset["href"]),
                                   providers=["CPUExecutionProvider"])
    probs = session.run([out["name"]], {spec["name"]: scaled.astype(spec["input"]["data_type"])})[0]
    assert list(probs.shape[1:]) == out["result"]["shape"][1:]
    assert 0.0 <= probs.min() and probs.max() <= 1.0
    ours = (probs[:, 0] >= props["mlm:hyperparameters"]["threshold"]).astype(np.uint8)
    assert {c["value"] for c in out["classification:classes"]} == {0, 1}

    from components.contracts.preprocessing import Preprocessing
    from components.ml.inference import onnx_session, predict_class_maps

    layout = RunLayout(path.parents[1])
    prep = Preprocessing.from_stats(json.loads(layout.stats.read_text()))
    expected = predict_class_maps(onnx_session(layout.onnx), prep, np.stack(chips))
    np.testing.assert_array_equal(ours, expected)


def test_invalid_item_fails_validation(item):
    _, doc = item
    bad_task = copy.deepcopy(doc)
    bad_task["properties"]["mlm:tasks"] = ["camp-finding"]
    with pytest.raises(ValidationFailed, match="mlm:tasks"):
        validate_item(bad_task)
    bad_scaling = copy.deepcopy(doc)
    bad_scaling["properties"]["mlm:input"][0]["value_scaling"] = {"type": "z-score", "mean": 1}
    with pytest.raises(ValidationFailed, match="value_scaling"):
        validate_item(bad_scaling)
    bad_checksum = copy.deepcopy(doc)
    bad_checksum["assets"]["model"]["file:checksum"] = "not-hex"
    with pytest.raises(ValidationFailed, match="file:checksum"):
        validate_item(bad_checksum)
    unknown_ext = copy.deepcopy(doc)
    unknown_ext["stac_extensions"].append("https://stac-extensions.github.io/eo/v9.9.9/schema.json")
    with pytest.raises(ValidationFailed, match="no local schema"):
        validate_item(unknown_ext)


def test_stage_writes_nothing_when_the_item_is_invalid(run_dir, monkeypatch):
    import components.stages.stac as stage

    real = stage.build_item

    def broken(*args, **kwargs):
        doc = real(*args, **kwargs)
        doc["properties"]["mlm:input"][0]["value_scaling"][0] = {"type": "z-score", "mean": 1.0}
        return doc

    monkeypatch.setattr(stage, "build_item", broken)
    layout = RunLayout(run_dir)
    with pytest.raises(ValidationFailed):
        stage.build_stac_item(run_dir)
    assert not layout.stac_item.exists()
    assert not list(layout.metadata_dir.glob("*")) if layout.metadata_dir.exists() else True


def test_missing_artifact_is_a_run_folder_error(run_dir):
    layout = RunLayout(run_dir)
    layout.onnx.unlink()
    with pytest.raises(RunFolderError, match="model.onnx"):
        build_stac_item(run_dir)
    assert not layout.stac_item.exists()


def _restamp(layout: RunLayout) -> None:
    """After a test changed ``stats.json`` on purpose: record the new digest in the later artifacts
    (their lineage would otherwise refuse the folder as mixed) and drop the DLPK."""
    from components.contracts.lineage import file_digest

    statistics = file_digest(layout.stats)
    for path in (layout.history, layout.export_report):
        doc = json.loads(path.read_text())
        doc["lineage"]["statistics"] = statistics
        path.write_text(json.dumps(doc))
    metrics = json.loads(layout.metrics.read_text())
    metrics["lineage"] = {"statistics": statistics, "models": file_digest(layout.export_report)}
    layout.metrics.write_text(json.dumps(metrics))
    shutil.rmtree(layout.esri_dir, ignore_errors=True)


def test_null_footprint_is_documented_and_valid(run_dir):
    layout = RunLayout(run_dir)
    stats = json.loads(layout.stats.read_text())
    stats["footprint"] = None
    stats["footprint_reason"] = "no georeferenced chip or mask"
    layout.stats.write_text(json.dumps(stats))
    _restamp(layout)
    doc = json.loads(build_stac_item(run_dir).read_text())
    assert doc["geometry"] is None and "bbox" not in doc
    assert doc["properties"]["camp:footprint_reason"] == "no georeferenced chip or mask"
    assert "no georeferenced chip or mask" in doc["properties"]["description"]
    validate_item(doc)


def test_asset_base_hrefs(run_dir):
    base = "s3://bucket/prefix/model/1"
    doc = json.loads(build_stac_item(run_dir, asset_base=base).read_text())
    assert doc["assets"]["model"]["href"] == base + "/models/model.onnx"
    for asset in doc["assets"].values():
        assert asset["href"] == f"{base}/{asset['file:local_path']}"
    assert doc["links"] == [{"rel": "self", "href": base + "/metadata/stac_item.json",
                             "type": "application/geo+json"}]


def test_validation_never_touches_the_network(item, monkeypatch):
    _, doc = item

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted during validation")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    import urllib.request

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    validate_item(doc)
    dangling = copy.deepcopy(doc)
    dangling["stac_extensions"].append("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    with pytest.raises(ValidationFailed):
        validate_item(dangling)


def test_vendored_schemas_equal_the_shared_copies():
    shared = SHARED / "schemas" / "stac-extensions"
    if not shared.is_dir():
        pytest.skip(f"{shared} not available")
    vendored = VENDORED_SCHEMAS_DIR / "stac-extensions"
    names = {p.relative_to(vendored).as_posix() for p in vendored.glob("*/*/schema.json")}
    assert names == {p.relative_to(shared).as_posix() for p in shared.glob("*/*/schema.json")}
    for name in names:
        assert (vendored / name).read_bytes() == (shared / name).read_bytes(), name


def test_build_item_is_deterministic_apart_from_created(source_run):
    layout = RunLayout(source_run)
    a, b = build_item(layout), build_item(layout)
    a["properties"].pop("created"), b["properties"].pop("created")
    assert a == b


def test_registry_refuses_unknown_uris():
    from referencing.exceptions import Unretrievable

    from components.standards.stac_validation import _registry_for, schemas_dir

    registry, _ = _registry_for(str(schemas_dir()))
    with pytest.raises(Unretrievable):
        registry.get_or_retrieve("https://stac-extensions.github.io/eo/v1.1.0/schema.json")
    # every reference held by the declared schemas resolves locally
    for url in ("https://stac-extensions.github.io/mlm/v1.5.2/schema.json",
                "https://schemas.stacspec.org/v1.1.0/item-spec/json-schema/item.json"):
        assert registry.get_or_retrieve(url).value is not None
