"""The model registry: register the run's ONNX model as a version (once per run: a retried step
finds the version it registered before), identify its test split, delete a version whose
publishing failed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

from components.contracts.errors import TrackingError
from components.contracts.run_layout import RunLayout, read_json
from components.ml.metrics import METRIC_NAMES
from components.tracking.artifacts import ARTIFACTS_LOGGED_TAG
from components.tracking.retraining import PARAMS_DIGEST_TAG, PARAMS_TAG
from components.tracking.runs import KFP_RUN_ID_TAG, is_number, write_tags
from components.tracking.server import client as make_client
from components.tracking.server import first_line, global_uri, redact

log = logging.getLogger(__name__)

#: Version tag (and logged-model metadata) naming the test split a version was evaluated on.
TEST_SPLIT_TAG = "test_split_id"


def compute_test_split_id(run_dir: str | os.PathLike[str]) -> str:
    """Identity of the test split a run was evaluated on: ``sha256:<hex>`` of the sorted test
    stems and the dataset fingerprint (or, without a fingerprint, the dataset URI).

    Two versions with the same id were evaluated on the same chips of the same data; any added,
    removed or changed file of the dataset gives a new id. An evaluation with test-time
    augmentation (``metrics.json`` ``tta``) has an id of its own: its scores mean something else.
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.splits, layout.stats, stage="test split identity")
    manifest = read_json(layout.splits)
    stats = read_json(layout.stats)
    metrics = read_json(layout.metrics) if layout.metrics.exists() else {}
    split = metrics.get("split", "test")
    stems = sorted(p["stem"] for p in manifest.get("pairs", []) if split == "all" or p["split"] == split)
    payload = {"split": split, "stems": stems,
               "fingerprint": stats.get("fingerprint"),
               "dataset": None if stats.get("fingerprint") else stats.get("dataset_uri")}
    if metrics.get("tta"):  # only then: the ids of evaluations without it stay as they were
        payload["tta"] = True
    return "sha256:" + hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def model_signature(image_size: int, bands: int = 3):
    """Signature of the exported model: ``input`` float32 (-1, bands, H, W) ->
    ``probabilities`` float32 (-1, 1, H, W) in [0, 1]."""
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, bands, image_size, image_size), "input")]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, 1, image_size, image_size), "probabilities")]),
    )


def version_description(stats: Mapping[str, Any], config: Mapping[str, Any], metrics: Mapping[str, Any],
                        run_id: str) -> str:
    """A registered version's description in words: what the model is, what it was trained on,
    how it scored on which test chips, and where it came from."""
    prep = stats.get("preprocessing") or {}
    class_name, size = prep.get("class_name", "camp"), prep.get("image_size", "?")
    counts = stats.get("counts") or {}
    scores = ", ".join(f"{k} {float(metrics[k]):.3f}" for k in METRIC_NAMES if is_number(metrics.get(k)))
    return (
        f"ONNX model segmenting {class_name} (class 1; background 0) in {len(prep.get('bands', []))}-band "
        f"{size}x{size} chips: a {config.get('architecture', 'unet')} network trained for "
        f"{config.get('epochs', '?')} epochs at most on {stats.get('dataset_uri', 'an unknown dataset')} "
        f"({counts.get('train', '?')} train / {counts.get('val', '?')} validation / "
        f"{counts.get('test', '?')} test chips). On the {metrics.get('split', 'test')} split "
        f"({metrics.get('num_chips', '?')} chips, threshold {metrics.get('threshold', prep.get('threshold'))}): "
        f"{scores}. From MLflow run {run_id}."
    )


def _check_run_ready(run, run_id: str) -> None:
    """Refuse a run whose artifacts are not all logged, or that failed."""
    if run.data.tags.get(ARTIFACTS_LOGGED_TAG) != "true":
        raise TrackingError(f"run {run_id}: its artifacts are not all logged "
                            f"({ARTIFACTS_LOGGED_TAG}={run.data.tags.get(ARTIFACTS_LOGGED_TAG)!r}); "
                            f"call log_run_artifacts first; nothing registered")
    if run.info.status in ("FAILED", "KILLED"):
        raise TrackingError(f"run {run_id} is {run.info.status}; a failed run registers no model")


