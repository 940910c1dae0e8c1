"""Output folders are owned, never assumed; a run folder's artifacts belong together (issue 10).

Case 1: ``evaluate --out`` never deletes what it did not make. Case 2: ``all --out`` and
``gather_run`` (what ``--run-local --output-dir`` ends with) never touch a user's folder. Case 3: a
rerun that stops half way, or a second writer, never leaves a mix that the next stage packages.
Case 4 (concurrent ``--run-local``) is in tests/integration/test_local_runs.py; its lock is here.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from components.contracts.config import TrainConfig
from components.contracts.errors import RunFolderError
from components.contracts.ownership import LOCK, MARKER, open_output, read_marker, run_lock
from components.contracts.run_layout import ARTIFACT_FILES, RunLayout, atomic_folder
from components.stages.dlpk import package_dlpk
from components.stages.evaluate import evaluate_run
from components.stages.export import export_models
from components.stages.stac import build_stac_item
from components.stages.stats import compute_statistics
from components.stages.train import train
from tests.support.cli import error_line, run_components
from tests.support.datasets import make_dataset

TINY = TrainConfig(base_channels=4, depth=2, epochs=1, batch_size=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("runs") / "data", n_groups=6, per_group=3, size=32)


@pytest.fixture(scope="module")
def other_data(tmp_path_factory) -> Path:
    """Another dataset: other pixels, so other statistics."""
    root = make_dataset(tmp_path_factory.mktemp("other") / "data", n_groups=6, per_group=3, size=32)
    for chip in (root / "chips").iterdir():
        from PIL import Image

        Image.eval(Image.open(chip), lambda v: v // 2).save(chip)
    return root


@pytest.fixture(scope="module")
def finished(data, tmp_path_factory) -> Path:
    """A run folder after every stage (read-only: tests copy it)."""
    run = tmp_path_factory.mktemp("finished") / "run"
    compute_statistics(data, run, network_depth=2)
    train(run, TINY, progress_bar=False)
    export_models(run)
    evaluate_run(run)
    package_dlpk(run)
    build_stac_item(run)
    return run


@pytest.fixture
def run(finished, tmp_path) -> Path:
    target = tmp_path / "run"
    shutil.copytree(finished, target)
    return target


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def user_folder(root: Path) -> Path:
    """A folder of the user's with files of their own, some under artifact names."""
    (root / "models").mkdir(parents=True)
    (root / "models" / "my-notes.txt").write_text("mine")
    (root / "evaluation").mkdir()
    (root / "evaluation" / "keep.csv").write_text("a,b\n")
    (root / "thesis.tex").write_text("\\documentclass{article}")
    return root


# ------------------------------------------------------------------ the marker and the lock
def test_a_new_run_folder_is_marked(finished):
    marker = read_marker(finished)
    assert marker["kind"] == "run" and marker["run_id"] and marker["created"]
    assert marker["statistics"].startswith("sha256:")
    assert not (finished / LOCK).exists()
    assert sorted(p.name for p in finished.iterdir() if p.name.startswith(".")) == [MARKER]


def test_a_second_writer_is_refused_naming_the_holder(run, data):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / LOCK).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(), "stage": "train",
                                            "time": "2024-01-01T00:00:00Z", "token": "t"}))
        before = snapshot(run)
        with pytest.raises(RunFolderError, match=rf"stage train \(pid {holder.pid} on "):
            compute_statistics(data, run, network_depth=2, seed=7)
        with pytest.raises(RunFolderError, match="another campseg process"):
            package_dlpk(run)
        assert snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(run):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run / LOCK).write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(), "stage": "stats"}))
    package_dlpk(run)
    assert not (run / LOCK).exists()


def test_the_lock_is_reentrant_in_one_process_and_released(tmp_path):
    with open_output(tmp_path / "r", "all"):
        with run_lock(tmp_path / "r", "stats"):
            assert json.loads((tmp_path / "r" / LOCK).read_text())["stage"] == "all"
        assert (tmp_path / "r" / LOCK).exists()
    assert not (tmp_path / "r" / LOCK).exists()


# ------------------------------------------------------------------ case 1: evaluate --out
def test_evaluate_out_refuses_a_users_folder_and_the_dataset(finished, data, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before, data_before = snapshot(mine), snapshot(data)
    with pytest.raises(RunFolderError, match="not empty and not a campseg evaluation folder"):
        evaluate_run(finished, data, mine)
    with pytest.raises(RunFolderError, match="dataset"):
        evaluate_run(finished, data, data)
    with pytest.raises(RunFolderError, match="dataset"):
        evaluate_run(finished, data, data / "chips")
    with pytest.raises(RunFolderError, match="run folder"):
        evaluate_run(finished, data, finished)
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunFolderError, match="not a folder"):
        evaluate_run(finished, data, tmp_path / "a-file")
    with pytest.raises(RunFolderError, match="is a file"):
        evaluate_run(finished, data, tmp_path / "a-file" / "eval")
    assert snapshot(mine) == before and snapshot(data) == data_before
    assert (tmp_path / "a-file").read_text() == "x"


