"""The pieces behind what users see: overlay choice, figures, class names, MLflow names and texts."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from components.contracts.errors import ParameterError
from components.contracts.preprocessing import Preprocessing, check_class_name
from components.data.pairs import IGNORE, Pair
from components.reporting.examples import ChipScores
from components.reporting.figures import chip_iou, outcome_counts, save_overlay, save_training_curves
from components.tracking.registry import version_description
from components.tracking.runs import metric_key, run_name

PREP = Preprocessing(8, ("red", "green", "blue"), (0.5,) * 3, (0.2,) * 3, threshold=0.5, class_name="building")


def _pair(stem: str) -> Pair:
    return Pair(stem, Path(f"{stem}.png"), Path(f"{stem}.png"), stem, "test")


def _chip(scores: ChipScores, stem: str, truth_pixels: int, predicted_pixels: int, overlap: int) -> None:
    """A chip whose truth and prediction cover the given numbers of pixels, ``overlap`` of them shared."""
    mask = np.zeros((8, 8), np.uint8)
    prob = np.zeros((8, 8), np.float32)
    flat_mask, flat_prob = mask.reshape(-1), prob.reshape(-1)
    flat_mask[:truth_pixels] = 1
    start = truth_pixels - overlap
    flat_prob[start:start + predicted_pixels] = 0.9
    scores(_pair(stem), mask, prob)


def test_outcome_counts_leave_no_data_out():
    truth = np.array([[1, 1, 0, IGNORE]], np.uint8)
    prediction = np.array([[1, 0, 1, 1]], np.uint8)
    counts = outcome_counts(truth, prediction)
    assert counts == {"tp": 1, "fp": 1, "fn": 1}
    assert chip_iou(counts) == pytest.approx(1 / 3)
    assert chip_iou({"tp": 0, "fp": 0, "fn": 0}) is None


def test_chip_scores_choose_best_median_and_worst():
    scores = ChipScores(PREP)
    _chip(scores, "perfect", 10, 10, 10)      # IoU 1
    _chip(scores, "half", 10, 10, 5)          # IoU 5/15
    _chip(scores, "most", 10, 10, 8)          # IoU 8/12
    _chip(scores, "missed", 10, 0, 0)         # IoU 0
    _chip(scores, "empty", 0, 0, 0)           # no foreground: no IoU, never chosen
    chosen = scores.chosen()
    assert {role: c.stem for role, c in chosen.items()} == {"best": "perfect", "median": "half", "worst": "missed"}
    assert chosen["median"].iou == pytest.approx(5 / 15)


def test_chip_scores_without_any_foreground_fall_back_to_names():
    scores = ChipScores(PREP)
    for stem in ("b", "a"):
        _chip(scores, stem, 0, 0, 0)
    assert [c.stem for c in scores.chosen().values()] == ["a", "b", "b"]
    assert ChipScores(PREP).chosen() == {}


def test_figures_draw_pngs(tmp_path):
    history = {"epochs": [{"epoch": e, "train_loss": 1 - e / 10, "val_loss": 1.1 - e / 10, "train_iou": e / 10,
                           "val_iou": e / 12, "lr": 1e-3 / (e + 1)} for e in range(4)]}
    curves = save_training_curves(history, tmp_path / "curves.png", "building")
    chip = np.random.default_rng(0).integers(0, 256, (3, 16, 16)).astype(np.uint8)
    truth = np.zeros((16, 16), np.uint8)
    truth[4:8] = 1
    truth[0, 0] = IGNORE
    overlay = save_overlay(chip, truth, np.roll(truth == 1, 2, axis=0).astype(np.uint8), 255.0,
                           tmp_path / "overlay.png", "building", "best test chip")
    for path in (curves, overlay):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000


@pytest.mark.parametrize("name", ["camp", "building", "informal settlement", "tent_2"])
def test_class_names_accepted(name):
    assert check_class_name(name) == name


@pytest.mark.parametrize("name", ["", " camp", "background", "a/b", "x" * 65, "<b>"])
def test_class_names_refused(name):
    with pytest.raises(ParameterError, match="class_name="):
        check_class_name(name)


def test_old_preprocessing_blocks_read_as_camp():
    block = PREP.to_dict()
    assert block["class_name"] == "building"
    del block["class_name"]
    assert Preprocessing.from_dict(block).class_name == "camp"


@pytest.mark.parametrize("name, key", [
    ("train_loss", "train/loss"), ("val_iou", "val/iou"), ("test_iou", "test/iou"), ("lr", "train/lr"),
    ("best_val_iou", "best/val_iou"), ("best_epoch", "best/epoch"), ("epochs_run", "train/epochs_run"),
    ("train_images_per_second", "train/images_per_second"), ("export_max_abs_diff_onnx", "export/max_abs_diff_onnx"),
    ("test_baseline_all_foreground_iou", "test/baseline_all_foreground_iou"),
    ("dataset.counts.test", "dataset/counts.test"), ("val/iou", "val/iou"), ("seconds", "seconds"),
])
def test_metric_keys_are_grouped(name, key):
    assert metric_key(name) == key


def test_run_name_reads_as_model_dataset_date():
    when = datetime(2026, 3, 4, 5, 6, tzinfo=timezone.utc)
    assert run_name("camp-segmentation", "s3://bucket/data/hotosm-philippines/", when) == \
        "camp-segmentation on hotosm-philippines 2026-03-04 05:06"


def test_version_description_is_in_words():
    stats = {"dataset_uri": "s3://b/hotosm", "counts": {"train": 40, "val": 10, "test": 12},
             "preprocessing": PREP.to_dict()}
    metrics = {"split": "test", "num_chips": 12, "threshold": 0.5, "iou": 0.61234, "f1": 0.75, "precision": 0.8,
               "recall": 0.7, "accuracy": 0.9}
    text = version_description(stats, {"architecture": "unet", "epochs": 15}, metrics, "abc123")
    assert "building" in text and "s3://b/hotosm" in text and "40 train / 10 validation / 12 test" in text
    assert "iou 0.612" in text and "f1 0.750" in text and "abc123" in text and "sha256" not in text
