"""MLflow tracking and model registry: the MLflow side of the pipeline, as plain functions.

One MLflow run per pipeline run. Each function takes the tracking URI and the run id explicitly,
so each KFP step can call one of them with what earlier steps returned:

=====================================  ====================================================
step                                   call
=====================================  ====================================================
first step (fail fast)                 :func:`check_tracking_server`, then
                                       :func:`start_pipeline_run` -> ``run_id``
statistics                             :func:`log_dataset`
training                               :class:`MlflowEpochLogger` as a Lightning callback,
                                       and/or :func:`log_history` after ``train()``
after evaluation, DLPK and STAC        :func:`log_run_artifacts`
registration (after all artifacts)     :func:`register_model` -> version
promotion                              :func:`promote_if_better`
exit handler                           :func:`end_run` (``FAILED`` when a step failed)
=====================================  ====================================================

Only :func:`tracking_uri_from_env` and :func:`run_id_from_env` read the environment.

What goes where (see docs/tracking.md):

- params: hyperparameters (as given), ``dataset.*`` (URI, fingerprint, counts, preprocessing);
- tags: ``kfp.run_id``, ``system.*`` (platform, versions, CPUs, memory, GPUs; the training step
  adds ``system.train.*``), ``dataset.fingerprint``, ``campseg.artifacts_logged``,
  ``promotion.*``;
- metrics: per-epoch ``train_loss``, ``val_loss``, ``val_iou``, ... and ``lr`` with
  ``step=epoch``; ``best_*`` of the best epoch; ``dataset.*`` fractions and counts;
  ``test_*`` from ``evaluation/metrics.json``;
- dataset input: a metadata-only dataset (source = the dataset URI, digest = its fingerprint);
- artifacts: ``models/``, ``metadata/``, ``checkpoints/``, ``evaluation/``, ``esri/``;
- registry: a version of the named model (ONNX flavour with signature, input example and the
  STAC item), tagged with its test metrics and test split id; alias ``champion``.

The champion rule (:func:`promote_if_better`): a version is compared with the current champion
only when both were evaluated on the same test split (the ``test_split_id`` tag: a hash of the
test split's stems and the dataset fingerprint). No champion yet: promote. Same split: promote
when ``new > champion + margin`` (``new < champion - margin`` for lower-is-better metrics); a tie
keeps the incumbent. Different split (or a champion without the metric): keep the champion and
say so, unless the caller passes the champion's score re-evaluated on this split
(``champion_score_on_split``), which is then compared as above.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import platform
import re
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Mapping, Sequence

from components.contracts.errors import TrackingError
from components.contracts.run_layout import RunLayout, read_json

log = logging.getLogger(__name__)

#: Alias of the registered version that serves as the current best model.
CHAMPION_ALIAS = "champion"
#: Run tag set by :func:`log_run_artifacts` when every artifact is uploaded; registration needs it.
ARTIFACTS_LOGGED_TAG = "campseg.artifacts_logged"
KFP_RUN_ID_TAG = "kfp.run_id"
TEST_SPLIT_TAG = "test_split_id"
#: Folders of the run folder uploaded as artifacts, in upload order.
ARTIFACT_FOLDERS = ("metadata", "checkpoints", "models", "evaluation", "esri")
#: Run-folder files uploaded into ``metadata/`` beside the STAC item.
METADATA_FILES = ("stats.json", "dataset_manifest.json", "train_config.json",
                  "training_history.json", "summary.json")
#: Test metrics of evaluation/metrics.json logged as ``test_<name>`` and as version tags.
TEST_METRICS = ("iou", "f1", "precision", "recall", "accuracy")
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
_LOWER_IS_BETTER = re.compile(r"(loss|error|mae|mse|rmse)$")
_MAX_PARAM_CHARS = 6000
_CHECK_TIMEOUT_S = 5.0


# --------------------------------------------------------------------------------------------
# Edges: the environment
# --------------------------------------------------------------------------------------------
def tracking_uri_from_env(default_local_dir: str | os.PathLike[str],
                          env: Mapping[str, str] | None = None) -> str:
    """``MLFLOW_TRACKING_URI`` when set, else the embedded store ``sqlite:///<dir>/mlflow.db``.

    Args:
        default_local_dir: folder of the local SQLite store (usually the run's output folder);
            created when missing. Artifacts of a local store go to ``<dir>/mlartifacts``.
        env: the environment to read (default ``os.environ``).
    """
    env = os.environ if env is None else env
    uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if uri:
        return uri
    folder = Path(default_local_dir).expanduser().resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def run_id_from_env(env: Mapping[str, str] | None = None) -> str | None:
    """The run id KFP's MLflow plugin injected (``MLFLOW_RUN_ID``), or ``None``."""
    env = os.environ if env is None else env
    return (env.get("MLFLOW_RUN_ID") or "").strip() or None


# --------------------------------------------------------------------------------------------
# Clients
# --------------------------------------------------------------------------------------------
def _client(tracking_uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


@contextlib.contextmanager
def _global_uri(tracking_uri: str) -> Iterator[None]:
    """Point mlflow's module-level (fluent) API at ``tracking_uri`` for the block, then restore.

    Model logging (``mlflow.onnx.log_model``) and ``mlflow.register_model`` use the global URIs.
    """
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    old_tracking = _tracking_service.utils._tracking_uri
    old_registry = _model_registry.utils._registry_uri
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    try:
        yield
    finally:
        _tracking_service.utils._tracking_uri = old_tracking
        _model_registry.utils._registry_uri = old_registry


def _redact(uri: str) -> str:
    """``uri`` without a password (``http://user:***@host``)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password:
        netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
    return uri


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sqlite_dir(tracking_uri: str) -> Path | None:
    """The folder holding the database of a ``sqlite:///`` URI (``None`` for other stores)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    path = tracking_uri[len("sqlite:///"):]
    if not path or path == ":memory:":
        return None
    return Path(path).parent


# --------------------------------------------------------------------------------------------
# Fail fast
# --------------------------------------------------------------------------------------------
def check_tracking_server(tracking_uri: str, timeout: float = _CHECK_TIMEOUT_S) -> None:
    """Fail fast unless the tracking store at ``tracking_uri`` answers.

    For ``http(s)://`` it GETs ``/health`` with a short timeout, then makes one API call
    (search experiments) without retries, so wrong credentials or a proxy that is not MLflow show
    up here too. For ``sqlite:///`` it creates the folder and opens (and migrates) the database.

    Raises:
        TrackingError: the message names the URI (without password) and the cause.
    """
    shown = _redact(tracking_uri)
    parts = urllib.parse.urlsplit(tracking_uri)
    if parts.scheme in ("http", "https"):
        url = tracking_uri.rstrip("/") + "/health"
        request = urllib.request.Request(url, method="GET")
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                if response.status != 200:
                    raise TrackingError(f"MLflow tracking server {shown} is unhealthy: GET /health "
                                        f"answered {response.status}")
        except urllib.error.HTTPError as e:
            raise TrackingError(f"MLflow tracking server {shown} is unhealthy: GET /health answered "
                                f"{e.code} {e.reason}; is MLFLOW_TRACKING_URI right?") from None
        except (urllib.error.URLError, OSError, socket.timeout) as e:
            cause = getattr(e, "reason", e)
            raise TrackingError(f"MLflow tracking server {shown} is unreachable ({cause}); is the "
                                f"server running and MLFLOW_TRACKING_URI right?") from None
        env = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
               "MLFLOW_HTTP_REQUEST_TIMEOUT": str(max(1, int(math.ceil(timeout))))}
    else:
        folder = _sqlite_dir(tracking_uri)
        if folder is not None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise TrackingError(f"local MLflow store {shown}: cannot create {folder} ({e})") from None
        env = {}
    try:
        with _env(**env):
            _client(tracking_uri).search_experiments(max_results=1)
    except TrackingError:
        raise
    except Exception as e:  # noqa: BLE001 - any failure means the store is unusable
        raise TrackingError(f"MLflow tracking store {shown} does not answer its API "
                            f"({type(e).__name__}: {_first_line(e)})") from None


def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else "")[:limit]


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------
def system_info() -> dict[str, str]:
    """Platform, Python/torch/Lightning/MLflow versions, CPUs, memory and GPUs of this machine.

    CPU and memory are those this process may use (affinity, cgroup limits) beside the host's.
    """
    info: dict[str, str] = {
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "python": platform.python_version(),
        "cpu_count": str(os.cpu_count() or 0),
    }
    for module in ("torch", "lightning", "mlflow", "onnxruntime", "kfp"):
        try:
            info[module] = __import__(module).__version__
        except Exception:  # noqa: BLE001 - a missing package is recorded as such
            info[module] = "not installed"
    with contextlib.suppress(AttributeError, OSError):
        info["cpu_available"] = str(len(os.sched_getaffinity(0)))
    with contextlib.suppress(OSError, ValueError):
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            info["cpu_limit"] = f"{int(quota) / int(period):g}"
    with contextlib.suppress(AttributeError, OSError, ValueError):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        info["memory_gb"] = f"{total / 2**30:.1f}"
    with contextlib.suppress(OSError, ValueError):
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            info["memory_limit_gb"] = f"{int(limit) / 2**30:.1f}"
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        info["gpu_count"] = str(count)
        if count:
            props = [torch.cuda.get_device_properties(i) for i in range(count)]
            info["gpus"] = ", ".join(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)" for p in props)
            info["cuda"] = str(torch.version.cuda)
    except Exception:  # noqa: BLE001
        info.setdefault("gpu_count", "unknown")
    return info


