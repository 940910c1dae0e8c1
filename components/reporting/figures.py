"""Evaluation figures as PNG: the confusion matrix, the training curves and error overlays.

Every figure names the foreground class as the run's preprocessing does (``class_name``: ``camp``,
``building``...). Overlays colour each pixel by its outcome, so a reader sees at a glance what the
model found, what it invented and what it missed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from components.data.pairs import IGNORE

#: Pixel outcome colours of the overlays (RGB): found, invented, missed; no data is grey.
TRUE_POSITIVE = (0, 200, 80)
FALSE_POSITIVE = (255, 40, 200)
FALSE_NEGATIVE = (30, 144, 255)
NO_DATA = (128, 128, 128)
TRUTH_COLOUR = (255, 200, 0)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_confusion_matrix(counts: Mapping[str, int], path: Path, class_name: str = "camp") -> Path:
    """Draw the 2x2 confusion matrix (rows: truth, columns: prediction) with counts and rates."""
    plt = _pyplot()
    matrix = np.array([[counts["tn"], counts["fp"]], [counts["fn"], counts["tp"]]], dtype=np.float64)
    rates = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=100)
    ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    labels = ["background", class_name]
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


def _series(rows: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    points = [(float(r["epoch"]), float(r[key])) for r in rows
              if isinstance(r.get(key), (int, float)) and np.isfinite(float(r[key]))]
    return [p[0] for p in points], [p[1] for p in points]


def save_training_curves(history: Mapping[str, Any], path: Path, class_name: str = "camp",
                         monitor: str = "val_iou") -> Path:
    """Loss and IoU per epoch (train and validation) and the learning rate, from ``training_history.json``.

    The best epoch (highest ``monitor``, the one whose checkpoint was kept) is marked on every panel.
    """
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    rows = list(history.get("epochs") or [])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), dpi=100)
    panels = (("loss", "Loss (lower is better)"), ("iou", f"IoU of {class_name} (higher is better)"))
    for ax, (metric, title) in zip(axes, panels):
        for split, style in (("train", "-o"), ("val", "-s")):
            x, y = _series(rows, f"{split}_{metric}")
            if x:
                ax.plot(x, y, style, markersize=3, label="train" if split == "train" else "validation")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.legend(loc="best")
        ax.grid(alpha=0.3)
    x, y = _series(rows, "lr")
    axes[2].plot(x, y, "-o", markersize=3, color="tab:green")
    axes[2].set_title("Learning rate")
    axes[2].set_xlabel("epoch")
    axes[2].grid(alpha=0.3)
    if y and max(y) > 0 and min(y) > 0 and max(y) / min(y) > 20:
        axes[2].set_yscale("log")
    best = [r for r in rows if isinstance(r.get(monitor), (int, float))]
    if best:
        epoch = max(best, key=lambda r: r[monitor])["epoch"]
        for ax in axes:
            ax.axvline(epoch, color="grey", linestyle=":", linewidth=1)
        axes[1].annotate(f"best epoch {int(epoch)}", xy=(epoch, 0.02), xycoords=("data", "axes fraction"),
                         fontsize=8, color="grey")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def outcome_counts(truth: np.ndarray, prediction: np.ndarray) -> dict[str, int]:
    """True positive, false positive and false negative pixels of one chip (no-data pixels left out)."""
    valid = truth != IGNORE
    true, pred = (truth == 1) & valid, (prediction == 1) & valid
    return {"tp": int(np.sum(true & pred)), "fp": int(np.sum(~true & pred & valid)),
            "fn": int(np.sum(true & ~pred))}


def chip_iou(counts: Mapping[str, int]) -> float | None:
    """IoU of one chip; ``None`` when neither truth nor prediction has a foreground pixel."""
    union = counts["tp"] + counts["fp"] + counts["fn"]
    return counts["tp"] / union if union else None


def _rgb(chip: np.ndarray, max_value: float) -> np.ndarray:
    bands = chip[:3] if chip.shape[0] >= 3 else np.repeat(chip[:1], 3, axis=0)
    scaled = np.nan_to_num(bands.astype(np.float32) / max_value * 255, nan=0.0)
    return np.clip(np.moveaxis(scaled, 0, -1), 0, 255).astype(np.uint8)


def _paint(rgb: np.ndarray, where: np.ndarray, colour: tuple[int, int, int], alpha: float = 0.6) -> None:
    rgb[where] = ((1 - alpha) * rgb[where] + alpha * np.array(colour, dtype=np.float32)).astype(np.uint8)


def save_overlay(chip: np.ndarray, truth: np.ndarray, prediction: np.ndarray, max_value: float, path: Path,
                 class_name: str = "camp", title: str | None = None) -> Path:
    """Save image | truth | outcome side by side, with a legend.

    Args:
        chip: raw pixels (C, H, W) as stored.
        truth: (H, W) 1 for the class, 0 background, :data:`~components.data.pairs.IGNORE` for no data.
        prediction: (H, W) class map (1 for the class).
        max_value: the preprocessing's ``max_value`` (what full brightness is).
        class_name: the foreground class, named in the legend.
        title: the figure's title (e.g. which chip and its IoU).
    """
    from matplotlib.patches import Patch

    plt = _pyplot()
    rgb = _rgb(chip, max_value)
    valid = truth != IGNORE
    true, pred = (truth == 1) & valid, (prediction == 1) & valid
    truth_panel = rgb.copy()
    _paint(truth_panel, true, TRUTH_COLOUR)
    outcome = rgb.copy()
    _paint(outcome, true & pred, TRUE_POSITIVE)
    _paint(outcome, ~true & pred, FALSE_POSITIVE)
    _paint(outcome, true & ~pred, FALSE_NEGATIVE)
    _paint(outcome, ~valid, NO_DATA, alpha=0.8)
    fig, axes = plt.subplots(1, 3, figsize=(11, 4.4), dpi=100)
    for ax, panel, name in zip(axes, (rgb, truth_panel, outcome),
                               ("image", f"true {class_name}", "prediction against truth")):
        ax.imshow(panel, interpolation="nearest")
        ax.set_title(name)
        ax.axis("off")
    legend = [Patch(color=np.array(TRUTH_COLOUR) / 255, label=f"true {class_name}"),
              Patch(color=np.array(TRUE_POSITIVE) / 255, label=f"true positive: {class_name} found"),
              Patch(color=np.array(FALSE_POSITIVE) / 255, label=f"false positive: predicted {class_name}, not there"),
              Patch(color=np.array(FALSE_NEGATIVE) / 255, label=f"false negative: {class_name} missed")]
    if not valid.all():
        legend.append(Patch(color=np.array(NO_DATA) / 255, label="no data (not scored)"))
    fig.legend(handles=legend, loc="lower center", ncol=len(legend), fontsize=8, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
