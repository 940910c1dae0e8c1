"""The one MLflow run of a pipeline run: open it, log params, tags and metrics into it, close it.

Every function takes the tracking URI and the run id explicitly, so each KFP step can call one of
them with what earlier steps returned. The ``write_*`` helpers take a client and are shared with
the other tracking modules.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import platform
import socket
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, Mapping

from components.contracts.errors import TrackingError
from components.tracking.server import client as make_client
from components.tracking.server import first_line, redact, sqlite_dir

log = logging.getLogger(__name__)

KFP_RUN_ID_TAG = "kfp.run_id"
RunStatus = Literal["FINISHED", "FAILED", "KILLED"]
_MAX_PARAM_CHARS = 6000


# --------------------------------------------------------------------------------------------
# Values and batched writes
# --------------------------------------------------------------------------------------------
def is_number(value: Any) -> bool:
    """A real number (``bool`` excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def param_value(value: Any) -> str:
    """A param or tag value as text: JSON for containers, cut to 6000 characters."""
    if isinstance(value, (dict, list, tuple)):
        text = json.dumps(value, sort_keys=True, default=str)
    else:
        text = str(value)
    return text if len(text) <= _MAX_PARAM_CHARS else text[: _MAX_PARAM_CHARS - 3] + "..."


def flatten(payload: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level, keys joined with dots."""
    out: dict[str, Any] = {}
    for key, value in payload.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def write_params(client, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params in batches of 100; a param already logged with the same value is fine."""
    from mlflow.entities import Param

    existing = client.get_run(run_id).data.params
    todo = []
    for key, value in params.items():
        text = param_value(value)
        if key in existing:
            if existing[key] != text:
                raise TrackingError(f"run {run_id} already has param {key}={existing[key]!r}; "
                                    f"cannot log {key}={text!r} (params are immutable)")
            continue
        todo.append(Param(key, text))
    for i in range(0, len(todo), 100):
        client.log_batch(run_id, params=todo[i:i + 100])


def write_tags(client, run_id: str, tags: Mapping[str, Any]) -> None:
    """Set run tags in batches of 100."""
    from mlflow.entities import RunTag

    items = [RunTag(k, param_value(v)) for k, v in tags.items()]
    for i in range(0, len(items), 100):
        client.log_batch(run_id, tags=items[i:i + 100])


#: Metric-name prefixes that become MLflow chart groups (``train_loss`` -> ``train/loss``).
METRIC_GROUPS = ("train", "val", "test", "best", "export")
#: Metrics of no group that belong to one.
_GROUP_OF = {"lr": "train/lr", "epochs_run": "train/epochs_run"}


def metric_key(name: str) -> str:
    """The MLflow name of a metric: grouped with a slash so the UI charts it in sections.

    ``train_loss`` -> ``train/loss``, ``val_iou`` -> ``val/iou``, ``test_iou`` -> ``test/iou``,
    ``best_val_iou`` -> ``best/val_iou``, ``lr`` -> ``train/lr``, ``dataset.positive_fraction.train``
    -> ``dataset/positive_fraction.train``; a name with a slash already is kept.
    """
    if "/" in name:
        return name
    if name in _GROUP_OF:
        return _GROUP_OF[name]
    for group in (*METRIC_GROUPS, "dataset"):
        for sep in ("_", "."):
            if name.startswith(group + sep) and len(name) > len(group) + 1:
                return f"{group}/{name[len(group) + 1:]}"
    return name


def write_metrics(client, run_id: str, metrics: Mapping[str, float], step: int = 0) -> None:
    """Log the finite numbers of ``metrics`` at ``step`` in batches of 200, under :func:`metric_key` names."""
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    items = [Metric(metric_key(k), float(v), now, step) for k, v in metrics.items()
             if is_number(v) and math.isfinite(float(v))]
    for i in range(0, len(items), 200):
        client.log_batch(run_id, metrics=items[i:i + 200])


def run_name(model_name: str, dataset_uri: str, when: datetime | None = None) -> str:
    """A run name people can read: ``<model> on <dataset folder> <YYYY-MM-DD HH:MM>`` (UTC)."""
    dataset = str(dataset_uri).rstrip("/").rsplit("/", 1)[-1] or str(dataset_uri)
    stamp = (when or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M")
    return f"{model_name} on {dataset} {stamp}"


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log (nested) parameters into a run; nested keys are joined with dots."""
    write_params(make_client(tracking_uri), run_id, flatten(dict(params)))


# --------------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------------
def _gpu_info() -> dict[str, str]:
    try:
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        info = {"gpu_count": str(count)}
        if count:
            props = [torch.cuda.get_device_properties(i) for i in range(count)]
            info["gpus"] = ", ".join(f"{p.name} ({p.total_memory / 2**30:.0f} GiB)" for p in props)
            info["cuda"] = str(torch.version.cuda)
        return info
    except Exception:  # noqa: BLE001
        return {"gpu_count": "unknown"}


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
    return info | _gpu_info()


def log_system_info(tracking_uri: str, run_id: str, scope: str | None = None) -> dict[str, str]:
    """Record :func:`system_info` as run tags ``system.<key>`` (``system.<scope>.<key>``).

    Tags rather than params: each KFP step runs on its own machine (the training step on a GPU
    node), so the same key may be logged again with another value.
    """
    info = system_info()
    prefix = f"system.{scope}." if scope else "system."
    write_tags(make_client(tracking_uri), run_id, {prefix + k: v for k, v in info.items()})
    return info


# --------------------------------------------------------------------------------------------
# Open and close
# --------------------------------------------------------------------------------------------
def _get_or_create_experiment(client, tracking_uri: str, name: str) -> str:
    from mlflow.exceptions import MlflowException

    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} at {redact(tracking_uri)} is deleted; "
                                f"restore it or choose another name")
        return experiment.experiment_id
    artifact_location = None
    folder = sqlite_dir(tracking_uri)
    if folder is not None:
        # A local store keeps artifacts beside its database, not in the working directory.
        artifact_location = (folder / "mlartifacts").resolve().as_uri()
    try:
        return client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException as e:
        if e.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        return client.get_experiment_by_name(name).experiment_id  # a concurrent creation won


def _existing_run(client, tracking_uri: str, run_id: str, run_name: str) -> str:
    """``run_id`` when it exists and is RUNNING (its name set when it has none)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(run_id)
    except MlflowException as e:
        raise TrackingError(f"MLflow run {run_id!r} (MLFLOW_RUN_ID) not found at "
                            f"{redact(tracking_uri)}: {first_line(e)}") from None
    if run.info.status not in ("RUNNING", "SCHEDULED"):
        raise TrackingError(f"MLflow run {run_id!r} is {run.info.status}; a pipeline "
                            f"run logs into a RUNNING run")
    if run_name and not run.info.run_name:
        client.update_run(run_id, name=run_name)
    return run_id


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
    client = make_client(tracking_uri)
    kfp_run_id = (kfp_run_id or "").strip() or None
    run_id: str | None = None
    if existing_run_id:
        run_id = _existing_run(client, tracking_uri, existing_run_id, run_name)
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
    write_tags(client, run_id, tags)
    write_params(client, run_id, flatten(dict(params)))
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
    client = make_client(tracking_uri)
    if reason:
        client.set_tag(run_id, "campseg.end_reason", param_value(reason))
    client.set_terminated(run_id, status=status)


def running_runs_of(tracking_uri: str, kfp_run_id: str) -> list[str]:
    """Ids of the RUNNING runs, in any experiment, tagged with this ``kfp.run_id``."""
    client = make_client(tracking_uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{KFP_RUN_ID_TAG}` = '{kfp_run_id}'")
    return [run.info.run_id for run in runs if run.info.status == "RUNNING"]
