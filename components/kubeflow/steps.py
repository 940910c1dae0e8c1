"""The glue between KFP artifacts and the stage logic: plain functions, testable without KFP.

Each KFP component body calls one function here. An artifact is a folder holding its stage's part
of a run folder (``docs/artifacts.md``): the statistics artifact holds ``stats.json`` and the
manifest, the training artifact ``checkpoints/`` and the history, and so on. A step assembles a
scratch run folder from its input artifacts, runs the stage, and copies what the stage wrote into
its output artifact. Data reaches a step from ``dataset_uri`` itself (a local folder, or an S3
prefix downloaded in parallel into the pod's scratch space, ``TMPDIR``), checked against the
fingerprint the first step took, so a step never reads other data than the run was keyed on. A
step downloads only the splits it reads (:data:`SPLITS_READ`, from the split manifest in the
statistics artifact): export, evaluation and registration fetch the test split alone. The steps
that talk to storage or MLflow retry transient failures and nothing else
(:func:`components.kubeflow.retries.retry_transient`).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from components.contracts.errors import DatasetError, ParameterError
from components.contracts.ownership import open_output
from components.contracts.run_layout import ARTIFACT_FILES, RunLayout, read_json
from components.kubeflow.retries import retry_transient

#: The splits of the manifest each stage reads from the dataset; ``None``: every file (the
#: statistics stage validates and splits them all).
SPLITS_READ: dict[str, tuple[str, ...] | None] = {
    "stats": None, "train": ("train", "val"), "export": ("test",), "evaluate": ("test",), "register": ("test",),
}


def scratch_dir() -> Path:
    """A scratch folder for a step: under ``TMPDIR`` (on a cluster the scratch volume), which must be writable.

    Raises:
        ParameterError: ``TMPDIR`` names a folder this user cannot write (Python would silently
            fall back to the container's ``/tmp``, which the volume was meant to spare).
    """
    tmpdir = os.environ.get("TMPDIR")
    if tmpdir and not (os.path.isdir(tmpdir) and os.access(tmpdir, os.W_OK | os.X_OK)):
        raise ParameterError(
            f"TMPDIR={tmpdir}: not a folder this step (uid {os.getuid()}) can write. On a cluster this is the "
            "scratch volume: its storage class gave it a root-owned root folder (KFP cannot set fsGroup); "
            "compile with --scratch-volume empty-dir, another --scratch-storage-class, or --scratch-size ''")
    return Path(tempfile.mkdtemp(prefix="campseg-", dir=tmpdir or None))


def split_files(layout: RunLayout, splits: Sequence[str] | None) -> list[str] | None:
    """Paths relative to the dataset root of the chips and masks of ``splits`` in the run's manifest;
    ``None`` (every file) when ``splits`` is ``None`` or selects no pair."""
    from components.data.manifest import read_manifest

    if splits is None:
        return None
    pairs = [p for p in read_manifest(layout, Path("")) if p.split in splits]
    return sorted({f for p in pairs for f in (p.chip, p.mask)}) or None


@retry_transient
def dataset_fingerprint(dataset_uri: str) -> str:
    """Content fingerprint of the dataset (for S3 from the listing alone, nothing downloaded)."""
    from components.storage import fingerprint, is_s3_uri

    if not is_s3_uri(dataset_uri) and not Path(dataset_uri).is_dir():
        raise DatasetError(f"dataset_uri={dataset_uri!r}: no such folder (and not an s3:// URI)")
    return fingerprint(dataset_uri)


def materialize_dataset(dataset_uri: str, expected_fingerprint: str | None, cache_dir: Path,
                        only: Sequence[str] | None = None) -> Path:
    """A local folder with the dataset (from S3 only the files ``only`` names, relative to the
    prefix; all when ``None``); fails if its content is not what the run was keyed on."""
    from components.storage import fingerprint, is_s3_uri, materialize

    local = materialize(dataset_uri, cache_dir, only=only) if is_s3_uri(dataset_uri) else Path(dataset_uri)
    if expected_fingerprint:
        found = fingerprint(dataset_uri if is_s3_uri(dataset_uri) else local)
        if found != expected_fingerprint:
            raise DatasetError(
                f"dataset_uri={dataset_uri!r} changed during the run (fingerprint {found} != {expected_fingerprint}); "
                "start a new run"
            )
    return local


def assemble(run_dir: Path, **artifacts: str | os.PathLike | None) -> RunLayout:
    """Lay out input artifacts as one (new, marked) run folder; files are linked, not copied, where possible."""
    with open_output(run_dir, "assemble"):
        pass
    for name, path in artifacts.items():
        if path is None:
            continue
        if name not in ARTIFACT_FILES:
            raise ValueError(f"unknown artifact kind {name!r}")
        src = Path(path)
        for source in sorted(src.rglob("*")):
            if source.is_file():
                target = run_dir / source.relative_to(src)
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copy2(source, target)
    return RunLayout(run_dir)


def collect(layout: RunLayout, kind: str, artifact_dir: str | os.PathLike) -> None:
    """Copy the files of artifact ``kind`` from the run folder into the output artifact folder."""
    out = Path(artifact_dir)
    out.mkdir(parents=True, exist_ok=True)
    for entry in ARTIFACT_FILES[kind]:
        source = layout.root / entry
        if entry.endswith("/"):
            shutil.copytree(source, out / entry, dirs_exist_ok=True)
        else:
            shutil.copy2(source, out / entry)


@contextmanager
def staged_run(dataset_uri: str | None = None, fingerprint: str | None = None, splits: Sequence[str] | None = None,
               **artifacts: str | os.PathLike | None) -> Iterator[tuple[RunLayout, Path | None]]:
    """A scratch run folder assembled from input artifacts, and the dataset when a step reads it.

    The dataset must still have ``fingerprint`` (default: the one in ``stats.json``). With
    ``splits``, an S3 dataset is downloaded only as far as the manifest's pairs of those splits go.
    """
    work = scratch_dir()
    try:
        layout = assemble(work / "run", **artifacts)
        data = None
        if dataset_uri is not None:
            expected = fingerprint or read_json(layout.stats).get("fingerprint")
            data = materialize_dataset(dataset_uri, expected, work / "data", split_files(layout, splits))
        yield layout, data
    finally:
        shutil.rmtree(work, ignore_errors=True)


@retry_transient
def run_stats(dataset_uri: str, fingerprint: str, statistics_dir: str, params: Mapping[str, Any]) -> dict:
    """Statistics stage into the ``statistics`` artifact."""
    from components.data.splits import SplitRatios
    from components.stages.stats import compute_statistics

    with staged_run(dataset_uri, fingerprint, SPLITS_READ["stats"]) as (layout, data):
        stats = compute_statistics(
            data, layout.root, params.get("image_size") or None, int(params["network_depth"]),
            SplitRatios(params["train_ratio"], params["val_ratio"], params["test_ratio"]),
            int(params["seed"]), float(params["threshold"]), dataset_uri=dataset_uri, fingerprint=fingerprint,
            class_name=params.get("class_name") or "camp",
        )
        collect(layout, "statistics", statistics_dir)
        return stats


@retry_transient
def run_train(dataset_uri: str, statistics_dir: str, training_dir: str, config: Mapping[str, Any],
              listeners: Sequence[Any] = ()) -> dict:
    """Training stage from the ``statistics`` artifact into the ``training`` artifact; ``listeners``
    (e.g. :func:`tracking_listeners`) hear of each epoch."""
    from components.contracts.config import TrainConfig
    from components.stages.train import train

    with staged_run(dataset_uri, splits=SPLITS_READ["train"], statistics=statistics_dir) as (layout, data):
        # The pipeline's train_batch_size 0 means auto (TrainConfig's None).
        config = {**config, "batch_size": config.get("batch_size") or None}
        result = train(layout.root, TrainConfig.from_dict(config), data, listeners=listeners, progress_bar=True)
        collect(layout, "training", training_dir)
        return result


@retry_transient
def run_train_job(dataset_uri: str, statistics_dir: str, training_dir: str, config: Mapping[str, Any], job: str,
                  kfp_run_id: str, api: tuple[Any, str] | None = None) -> dict:
    """Training stage on several nodes: a TrainJob or PyTorchJob (``job``, the JSON of
    :class:`~components.kubeflow.train_jobs.JobSettings`) trains; its run folder comes back through
    S3 into the ``training`` artifact.

    The statistics artifact goes to ``<work prefix>/<job>/statistics/``, the job's node 0 writes
    ``<work prefix>/<job>/run/`` (:mod:`components.kubeflow.train_node`); both stay there.
    ``api`` is ``(ApiClient, namespace)`` (default: the pod's service account and namespace).

    Returns:
        The training summary (best epoch, best validation IoU, epochs run, images per second).
    """
    from components.kubeflow.job_launcher import JobLauncher, TrainJobFailed, in_cluster, run_job
    from components.kubeflow.train_jobs import JobSettings, job_manifest, job_name, node_command, train_flags
    from components.storage import download_prefix, is_s3_uri, join_uri, list_objects, upload_dir

    settings = JobSettings.from_json(job).check()
    if not is_s3_uri(dataset_uri):
        raise ParameterError(f"dataset_uri={dataset_uri!r}: multi-node training reads the dataset on every "
                             "node: pass an s3:// prefix")
    api_client, namespace = api or in_cluster()
    name = job_name(kfp_run_id)
    work = join_uri(settings.work_prefix, name)
    upload_dir(statistics_dir, join_uri(work, "statistics"))
    command = node_command(join_uri(work, "statistics"), dataset_uri, join_uri(work, "run"), settings,
                           train_flags(config, settings.nodes, settings.gpus_per_node))
    manifest = job_manifest(name, namespace, kfp_run_id, command, settings)
    launcher = JobLauncher(api_client, namespace, settings.kind)
    run_job(launcher, manifest, settings.timeout_s, settings.poll_s)
    run_uri = join_uri(work, "run")
    with staged_run(statistics=statistics_dir) as (layout, _):
        if list_objects(run_uri):
            download_prefix(run_uri, layout.root)
        missing = [e for e in ARTIFACT_FILES["training"] if not (layout.root / e.rstrip("/")).exists()]
        if missing:
            raise TrainJobFailed(f"{launcher.describe(name)} succeeded but {run_uri} lacks "
                                 f"{', '.join(missing)}: node 0 did not upload the run folder (see its log)")
        collect(layout, "training", training_dir)
        return read_json(layout.history)["summary"]


@retry_transient
def run_export(dataset_uri: str, statistics_dir: str, training_dir: str, models_dir: str) -> dict:
    """Export stage into the ``models`` artifact (parity on real chips of the test split)."""
    from components.stages.export import export_models

    with staged_run(dataset_uri, splits=SPLITS_READ["export"], statistics=statistics_dir,
                    training=training_dir) as (layout, data):
        report = export_models(layout.root, data)
        collect(layout, "models", models_dir)
        return report


@retry_transient
def run_evaluate(dataset_uri: str, statistics_dir: str, models_dir: str, evaluation_dir: str,
                 training_dir: str | None = None, tta: bool = False) -> dict:
    """Evaluation stage (ONNX Runtime on the test split) into the ``evaluation`` artifact; with the
    ``training`` artifact, its figures include the training curves; ``tta``: test-time augmentation
    by flips."""
    from components.stages.evaluate import evaluate_run

    with staged_run(dataset_uri, splits=SPLITS_READ["evaluate"], statistics=statistics_dir,
                    models=models_dir, training=training_dir) as (layout, data):
        metrics = evaluate_run(layout.root, data, tta=tta)
        collect(layout, "evaluation", evaluation_dir)
        return metrics


def run_dlpk(statistics_dir: str, models_dir: str, dlpk_dir: str, model_name: str) -> Path:
    """DLPK packaging into the ``dlpk`` artifact; returns the package's path inside it."""
    from components.stages.dlpk import package_dlpk

    with staged_run(statistics=statistics_dir, models=models_dir) as (layout, _):
        package = package_dlpk(layout.root, model_name)
        collect(layout, "dlpk", dlpk_dir)
        return Path(dlpk_dir) / package.relative_to(layout.root)


def run_stac(artifacts: Mapping[str, str], stac_dir: str, model_name: str, asset_base: str | None = None) -> dict:
    """STAC-MLM item over every artifact, into the ``stac`` artifact; returns the item."""
    from components.stages.stac import build_stac_item

    with staged_run(**artifacts) as (layout, _):
        item_path = build_stac_item(layout.root, model_name, asset_base=asset_base or None)
        collect(layout, "stac", stac_dir)
        return json.loads(item_path.read_text())


def gather_run(artifacts: Mapping[str, str | os.PathLike], out_dir: Path) -> dict:
    """Gather a finished pipeline's artifacts into the run folder ``out_dir`` and write its ``summary.json``.

    ``out_dir`` follows the stages' rule (:mod:`components.contracts.ownership`): new, empty, or a
    run folder, locked while it is written. The artifacts are first copied into a staging folder
    inside it and their lineage checked there; only then are the run's previous artifacts (never
    any other file) replaced, the summary first out and last in.
    """
    from components.contracts.lineage import DEPENDS_ON, verify
    from components.contracts.ownership import open_output, update_marker
    from components.contracts.run_layout import ARTIFACTS, retract, update_summary

    layout = RunLayout(Path(out_dir))
    unknown = set(artifacts) - set(ARTIFACT_FILES)
    if unknown:
        raise ValueError(f"unknown artifact kinds {sorted(unknown)}")
    with open_output(layout.root, "gather"):
        staging = Path(tempfile.mkdtemp(prefix=".gather.", suffix=".partial", dir=layout.root))
        try:
            for kind, path in artifacts.items():
                for entry in ARTIFACT_FILES[kind]:
                    source = Path(path) / entry
                    if source.is_dir():
                        shutil.copytree(source, staging / entry)
                    elif source.is_file():
                        shutil.copy2(source, staging / entry)
            staged = RunLayout(staging)
            staged.require(*(staging / e.rstrip("/") for k in artifacts for e in ARTIFACT_FILES[k]),
                           stage="gather")
            digests = verify(staged, DEPENDS_ON["stac"])
            layout.summary.unlink(missing_ok=True)
            retract(layout, *(a.name for a in ARTIFACTS))
            for artifact in ARTIFACTS:
                for entry in ARTIFACT_FILES[artifact.name] if artifact.name in artifacts else ():
                    os.rename(staging / entry.rstrip("/"), layout.root / entry.rstrip("/"))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        update_marker(layout.root, statistics=digests["statistics"],
                      fingerprint=read_json(layout.stats).get("fingerprint"))
        metrics = read_json(layout.metrics)
        entries = {
            "stats": layout.stats, "checkpoint": layout.checkpoint, "train_config": layout.config,
            "history": layout.history, "state_dict": layout.state_dict, "torchscript": layout.torchscript,
            "onnx": layout.onnx, "export_report": layout.export_report, "metrics": layout.metrics,
            "confusion_matrix": layout.confusion_matrix_png, "training_curves": layout.training_curves_png,
            "report": layout.report_html,
            "dlpk": next(layout.esri_dir.glob("*.dlpk")), "stac_item": layout.stac_item,
        }
        return update_summary(
            layout, **entries,
            overlays={role: f"evaluation/overlays/{role}.png" for role in metrics.get("overlays", {})},
            test_metrics={k: metrics[k] for k in ("iou", "f1", "precision", "recall", "accuracy")},
            best_val_iou=read_json(layout.history)["summary"]["best_val_iou"],
        )


# --------------------------------------------------------------------------------------------
# Tracking: the first step, the registration step and the exit handler
# --------------------------------------------------------------------------------------------
def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` (the ConfigMap on a cluster; ``--run-local`` sets a SQLite store)."""
    from components.contracts.errors import TrackingError

    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        raise TrackingError("MLFLOW_TRACKING_URI is not set: put the MLflow server's URL in the "
                            "pipeline's ConfigMap (campseg-endpoints) or the environment")
    return uri


@retry_transient
def start_tracking(dataset_uri: str, publish_uri: str, experiment: str, model_name: str, kfp_run_id: str,
                   promotion_metric: str = "iou", promotion_margin: float = 0.0) -> str:
    """Fail fast on bad promotion settings, unreachable storage or MLflow, then open the pipeline's MLflow run.

    Returns:
        The MLflow run id (``MLFLOW_RUN_ID`` when KFP's MLflow plugin injected one).
    """
    from components.contracts.naming import check_model_name
    from components.storage import check_bucket, is_s3_uri
    from components.tracking import (
        check_promotion_settings,
        check_tracking_server,
        run_id_from_env,
        start_pipeline_run,
    )

    check_promotion_settings(promotion_metric, promotion_margin)
    check_model_name(model_name)
    if is_s3_uri(dataset_uri):
        check_bucket(dataset_uri)
    elif not Path(dataset_uri).is_dir():
        raise DatasetError(f"dataset_uri={dataset_uri!r}: no such folder (and not an s3:// URI)")
    if publish_uri:
        if not is_s3_uri(publish_uri):
            from components.contracts.errors import ParameterError

            raise ParameterError(f"publish_uri={publish_uri!r}: expected s3://bucket/prefix/ (or empty)")
        check_bucket(publish_uri)
    uri = tracking_uri()
    check_tracking_server(uri)
    params = {"dataset_uri": dataset_uri, "model_name": model_name, "publish_uri": publish_uri or "none"}
    from components.tracking.runs import run_name

    return start_pipeline_run(uri, experiment, run_name(model_name, dataset_uri), kfp_run_id, params,
                              existing_run_id=run_id_from_env())


def decide_training(fingerprint: str, parameters: Mapping[str, Any], model_name: str, mlflow_run_id: str,
                    force: bool = False) -> tuple[str, str]:
    """``(train or skip, why)``: ``skip`` when the dataset and the training parameters are the
    champion's (:func:`~components.tracking.retraining.decide_retraining`); recorded on the MLflow
    run, and said in one log line."""
    from components.tracking import canonical_parameters, retraining_decision

    decision = retraining_decision(tracking_uri(), mlflow_run_id, model_name, fingerprint,
                                   canonical_parameters(parameters), force)
    print(f"decide-training: {decision.outcome} ({decision.rule}): {decision.reason}", flush=True)
    return decision.outcome, decision.reason


def tracking_listeners(mlflow_run_id: str, config: Mapping[str, Any] | None = None) -> list:
    """Log the hyperparameters into the pipeline's run; a listener that logs each epoch there."""
    if not mlflow_run_id:
        return []
    from components.tracking import MlflowEpochLogger, log_params

    uri = tracking_uri()
    if config:
        log_params(uri, mlflow_run_id, {f"train.{k}": v for k, v in config.items()})
    return [MlflowEpochLogger(uri, mlflow_run_id)]



@retry_transient
def register_and_promote(artifacts: Mapping[str, str], dataset_uri: str, mlflow_run_id: str, model_name: str,
                         metric: str, margin: float, publish_uri: str) -> dict:
    """Log everything into the run, register a version, publish it, and decide on promotion.

    Order keeps anything half-done from looking final: artifacts are logged, then the version is
    registered; publishing to object storage follows, and a failure there deletes the version;
    the ``champion`` alias moves last, only for a better model (never when the registry cannot
    say who the champion is).
    """
    from components.tracking import (
        champion_score_on,
        compute_test_split_id,
        delete_version,
        log_dataset,
        log_history,
        log_run_artifacts,
        promote_if_better,
        register_model,
    )

    uri = tracking_uri()
    with staged_run(dataset_uri, splits=SPLITS_READ["register"], **artifacts) as (layout, data):
        stats = read_json(layout.stats)
        log_dataset(uri, mlflow_run_id, stats, stats.get("fingerprint"))
        log_history(uri, mlflow_run_id, read_json(layout.history))
        log_run_artifacts(uri, mlflow_run_id, layout.root)
        version = register_model(uri, mlflow_run_id, model_name, layout.root)
        published = {}
        if publish_uri:
            try:
                from components.storage import join_uri
                from components.storage.publish import publish_run

                published = publish_run(layout.root, join_uri(publish_uri, model_name, version), model_name,
                                        version=version)
            except Exception:
                delete_version(uri, model_name, version)
                raise
        champion = champion_score_on(uri, layout, model_name, data, metric)
        decision = promote_if_better(uri, model_name, version, metric, margin,
                                     test_split_id=compute_test_split_id(layout.root),
                                     champion_score_on_split=champion)
        return {**decision, "version": version, "mlflow_run_id": mlflow_run_id, **published}


def end_tracking(kfp_run_id: str, state: str, error: str = "") -> str | None:
    """Exit handler: mark the pipeline's MLflow run FINISHED, FAILED when a step failed, or KILLED
    when the run was cancelled (``state`` as :func:`~components.kubeflow.final_status.mlflow_status`
    maps it, whichever runner spelled it)."""
    from components.kubeflow.final_status import mlflow_status
    from components.tracking import check_tracking_server, end_run, running_runs_of

    try:
        uri = tracking_uri()
        check_tracking_server(uri)  # fast and without retries: MLflow's client would retry for minutes
        run_ids = running_runs_of(uri, kfp_run_id)
    except Exception as exc:  # noqa: BLE001 - the first step may have failed on exactly this
        print(f"end_tracking: MLflow not reachable ({exc}); nothing to close")
        return None
    status, reason = mlflow_status(state, error)
    for run_id in run_ids:
        end_run(uri, run_id, status, reason=reason or None)
    return status
