"""Evaluation figures: the confusion matrix and image/truth/prediction overlays, as PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CAMP_COLOUR = (255, 64, 32)


def save_confusion_matrix(counts: dict, path: Path) -> Path:
    """Draw the 2x2 confusion matrix (rows: truth, columns: prediction) with counts and rates."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    labels = ["background", "camp"]
    ax.set_xticks([0, 1], labels)
    ax.set_yticks([0, 1], labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(2):
        for j in range(2):
            ax.text(j, i, f"{int(matrix[i, j]):,}\n{rates[i, j]:.1%}", ha="center", va="center",
                    color="white" if rates[i, j] > 0.5 else "black")
    ax.set_title("Test pixels")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def _tint(rgb: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = rgb.astype(np.float32).copy()
    out[mask > 0] = 0.45 * out[mask > 0] + 0.55 * np.array(CAMP_COLOUR, dtype=np.float32)
    return out.astype(np.uint8)


def save_overlay(chip: np.ndarray, truth: np.ndarray, prediction: np.ndarray, max_value: float, path: Path) -> Path:
    """Save image | truth | prediction side by side; camp pixels tinted in the two right panels."""
    rgb = np.clip(np.moveaxis(chip, 0, -1).astype(np.float32) / max_value * 255, 0, 255).astype(np.uint8)
    h, w = truth.shape
    panels = [rgb, _tint(rgb, truth), _tint(rgb, prediction)]
    canvas = Image.new("RGB", (3 * w + 8, h + 16), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (panel, title) in enumerate(zip(panels, ("image", "truth", "prediction"))):
        canvas.paste(Image.fromarray(panel), (i * (w + 4), 16))
        draw.text((i * (w + 4) + 2, 2), title, fill="black")
    canvas.save(path)
    return Path(path)
