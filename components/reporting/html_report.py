"""The evaluation report shown in the KFP UI: self-contained HTML (the UI sandboxes it)."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping

from components.ml.metrics import METRIC_NAMES


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def evaluation_html(metrics: Mapping, evaluation_dir: Path, stats: Mapping | None = None) -> str:
    """An HTML page with the metrics table, baselines, confusion matrix and overlays inline."""
    evaluation_dir = Path(evaluation_dir)
    rows = "".join(f"<tr><td>{name}</td><td>{metrics[name]:.4f}</td></tr>" for name in METRIC_NAMES)
    base = metrics.get("baselines", {})
    overlays = sorted((evaluation_dir / "overlays").glob("*.png"))
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>Camp segmentation evaluation</title>",
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 10px;text-align:left}</style></head><body>",
        f"<h2>Evaluation on the {html.escape(str(metrics.get('split', 'test')))} split</h2>",
        f"<p>{metrics.get('num_chips')} chips, {metrics.get('num_pixels'):,} pixels, threshold {metrics.get('threshold')}; "
        f"model output: probabilities (ONNX Runtime).</p>",
        f"<table><tr><th>metric</th><th>value</th></tr>{rows}</table>",
        f"<p>Trivial baselines on the same pixels: all background IoU {base.get('all_background_iou', 0):.4f}, "
        f"all foreground IoU {base.get('all_foreground_iou', 0):.4f}.</p>",
    ]
    if stats:
        parts.append(f"<p>Dataset: {html.escape(str(stats.get('dataset_uri')))} ({html.escape(str(stats.get('fingerprint')))}), "
                     f"chips per split {html.escape(str(stats.get('counts')))}.</p>")
    cm = evaluation_dir / "confusion_matrix.png"
    if cm.exists():
        parts.append("<h3>Confusion matrix</h3>" + _img(cm, "confusion matrix"))
    if overlays:
        parts.append("<h3>Examples: image, truth, prediction</h3>")
        parts += [f"<p>{html.escape(p.stem)}<br>{_img(p, p.stem)}</p>" for p in overlays]
    parts.append("</body></html>")
    return "\n".join(parts)
