"""Run the pipeline with ``kfp.local`` and gather its outputs into a run folder.

Two runners: ``SubprocessRunner`` runs each step in this Python environment; ``DockerRunner``
(:func:`docker_runner`) runs each step in the step image, as a cluster does, with only the
variables a cluster step gets from its Secrets and ConfigMap.
"""

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Mapping, Optional, Sequence

from components.contracts.config import TrainConfig
from components.contracts.errors import ParameterError
from components.contracts.ownership import open_output
from components.contracts.run_layout import ARTIFACTS, write_json
from components.kubeflow.cluster import CONFIG_ENV, MLFLOW_SECRET_ENV, SECRET_ENV, ClusterSettings
from components.kubeflow.local_log import RunLog, captured_run, clean, failure_tail

#: Lighter defaults of ``--run-local`` on a laptop: TrainConfig's own (the compiled pipeline
#: keeps the cluster ones).
LOCAL_DEFAULTS = {"train_epochs": TrainConfig.epochs, "train_patience": TrainConfig.patience}
#: No retries locally (kfp.local honours KFP's too), so an error of the first step fails fast;
#: transfers retry on their own. No scratch volume: TMPDIR stays this machine's.
LOCAL_SETTINGS = ClusterSettings(retries=0, scratch_size="")
#: What a step reads from its environment: on a cluster, from the storage Secret, the ConfigMap and
#: the MLflow Secret; in a DockerRunner container, from this process's environment (nothing else).
STEP_ENV = SECRET_ENV + CONFIG_ENV + MLFLOW_SECRET_ENV
#: The run folder's log of the latest local run: kfp.local's own lines and every step's output.
LOCAL_LOG = "kfp-local.log"


def docker_settings(image: str) -> ClusterSettings:
    """The local settings with every step on ``image`` (training too: no accelerator locally)."""
    return dataclasses.replace(LOCAL_SETTINGS, image=image, gpu_image="", accelerator_count=0).check()


_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Failed|Unavailable))):\s*(.*)$")


class LocalRunFailed(RuntimeError):
    """A step of a ``kfp.local`` run failed; the message names the step and its error."""


def run_local(arguments: dict[str, Any], output_dir: Path, pipeline_func: Callable,
              docker_image: Optional[str] = None, verbose: bool = False) -> dict:
    """Run ``pipeline_func`` with ``kfp.local``; gather a run folder in ``output_dir``.

    Args:
        arguments: the pipeline's parameters; without ``dataset_uri`` the sample dataset is
            written to the run folder's ``sample-data/`` and used.
        output_dir: the run folder (new, empty, or a run folder; locked for the whole run);
            kfp.local's own task folders go to its ``kfp-local/``.
        pipeline_func: the pipeline (``pipeline.build_pipeline(LOCAL_SETTINGS)``, or a compiled
            YAML loaded with ``kfp.components.load_component_from_file``), its steps on
            ``docker_image`` when given (:func:`docker_settings`).
        docker_image: run each step in this image with kfp.local's ``DockerRunner``
            (:func:`docker_runner`) instead of in this Python environment.
        verbose: show kfp.local's lines and every step's output as they come. Either way they
            are written to the run folder's :data:`LOCAL_LOG`; quiet (the default), stderr shows
            one line per step (``[5/11] train-model ... done in 40.2 s``) and, when a step
            fails, the tail of its log.

    Returns:
        The run's summary, also written to ``summary.json``.

    Raises:
        RunFolderError: ``output_dir`` is not ours to write, or another run holds it.
        ParameterError: ``docker_image`` unavailable, or without a tracking server in
            ``MLFLOW_TRACKING_URI``.
    """
    output_dir = Path(output_dir)
    dataset_uri = arguments.get("dataset_uri")
    local_data = Path(dataset_uri) if dataset_uri and "://" not in str(dataset_uri) else None
    image_user = None
    if docker_image is not None:  # refused before anything is written
        check_docker_tracking(os.environ)
        image_user = docker_image_user(docker_image)
    # The run folder is checked, locked and marked for the whole run: a user's folder is refused
    # before anything is written, and a second run into it is refused at once.
    with open_output(output_dir, "pipeline --run-local", data_dir=local_data):
        return _run_locked(dict(arguments), output_dir.resolve(), pipeline_func, image_user, verbose)


def check_docker_tracking(env: Mapping[str, str]) -> None:
    """A step container reaches a tracking server, not a SQLite file or folder on this machine.

    Raises:
        ParameterError: ``MLFLOW_TRACKING_URI`` is unset or not ``http(s)://``.
    """
    uri = (env.get("MLFLOW_TRACKING_URI") or "").strip()
    if not uri.startswith(("http://", "https://")):
        raise ParameterError(
            f"--runner docker: MLFLOW_TRACKING_URI {'is not set' if not uri else 'is not http(s)://'}; the step "
            "containers need a tracking server they can reach (e.g. http://127.0.0.1:5000 on this host), "
            "not a store on this machine's disk")


