"""Sliding windows over a scene of any size, blended where they overlap; memory bounded by one strip.

The scene is covered by windows of the model's tile size ``T`` whose starts are ``0, s, 2s, ...``
with stride ``s = T - overlap``, the last one flush with the edge (:func:`window_starts`). Each
window's probabilities are weighted by :func:`blend_weights` (a linear ramp over the ``overlap``
pixels at each side, 1 inside), summed, and divided by the summed weights, so predictions fade
into each other with no seam; with ``overlap=0`` every pixel comes from exactly one window.

:func:`sliding_probabilities` walks the windows row by row: it reads ``T`` rows of the scene
through a callback, predicts every window of that row that has any valid pixel (windows wholly
no-data are skipped), and hands the rows that no later window touches to another callback. It
holds one strip of ``T`` rows at a time: memory grows with the scene's width, never its height.
A scene smaller than the tile is padded with no-data.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np

from components.contracts.errors import ParameterError

#: ``read(row0, row1)`` -> raw pixels (C, row1 - row0, W) and valid pixels (row1 - row0, W).
ReadRows = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
#: ``write(row0, probabilities (n, W) float32 with NaN where no data, valid (n, W))``.
WriteRows = Callable[[int, np.ndarray, np.ndarray], None]
#: Model inputs (N, C, T, T) float32 -> probabilities (N, T, T).
PredictBatch = Callable[[np.ndarray], np.ndarray]
#: ``progress(windows done, windows in all, seconds since the start)``.
Progress = Callable[[int, int, float], None]


def check_overlap(tile: int, overlap: int) -> None:
    """Raise ParameterError unless ``0 <= overlap <= tile / 2``."""
    if isinstance(overlap, bool) or not isinstance(overlap, int) or not 0 <= overlap <= tile // 2:
        raise ParameterError(f"--overlap {overlap!r}: must be a whole number of pixels from 0 to {tile // 2} "
                             f"(half the model's {tile}-pixel tile)")


def window_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Starts of windows of ``tile`` pixels covering ``length`` with at least ``overlap`` pixels shared.

    The stride is ``tile - overlap``; the last window ends at ``length`` (it may overlap its
    neighbour more). A length below the tile gives one window at 0 (padded by the caller).
    """
    check_overlap(tile, overlap)
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_weights(tile: int, overlap: int) -> np.ndarray:
    """(tile, tile) float32 weights: a linear ramp from ~0 to 1 over ``overlap`` pixels at each edge.

    Never zero (the ramp starts at ``0.5 / overlap``), so a pixel at the scene's edge, covered by
    one window only, keeps its prediction. All ones when ``overlap`` is 0.
    """
    if overlap <= 0:
        return np.ones((tile, tile), np.float32)
    i = np.arange(tile, dtype=np.float32) + 0.5
    ramp = np.minimum(1.0, np.minimum(i, tile - i) / overlap).astype(np.float32)
    return np.outer(ramp, ramp).astype(np.float32)


def window_count(height: int, width: int, tile: int, overlap: int) -> int:
    """How many windows cover a ``height`` x ``width`` scene."""
    return len(window_starts(height, tile, overlap)) * len(window_starts(width, tile, overlap))


def _pad(raw: np.ndarray, valid: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad (C, h, w) and (h, w) at the bottom/right to ``rows`` x ``cols`` with invalid zeros."""
    h, w = valid.shape
    if (h, w) == (rows, cols):
        return raw, valid
    padded = np.zeros((raw.shape[0], rows, cols), raw.dtype)
    padded[:, :h, :w] = raw
    ok = np.zeros((rows, cols), bool)
    ok[:h, :w] = valid
    return padded, ok


def sliding_probabilities(read: ReadRows, write: WriteRows, height: int, width: int, tile: int, overlap: int,
                          predict: PredictBatch, normalize: Callable[[np.ndarray], np.ndarray],
                          batch_size: int = 8, progress: Progress | None = None) -> dict:
    """Predict a ``height`` x ``width`` scene window by window, strip by strip.

    Args:
        read, write: the scene's row reader and the output's row writer (see the aliases above).
        tile, overlap: the model's input size and the pixels neighbouring windows share.
        predict: probabilities for a batch of normalised windows.
        normalize: raw window pixels (N, C, T, T) -> the model's float32 input. Invalid pixels
            (no data, padding) are set to 0, the training mean, after it, as in training.
        batch_size: windows per model call.
        progress: called after every batch.

    Returns:
        ``{"windows": all, "predicted": run through the model, "skipped": wholly no-data}``.
    """
    if batch_size < 1:
        raise ParameterError(f"--batch-size {batch_size!r}: must be at least 1")
    rows, cols = window_starts(height, tile, overlap), window_starts(width, tile, overlap)
    span_w = max(width, tile)
    weights = blend_weights(tile, overlap)
    acc = np.zeros((tile, span_w), np.float32)
    wsum = np.zeros((tile, span_w), np.float32)
    total, done, predicted = len(rows) * len(cols), 0, 0
    start = time.monotonic()
    for i, r in enumerate(rows):
        r1 = min(r + tile, height)
        raw, valid = read(r, r1)
        raw, valid = _pad(raw, valid, tile, span_w)
        todo = [c for c in cols if valid[:, c:c + tile].any()]
        done += len(cols) - len(todo)
        for k in range(0, len(todo), batch_size):
            batch = todo[k:k + batch_size]
            chips = np.stack([raw[:, :, c:c + tile] for c in batch])
            inputs = normalize(chips)
            masks = np.stack([valid[:, c:c + tile] for c in batch])
            inputs = np.where(masks[:, None], inputs, np.float32(0)).astype(np.float32)
            probs = np.asarray(predict(inputs), np.float32)
            for c, p in zip(batch, probs):
                acc[:, c:c + tile] += p * weights
                wsum[:, c:c + tile] += weights
            done += len(batch)
            predicted += len(batch)
            if progress is not None:
                progress(done, total, time.monotonic() - start)
        end = rows[i + 1] if i + 1 < len(rows) else height
        n = end - r
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(valid[:n, :width] & (wsum[:n, :width] > 0), acc[:n, :width] / wsum[:n, :width], np.nan)
        write(r, out.astype(np.float32), valid[:n, :width])
        acc[:tile - n], wsum[:tile - n] = acc[n:].copy(), wsum[n:].copy()
        acc[tile - n:], wsum[tile - n:] = 0, 0
    if progress is not None and done < total:
        progress(total, total, time.monotonic() - start)
    return {"windows": total, "predicted": predicted, "skipped": total - predicted}


def predict_array(raw: np.ndarray, valid: np.ndarray | None, tile: int, overlap: int, predict: PredictBatch,
                  normalize: Callable[[np.ndarray], np.ndarray], batch_size: int = 8) -> np.ndarray:
    """Probabilities (H, W) for an in-memory scene (C, H, W), NaN where invalid: the same path as a file."""
    height, width = raw.shape[1:]
    ok = np.ones((height, width), bool) if valid is None else np.asarray(valid, bool)
    out = np.full((height, width), np.nan, np.float32)

    def write(r: int, probs: np.ndarray, _valid: np.ndarray) -> None:
        out[r:r + probs.shape[0]] = probs

    sliding_probabilities(lambda r0, r1: (raw[:, r0:r1], ok[r0:r1]), write, height, width, tile, overlap,
                          predict, normalize, batch_size)
    return out
