"""Intersection over union on torchmetrics' binary stat scores, for a training step without device syncs."""

from __future__ import annotations

from torch import Tensor
from torchmetrics.classification import BinaryStatScores
from torchmetrics.utilities.compute import _safe_divide


class BinaryIoU(BinaryStatScores):
    """IoU (Jaccard index) of the positive class: tp / (tp + fp + fn), 0 when the union is empty.

    The value of ``torchmetrics.classification.BinaryJaccardIndex``; its update differs. The Jaccard
    class counts a confusion matrix by boolean indexing (``ignore_index``) and ``torch.bincount``,
    and each of them waits for the GPU on every step, which leaves it idle while the next step is
    prepared. Stat scores mask ignored pixels and count with sums, without a wait, and share their
    state with F1, precision, recall and accuracy (one compute group in a ``MetricCollection``).
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False
    plot_lower_bound = 0.0
    plot_upper_bound = 1.0

    def compute(self) -> Tensor:
        tp, fp, _, fn = self._final_state()
        return _safe_divide(tp, tp + fp + fn)