def _run_locked(arguments: dict[str, Any], output_dir: Path, pipeline_func: Callable,
                image_user: Optional[str], verbose: bool) -> dict:
    from kfp import local

    from components.kubeflow.steps import gather_run
    from components.tracking import redact, tracking_uri_from_env

    if not arguments.get("dataset_uri"):
        from components.data.sample_data import generate_sample_dataset

        arguments["dataset_uri"] = str(generate_sample_dataset(output_dir / "sample-data"))
    pipeline_root = output_dir / "kfp-local"
    if image_user is None:
        runner = local.SubprocessRunner(use_venv=False)
    else:
        data = arguments["dataset_uri"]
        runner = docker_runner(image_user, pipeline_root, read_only=[] if "://" in data else [Path(data)])
    local.init(runner=runner, pipeline_root=str(pipeline_root), raise_on_error=True)
    # MLFLOW_TRACKING_URI, or the embedded default: a SQLite store in the run folder.
    tracking_uri = tracking_uri_from_env(output_dir)
    runs_before = set((output_dir / "kfp-local").glob("*"))
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the steps' subprocesses inherit it
    log_path = output_dir / LOCAL_LOG
    failure = None
    try:
        with captured_run(log_path, step_count(pipeline_func), verbose) as run_log:
            try:
                pipeline_func(**arguments)
            except RuntimeError as exc:  # kfp.local names the failed task only; add the step's own error
                if "Inner task failed" not in str(exc):
                    raise
                failure = exc
    except BaseException:
        if not verbose:
            print(f"(the run's log: {log_path})", file=sys.stderr)
        raise
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
    if failure is not None:
        task = _failed_task(str(failure))
        if not verbose:
            print(failure_tail(run_log, task, log_path) if task else f"(the run's log: {log_path})", file=sys.stderr)
        raise LocalRunFailed(_describe_failure(str(failure), run_log, log_path)) from failure
    new_runs = set((output_dir / "kfp-local").glob("*")) - runs_before
    if len(new_runs) != 1:  # the lock keeps other runs out; this names anything else that wrote there
        raise LocalRunFailed(f"expected one new kfp.local run under {output_dir / 'kfp-local'}, found "
                             f"{sorted(p.name for p in new_runs)}: another process wrote there during this run")
    (run_root,) = new_runs
    outputs = local_task_outputs(run_root)
    retraining = {"decision": outputs["decide-training"]["parameters"]["Output"],
                  "reason": Path(outputs["decide-training"]["artifacts"]["retraining"]).read_text()}
    mlflow = {"tracking_uri": redact(tracking_uri), "run_id": outputs["start-tracking"]["parameters"]["Output"]}
    if retraining["decision"] == "train":
        summary = gather_run(run_artifacts(outputs), output_dir)
        mlflow |= {"model_version": outputs["register-model"]["parameters"]["Output"],
                   "registration": Path(outputs["register-model"]["artifacts"]["decision"]).read_text()}
    else:  # "no new data": nothing trained, the run folder's artifacts (if any) are an earlier run's
        summary = {"outcome": "no new data"}
        mlflow["registration"] = retraining["reason"]
    summary["retraining"] = retraining
    summary["dataset_uri"] = arguments["dataset_uri"]
    summary["parameters"] = arguments
    summary["kfp_local_run"] = str(run_root)
    summary["kfp_local_log"] = str(log_path)
    summary["mlflow"] = mlflow
    write_json(output_dir / "summary.json", summary)
    return summary


def docker_image_user(image: str, client: Any = None) -> str:
    """The user ``image`` runs as (its ``USER``, e.g. ``"1000:1000"``; empty: root), pulling it when missing.

    Raises:
        ParameterError: no docker SDK, no Docker engine answers, or ``image`` is neither here nor pullable.
    """
    try:
        import docker
    except ImportError:
        raise ParameterError("--runner docker needs the docker SDK (pip install docker)") from None
    try:
        client = client or docker.from_env()
        try:
            return client.images.get(image).attrs["Config"].get("User") or ""
        except docker.errors.ImageNotFound:
            return client.images.pull(image).attrs["Config"].get("User") or ""
    except docker.errors.DockerException as exc:
        raise ParameterError(f"--runner docker: image {image!r} unavailable ({exc})") from None