def test_evaluate_out_cli_refuses_with_exit_2(finished, data, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    proc = run_components("evaluate", "--run", str(finished), "--data", str(data), "--out", str(mine), check=False)
    assert proc.returncode == 2
    error_line(proc, str(mine), "not a campseg evaluation folder")
    assert snapshot(mine) == before


def test_evaluate_out_writes_and_rewrites_its_own_folder(finished, data, tmp_path):
    out = tmp_path / "eval"
    first = evaluate_run(finished, data, out)
    assert read_marker(out)["kind"] == "evaluation"
    assert first["lineage"]["statistics"] == read_marker(finished)["statistics"]
    assert sorted(p.name for p in (out / "overlays").iterdir()) == ["best.png", "median.png", "worst.png"]
    evaluate_run(finished, data, out, overlays=False)  # an evaluation folder of its own is replaced
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        "confusion_matrix.png", "metrics.json", "overlays", "report.html", "training_curves.png"]
    assert not list((out / "overlays").iterdir())  # the first evaluation's overlays are gone


def test_an_unwritable_out_is_a_clean_error(finished, data, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root writes anywhere")
    locked = tmp_path / "ro"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with pytest.raises(RunFolderError, match="ro"):
            evaluate_run(finished, data, locked / "eval")
    finally:
        locked.chmod(0o755)


# ------------------------------------------------------------------ case 2: all --out, gather_run
def test_all_refuses_a_users_folder(data, tmp_path):
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    proc = run_components("all", "--data", str(data), "--out", str(mine), "--epochs", "1", check=False)
    assert proc.returncode == 2
    error_line(proc, str(mine), "not empty and not a campseg run folder")
    assert snapshot(mine) == before and not (mine / MARKER).exists()


def test_stats_refuses_an_output_inside_the_dataset(data):
    before = snapshot(data)
    with pytest.raises(RunFolderError, match="dataset"):
        compute_statistics(data, data / "run", network_depth=2)
    assert snapshot(data) == before


def artifact_folders(run: Path, into: Path) -> dict[str, Path]:
    """The run's artifacts as KFP would hand them over: one folder per artifact."""
    found = {}
    for kind, entries in ARTIFACT_FILES.items():
        folder = into / kind
        folder.mkdir(parents=True)
        for entry in entries:
            source = run / entry.rstrip("/")
            if source.is_dir():
                shutil.copytree(source, folder / entry)
            else:
                shutil.copy2(source, folder / entry)
        found[kind] = folder
    return found


def test_gather_run_never_touches_a_users_folder(finished, tmp_path):
    from components.kubeflow.steps import gather_run

    artifacts = artifact_folders(finished, tmp_path / "artifacts")
    mine = user_folder(tmp_path / "mine")
    before = snapshot(mine)
    with pytest.raises(RunFolderError, match="not a campseg run folder"):
        gather_run(artifacts, mine)
    assert snapshot(mine) == before


def test_gather_run_replaces_a_run_folders_artifacts_only(finished, tmp_path):
    from components.kubeflow.steps import gather_run

    artifacts = artifact_folders(finished, tmp_path / "artifacts")
    out = tmp_path / "out"
    gather_run(artifacts, out)
    (out / "notes.txt").write_text("mine")
    (out / "esri" / "stale.dlpk").write_bytes(b"old")
    summary = gather_run(artifacts, out)
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "esri" / "stale.dlpk").exists()
    assert (out / summary["dlpk"]).is_file() and summary["test_metrics"]
    assert read_marker(out)["statistics"] == read_marker(finished)["statistics"]
    assert not [p for p in out.iterdir() if p.name.endswith(".partial") or p.name.endswith(".old")]


def test_gather_run_refuses_artifacts_of_two_runs(finished, tmp_path):
    from components.kubeflow.steps import gather_run

    artifacts = artifact_folders(finished, tmp_path / "artifacts")
    stats = json.loads((artifacts["statistics"] / "stats.json").read_text())
    stats["seed"] = 7
    (artifacts["statistics"] / "stats.json").write_text(json.dumps(stats))
    with pytest.raises(RunFolderError, match="mixed run folder"):
        gather_run(artifacts, tmp_path / "out")
    assert not (tmp_path / "out" / "stats.json").exists()


def test_atomic_folder_never_replaces_a_folder_outside_a_run(tmp_path):
    mine = user_folder(tmp_path / "mine")
    with pytest.raises(RunFolderError, match="never replaced"):
        with atomic_folder(mine / "models"):
            pytest.fail("the block must not run")
    assert (mine / "models" / "my-notes.txt").read_text() == "mine"


# ------------------------------------------------------------------ case 3: mixed run folders
def test_other_statistics_are_refused_in_a_finished_run(run, other_data):
    before = snapshot(run)
    with pytest.raises(RunFolderError, match="built from other statistics"):
        compute_statistics(other_data, run, network_depth=2)
    assert snapshot(run) == before


def test_the_same_statistics_again_are_fine(run, data):
    before = snapshot(run)
    compute_statistics(data, run, network_depth=2)
    assert snapshot(run) == before


