"""The evaluation report: one self-contained HTML page (figures inline), shown in the KFP UI (which
sandboxes it) and written as ``evaluation/report.html``."""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Mapping

from components.ml.metrics import METRIC_NAMES
from components.reporting.examples import ROLES


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _overlay_sections(metrics: Mapping, evaluation_dir: Path) -> list[str]:
    chosen = metrics.get("overlays") or {}
    parts = []
    for role, why in ROLES.items():
        path = evaluation_dir / "overlays" / f"{role}.png"
        if role not in chosen or not path.exists():
            continue
        chip = chosen[role]
        iou = "no foreground" if chip.get("iou") is None else f"IoU {chip['iou']:.3f}"
        parts.append(f"<h4>{html.escape(role.capitalize())}: {html.escape(why)}</h4>"
                     f"<p>{html.escape(str(chip.get('stem')))}: {iou}</p>" + _img(path, f"{role} overlay"))
    return parts


def evaluation_html(metrics: Mapping, evaluation_dir: Path, stats: Mapping | None = None) -> str:
    """An HTML page with the metrics table, baselines and every figure of ``evaluation_dir`` inline."""
    evaluation_dir = Path(evaluation_dir)
    class_name = str(((stats or {}).get("preprocessing") or {}).get("class_name") or "camp")
    rows = "".join(f"<tr><td>{name}</td><td>{metrics[name]:.4f}</td></tr>" for name in METRIC_NAMES)
    base = metrics.get("baselines", {})
    title = f"{class_name.capitalize()} segmentation evaluation"
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;margin:1em}td,th{padding:2px 10px;text-align:left}</style></head><body>",
        f"<h2>{html.escape(title)} on the {html.escape(str(metrics.get('split', 'test')))} split</h2>",
        f"<p>{metrics.get('num_chips')} chips, {metrics.get('num_pixels'):,} pixels; a pixel is "
        f"{html.escape(class_name)} where the model's probability is at least {metrics.get('threshold')}; "
        "model: the exported ONNX model run with ONNX Runtime"
        + (f", with test-time augmentation: the mean probability over the flips "
           f"{html.escape(', '.join(metrics.get('tta_flips') or []))}" if metrics.get("tta") else "")
        + ".</p>",
        f"<table><tr><th>metric ({html.escape(class_name)})</th><th>value</th></tr>{rows}</table>",
        f"<p>Trivial baselines on the same pixels: all background IoU {base.get('all_background_iou', 0):.4f}, "
        f"all {html.escape(class_name)} IoU {base.get('all_foreground_iou', 0):.4f}.</p>",
    ]
    if stats:
        parts.append(f"<p>Dataset: {html.escape(str(stats.get('dataset_uri')))} ({html.escape(str(stats.get('fingerprint')))}), "
                     f"chips per split {html.escape(str(stats.get('counts')))}.</p>")
    curves = evaluation_dir / "training_curves.png"
    if curves.exists():
        parts.append("<h3>Training curves</h3>" + _img(curves, "training curves"))
    cm = evaluation_dir / "confusion_matrix.png"
    if cm.exists():
        parts.append("<h3>Confusion matrix</h3>" + _img(cm, "confusion matrix"))
    overlays = _overlay_sections(metrics, evaluation_dir)
    if overlays:
        parts.append(f"<h3>Examples: image, true {html.escape(class_name)}, prediction against truth</h3>")
        parts += overlays
    parts.append("</body></html>")
    return "\n".join(parts)
