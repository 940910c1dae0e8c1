"""Score a model on labelled pairs with torchmetrics: the one place test metrics are computed."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Collection, Sequence

import numpy as np
import torch
from torchmetrics.classification import BinaryConfusionMatrix

from components.contracts.errors import DatasetError
from components.contracts.preprocessing import Preprocessing
from components.data.imagery import image_shape, shown
from components.data.pairs import IGNORE, Pair, load_examples, read_pair
from components.ml.inference import batched, onnx_session, predict_probabilities
from components.ml.metrics import metric_collection
from components.ml.windows import predict_array

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


def split_by_size(pairs: Sequence[Pair], tile: int,
                  trained_sizes: Collection[tuple[int, int]] = ()) -> tuple[list[Pair], list[Pair]]:
    """(chips taken as the model was trained: the tile size or a size training resized to the
    tile; scenes larger than the tile, scored through sliding windows at native resolution).

    Raises:
        DatasetError: a chip smaller than the tile in a side that training never resized (its
            prediction would need a resize nobody asked for).
    """
    trained = {(tile, tile), *(tuple(size) for size in trained_sizes)}
    as_trained, scenes, refused = [], [], []
    for pair in pairs:
        size = image_shape(pair.chip)
        if size in trained:
            as_trained.append(pair)
        elif size[0] >= tile and size[1] >= tile:
            scenes.append(pair)
        else:
            refused.append(f"{shown(pair.chip)} ({size[0]}x{size[1]})")
    if refused:
        raise DatasetError(
            f"{len(refused)} chip(s) smaller than the model's {tile}x{tile} tile and of no size it was trained on "
            f"({', '.join(f'{h}x{w}' for h, w in sorted(trained))}): {', '.join(refused[:5])}"
            f"{', ...' if len(refused) > 5 else ''}; evaluation never resizes them: cut or pad them to the tile")
    return as_trained, scenes


def _scene_example(pair: Pair, predictor: Predictor, prep: Preprocessing, batch_size: int) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """(chip, mask with IGNORE, probabilities) of one labelled scene larger than the tile, predicted
    through the sliding windows of ``predict`` at native resolution (no-data pixels at the training mean)."""
    checked = read_pair(pair, prep.nodata)
    chip = checked.chip.pixels
    raw = chip.astype(np.float32)
    if checked.chip_valid is not None and not checked.chip_valid.all():
        raw[:, ~checked.chip_valid] = prep.raw_mean.astype(np.float32)[:, None]
    probs = predict_array(raw, None, prep.image_size, prep.image_size // 4, predictor,
                          lambda r: r.astype(np.float32), batch_size)
    mask = np.where(checked.valid, checked.mask, IGNORE).astype(np.uint8)
    return chip, mask, probs


def score(pairs: Sequence[Pair], predictor: Predictor, prep: Preprocessing, batch_size: int = 8,
          keep: int = 0, trained_sizes: Collection[tuple[int, int]] = (), on_chip: ChipListener | None = None,
          ) -> tuple[dict, list[tuple[Pair, np.ndarray, np.ndarray, np.ndarray]]]:
    """Metrics over all pixels with data of ``pairs`` at the threshold; also returns ``keep`` examples.

    Chips of the model's tile size, or of a size training resized to it (``trained_sizes``, the
    statistics' ``source_sizes``), are taken as in training; larger scenes go through the sliding
    windows of prediction at native resolution; anything else is refused (:func:`split_by_size`).
    ``on_chip`` (optional) sees every chip's pair, mask (with no-data pixels) and probabilities,
    e.g. to score chips one by one and pick the figures' examples.
    """
    t = prep.threshold
    metrics = metric_collection(t)
    confusion = BinaryConfusionMatrix(threshold=t)
    examples = []
    as_trained, scenes = split_by_size(pairs, prep.image_size, trained_sizes)

    def update(probs: torch.Tensor, target: torch.Tensor) -> None:
        valid = target != IGNORE
        if bool(valid.all()):
            metrics.update(probs, target)
            confusion.update(probs, target)
        elif bool(valid.any()):  # no-data pixels count in no metric
            metrics.update(probs[valid], target[valid])
            confusion.update(probs[valid], target[valid])

    def keep_example(pair: Pair, chip: np.ndarray, mask: np.ndarray, prob: np.ndarray) -> None:
        if on_chip is not None:
            on_chip(pair, mask, prob)
        if len(examples) < keep:
            examples.append((pair, chip, (mask == 1).astype(np.uint8), prep.classify(prob)))

    for batch in batched(as_trained, batch_size):
        raw, masks = load_examples(batch, prep.image_size, prep.nodata)
        probs = torch.from_numpy(np.ascontiguousarray(predictor(raw), dtype=np.float32))
        update(probs, torch.from_numpy(masks.astype(np.int64)))
        for pair, chip, mask, prob in zip(batch, raw, masks, probs.numpy()):
            keep_example(pair, chip, mask, prob)
    for pair in scenes:
        chip, mask, prob = _scene_example(pair, predictor, prep, batch_size)
        update(torch.from_numpy(np.nan_to_num(prob)), torch.from_numpy(mask.astype(np.int64)))
        keep_example(pair, chip, mask, np.nan_to_num(prob))
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