def test_stats_of_a_killed_rerun_are_refused_by_every_later_stage(run, other_data, tmp_path):
    """What the old code left after a killed rerun: new statistics beside the old artifacts."""
    fresh = tmp_path / "fresh"
    compute_statistics(other_data, fresh, network_depth=2)
    for name in ("stats.json", "dataset_manifest.json"):
        shutil.copy2(fresh / name, run / name)
    layout = RunLayout(run)
    for stage, call in (("export", lambda: export_models(run)), ("evaluate", lambda: evaluate_run(run)),
                        ("dlpk", lambda: package_dlpk(run)), ("stac", lambda: build_stac_item(run))):
        with pytest.raises(RunFolderError, match="mixed run folder") as info:
            call()
        assert "re-run" in str(info.value), stage
    assert not list((run / "esri").glob("*.dlpk")) or json.loads(layout.stac_item.read_text())


def test_dlpk_and_stac_refuse_models_of_another_checkpoint(run, finished, tmp_path):
    """A run whose training was redone but whose models are older (the export never ran)."""
    other = tmp_path / "other"
    shutil.copytree(finished, other)
    train(other, TrainConfig(base_channels=4, depth=2, epochs=1, batch_size=4, seed=3), progress_bar=False)
    for name in ("checkpoints", "training_history.json"):
        source, target = other / name, run / name
        if source.is_dir():
            shutil.rmtree(target)
            shutil.copytree(source, target)
        else:
            shutil.copy2(source, target)
    with pytest.raises(RunFolderError, match=r"models/ was built from checkpoints/best.ckpt"):
        package_dlpk(run)
    with pytest.raises(RunFolderError, match="mixed run folder"):
        build_stac_item(run)


def test_a_failed_export_after_retraining_leaves_nothing_that_looks_final(run):
    train(run, TrainConfig(base_channels=4, depth=2, epochs=1, batch_size=4, seed=3), progress_bar=False)
    layout = RunLayout(run)
    for stale in (layout.models_dir, layout.evaluation_dir, layout.esri_dir, layout.metadata_dir):
        assert not stale.exists(), stale  # built from the old checkpoint: gone before the new one came
    summary = json.loads(layout.summary.read_text())
    assert not {"onnx", "metrics", "dlpk", "stac_item"} & set(summary)
    with pytest.raises(Exception, match="parity failed"):
        export_models(run, tolerance=-1.0)
    with pytest.raises(RunFolderError, match="model.pt"):
        package_dlpk(run)
    export_models(run)  # the chain resumes from where it stopped
    package_dlpk(run)


def test_a_failed_training_rerun_leaves_the_previous_run_intact(run):
    from lightning.pytorch.callbacks import Callback

    class Stop(Callback):
        def on_train_epoch_end(self, trainer, module):
            raise RuntimeError("killed")

    before = snapshot(run)
    with pytest.raises(RuntimeError, match="killed"):
        train(run, TINY, callbacks=[Stop()], progress_bar=False)
    assert snapshot(run) == before
    package_dlpk(run)


def test_statistics_changed_during_training_are_not_published(run, other_data, tmp_path):
    """A writer that ignores the lock rewrites stats.json while training runs."""
    from lightning.pytorch.callbacks import Callback

    fresh = tmp_path / "fresh"
    compute_statistics(other_data, fresh, network_depth=2)

    class Intruder(Callback):
        def on_train_end(self, trainer, module):
            shutil.copy2(fresh / "stats.json", run / "stats.json")

    checkpoint = (run / "checkpoints" / "best.ckpt").read_bytes()
    with pytest.raises(RunFolderError, match="changed while training ran"):
        train(run, TINY, callbacks=[Intruder()], progress_bar=False)
    assert (run / "checkpoints" / "best.ckpt").read_bytes() == checkpoint


def test_stages_refuse_a_folder_without_the_marker(run):
    (run / MARKER).unlink()
    with pytest.raises(RunFolderError, match="not a campseg run folder"):
        package_dlpk(run)


def test_lineage_is_recorded_in_every_artifact(finished):
    import zipfile

    layout = RunLayout(finished)
    digest = read_marker(finished)["statistics"]
    history = json.loads(layout.history.read_text())["lineage"]
    report = json.loads(layout.export_report.read_text())["lineage"]
    metrics = json.loads(layout.metrics.read_text())["lineage"]
    assert history["statistics"] == report["statistics"] == metrics["statistics"] == digest
    assert report["checkpoint"] == history["checkpoint"]
    assert set(report["files"]) == {"model.pth", "model.pt", "model.onnx"}
    (package,) = layout.esri_dir.glob("*.dlpk")
    with zipfile.ZipFile(package) as archive:
        emd = json.loads(archive.read(package.stem + ".emd"))
    assert emd["CampsegLineage"] == {"statistics": digest, "models": metrics["models"]}
    item = json.loads(layout.stac_item.read_text())
    lineage = item["properties"]["campseg:lineage"]
    assert lineage["statistics"] == digest and lineage["models"] == metrics["models"]
    assert set(lineage["dlpk"]) == {package.name}
