"""The batch-prediction pipeline's step, as plain Python: model reference and scenes in, maps out to S3.

:func:`run_batch_prediction` resolves the model (a run folder, or ``models:/NAME@champion`` from
the MLflow registry at ``MLFLOW_TRACKING_URI``), downloads the scenes of an ``s3://`` prefix (or
reads a local path), runs :func:`components.stages.predict.predict_scenes`, uploads every output
file under ``output_uri`` and writes an HTML preview of the masks over the scenes.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from components.contracts.errors import ParameterError
from components.kubeflow.retries import retry_transient
from components.kubeflow.steps import scratch_dir, tracking_uri


def _model_item(model_dir: Path, model_ref: str) -> str | None:
    """Where the model's STAC item lives for good: its ``self`` link (a published item), else the
    model reference itself for a registered model (the scratch copy disappears with the step)."""
    from components.contracts.run_layout import RunLayout, read_json
    from components.tracking.model_ref import is_model_uri

    item = RunLayout(model_dir).stac_item
    if item.is_file():
        for link in read_json(item).get("links", []):
            if link.get("rel") == "self" and link.get("href"):
                return str(link["href"])
    return model_ref if is_model_uri(model_ref) else None


@retry_transient
def run_batch_prediction(scene_uri: str, model_ref: str, output_uri: str, preview_path: str | Path, *,
                         threshold: float = 0.0, overlap: int = -1, min_area_m2: float = 0.0,
                         device: str = "cpu", tta: bool = False) -> dict[str, Any]:
    """Predict every scene under ``scene_uri`` with ``model_ref``; outputs to ``output_uri``.

    Args:
        scene_uri: an ``s3://bucket/prefix`` of GeoTIFF scenes, or a local scene or folder.
        model_ref: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a run folder.
        output_uri: ``s3://bucket/prefix`` the outputs are uploaded under (empty: kept in the
            step's preview only).
        preview_path: where the HTML preview is written.
        threshold: 0 for the model's own; overlap: -1 for the default (a quarter of the tile).
        tta: test-time augmentation by flips (:func:`components.stages.predict.predict_scenes`).

    Returns:
        ``predictions.json`` with ``outputs``: the uploaded URIs.
    """
    from components.reporting.prediction_preview import preview_html
    from components.stages.predict import predict_scenes
    from components.storage import is_s3_uri, join_uri, materialize, upload_file
    from components.tracking.model_ref import is_model_uri, resolve_model

    if output_uri and not is_s3_uri(output_uri):
        raise ParameterError(f"output_uri={output_uri!r}: must be an s3:// prefix (or empty)")
    work = scratch_dir()
    try:
        model_dir = resolve_model(model_ref, work / "model", tracking_uri() if is_model_uri(model_ref) else None)
        if is_s3_uri(scene_uri):
            local = materialize(scene_uri, work / "scenes")
            prefix = scene_uri.rstrip("/")
            uris = {str(p): f"{prefix}/{p.relative_to(local).as_posix()}" for p in local.rglob("*") if p.is_file()}
        else:
            local, uris = Path(scene_uri), {}
        out = work / "out"
        document = predict_scenes(model_dir, local, out, threshold=threshold or None,
                                  overlap=None if overlap < 0 else overlap, min_area_m2=min_area_m2,
                                  device=device, tta=tta, scene_uris=uris, model_item=_model_item(model_dir, model_ref),
                                  model_reference=model_ref, progress=True)
        local_of = {uri: path for path, uri in uris.items()}
        scenes = {e["scene"]: Path(local_of.get(e["scene"], e["scene"])) for e in document["scenes"]}
        Path(preview_path).parent.mkdir(parents=True, exist_ok=True)
        Path(preview_path).write_text(preview_html(document, scenes, out, output_uri or "(not uploaded)"))
        uploaded = []
        if output_uri:
            names = [name for entry in document["scenes"] for name in entry["outputs"].values()]
            for name in [*names, "predictions.json"]:  # the summary last: it marks the upload complete
                uploaded.append(upload_file(out / name, join_uri(output_uri, name)))
        return {**document, "uploaded": uploaded}
    finally:
        shutil.rmtree(work, ignore_errors=True)
