"""The dataset of a run in MLflow: its statistics as params and metrics, and a metadata-only input."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

from components.tracking.runs import flatten, write_metrics, write_params, write_tags
from components.tracking.server import client as make_client
from components.tracking.server import first_line

log = logging.getLogger(__name__)


def _dataset_source(uri: str):
    from mlflow.data.http_dataset_source import HTTPDatasetSource
    from mlflow.data.sources import LocalArtifactDatasetSource

    if uri.startswith(("http://", "https://")):
        return HTTPDatasetSource(uri)
    if "://" in uri and not uri.startswith("file://"):
        from mlflow.data.dataset_source_registry import resolve_dataset_source

        return resolve_dataset_source(uri)  # s3://, gs://, ... artifact-style sources
    return LocalArtifactDatasetSource(uri)


def _try_fingerprint(uri: str) -> str | None:
    """The dataset's content fingerprint via :func:`components.storage.fingerprint`, or None."""
    from components.storage import fingerprint, is_s3_uri

    if not is_s3_uri(uri) and not Path(uri).exists():
        return None
    try:
        return fingerprint(uri)
    except Exception as e:  # noqa: BLE001 - the digest then falls back to MLflow's own
        log.warning("no content fingerprint of %s (%s: %s)", uri, type(e).__name__, first_line(e))
        return None


def _dataset_params(stats: Mapping[str, Any], uri: str, fingerprint: str | None) -> dict[str, Any]:
    prep = stats.get("preprocessing") or {}
    params: dict[str, Any] = {"dataset.uri": uri or "unknown",
                              "dataset.fingerprint": fingerprint or "unknown"}
    for key in ("image_size", "bands", "mean", "std", "max_value", "threshold"):
        if key in prep:
            params[f"dataset.preprocessing.{key}"] = prep[key]
    for key in ("dtype", "seed", "split_ratios"):
        if key in stats:
            params[f"dataset.{key}"] = stats[key]
    footprint = stats.get("footprint") or {}
    if footprint.get("bbox"):
        params["dataset.bbox"] = footprint["bbox"]
        params["dataset.crs"] = footprint.get("crs")
    return params


def _meta_dataset(stats: Mapping[str, Any], uri: str, fingerprint: str | None, name: str | None):
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types import Schema, TensorSpec

    prep = stats.get("preprocessing") or {}
    size = int(prep.get("image_size") or -1)
    bands = len(prep.get("bands") or []) or -1
    schema = Schema([TensorSpec(np.dtype(str(stats.get("dtype") or "uint8")), (-1, bands, size, size), "chip"),
                     TensorSpec(np.dtype("uint8"), (-1, size, size), "mask")])
    digest = fingerprint.split(":", 1)[-1][:36] if fingerprint else None
    return MetaDataset(_dataset_source(uri or "unknown"),
                       name=name or (uri.rstrip("/").rsplit("/", 1)[-1] or uri or "dataset"),
                       digest=digest, schema=schema)


def log_dataset(tracking_uri: str, run_id: str, stats: Mapping[str, Any],
                fingerprint: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Log the dataset statistics (params and metrics) and the dataset as an MLflow input.

    The input is metadata only: its source is the dataset URI and its digest the content
    fingerprint (``sha256:<hex>``, cut to the 36 characters MLflow stores; the full value is the
    param/tag ``dataset.fingerprint``). No chip is copied.

    Args:
        stats: the content of ``stats.json``.
        fingerprint: the dataset's content fingerprint when ``stats`` lacks one; without
            either, it is computed with :func:`components.storage.fingerprint` when the URI is
            reachable (an ``s3://`` listing, a local folder), else MLflow derives a digest from
            the source and the tag says ``unknown``.
        name: dataset name (default: the last part of the URI).

    Returns:
        ``{"name", "digest", "source", "fingerprint"}`` of the logged input.
    """
    from mlflow.entities import DatasetInput, InputTag

    client = make_client(tracking_uri)
    uri = str(stats.get("dataset_uri") or "")
    fingerprint = fingerprint or stats.get("fingerprint") or None
    if not fingerprint and uri:
        fingerprint = _try_fingerprint(uri)
    write_params(client, run_id, flatten(_dataset_params(stats, uri, fingerprint)))
    metrics: dict[str, float] = {}
    for group in ("counts", "groups", "positive_fraction"):
        for split, value in (stats.get(group) or {}).items():
            metrics[f"dataset.{group}.{split}"] = value
    write_metrics(client, run_id, metrics)

    dataset = _meta_dataset(stats, uri, fingerprint, name)
    tags = [InputTag("mlflow.data.context", "training"),
            InputTag("dataset.fingerprint", fingerprint or "unknown")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    write_tags(client, run_id, {"dataset.fingerprint": fingerprint or "unknown",
                                "dataset.uri": uri or "unknown"})
    return {"name": dataset.name, "digest": dataset.digest, "source": uri,
            "fingerprint": fingerprint}
