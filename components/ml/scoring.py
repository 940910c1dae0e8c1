"""Score a model on labelled pairs with torchmetrics: the one place test metrics are computed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torchmetrics.classification import BinaryConfusionMatrix

from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE, Pair, load_examples
from components.ml.inference import batched, onnx_session, predict_probabilities
from components.ml.metrics import metric_collection

Predictor = Callable[[np.ndarray], np.ndarray]  # raw chips (N, C, H, W) -> probabilities (N, H, W)
ChipListener = Callable[[Pair, np.ndarray, np.ndarray], None]  # (pair, mask with IGNORE, probabilities)


def onnx_predictor(onnx_path: Path, prep: Preprocessing) -> Predictor:
    """Probabilities from ONNX Runtime, the path every consumer of the ONNX artifact takes."""
    session = onnx_session(onnx_path)
    return lambda raw: predict_probabilities(session, prep, raw)


def torch_predictor(model: torch.nn.Module, prep: Preprocessing) -> Predictor:
    """Probabilities from an eager PyTorch inference model (for parity checks)."""
    model = model.eval()

    def predict(raw: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return model(torch.from_numpy(prep.normalize(raw))).numpy()[:, 0]

    return predict


def score(pairs: Sequence[Pair], predictor: Predictor, prep: Preprocessing, batch_size: int = 8,
          keep: int = 0, on_chip: ChipListener | None = None,
          ) -> tuple[dict, list[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]]:
    """Metrics over all pixels with data of ``pairs`` at the threshold; also returns ``keep`` examples.

    ``on_chip`` (optional) sees every chip's pair, mask (with no-data pixels) and probabilities,
    e.g. to score chips one by one and pick the figures' examples.
    """
    t = prep.threshold
    metrics = metric_collection(t)
    confusion = BinaryConfusionMatrix(threshold=t)
    examples = []
    for batch in batched(pairs, batch_size):
        raw, masks = load_examples(batch, prep.image_size, prep.nodata)
        probs = torch.from_numpy(np.ascontiguousarray(predictor(raw), dtype=np.float32))
        target = torch.from_numpy(masks.astype(np.int64))
        valid = target != IGNORE
        if bool(valid.all()):
            metrics.update(probs, target)
            confusion.update(probs, target)
        elif bool(valid.any()):  # no-data pixels count in no metric
            metrics.update(probs[valid], target[valid])
            confusion.update(probs[valid], target[valid])
        for pair, chip, mask, prob in zip(batch, raw, masks, probs.numpy()):
            if on_chip is not None:
                on_chip(pair, mask, prob)
            if len(examples) < keep:
                examples.append((pair, chip, (mask == 1).astype(np.uint8), prep.classify(prob)))
    values = {k: float(v) for k, v in metrics.compute().items()}
    (tn, fp), (fn, tp) = confusion.compute().tolist()
    total = tn + fp + fn + tp
    values.update(
        threshold=t,
        num_chips=len(pairs),
        num_pixels=total,
        confusion_matrix={"tn": tn, "fp": fp, "fn": fn, "tp": tp},
        baselines={
            "all_background_iou": 0.0,
            "all_foreground_iou": (tp + fn) / total if total else 0.0,
            "positive_fraction": (tp + fn) / total if total else 0.0,
        },
    )
    return values, examples
