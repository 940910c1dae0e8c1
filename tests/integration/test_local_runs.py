"""The pipeline through kfp.local: the compiled YAML and the in-code pipeline run and agree."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import pipeline
from components.data.sample_data import generate_sample_dataset
from components.kubeflow.local_runner import LOCAL_SETTINGS, run_local
from tests.support.datasets import SMALL_RUN

LOCAL_RUN = dict(SMALL_RUN, train_epochs=2)


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    return generate_sample_dataset(tmp_path_factory.mktemp("kfp") / "data", n_chips=24, size=64, seed=5)


@pytest.fixture(scope="module")
def yaml_run(small_dataset, tmp_path_factory) -> Path:
    """The compiled cluster YAML run by kfp.local. kfp.local mounts no volume, so it is compiled
    without the scratch volume (whose TMPDIR, /scratch, would not exist here)."""
    from kfp import components

    import pipeline

    path = tmp_path_factory.mktemp("yaml") / "pipeline.yaml"
    assert pipeline.main(["--compile", "--output", str(path), "--image", "registry.example/campseg:1.2.3",
                          "--gpu-image", "registry.example/campseg-cuda:1.2.3", "--scratch-size", ""]) == 0
    loaded = components.load_component_from_file(str(path))
    out = tmp_path_factory.mktemp("yaml_run") / "run"
    run_local({"dataset_uri": str(small_dataset), **LOCAL_RUN}, out, pipeline_func=loaded)
    return out


def test_yaml_pipeline_runs_locally_end_to_end(yaml_run):
    summary = json.loads((yaml_run / "summary.json").read_text())
    for key in ("onnx", "torchscript", "state_dict", "checkpoint", "dlpk", "stac_item", "metrics", "stats"):
        assert (yaml_run / summary[key]).is_file(), key
    metrics = json.loads((yaml_run / "evaluation" / "metrics.json").read_text())
    assert all(0 <= metrics[k] <= 1 for k in ("iou", "f1", "precision", "recall", "accuracy"))
    cm = metrics["confusion_matrix"]
    assert sum(cm.values()) == metrics["num_pixels"] > 0
    item = json.loads((yaml_run / "metadata" / "stac_item.json").read_text())
    for asset in item["assets"].values():  # hrefs resolve inside the gathered run folder
        assert (yaml_run / "metadata" / asset["href"]).resolve().is_file(), asset["href"]


def test_yaml_run_and_code_run_agree(yaml_run, small_dataset, tmp_path):
    out = tmp_path / "run"
    summary = run_local({"dataset_uri": str(small_dataset), **LOCAL_RUN}, out, pipeline.build_pipeline(LOCAL_SETTINGS))
    expected = json.loads((yaml_run / "summary.json").read_text())
    assert summary["test_metrics"] == pytest.approx(expected["test_metrics"], abs=1e-6)
    assert json.loads((out / "stats.json").read_text()) == json.loads((yaml_run / "stats.json").read_text())


def test_kfp_ui_outputs(yaml_run):
    root = next((yaml_run / "kfp-local").iterdir())
    report = (root / "evaluate-model" / "report").read_text()
    assert "data:image/png;base64," in report and "Confusion matrix" in report
    outputs = json.loads((root / "evaluate-model" / "executor_output.json").read_text())
    artifacts = outputs["artifacts"]
    confusion = artifacts["confusion_matrix"]["artifacts"][0]["metadata"]["confusionMatrix"]
    assert [a["displayName"] for a in confusion["annotationSpecs"]] == ["background", "camp"]
    assert sum(map(sum, (r["row"] for r in confusion["rows"]))) > 0
    assert set(artifacts["test_metrics"]["artifacts"][0]["metadata"]) >= {"iou", "f1", "precision", "recall", "accuracy"}


# ------------------------------------------------------------------ issue 10: owned output folders
TINY_FLAGS = ["--dataset-image-size", "0", "--train-epochs", "1", "--train-base-channels", "4",
              "--train-depth", "2", "--train-batch-size", "8"]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_run_local_never_touches_a_users_folder(small_dataset, tmp_path):
    from tests.support.cli import error_line, run_pipeline

    mine = tmp_path / "mine"
    for sub in ("models", "evaluation", "checkpoints", "esri", "metadata"):
        (mine / sub).mkdir(parents=True)
        (mine / sub / "my-file.txt").write_text(sub)
    before = _snapshot(mine)
    for dataset in (["--dataset-uri", str(small_dataset)], []):  # [] = the sample data, written nowhere
        proc = run_pipeline("--run-local", *dataset, "--output-dir", str(mine), *TINY_FLAGS)
        assert proc.returncode == 2, proc.stderr[-3000:]
        error_line(proc, str(mine), "not a campseg run folder")
        assert _snapshot(mine) == before
    proc = run_pipeline("--run-local", "--dataset-uri", str(small_dataset), "--output-dir", str(small_dataset / "run"),
                        *TINY_FLAGS)
    assert proc.returncode == 2 and "dataset" in proc.stderr
    assert not (small_dataset / "run").exists()


def test_concurrent_run_local_into_one_folder(small_dataset, tmp_path):
    """The second run is refused at once, naming the first; the first finishes and gathers its run,
    with a quiet console (a line per step; the rest in its log)."""
    import os
    import subprocess
    import sys
    import time

    from tests.support.cli import error_line, run_pipeline
    from tests.support.paths import REPO

    out = tmp_path / "run"
    first = subprocess.Popen([sys.executable, "pipeline.py", "--run-local", "--dataset-uri", str(small_dataset),
                              "--output-dir", str(out), *TINY_FLAGS], cwd=REPO, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             env={**os.environ, "PYTHONWARNINGS": "ignore"})
    try:
        deadline = time.time() + 120
        while not (out / ".campseg.lock").exists():
            assert first.poll() is None and time.time() < deadline, "the first run never took the lock"
            time.sleep(0.2)
        second = run_pipeline("--run-local", "--dataset-uri", str(small_dataset), "--output-dir", str(out),
                              *TINY_FLAGS)
        assert second.returncode == 2, second.stderr[-3000:]
        error_line(second, "another campseg process", f"pid {first.pid}", "--run-local")
        stdout, stderr = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert (out / summary["dlpk"]).is_file() and not (out / ".campseg.lock").exists()
    assert json.loads((out / ".campseg-run.json").read_text())["statistics"].startswith("sha256:")
    _assert_quiet_console(stdout, stderr, out)


# ------------------------------------------------------------------ issue 13: a quiet console
def _assert_quiet_console(stdout: str, stderr: str, out: Path) -> None:
    """A successful --run-local printed a line per step and its summary; everything else is in its log."""
    import re

    console = stdout.splitlines() + stderr.splitlines()
    assert len(console) <= 60, "\n".join(console)
    steps = re.findall(r"^\[(\d+)/11\] ([\w-]+) \.\.\. done in [\d.]+ s", stderr, re.M)
    assert [int(i) for i, _ in steps] == list(range(1, 12)) and {s for _, s in steps} == set(pipeline.STEPS)
    assert stderr.strip().splitlines() == [line for line in stderr.strip().splitlines()
                                           if re.match(r"\[\d+/11\] ", line)], stderr  # nothing else
    summary = json.loads((out / "summary.json").read_text())
    log = Path(summary["kfp_local_log"])
    assert log == out / "kfp-local.log" and f"Log:     {log}" in stdout
    text = log.read_text()
    for step in pipeline.STEPS:  # kfp.local's own lines, its warnings and each step's output: in the log only
        assert f"Executing task '{step}'" in re.sub(r"\x1b\[[0-9;]*m", "", text), step
    assert text.count("Got executor_input:") == 11 and text.count("Streamed logs:") == 11  # (warnings: off in tests)
    assert "train: epoch 1/1" in text
    assert "executor_input" not in stdout + stderr and "Warning" not in stdout + stderr


def test_a_failed_run_local_shows_the_steps_log_tail_and_the_log(tmp_path):
    import re

    import numpy as np
    from PIL import Image

    from tests.support.cli import error_line, run_pipeline
    from tests.support.datasets import make_dataset

    data = make_dataset(tmp_path / "data")
    for label in (data / "labels").iterdir():  # no camp pixel anywhere: the statistics step refuses it
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(label)
    out = tmp_path / "run"
    proc = run_pipeline("--run-local", "--dataset-uri", str(data), "--output-dir", str(out), *TINY_FLAGS)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines() + proc.stderr.splitlines()) <= 60, proc.stderr
    assert re.search(r"^\[4/11\] dataset-statistics \.\.\. failed after [\d.]+ s$", proc.stderr, re.M), proc.stderr
    log = out / "kfp-local.log"
    head = f"--- the last \\d+ lines of step dataset-statistics's log \\(all of it in {re.escape(str(log))}\\) ---"
    tail = proc.stderr[re.search(head, proc.stderr).end():]
    assert "statistics: summing:" in tail and "(traceback in the log file)" in tail
    assert re.search(r"^components\.contracts\.errors\.DatasetError: .*no mask of the train split", tail, re.M)
    error_line(proc, "step dataset-statistics failed: DatasetError", "no mask of the train split", single=False)
    assert "Traceback (most recent call last):" in log.read_text()  # the whole traceback: in the log
