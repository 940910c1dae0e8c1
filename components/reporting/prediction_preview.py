"""A self-contained HTML preview of predictions: each scene with its camp mask over it, and its figures.

The scene and the mask are read at most ``max_side`` pixels on a side (rasterio decimated reads,
from the COG's overviews where there are any), so a preview of a huge scene costs little memory.
Shown in the KFP UI by the batch-prediction pipeline.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _decimated(path: Path, max_side: int, indexes: list[int] | int) -> np.ndarray:
    import rasterio
    from rasterio.enums import Resampling

    with rasterio.open(path) as src:
        scale = max(src.width, src.height) / max_side
        shape = (max(1, round(src.height / max(scale, 1))), max(1, round(src.width / max(scale, 1))))
        count = len(indexes) if isinstance(indexes, list) else None
        out_shape = (count, *shape) if count else shape
        return src.read(indexes, out_shape=out_shape, resampling=Resampling.nearest)


def overlay_png(scene: Path, mask: Path, max_side: int = 768) -> bytes:
    """PNG bytes: the scene's first three bands, stretched, with camp pixels tinted red."""
    from PIL import Image

    rgb = _decimated(scene, max_side, [1, 2, 3]).astype(np.float32)
    low, high = np.percentile(rgb, 2), np.percentile(rgb, 98)
    rgb = np.clip((rgb - low) / max(high - low, 1e-6) * 255, 0, 255)
    camp = _decimated(mask, max_side, 1)
    camp = np.asarray(Image.fromarray(camp).resize((rgb.shape[2], rgb.shape[1]), Image.NEAREST)) == 1
    image = np.moveaxis(rgb, 0, -1)
    image[camp] = image[camp] * 0.45 + np.array([255, 40, 40], np.float32) * 0.55
    buffer = io.BytesIO()
    Image.fromarray(image.astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def preview_html(document: Mapping[str, Any], scenes: Mapping[str, Path], out_dir: Path, output_uri: str) -> str:
    """The page for a ``predictions.json`` ``document``; ``scenes`` maps each entry's scene to its local file."""
    rows = []
    for entry in document["scenes"]:
        png = overlay_png(scenes[entry["scene"]], out_dir / entry["outputs"]["mask"])
        figures = (f"{entry['width']} x {entry['height']} px, {entry['crs']}, "
                   f"{entry['ground_sampling_distance_m']} m/px; camp {entry['camp_area_m2']:,.0f} m² in "
                   f"{entry['polygons']} polygons; {entry['pixels']['nodata']:,} no-data pixels")
        rows.append(f"<h2>{html.escape(Path(entry['scene']).name)}</h2><p>{html.escape(figures)}</p>"
                    f"<img alt='camp mask over the scene' src='data:image/png;base64,"
                    f"{base64.b64encode(png).decode()}'/>")
    params = document["parameters"]
    return ("<!doctype html><html><head><meta charset='utf-8'><title>Camp predictions</title>"
            "<style>body{font-family:sans-serif;margin:1em}img{max-width:100%;border:1px solid #ccc}</style>"
            "</head><body><h1>Camp predictions</h1>"
            f"<p>Model {html.escape(str(document['model'].get('reference') or document['model']['run']))}; "
            f"threshold {params['threshold']}, overlap {params['overlap']} px"
            f"{', test-time augmentation by flips' if params.get('tta') else ''}; outputs in "
            f"<code>{html.escape(output_uri)}</code>. Red: camp.</p>" + "".join(rows) + "</body></html>")
