"""The main job on the sample data: it learns, and its exports agree with each other."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.ml.networks import InferenceModel
from components.ml.scoring import onnx_predictor, score, torch_predictor
from components.ml.task import load_network
from components.stages.export import export_models
from tests.support.cli import run_components

ARTIFACT_KEYS = {"stats", "checkpoint", "state_dict", "torchscript", "onnx", "export_report", "metrics",
                 "confusion_matrix", "dlpk", "stac_item", "history", "train_config"}


def test_summary_names_every_artifact(trained_run, trained_summary):
    assert ARTIFACT_KEYS <= set(trained_summary)
    for key in ARTIFACT_KEYS:
        assert (trained_run / trained_summary[key]).is_file(), key


def test_main_job_learns_well_above_trivial_baselines(trained_run, trained_summary):
    metrics = json.loads((trained_run / "evaluation" / "metrics.json").read_text())
    baselines = metrics["baselines"]
    # all-background scores IoU 0; all-foreground scores the positive fraction (~0.08 here).
    # A model that tells camps from shelter-coloured distractors gets far above both.
    assert metrics["iou"] >= 0.5 > 3 * baselines["all_foreground_iou"]
    assert metrics["split"] == "test" and metrics["num_chips"] > 0
    assert trained_summary["test_metrics"]["iou"] == metrics["iou"]
    cm = metrics["confusion_matrix"]
    assert cm["tp"] + cm["fp"] + cm["fn"] + cm["tn"] == metrics["num_pixels"]
    assert abs(metrics["iou"] - cm["tp"] / (cm["tp"] + cm["fp"] + cm["fn"])) < 1e-6
    assert list((trained_run / "evaluation" / "overlays").glob("*.png"))


def test_export_report_records_parity(trained_run):
    report = json.loads((trained_run / "models" / "export_report.json").read_text())
    assert report["max_abs_diff_onnx"] <= 1e-4 and report["max_abs_diff_torchscript"] <= 1e-4
    assert "probabilities" in report["output"]["description"]


def test_onnx_and_pytorch_give_the_same_metrics(trained_run):
    layout = RunLayout(trained_run)
    prep = Preprocessing.from_stats(json.loads(layout.stats.read_text()))
    pairs = [p for p in read_manifest(layout) if p.split == "test"]
    model = InferenceModel(load_network(layout.checkpoint))
    onnx_metrics, _ = score(pairs, onnx_predictor(layout.onnx, prep), prep)
    torch_metrics, _ = score(pairs, torch_predictor(model, prep), prep)
    for key in ("iou", "f1", "precision", "recall", "accuracy"):
        assert abs(onnx_metrics[key] - torch_metrics[key]) < 1e-4, key


def test_onnx_takes_any_batch_size(trained_run):
    import onnxruntime as ort

    session = ort.InferenceSession(str(trained_run / "models" / "model.onnx"), providers=["CPUExecutionProvider"])
    size = json.loads((trained_run / "stats.json").read_text())["preprocessing"]["image_size"]
    for n in (1, 3):
        out = session.run(None, {"input": np.zeros((n, 3, size, size), np.float32)})[0]
        assert out.shape == (n, 1, size, size) and 0 <= out.min() and out.max() <= 1


def test_parity_failure_publishes_nothing(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    shutil.rmtree(run / "models")
    with pytest.raises(Exception, match="parity failed"):
        export_models(run, tolerance=-1.0)  # no model can pass a negative tolerance
    assert not (run / "models").exists()
    assert not list(run.glob(".models.*"))


def test_evaluate_a_trained_run_on_another_folder(trained_run, tmp_path):
    from components.data.sample_data import generate_sample_dataset

    region = generate_sample_dataset(tmp_path / "region", n_chips=8, size=128, seed=99)
    run_components("evaluate", "--run", str(trained_run), "--data", str(region), "--out", str(tmp_path / "eval"))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"iou", "f1", "precision", "recall", "accuracy"} <= set(metrics)
    assert metrics["num_chips"] == 8 and metrics["split"] == "all"
    assert metrics["iou"] > 2 * metrics["baselines"]["all_foreground_iou"]
    assert (tmp_path / "eval" / "confusion_matrix.png").is_file()


def test_sample_generator_cli_is_deterministic(tmp_path):
    for name in ("a", "b"):
        run_components("sample-data", "--out", str(tmp_path / name), "--chips", "3", "--size", "64")
    for sub in ("chips", "labels"):
        a = sorted((tmp_path / "a" / sub).iterdir())
        assert [p.read_bytes() for p in a] == [(tmp_path / "b" / sub / p.name).read_bytes() for p in a]
