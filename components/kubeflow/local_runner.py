"""Run the pipeline with ``kfp.local`` in this environment and gather its outputs into a run folder."""

import collections
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

from components.contracts.config import TrainConfig
from components.contracts.ownership import open_output
from components.contracts.run_layout import ARTIFACTS, write_json
from components.kubeflow.cluster import ClusterSettings

#: Lighter defaults of ``--run-local`` on a laptop: TrainConfig's own (the compiled pipeline
#: keeps the cluster ones).
LOCAL_DEFAULTS = {"train_epochs": TrainConfig.epochs, "train_batch_size": TrainConfig.batch_size,
                  "train_patience": TrainConfig.patience}
#: No retries locally (kfp.local honours KFP's too), so an error of the first step fails fast;
#: transfers retry on their own. No scratch volume: TMPDIR stays this machine's.
LOCAL_SETTINGS = ClusterSettings(retries=0, scratch_size="")

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_ERROR_LINE = re.compile(r"^\s*((?:[A-Za-z_]\w*\.)*([A-Za-z_]\w*(?:Error|Exception|Exit|Failed))):\s*(.*)$")


class LocalRunFailed(RuntimeError):
    """A step of a ``kfp.local`` run failed; the message names the step and its error."""


def run_local(arguments: dict[str, Any], output_dir: Path, pipeline_func: Callable) -> dict:
    """Run ``pipeline_func`` with ``kfp.local``; gather a run folder in ``output_dir``.

    Args:
        arguments: the pipeline's parameters; without ``dataset_uri`` the sample dataset is
            written to the run folder's ``sample-data/`` and used.
        output_dir: the run folder (new, empty, or a run folder; locked for the whole run);
            kfp.local's own task folders go to its ``kfp-local/``.
        pipeline_func: the pipeline (``pipeline.build_pipeline(LOCAL_SETTINGS)``, or a compiled
            YAML loaded with ``kfp.components.load_component_from_file``).

    Returns:
        The run's summary, also written to ``summary.json``.

    Raises:
        RunFolderError: ``output_dir`` is not ours to write, or another run holds it.
    """
    output_dir = Path(output_dir)
    dataset_uri = arguments.get("dataset_uri")
    local_data = Path(dataset_uri) if dataset_uri and "://" not in str(dataset_uri) else None
    # The run folder is checked, locked and marked for the whole run: a user's folder is refused
    # before anything is written, and a second run into it is refused at once.
    with open_output(output_dir, "pipeline --run-local", data_dir=local_data):
        return _run_locked(dict(arguments), output_dir.resolve(), pipeline_func)


def _run_locked(arguments: dict[str, Any], output_dir: Path, pipeline_func: Callable) -> dict:
    from kfp import local

    from components.kubeflow.steps import gather_run
    from components.tracking import redact, tracking_uri_from_env

    if not arguments.get("dataset_uri"):
        from components.data.sample_data import generate_sample_dataset

        arguments["dataset_uri"] = str(generate_sample_dataset(output_dir / "sample-data"))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(output_dir / "kfp-local"),
               raise_on_error=True)
    # MLFLOW_TRACKING_URI, or the embedded default: a SQLite store in the run folder.
    tracking_uri = tracking_uri_from_env(output_dir)
    runs_before = set((output_dir / "kfp-local").glob("*"))
    previous = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri  # the steps' subprocesses inherit it
    recorder = sys.stdout = _TailRecorder(sys.stdout)  # kfp.local prints the steps' logs there
    try:
        pipeline_func(**arguments)
    except RuntimeError as exc:  # kfp.local names the failed task only; add the step's own error
        if "Inner task failed" not in str(exc):
            raise
        raise LocalRunFailed(_describe_failure(str(exc), recorder.lines)) from exc
    finally:
        sys.stdout = recorder.stream
        if previous is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = previous
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
    summary["mlflow"] = mlflow
    write_json(output_dir / "summary.json", summary)
    return summary


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


class _TailRecorder:
    """Writes through to ``stream`` and keeps its last lines (the steps' streamed logs)."""

    def __init__(self, stream, max_lines: int = 20000) -> None:
        self.stream = stream
        self.lines: "collections.deque[str]" = collections.deque(maxlen=max_lines)
        self._partial = ""

    def write(self, text: str) -> int:
        *done, self._partial = (self._partial + text).split("\n")
        self.lines.extend(done)
        return self.stream.write(text)

    def __getattr__(self, name: str):
        return getattr(self.stream, name)


def _describe_failure(message: str, lines) -> str:
    """``step X failed: ErrorType: message`` from kfp.local's error and the steps' logs."""
    found = re.search(r"Inner task failed: '?([\w.-]+)'?", _ANSI.sub("", message))
    if not found:
        return _ANSI.sub("", message)
    task = found.group(1)
    clean = [_ANSI.sub("", line) for line in lines]
    end = max((i for i, line in enumerate(clean) if f"Task '{task}' finished with status FAILURE" in line), default=None)
    if end is None:
        return f"step {task} failed (its log is above)"
    for line in reversed(clean[:end]):
        if f"Executing task '{task}'" in line:
            break
        m = _ERROR_LINE.match(line)
        if m:
            return f"step {task} failed: {m.group(2)}: {m.group(3).strip()}"
    return f"step {task} failed (its log is above)"


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
    print(f"Summary: {Path(output_dir) / 'summary.json'}")