def docker_runner(image_user: str, pipeline_root: Path, read_only: Sequence[Path] = (),
                  env: Optional[Mapping[str, str]] = None):
    """kfp.local's ``DockerRunner`` for the step images, on this machine's network.

    Each step container gets what a cluster step gets and nothing more: its image (named by the
    pipeline), the variables of :data:`STEP_ENV` that are set in ``env`` (credentials are passed
    by name at run time, never written into the pipeline or the image), and the folders it must
    read (the pipeline root, which kfp.local mounts, and ``read_only`` at their own paths, e.g. a
    local dataset). The host network lets steps reach servers on this machine's loopback (an
    engine started with ``--bridge=none`` has no other network).

    Containers run as the image's own user (``image_user``, from :func:`docker_image_user`) when
    this process is root, and the pipeline root is made theirs; else as this process's user, so
    the run folder stays the user's.
    """
    from docker.types import Mount
    from kfp import local

    env = os.environ if env is None else env
    environment = {name: env[name] for name in STEP_ENV if env.get(name)}
    pipeline_root = Path(pipeline_root)
    pipeline_root.mkdir(parents=True, exist_ok=True)
    user = None
    if os.geteuid() != 0:
        user = f"{os.getuid()}:{os.getgid()}"
        environment["HOME"] = "/tmp"  # the image's home belongs to its own user
    else:
        uid, _, gid = image_user.partition(":")
        if uid.isdigit():
            os.chown(pipeline_root, int(uid), int(gid) if gid.isdigit() else int(uid))
    mounts = [Mount(target=str(p.resolve()), source=str(p.resolve()), type="bind", read_only=True) for p in read_only]
    args = dict(network_mode="host", environment=environment, mounts=mounts)
    return local.DockerRunner(**args, **({"user": user} if user else {}))


def local_task_outputs(run_root: Path) -> dict[str, dict[str, dict[str, Any]]]:
    """Outputs of each task of a ``kfp.local`` run, read from its executor output files.

    A pipeline cannot return outputs from inside its exit handler, so the local run reads what
    each task reported instead: ``{task: {"artifacts": {name: path}, "parameters": {name: value}}}``.
    """
    found = {}
    for executor_output in Path(run_root).glob("*/executor_output.json"):
        payload = json.loads(executor_output.read_text())
        found[executor_output.parent.name] = {
            "artifacts": {name: group["artifacts"][0]["uri"] for name, group in payload.get("artifacts", {}).items()},
            "parameters": payload.get("parameterValues", {}),
        }
    return found


def run_artifacts(outputs: dict[str, dict[str, dict[str, Any]]]) -> dict[str, str]:
    """``{kind: path}`` of every artifact of :data:`ARTIFACTS`: the task output of that name."""
    produced = {name: path for task in outputs.values() for name, path in task["artifacts"].items()}
    return {artifact.name: produced[artifact.name] for artifact in ARTIFACTS}


def step_count(pipeline_func: Any) -> Optional[int]:
    """How many steps (container tasks, inside exit handlers and conditions too) the pipeline has;
    None when it has no pipeline spec to count."""
    spec = getattr(pipeline_func, "pipeline_spec", None)
    if spec is None:
        return None

    def count(dag) -> int:
        found = 0
        for task in dag.tasks.values():
            component = spec.components[task.component_ref.name]
            found += count(component.dag) if component.WhichOneof("implementation") == "dag" else 1
        return found
    return count(spec.root.dag)


def _failed_task(message: str) -> Optional[str]:
    """The task kfp.local's error names."""
    found = re.search(r"Inner task failed: '?([\w.-]+)'?", clean(message))
    return found.group(1) if found else None


def _describe_failure(message: str, run_log: RunLog, log_path: Path) -> str:
    """``step X failed: ErrorType: message`` from kfp.local's error and the step's log."""
    task = _failed_task(message)
    if task is None:
        return clean(message)
    for line in reversed(run_log.step_lines(task) or []):
        m = _ERROR_LINE.match(line)
        if m:
            return f"step {task} failed: {m.group(2)}: {m.group(3).strip()}"
    return f"step {task} failed (its log: {log_path})"


def print_summary(summary: dict, output_dir: Path) -> None:
    """The run folder's main files, the test metrics and the registry's decision, for a person."""
    print(f"\nRun folder: {output_dir}")
    for key in ("onnx", "torchscript", "state_dict", "checkpoint", "dlpk", "stac_item", "metrics", "stats"):
        if key in summary:
            print(f"  {key:<12} {Path(output_dir) / summary[key]}")
    metrics = summary.get("test_metrics", {})
    if metrics:
        print("Test metrics: " + ", ".join(f"{k} {v:.3f}" for k, v in metrics.items()))
    if "mlflow" in summary:
        print(summary["mlflow"]["registration"].strip())
        print(f"MLflow: {summary['mlflow']['tracking_uri']} (mlflow ui --backend-store-uri {summary['mlflow']['tracking_uri']})")
    if "kfp_local_log" in summary:
        print(f"Log:     {Path(output_dir) / LOCAL_LOG} (kfp.local and every step's output)")
    print(f"Summary: {Path(output_dir) / 'summary.json'}")
