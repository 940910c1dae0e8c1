"""The metric table: its names resolve to torchmetrics classes, and reading it imports no torch."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from components.ml.metrics import METRIC_NAMES, METRICS, metric_collection
from tests.support.paths import REPO


def test_every_metric_of_the_table_is_computed_by_its_torchmetrics_class():
    probs = torch.tensor([[0.9, 0.8, 0.2, 0.1]])
    truth = torch.tensor([[1, 0, 1, 0]])
    values = {k: float(v) for k, v in metric_collection(threshold=0.5, prefix="test_")(probs, truth).items()}
    assert set(values) == {f"test_{name}" for name in METRICS} and tuple(METRICS) == METRIC_NAMES
    # 1 TP, 1 FP, 1 FN, 1 TN
    assert values == pytest.approx({"test_iou": 1 / 3, "test_f1": 0.5, "test_precision": 0.5, "test_recall": 0.5,
                                    "test_accuracy": 0.5})


def test_the_pipeline_command_line_imports_no_torch():
    """pipeline.py (compile, submit, --help) reads metric names only: no torch, no torchmetrics."""
    code = "import sys, pipeline; heavy = sorted({'torch', 'torchmetrics', 'lightning'} & set(sys.modules)); print(heavy)"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_iou_counted_by_stat_scores_equals_torchmetrics_jaccard_index_with_no_data_left_out():
    """BinaryIoU (training's IoU: no device sync) gives BinaryJaccardIndex's value, no-data pixels left out."""
    from torchmetrics.classification import BinaryJaccardIndex

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 1, 16, 16, generator=generator)
    target = (torch.rand(4, 1, 16, 16, generator=generator) < 0.3).int()
    target[0, 0, :4] = 255  # no data
    training = metric_collection(0.5, ignore_index=255, validate_args=False)
    training.update(probs, target)
    valid = target != 255
    reference = BinaryJaccardIndex(threshold=0.5)(probs[valid], target[valid])
    assert float(training.compute()["iou"]) == pytest.approx(float(reference))
    # The ignored pixels count nowhere: the same as scoring only the valid ones.
    plain = {k: float(v) for k, v in metric_collection(0.5)(probs[valid], target[valid]).items()}
    assert {k: float(v) for k, v in training.compute().items()} == pytest.approx(plain)
    # An empty union is 0, as BinaryJaccardIndex's default zero_division.
    nothing = metric_collection(0.5)(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.int))
    assert float(nothing["iou"]) == 0.0 == float(BinaryJaccardIndex(threshold=0.5)(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.int)))