def _version_tags(metrics: Mapping[str, Any], stats: Mapping[str, Any], split_id: str,
                  run_tags: Mapping[str, str]) -> dict[str, str]:
    """Tags of a new version: its test metrics, test split, dataset, KFP run and training parameters
    (:mod:`~components.tracking.retraining` compares the champion's with the next run's)."""
    tags = {f"metric.{k}": repr(float(metrics[k])) for k in METRIC_NAMES if is_number(metrics.get(k))}
    tags |= {TEST_SPLIT_TAG: split_id,
             "test_split": str(metrics.get("split", "test")),
             "dataset.fingerprint": str(stats.get("fingerprint") or "unknown"),
             "dataset.uri": str(stats.get("dataset_uri") or "unknown")}
    for key in (KFP_RUN_ID_TAG, PARAMS_TAG, PARAMS_DIGEST_TAG):  # the run's KFP run and training parameters
        if run_tags.get(key):
            tags[key] = run_tags[key]
    return tags


def _quoted(value: str) -> str | None:
    """``value`` in single quotes for a search filter; ``None`` when it cannot be quoted safely."""
    return None if ("'" in value or "\\" in value) else f"'{value}'"


def registered_version(client, model_name: str, run_id: str, kfp_run_id: str | None = None):
    """The version of ``model_name`` that this MLflow run (or, failing that, this KFP run)
    registered already, or ``None``: what makes :func:`register_model` idempotent.

    A version whose registration failed (``FAILED_REGISTRATION``) is deleted and not returned;
    of several usable ones (registered by older code) the first is returned.
    """
    name = _quoted(model_name)
    if name is None:
        raise TrackingError(f"model name {model_name!r}: quotes and backslashes are not allowed")
    filters = [f"name = {name} and run_id = {_quoted(run_id)}"]
    if kfp_run_id and _quoted(kfp_run_id):
        filters.append(f"name = {name} and tags.`{KFP_RUN_ID_TAG}` = {_quoted(kfp_run_id)}")
    for filter_string in filters:
        found = []
        for version in client.search_model_versions(filter_string):
            if str(version.status) == "FAILED_REGISTRATION":
                log.warning("deleting %s v%s: its registration failed", model_name, version.version)
                client.delete_model_version(model_name, str(version.version))
            else:
                found.append(version)
        if found:
            return min(found, key=lambda v: int(v.version))
    return None


def _extra_files(layout: RunLayout, tmp: Path) -> list[str]:
    """Copies of the files logged beside the model (``extra_files`` keep the base name)."""
    extra = {"stac_item.json": layout.stac_item, "stats.json": layout.stats}
    if layout.export_report.exists():
        extra["export_report.json"] = layout.export_report
    files = []
    for name, path in extra.items():
        target = tmp / name
        target.write_bytes(path.read_bytes())
        files.append(str(target))
    return files


def _log_onnx_model(client, run, layout: RunLayout, prep: Mapping[str, Any], split_id: str, tmp: Path):
    """Log the ONNX model into the run (with signature, input example, extra files); its info."""
    import mlflow.onnx
    import numpy as np
    import onnx

    run_id = run.info.run_id
    size, bands = int(prep["image_size"]), len(prep["bands"])
    model = onnx.load(str(layout.onnx))
    logged = None
    try:
        # Created here, not by log_model: log_model would put it in the globally active
        # experiment (and a local store's ./mlruns) instead of the run's experiment.
        logged = client.create_logged_model(
            experiment_id=run.info.experiment_id, name="model", source_run_id=run_id,
            params={k: v for k, v in run.data.params.items()},
            tags={TEST_SPLIT_TAG: split_id}, model_type="onnx")
        return mlflow.onnx.log_model(
            model, name="model", signature=model_signature(size, bands),
            input_example=np.zeros((1, bands, size, size), dtype=np.float32),
            extra_files=_extra_files(layout, tmp), run_id=run_id, model_id=logged.model_id,
            # one self-contained model.onnx unless protobuf's 2 GiB limit forbids it
            save_as_external_data=layout.onnx.stat().st_size > 1_800_000_000,
            metadata={"preprocessing": prep, "output": "probabilities in [0, 1], sigmoid inside",
                      TEST_SPLIT_TAG: split_id},
        )
    except Exception as e:  # noqa: BLE001
        if logged is not None:  # a partly logged model: FAILED, never registered
            _mark_failed(client, logged.model_id)
        raise TrackingError(f"logging the ONNX model {layout.onnx} into run {run_id} failed: "
                            f"{type(e).__name__}: {first_line(e)}; nothing registered") from e


