"""What users see, checked on a run trained with ``--class-name building`` and resized chips:
the figures and report, the class name everywhere, and each STAC/DLPK metadata point of issue 13."""

from __future__ import annotations

import importlib.util
import json
import re
import struct
import zipfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from components.contracts.errors import ParameterError
from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout
from components.stages.dlpk import package_dlpk
from components.stages.stac import build_item
from components.standards.stac_validation import validate_item
from tests.support.cli import run_components


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory) -> Path:
    """One epoch on the sample chips (128 px) resized to 64 px, the class called building."""
    out = tmp_path_factory.mktemp("truth") / "run"
    run_components("all", "--data", str(sample_data), "--out", str(out), "--epochs", "1", "--image-size", "64",
                   "--class-name", "building", "--license", "CC-BY-4.0", "--provider", "Field team",
                   "--container-image", "cpu=registry.example/campseg:1")
    return out


@pytest.fixture(scope="module")
def item(run) -> dict:
    return json.loads(RunLayout(run).stac_item.read_text())


def _png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", head[16:24])


def test_figures_exist_and_are_listed_in_the_summary(run):
    layout = RunLayout(run)
    summary = json.loads(layout.summary.read_text())
    assert summary["training_curves"] == "evaluation/training_curves.png"
    assert summary["report"] == "evaluation/report.html"
    assert summary["overlays"] == {role: f"evaluation/overlays/{role}.png" for role in ("best", "median", "worst")}
    for path in (summary["training_curves"], *summary["overlays"].values(), summary["confusion_matrix"]):
        width, height = _png_size(run / path)
        assert width > 300 and height > 200
    history = json.loads(layout.history.read_text())
    assert all("lr" in row and "train_iou" in row and "val_loss" in row for row in history["epochs"])


def test_overlays_are_the_best_median_and_worst_chip_by_iou(run):
    metrics = json.loads(RunLayout(run).metrics.read_text())
    chosen = metrics["overlays"]
    test_stems = {p["stem"] for p in json.loads(RunLayout(run).splits.read_text())["pairs"] if p["split"] == "test"}
    assert {c["stem"] for c in chosen.values()} <= test_stems
    ious = {role: c["iou"] for role, c in chosen.items()}
    if None not in ious.values():
        assert ious["best"] >= ious["median"] >= ious["worst"]
    for chip in chosen.values():
        union = chip["tp"] + chip["fp"] + chip["fn"]
        assert chip["iou"] == (chip["tp"] / union if union else None)


def test_report_html_is_self_contained_and_names_the_class(run):
    page = RunLayout(run).report_html.read_text()
    assert page.count("data:image/png;base64,") >= 5  # curves, confusion matrix, three overlays
    assert "src=\"http" not in page and "href=\"http" not in page
    text = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", page)  # base64 may spell anything
    assert "building" in text and "camp" not in text.lower()


def test_class_name_reaches_stats_stac_and_emd(run, item):
    stats = json.loads(RunLayout(run).stats.read_text())
    assert Preprocessing.from_stats(stats).class_name == "building"
    classes = item["properties"]["mlm:output"][0]["classification:classes"]
    assert [(c["value"], c["name"]) for c in classes] == [(0, "background"), (1, "building")]
    with zipfile.ZipFile(next(RunLayout(run).esri_dir.glob("*.dlpk"))) as archive:
        emd = json.loads(archive.read("camp-segmentation.emd"))
    assert [(c["Value"], c["Name"]) for c in emd["Classes"]] == [(0, "background"), (1, "building")]
    assert "camp" not in item["properties"]["description"].lower().replace("campseg", "")


def test_a_bad_class_name_is_refused_before_anything_is_written(sample_data, tmp_path):
    out = tmp_path / "run"
    proc = run_components("stats", "--data", str(sample_data), "--out", str(out), "--class-name", "", check=False)
    assert proc.returncode == 2 and "error: class_name=''" in proc.stderr
    assert not (out / "stats.json").exists()


def test_item_validates_offline_with_threshold_hyperparameters_and_architecture(run, item):
    validate_item(item)
    props = item["properties"]
    config = json.loads(RunLayout(run).config.read_text())
    assert props["mlm:hyperparameters"]["threshold"] == 0.5
    assert props["mlm:hyperparameters"]["architecture"] == config["architecture"] == "unet"
    assert props["mlm:architecture"].startswith("U-Net (4 levels")


def test_seed_baseline_is_not_called_a_u_net():
    from components.standards.stac_mlm import architecture

    assert "U-Net" not in architecture({"architecture": "seed_baseline"})
    assert "resnet34" in architecture({"architecture": "smp_unet", "encoder_name": "resnet34"})


def test_post_processing_function_names_the_shipped_source_code(run, item):
    props = item["properties"]
    expression = props["mlm:output"][0]["post_processing_function"]["expression"]
    module_name, function = expression.split(":")
    code = item["assets"]["source-code"]
    assert "mlm:source_code" in code["roles"] and code["mlm:entrypoint"] == expression
    path = (RunLayout(run).metadata_dir / code["href"]).resolve()
    assert path.name == f"{module_name}.py"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    probabilities = np.random.default_rng(0).random((2, 1, 8, 8)).astype(np.float32)
    prep = Preprocessing.from_stats(json.loads(RunLayout(run).stats.read_text()))
    got = getattr(module, function)(probabilities, props["mlm:hyperparameters"]["threshold"])
    np.testing.assert_array_equal(got, prep.classify(probabilities[:, 0]))
    raw = np.random.default_rng(1).integers(0, 256, (2, 3, 8, 8)).astype(np.uint8)
    np.testing.assert_allclose(module.normalize(raw, props["mlm:input"][0]["value_scaling"]),
                               prep.normalize(raw), rtol=1e-6, atol=1e-5)