def log_system_info(tracking_uri: str, run_id: str, scope: str | None = None) -> dict[str, str]:
    """Record :func:`system_info` as run tags ``system.<key>`` (``system.<scope>.<key>``).

    Tags rather than params: each KFP step runs on its own machine (the training step on a GPU
    node), so the same key may be logged again with another value.
    """
    info = system_info()
    prefix = f"system.{scope}." if scope else "system."
    _set_tags(_client(tracking_uri), run_id, {prefix + k: v for k, v in info.items()})
    return info


def _get_or_create_experiment(client, tracking_uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} at {_redact(tracking_uri)} is deleted; "
                                f"restore it or choose another name")
        return experiment.experiment_id
    artifact_location = None
    folder = _sqlite_dir(tracking_uri)
    if folder is not None:
        # A local store keeps artifacts beside its database, not in the working directory.
        artifact_location = (folder / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a concurrent creation won


def _param_value(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def _flatten(payload: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _log_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100; a param already logged with the same value is fine."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    todo = []
    for key, value in params.items():
        text = _param_value(value)
        if key in existing:
            if existing[key] != text:
                raise TrackingError(f"run {run_id} already has param {key}={existing[key]!r}; "
                                    f"cannot log {key}={text!r} (params are immutable)")
            continue
        todo.append(Param(key, text))
    for i in range(0, len(todo), 100):
        client.log_batch(run_id, params=todo[i:i + 100])


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log (nested) parameters into a run; nested keys are joined with dots."""
    _log_params(_client(tracking_uri), run_id, _flatten(dict(params)))


def _set_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(k, _param_value(v)) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, tags=items[i:i + 100])


def _log_metrics(client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(k, float(v), now, step) for k, v in metrics.items()
             if _is_number(v) and math.isfinite(float(v))]
    for i in range(0, len(items), 200):
        client.log_batch(run_id, metrics=items[i:i + 200])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def start_pipeline_run(
    tracking_uri: str,
    experiment: str,
    run_name: str,
    kfp_run_id: str | None,
    params: Mapping[str, Any],
    existing_run_id: str | None = None,
) -> str:
    """Create (or reuse) the one MLflow run of a pipeline run and log its parameters.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name; created when missing.
        run_name: the run's display name.
        kfp_run_id: the KFP run id (``dsl.PIPELINE_JOB_ID_PLACEHOLDER``), tagged ``kfp.run_id``;
            ``None`` or empty for a run outside KFP.
        params: hyperparameters and pipeline parameters, logged as params (nested dicts are
            flattened with dots; values longer than 6000 characters are cut).
        existing_run_id: a run to log into instead of creating one (``MLFLOW_RUN_ID`` injected
            by KFP's MLflow plugin). Without it, a run of ``experiment`` already tagged with
            this ``kfp_run_id`` is reused, so a retried first step does not create a second run.

    Returns:
        The MLflow run id that later steps log into.

    Raises:
        TrackingError: ``existing_run_id`` does not exist or has finished, or a param was
            already logged with another value.
    """
    from mlflow.exceptions import MlflowException

    client = _client(tracking_uri)
    kfp_run_id = (kfp_run_id or "").strip() or None
    run_id: str | None = None
    if existing_run_id:
        try:
            run = client.get_run(existing_run_id)
        except MlflowException as e:
            raise TrackingError(f"MLflow run {existing_run_id!r} (MLFLOW_RUN_ID) not found at "
                                f"{_redact(tracking_uri)}: {_first_line(e)}") from None
        if run.info.status not in ("RUNNING", "SCHEDULED"):
            raise TrackingError(f"MLflow run {existing_run_id!r} is {run.info.status}; a pipeline "
                                f"run logs into a RUNNING run")
        run_id = existing_run_id
        if run_name and not run.info.run_name:
            client.update_run(run_id, name=run_name)
    else:
        experiment_id = _get_or_create_experiment(client, tracking_uri, experiment)
        if kfp_run_id:
            found = client.search_runs(
                [experiment_id], filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{kfp_run_id}'",
                max_results=1)
            if found and found[0].info.status == "RUNNING":
                run_id = found[0].info.run_id
                log.info("reusing MLflow run %s of KFP run %s", run_id, kfp_run_id)
        if run_id is None:
            run_id = client.create_run(experiment_id, run_name=run_name or None).info.run_id
    tags = {"mlflow.source.type": "JOB", "mlflow.source.name": "campseg pipeline"}
    if kfp_run_id:
        tags[KFP_RUN_ID_TAG] = kfp_run_id
    _set_tags(client, run_id, tags)
    _log_params(client, run_id, _flatten(dict(params)))
    log_system_info(tracking_uri, run_id)
    return run_id


def end_run(tracking_uri: str, run_id: str | None, status: RunStatus = "FINISHED",
            reason: str | None = None) -> None:
    """Terminate the run: ``FINISHED``, or ``FAILED`` from the exit handler when a step failed.

    A missing ``run_id`` (the first step failed before creating the run) is a no-op.

    Args:
        reason: optional text recorded as tag ``campseg.end_reason`` (which step failed).
    """
    if status not in ("FINISHED", "FAILED", "KILLED"):
        raise TrackingError(f"status={status!r}: choose FINISHED, FAILED or KILLED")
    if not run_id:
        log.warning("end_run: no MLflow run id; nothing to terminate")
        return
    client = _client(tracking_uri)
    if reason:
        client.set_tag(run_id, "campseg.end_reason", _param_value(reason))
    client.set_terminated(run_id, status=status)


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------
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
    """The dataset's content fingerprint via :func:`components.storage.s3.fingerprint`, or None."""
    from components.storage.s3 import fingerprint, is_s3_uri

    if not is_s3_uri(uri) and not Path(uri).exists():
        return None
    try:
        return fingerprint(uri)
    except Exception as e:  # noqa: BLE001 - the digest then falls back to MLflow's own
        log.warning("no content fingerprint of %s (%s: %s)", uri, type(e).__name__, _first_line(e))
        return None


def log_dataset(tracking_uri: str, run_id: str, stats: Mapping[str, Any],
                fingerprint: str | None = None, name: str | None = None) -> dict[str, Any]:
    """Log the dataset statistics (params and metrics) and the dataset as an MLflow input.

    The input is metadata only: its source is the dataset URI and its digest the content
    fingerprint (``sha256:<hex>``, cut to the 36 characters MLflow stores; the full value is the
    param/tag ``dataset.fingerprint``). No chip is copied.

    Args:
        stats: the content of ``stats.json``.
        fingerprint: the dataset's content fingerprint when ``stats`` lacks one; without
            either, it is computed with :func:`components.storage.s3.fingerprint` when the URI is
            reachable (an ``s3://`` listing, a local folder), else MLflow derives a digest from
            the source and the tag says ``unknown``.
        name: dataset name (default: the last part of the URI).

    Returns:
        ``{"name", "digest", "source", "fingerprint"}`` of the logged input.
    """
    import numpy as np
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.types import Schema, TensorSpec

    client = _client(tracking_uri)
    uri = str(stats.get("dataset_uri") or "")
    fingerprint = fingerprint or stats.get("fingerprint") or None
    if not fingerprint and uri:
        fingerprint = _try_fingerprint(uri)
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
    _log_params(client, run_id, _flatten(params))
    metrics: dict[str, float] = {}
    for group in ("counts", "groups", "positive_fraction"):
        for split, value in (stats.get(group) or {}).items():
            metrics[f"dataset.{group}.{split}"] = value
    _log_metrics(client, run_id, metrics)

    size = int(prep.get("image_size") or -1)
    bands = len(prep.get("bands") or []) or -1
    schema = Schema([TensorSpec(np.dtype(str(stats.get("dtype") or "uint8")), (-1, bands, size, size), "chip"),
                     TensorSpec(np.dtype("uint8"), (-1, size, size), "mask")])
    digest = fingerprint.split(":", 1)[-1][:36] if fingerprint else None
    dataset = MetaDataset(_dataset_source(uri or "unknown"),
                          name=name or (uri.rstrip("/").rsplit("/", 1)[-1] or uri or "dataset"),
                          digest=digest, schema=schema)
    tags = [InputTag("mlflow.data.context", "training"),
            InputTag("dataset.fingerprint", fingerprint or "unknown")]
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(), tags=tags)])
    _set_tags(client, run_id, {"dataset.fingerprint": fingerprint or "unknown",
                               "dataset.uri": uri or "unknown"})
    return {"name": dataset.name, "digest": dataset.digest, "source": uri,
            "fingerprint": fingerprint}


# --------------------------------------------------------------------------------------------
# Training history
# --------------------------------------------------------------------------------------------
_ROW_SKIP = {"epoch", "seconds"}


def _row_metrics(row: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in row.items()
            if k not in _ROW_SKIP and _is_number(v) and math.isfinite(float(v))}


def _best_row(rows: Sequence[Mapping[str, Any]], monitor: str = "val_iou") -> Mapping[str, Any] | None:
    scored = [r for r in rows if _is_number(r.get(monitor))]
    return max(scored, key=lambda r: r[monitor]) if scored else None


def log_history(tracking_uri: str, run_id: str, history: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                monitor: str = "val_iou") -> dict[str, float]:
    """Log per-epoch metrics with ``step=epoch``, then the best epoch's metrics as ``best_*``.

    Idempotent: a (metric, epoch) point already present (logged live by
    :class:`MlflowEpochLogger`, or by an earlier try of the step) is not logged again, so the
    metric history keeps one point per epoch.

    Args:
        history: the content of ``training_history.json`` (``{"epochs": [...], "summary": {...}}``)
            or its list of rows (each with ``epoch`` and metrics such as ``train_loss``,
            ``val_loss``, ``val_iou``, ``lr``).
        monitor: the metric that selects the best epoch (maximised).

    Returns:
        The ``best_*`` metrics logged.
    """
    from mlflow.entities import Metric

    if isinstance(history, Mapping):
        rows = list(history.get("epochs") or [])
        summary = dict(history.get("summary") or {})
    else:
        rows, summary = list(history), {}
    client = _client(tracking_uri)
    keys = sorted({k for r in rows for k in _row_metrics(r)})
    present = {k: {m.step for m in client.get_metric_history(run_id, k)} for k in keys}
    now = int(time.time() * 1000)
    todo = [Metric(k, v, now, int(r["epoch"])) for r in rows
            for k, v in _row_metrics(r).items() if int(r["epoch"]) not in present.get(k, set())]
    for i in range(0, len(todo), 500):
        client.log_batch(run_id, metrics=todo[i:i + 500])
    best = _best_metrics(rows, summary, monitor)
    _log_metrics(client, run_id, best)
    return best


def _best_metrics(rows: Sequence[Mapping[str, Any]], summary: Mapping[str, Any], monitor: str) -> dict[str, float]:
    best: dict[str, float] = {}
    row = _best_row(rows, monitor)
    if row is not None:
        best = {f"best_{k}": v for k, v in _row_metrics(row).items()}
        best["best_epoch"] = float(row["epoch"])
    for key in ("best_epoch", "best_val_iou", "epochs_run", "train_seconds", "train_images_per_second"):
        if _is_number(summary.get(key)):
            best[key] = float(summary[key])
    if rows and "epochs_run" not in best:
        best["epochs_run"] = float(len(rows))
    return best


try:  # Lightning is a dependency of the package; keep the module importable without it anyway.
    from lightning.pytorch.callbacks import Callback as _Callback
except ImportError:  # pragma: no cover
    _Callback = object  # type: ignore[assignment,misc]


class MlflowEpochLogger(_Callback):
    """A Lightning callback that logs each epoch's metrics into the pipeline's MLflow run.

    At the end of every training epoch (after validation) it logs ``train_loss``, ``val_loss``,
    ``val_iou`` (and the other epoch metrics Lightning holds, ``lr`` included) with
    ``step=epoch``; at fit start it records the training machine as ``system.train.*`` tags; at
    fit end the best epoch's metrics as ``best_*``. A tracking failure is logged as a warning and
    does not stop training (MLflow's client already retries); :func:`log_history` after training
    fills any gap without duplicating points.

    Args:
        tracking_uri: MLflow tracking URI.
        run_id: the pipeline's run.
        monitor: the metric that selects the best epoch (maximised).
    """

    def __init__(self, tracking_uri: str, run_id: str, monitor: str = "val_iou") -> None:
        super().__init__()
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.monitor = monitor
        self.rows: list[dict[str, float]] = []
        self.failures = 0

    def _safely(self, what: str, fn, *args) -> None:
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 - tracking must not kill a long training
            self.failures += 1
            log.warning("MLflow: could not %s in run %s (%s: %s)", what, self.run_id,
                        type(e).__name__, _first_line(e))

    def on_fit_start(self, trainer, pl_module) -> None:
        self._safely("log system info", log_system_info, self.tracking_uri, self.run_id, "train")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        row: dict[str, float] = {"epoch": trainer.current_epoch}
        for key, value in trainer.callback_metrics.items():
            if not key.endswith("_step"):
                row[key.removesuffix("_epoch")] = float(value)
        if "lr" not in row and trainer.optimizers:
            row["lr"] = float(trainer.optimizers[0].param_groups[0]["lr"])
        self.rows.append(row)
        self._safely("log epoch metrics", _log_metrics, _client(self.tracking_uri), self.run_id,
                     _row_metrics(row), int(row["epoch"]))

    def on_fit_end(self, trainer, pl_module) -> None:
        best = _best_metrics(self.rows, {}, self.monitor)
        self._safely("log best-epoch metrics", _log_metrics, _client(self.tracking_uri),
                     self.run_id, best)


# --------------------------------------------------------------------------------------------
# Artifacts
# --------------------------------------------------------------------------------------------
def _files_under(folder: Path) -> Iterable[Path]:
    """Files under ``folder``, skipping hidden and partial ones (``.x.partial``, ``.partial/``)."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith(".") and not name.endswith(".partial"):
                yield Path(dirpath) / name


def run_artifacts(run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """What :func:`log_run_artifacts` uploads: artifact path -> local file."""
    layout = RunLayout(Path(run_dir))
    out: dict[str, Path] = {}
    for folder in ARTIFACT_FOLDERS:
        local = layout.root / folder
        if local.is_dir():
            for f in _files_under(local):
                out[f.relative_to(layout.root).as_posix()] = f
    for name in METADATA_FILES:
        f = layout.root / name
        if f.is_file():
            out[f"metadata/{name}"] = f
    return dict(sorted(out.items()))


def log_run_artifacts(tracking_uri: str, run_id: str, run_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """Upload the run folder's artifacts in folders, and the test metrics as ``test_*``.

    Layout in the run's artifact store: ``models/`` (``model.onnx``, ``model.pt``,
    ``model.pth``, ``export_report.json``), ``metadata/`` (``stac_item.json``, ``stats.json``,
    the manifest, training config and history, ``summary.json``), ``checkpoints/best.ckpt``,
    ``evaluation/`` (``metrics.json``, figures, ``overlays/``), ``esri/`` (the ``.dlpk``).
    The last action is the tag ``campseg.artifacts_logged=true``, which :func:`register_model`
    requires: a run whose upload failed half-way is never registered.

    Raises:
        RunFolderError: the run folder lacks the evaluation metrics or the ONNX model.
        TrackingError: an upload failed (after the client's retries).
    """
    layout = RunLayout(Path(run_dir))
    layout.require(layout.metrics, layout.onnx, stage="MLflow artifact upload")
    client = _client(tracking_uri)
    client.set_tag(run_id, ARTIFACTS_LOGGED_TAG, "false")
    files = run_artifacts(layout.root)
    for artifact_path, local in files.items():
        parent = str(Path(artifact_path).parent.as_posix())
        try:
            client.log_artifact(run_id, str(local), parent if parent != "." else None)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"uploading {local} to MLflow run {run_id} ({_redact(tracking_uri)}) "
                                f"failed: {type(e).__name__}: {_first_line(e)}") from e
    metrics = read_json(layout.metrics)
    test = {f"test_{k}": v for k, v in metrics.items() if _is_number(v)}
    test |= {f"test_{k}": v for k, v in (metrics.get("confusion_matrix") or {}).items()}
    test |= {f"test_baseline_{k}": v for k, v in (metrics.get("baselines") or {}).items()}
    if layout.export_report.exists():
        report = read_json(layout.export_report)
        test |= {f"export_{k}": v for k, v in _flatten(report).items()
                 if _is_number(v) and ("diff" in k or "param" in k)}
    _log_metrics(client, run_id, test)
    client.set_tag(run_id, ARTIFACTS_LOGGED_TAG, "true")
    return files


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------
def compute_test_split_id(run_dir: str | os.PathLike[str]) -> str:
    """Identity of the test split a run was evaluated on: ``sha256:<hex>`` of the sorted test
    stems and the dataset fingerprint (or, without a fingerprint, the dataset URI).

    Two versions with the same id were evaluated on the same chips of the same data; any added,
    removed or changed file of the dataset gives a new id.
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


def register_model(tracking_uri: str, run_id: str, model_name: str,
                   run_dir: str | os.PathLike[str]) -> str:
    """Log the ONNX model into the run and register it as a new version of ``model_name``.

    The logged model (ONNX flavour, what users run with onnxruntime) has the signature of
    :func:`model_signature`, an input example (one chip of the training mean colour, i.e. zeros
    after normalisation) and ``stac_item.json`` as an extra file. The version is tagged with
    the test metrics (``metric.<name>``), ``test_split_id``, ``dataset.fingerprint`` and
    ``kfp.run_id``; the run gets ``registered_model.name``/``version`` tags.

    Nothing half-published: the run must carry ``campseg.artifacts_logged=true``
    (:func:`log_run_artifacts` finished) and must not be FAILED; the version is created only
    after the model logged completely.

    Returns:
        The new version number (a string).

    Raises:
        TrackingError: the run's artifacts are not (all) logged, the run failed, or MLflow
            refused the model.
        RunFolderError: the run folder lacks the ONNX model, STAC item, stats or metrics.
    """
    import mlflow
    import mlflow.onnx
    import numpy as np
    import onnx

    layout = RunLayout(Path(run_dir))
    layout.require(layout.onnx, layout.stac_item, layout.stats, layout.metrics, layout.splits,
                   stage="model registration")
    client = _client(tracking_uri)
    run = client.get_run(run_id)
    if run.data.tags.get(ARTIFACTS_LOGGED_TAG) != "true":
        raise TrackingError(f"run {run_id}: its artifacts are not all logged "
                            f"({ARTIFACTS_LOGGED_TAG}={run.data.tags.get(ARTIFACTS_LOGGED_TAG)!r}); "
                            f"call log_run_artifacts first; nothing registered")
    if run.info.status in ("FAILED", "KILLED"):
        raise TrackingError(f"run {run_id} is {run.info.status}; a failed run registers no model")

    stats = read_json(layout.stats)
    prep = stats["preprocessing"]
    size, bands = int(prep["image_size"]), len(prep["bands"])
    metrics = read_json(layout.metrics)
    split_id = compute_test_split_id(layout.root)
    model = onnx.load(str(layout.onnx))
    example = np.zeros((1, bands, size, size), dtype=np.float32)
    version_tags = {f"metric.{k}": repr(float(metrics[k])) for k in TEST_METRICS if _is_number(metrics.get(k))}
    version_tags |= {TEST_SPLIT_TAG: split_id,
                     "test_split": str(metrics.get("split", "test")),
                     "dataset.fingerprint": str(stats.get("fingerprint") or "unknown"),
                     "dataset.uri": str(stats.get("dataset_uri") or "unknown")}
    if run.data.tags.get(KFP_RUN_ID_TAG):
        version_tags[KFP_RUN_ID_TAG] = run.data.tags[KFP_RUN_ID_TAG]
    with tempfile.TemporaryDirectory() as tmp, _global_uri(tracking_uri):
        extra = {"stac_item.json": layout.stac_item, "stats.json": layout.stats}
        if layout.export_report.exists():
            extra["export_report.json"] = layout.export_report
        extra_files = []
        for name, path in extra.items():  # extra_files keep the base name: copy to fix it
            target = Path(tmp) / name
            target.write_bytes(path.read_bytes())
            extra_files.append(str(target))
        try:
            # Created here, not by log_model: log_model would put it in the globally active
            # experiment (and a local store's ./mlruns) instead of the run's experiment.
            logged = client.create_logged_model(
                experiment_id=run.info.experiment_id, name="model", source_run_id=run_id,
                params={k: v for k, v in run.data.params.items()},
                tags={TEST_SPLIT_TAG: split_id}, model_type="onnx")
            info = mlflow.onnx.log_model(
                model, name="model", signature=model_signature(size, bands), input_example=example,
                extra_files=extra_files, run_id=run_id, model_id=logged.model_id,
                # one self-contained model.onnx unless protobuf's 2 GiB limit forbids it
                save_as_external_data=layout.onnx.stat().st_size > 1_800_000_000,
                metadata={"preprocessing": prep, "output": "probabilities in [0, 1], sigmoid inside",
                          TEST_SPLIT_TAG: split_id},
            )
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"logging the ONNX model {layout.onnx} into run {run_id} failed: "
                                f"{type(e).__name__}: {_first_line(e)}; nothing registered") from e
        try:
            version = mlflow.register_model(info.model_uri, model_name, tags=version_tags)
        except Exception as e:  # noqa: BLE001
            raise TrackingError(f"registering {info.model_uri} as {model_name!r} at "
                                f"{_redact(tracking_uri)} failed: {type(e).__name__}: "
                                f"{_first_line(e)}") from e
    client.update_model_version(model_name, version.version,
                                description=f"campseg run {run_id}: test IoU "
                                            f"{metrics.get('iou', float('nan')):.4f} on {split_id[:19]}")
    _set_tags(client, run_id, {"registered_model.name": model_name,
                               "registered_model.version": version.version,
                               "registered_model.uri": f"models:/{model_name}/{version.version}",
                               "logged_model.uri": info.model_uri})
    return str(version.version)