def _mark_failed(client, model_id: str) -> None:
    """Finalize a logged model as FAILED (best effort: the error that got here matters more)."""
    from mlflow.entities import LoggedModelStatus

    try:
        client.finalize_logged_model(model_id, LoggedModelStatus.FAILED)
    except Exception as e:  # noqa: BLE001
        log.warning("could not mark logged model %s FAILED: %s", model_id, first_line(e))


def register_model(tracking_uri: str, run_id: str, model_name: str,
                   run_dir: str | os.PathLike[str]) -> str:
    """Log the ONNX model into the run and register it as a version of ``model_name``, once.

    The logged model (ONNX flavour, what users run with onnxruntime) has the signature of
    :func:`model_signature`, an input example (one chip of the training mean colour, i.e. zeros
    after normalisation) and ``stac_item.json`` as an extra file. The version is tagged with
    the test metrics (``metric.<name>``), ``test_split_id``, ``dataset.fingerprint``,
    ``kfp.run_id`` and the run's ``training.params``/``training.params_digest``; the run gets
    ``registered_model.name``/``version`` tags.

    Idempotent per pipeline run: when this MLflow run (or the KFP run of its ``kfp.run_id`` tag)
    already registered a version of ``model_name`` (a retried step), that version is returned
    and nothing is logged or registered again.

    Nothing half-published: the run must carry ``campseg.artifacts_logged=true``
    (``log_run_artifacts`` finished) and must not be FAILED; the version is created only
    after the model logged completely (a model whose logging failed is marked FAILED and never
    registered).

    Returns:
        The version number (a string).

    Raises:
        TrackingError: the run's artifacts are not (all) logged, the run failed, or MLflow
            refused the model.
        RunFolderError: the run folder lacks the ONNX model, STAC item, stats or metrics.
    """
    import mlflow

    layout = RunLayout(Path(run_dir))
    layout.require(layout.onnx, layout.stac_item, layout.stats, layout.metrics, layout.splits,
                   stage="model registration")
    client = make_client(tracking_uri)
    run = client.get_run(run_id)
    _check_run_ready(run, run_id)
    stats = read_json(layout.stats)
    metrics = read_json(layout.metrics)
    split_id = compute_test_split_id(layout.root)
    version_tags = _version_tags(metrics, stats, split_id, run.data.tags)
    existing = registered_version(client, model_name, run_id, run.data.tags.get(KFP_RUN_ID_TAG))
    if existing is not None:
        log.info("run %s already registered %s v%s: reusing it", run_id, model_name, existing.version)
        number = str(existing.version)
        model_uri = f"models:/{existing.model_id}" if getattr(existing, "model_id", None) else existing.source
        for key, value in version_tags.items():  # a try that failed after registering may lack them
            if existing.tags.get(key) != value:
                client.set_model_version_tag(model_name, number, key, value)
    else:
        with tempfile.TemporaryDirectory() as tmp, global_uri(tracking_uri):
            info = _log_onnx_model(client, run, layout, stats["preprocessing"], split_id, Path(tmp))
            model_uri = info.model_uri
            try:
                number = str(mlflow.register_model(model_uri, model_name, tags=version_tags).version)
            except Exception as e:  # noqa: BLE001
                raise TrackingError(f"registering {model_uri} as {model_name!r} at "
                                    f"{redact(tracking_uri)} failed: {type(e).__name__}: "
                                    f"{first_line(e)}") from e
    config = read_json(layout.config) if layout.config.exists() else {}
    client.update_model_version(model_name, number,
                                description=version_description(stats, config, metrics, run_id))
    write_tags(client, run_id, {"registered_model.name": model_name,
                                "registered_model.version": number,
                                "registered_model.uri": f"models:/{model_name}/{number}",
                                "logged_model.uri": model_uri})
    return number


def delete_version(tracking_uri: str, model_name: str, version: str | int) -> None:
    """Delete one version of ``model_name`` (e.g. after its publishing failed)."""
    make_client(tracking_uri).delete_model_version(model_name, str(version))