def test_only_assets_with_the_item_interface_carry_mlm_model(run, item):
    """Every ``mlm:model`` asset takes mlm:input and returns mlm:output; the others say what they are."""
    props = item["properties"]
    shape = [2 if d == -1 else d for d in props["mlm:input"][0]["input"]["shape"]]
    expected = [2 if d == -1 else d for d in props["mlm:output"][0]["result"]["shape"]]
    x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    models = {k: a for k, a in item["assets"].items() if "mlm:model" in a["roles"]}
    assert set(models) == {"model", "torchscript"}
    for key, asset in models.items():
        path = RunLayout(run).metadata_dir / asset["href"]
        if asset["mlm:artifact_type"] == "onnx":
            out = ort.InferenceSession(str(path)).run(None, {"input": x})[0]
        else:
            out = torch.jit.load(str(path)).eval()(torch.from_numpy(x)).detach().numpy()
        assert list(out.shape) == expected and out.min() >= 0 and out.max() <= 1, key
    assets = item["assets"]
    assert assets["weights"]["roles"] == ["mlm:weights", "weights"]
    assert assets["checkpoint"]["roles"] == ["mlm:checkpoint", "checkpoint"]
    assert "LOGITS" in assets["checkpoint"]["description"]
    dlpk = next(a for k, a in assets.items() if k.startswith("dlpk-"))
    assert "mlm:model" not in dlpk["roles"] and "no ONNX" in dlpk["description"]
    with zipfile.ZipFile(RunLayout(run).metadata_dir / dlpk["href"]) as archive:
        names = archive.namelist()
    assert "model.pt" in names and not any(n.endswith(".onnx") for n in names)


def test_resize_accelerator_processing_license_providers_and_images(run, item):
    props = item["properties"]
    stats = json.loads(RunLayout(run).stats.read_text())
    assert stats["source_sizes"] == [[128, 128]] and stats["preprocessing"]["image_size"] == 64
    assert props["mlm:input"][0]["resize_type"] == "interpolation-linear"
    assert props["mlm:accelerator"] is None and props["mlm:accelerator_constrained"] is False
    history = json.loads(RunLayout(run).history.read_text())
    assert props["processing:datetime"] == history["finished_at"] == props["datetime"]
    assert props["license"] == "CC-BY-4.0"
    assert props["providers"][0] == {"name": "Field team", "roles": ["producer"]}
    assert props["providers"][-1]["name"] == "campseg" and props["providers"][-1]["roles"] == ["processor"]
    image = item["assets"]["container-cpu"]
    assert image["href"] == "registry.example/campseg:1" and "runtime" in image["roles"]
    assert {"training_curves", "report"} <= {k.removeprefix("figure-") for k in item["assets"]} | {"report"}
    assert item["assets"]["report"]["type"] == "text/html"
    assert item["assets"]["overlay-worst"]["roles"] == ["overview", "visual"]


def test_a_known_imagery_period_is_the_items_time(run, tmp_path):
    layout = RunLayout(run)
    doc = build_item(layout, imagery=("2023-01-01", "2023-06-30T12:00:00Z"))
    validate_item(doc)
    props = doc["properties"]
    assert (props["datetime"], props["start_datetime"], props["end_datetime"]) == (
        None, "2023-01-01T00:00:00Z", "2023-06-30T12:00:00Z")
    assert "unknown" not in props["description"]
    with pytest.raises(ParameterError, match="start is after the end"):
        build_item(layout, imagery=("2024-01-01", "2023-01-01"))
    with pytest.raises(ParameterError, match="license="):
        build_item(layout, license="not a <licence>")


def test_the_emd_version_is_the_registry_version_when_known(run, tmp_path):
    import shutil

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    package = package_dlpk(copy, version="7")
    with zipfile.ZipFile(package) as archive:
        emd = json.loads(archive.read("camp-segmentation.emd"))
        readme = archive.read("README.md").decode()
    assert emd["Version"] == "7" and "(version 7)" in readme and "building" in readme


def test_pipeline_passes_model_class_name_to_the_statistics_and_training_to_evaluation(compiled):
    import pipeline
    from components.cli.pipeline import check_pipeline_arguments

    _, docs = compiled
    spec = docs["spec"]
    assert spec["root"]["inputDefinitions"]["parameters"]["model_class_name"]["defaultValue"] == "camp"
    found = {}
    for component in (spec["root"], *spec["components"].values()):
        found.update(component.get("dag", {}).get("tasks", {}))
    stats_inputs = found["dataset-statistics"]["inputs"]["parameters"]
    assert stats_inputs["class_name"]["componentInputParameter"].endswith("model_class_name")
    evaluate_inputs = found["evaluate-model"]["inputs"]["artifacts"]
    assert evaluate_inputs["training"]["taskOutputArtifact"]["producerTask"] == "train-model"
    with pytest.raises(ParameterError, match="--model-class-name"):
        check_pipeline_arguments({"model_class_name": "background"}, pipeline.build_pipeline())