def _higher_is_better(metric: str) -> bool:
    return not _LOWER_IS_BETTER.search(metric)


def promote_if_better(
    tracking_uri: str,
    model_name: str,
    version: str | int,
    metric: str = "iou",
    margin: float = 0.0,
    *,
    test_split_id: str | None = None,
    champion_score_on_split: float | None = None,
    higher_is_better: bool | None = None,
) -> dict[str, Any]:
    """Move the alias ``champion`` to ``version`` only if it beats the champion by ``margin``.

    The scores are the versions' ``metric.<metric>`` tags (set by :func:`register_model` from
    ``evaluation/metrics.json``). The rule:

    - no champion yet: promote;
    - the champion is ``version`` itself: keep (nothing to do);
    - same test split (``test_split_id`` tags equal): promote iff
      ``new > champion + margin`` (``new < champion - margin`` when lower is better);
      a tie keeps the incumbent;
    - different test split, or a champion without the metric: keep the champion and say why,
      unless ``champion_score_on_split`` (the champion re-evaluated on this version's test split)
      is given, which is then compared as above.

    The decision is recorded as tags ``promotion.decision`` (``promoted`` / ``not_promoted``),
    ``promotion.reason``, ``promotion.rule``, ``promotion.champion_version`` on the version and on
    its run.

    Args:
        version: the new version.
        metric: a test metric name of ``evaluation/metrics.json`` (``iou``, ``f1``, ...).
        margin: how much better (absolute) the new version must be; >= 0.
        test_split_id: the split the new version was evaluated on; defaults to its tag and, when
            both are present, must match it.
        champion_score_on_split: the champion's ``metric`` on this version's test split, from a
            re-evaluation; lets versions evaluated on different splits be compared.
        higher_is_better: default: ``False`` for names ending in loss/error, else ``True``.

    Returns:
        ``decision``, ``reason``, ``rule``, ``promoted`` (bool), ``champion_version`` (after the
        decision), ``previous_champion_version``, ``metric``, ``margin``, ``new_score``,
        ``champion_score``, ``test_split_id``, ``champion_test_split_id``.
    """
    from mlflow.exceptions import MlflowException

    if not margin >= 0:
        raise TrackingError(f"margin={margin!r}: must be >= 0")
    higher = _higher_is_better(metric) if higher_is_better is None else higher_is_better
    client = _client(tracking_uri)
    version = str(version)
    new = client.get_model_version(model_name, version)
    tag_split = new.tags.get(TEST_SPLIT_TAG)
    if test_split_id and tag_split and test_split_id != tag_split:
        raise TrackingError(f"{model_name} v{version} was evaluated on test split {tag_split}, "
                            f"not {test_split_id}")
    split = test_split_id or tag_split
    new_score = _tag_score(new.tags, metric)
    if new_score is None:
        raise TrackingError(f"{model_name} v{version} has no tag metric.{metric}; register it with "
                            f"register_model (evaluation/metrics.json lacks {metric!r}?)")
    try:
        champion = client.get_model_version_by_alias(model_name, CHAMPION_ALIAS)
    except MlflowException:
        champion = None

    result: dict[str, Any] = {
        "metric": metric, "margin": float(margin), "higher_is_better": higher,
        "new_version": version, "new_score": new_score, "test_split_id": split,
        "previous_champion_version": str(champion.version) if champion else None,
        "champion_score": None, "champion_test_split_id": None,
    }
    better = "higher" if higher else "lower"

    def beats(a: float, b: float) -> bool:
        return a > b + margin if higher else a < b - margin

    if champion is None:
        promote, rule = True, "first_champion"
        reason = f"no {CHAMPION_ALIAS} yet: v{version} ({metric}={new_score:.4f}) becomes {CHAMPION_ALIAS}"
    elif str(champion.version) == version:
        promote, rule = False, "already_champion"
        reason = f"v{version} already is {CHAMPION_ALIAS}"
    else:
        champ_split = champion.tags.get(TEST_SPLIT_TAG)
        champ_score = _tag_score(champion.tags, metric)
        result["champion_test_split_id"] = champ_split
        same_split = bool(split) and champ_split == split
        if champion_score_on_split is not None:
            champ_score, same_split = float(champion_score_on_split), True
            basis = f"re-evaluated on test split {_short(split)}"
        else:
            basis = f"on the same test split {_short(split)}"
        result["champion_score"] = champ_score
        if not same_split or champ_score is None:
            promote, rule = False, "incomparable"
            why = (f"was evaluated on test split {_short(champ_split)}, v{version} on {_short(split)}"
                   if not same_split else f"has no {metric} tag")
            reason = (f"{CHAMPION_ALIAS} v{champion.version} {why}: the scores are not comparable, "
                      f"so {CHAMPION_ALIAS} stays; re-evaluate v{champion.version} on this split "
                      f"(champion_score_on_split) or set the alias by hand")
        elif beats(new_score, champ_score):
            promote, rule = True, "better"
            reason = (f"v{version} {metric}={new_score:.4f} beats {CHAMPION_ALIAS} v{champion.version} "
                      f"{metric}={champ_score:.4f} by more than margin {margin:g} ({better} is better, "
                      f"{basis})")
        else:
            promote, rule = False, "not_better"
            reason = (f"v{version} {metric}={new_score:.4f} does not beat {CHAMPION_ALIAS} "
                      f"v{champion.version} {metric}={champ_score:.4f} by more than margin {margin:g} "
                      f"({better} is better, {basis}); {CHAMPION_ALIAS} stays v{champion.version}")

    if promote:
        client.set_registered_model_alias(model_name, CHAMPION_ALIAS, version)
    decision = "promoted" if promote else "not_promoted"
    result.update(decision=decision, promoted=promote, rule=rule, reason=reason,
                  champion_version=version if promote else (str(champion.version) if champion else None))
    tags = {"promotion.decision": decision, "promotion.reason": reason, "promotion.rule": rule,
            "promotion.metric": metric, "promotion.margin": f"{margin:g}",
            "promotion.champion_version": str(result["champion_version"])}
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    if new.run_id:
        _set_tags(client, new.run_id, tags)
    log.info("promotion of %s v%s: %s", model_name, version, reason)
    return result


def _tag_score(tags: Mapping[str, str], metric: str) -> float | None:
    try:
        value = float(tags[f"metric.{metric}"])
    except (KeyError, TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def _short(split_id: str | None) -> str:
    return "unknown" if not split_id else split_id.split(":", 1)[-1][:12]


__all__ = [
    "CHAMPION_ALIAS", "MlflowEpochLogger", "check_tracking_server", "end_run", "log_dataset",
    "log_history", "log_run_artifacts", "log_system_info", "model_signature", "promote_if_better",
    "register_model", "run_artifacts", "run_id_from_env", "start_pipeline_run", "system_info",
    "compute_test_split_id", "tracking_uri_from_env",
]
