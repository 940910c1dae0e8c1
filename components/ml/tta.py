"""Test-time augmentation by flips: a model's probabilities averaged over the four flips of its input.

:func:`flip_tta` wraps any predictor of (N, C, H, W) inputs -> (N, H, W) probabilities (the
normalised-input models of prediction's sliding windows, or evaluation's raw-chip predictors:
flips commute with the per-band normalisation). Each flipped input's probabilities are flipped
back before the mean, so a pixel's result is always about that pixel. The mask of no-data pixels
is applied before (inputs set to the training mean) and after (outputs left out) as without TTA:
a flip moves data and no-data pixels together. It costs four model calls per batch.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from components.contracts.errors import ParameterError

#: The flips averaged, in order, as ``metrics.json`` and ``predictions.json`` record them.
FLIPS = ("identity", "horizontal", "vertical", "both")
#: The array axes each flip reverses, counted from the end ((.., H, W) inputs and outputs alike).
_AXES: dict[str, tuple[int, ...]] = {"identity": (), "horizontal": (-1,), "vertical": (-2,), "both": (-2, -1)}

Predict = Callable[[np.ndarray], np.ndarray]


def _flip(array: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    return np.ascontiguousarray(np.flip(array, axis=axes)) if axes else array


def flip_tta(predict: Predict) -> Predict:
    """``predict`` averaged over :data:`FLIPS`: probabilities (N, H, W) float32 for inputs (N, C, H, W)."""

    def predict_tta(inputs: np.ndarray) -> np.ndarray:
        total = None
        for name in FLIPS:
            axes = _AXES[name]
            probs = _flip(np.asarray(predict(_flip(inputs, axes)), np.float32), axes)
            total = probs.copy() if total is None else total + probs
        return total / np.float32(len(FLIPS))

    return predict_tta


def check_tta(tta: bool) -> None:
    """Raise ParameterError unless ``tta`` is a boolean."""
    if not isinstance(tta, (bool, np.bool_)):
        raise ParameterError(f"--tta {tta!r}: must be true or false")


def with_tta(predict: Predict, tta: bool) -> Predict:
    """``predict`` itself, or wrapped by :func:`flip_tta` when ``tta`` (checked by :func:`check_tta`)."""
    check_tta(tta)
    return flip_tta(predict) if tta else predict


def tta_record(tta: bool) -> dict:
    """How the figures were made, for the documents a stage writes: ``{"tta": ..., "tta_flips": [...]}``
    (the views averaged; ``["identity"]`` alone without TTA)."""
    return {"tta": bool(tta), "tta_flips": list(FLIPS) if tta else ["identity"]}
