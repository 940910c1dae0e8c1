"""``--devices 2 --accelerator cpu``: DDP over two gloo processes, as a user runs it.

The same data, split and recipe are trained once in one process and once in two DDP ranks
(``--batch-size`` is per device, so 2 x 4 matches the single run's 8 chips per optimizer step). The
DDP run must publish one checkpoint and one set of exports (rank 0's), record validation metrics
of the whole val split (synced over the ranks, no chip counted twice), and reach a test IoU within
noise of the single-process run.

The data is the project's synthetic sample generator (learnable camps, unlike the random masks of
``tests/support/datasets.make_dataset``, whose IoU is chance and would compare nothing).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
from torch.utils.data import DataLoader

from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.data.sample_data import generate_sample_dataset
from components.ml.task import ChipDataset, SegmentationTask
from tests.support.cli import run_components
from tests.support.paths import REPO

pytestmark = pytest.mark.slow

RECIPE = ("--accelerator", "cpu", "--epochs", "10", "--base-channels", "8", "--depth", "3", "--seed", "42")
#: Test IoU of the two runs may differ by this much. The two runs see different batches (the
#: DistributedSampler's shuffle, not the single loader's), BatchNorm statistics over 4 chips per
#: rank instead of 8, and per-rank augmentation draws: an ordinary change of seed. The test split
#: is 5 chips of 64x64, so one chip is a fifth of the pixels. Measured with this recipe on this data
#: in one process: test IoU 0.758 (seed 42) and 0.739 (seed 7); issue 12 measured 0.03-0.05 for a
#: seed change on real chips. 0.10 is twice the larger of those, while a broken DDP run (one rank's
#: shard only, unsynced weights, a lost checkpoint) falls far below it, to the 0.0-0.25 of a model
#: that has not learned (4-epoch runs here).
TOLERANCE = 0.10


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    # 40 chips: 30 train, 5 val, 5 test; an odd val split, so a padding sampler would repeat a chip.
    return generate_sample_dataset(tmp_path_factory.mktemp("ddp") / "data", n_chips=40, size=64, seed=0)


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, extra in (("single", ("--batch-size", "8")), ("ddp", ("--devices", "2", "--batch-size", "4"))):
        out[name] = tmp_path_factory.mktemp(name) / "run"
        run_components("all", "--data", str(data), "--out", str(out[name]), *RECIPE, *extra)
    return out


def _test_iou(run: Path) -> float:
    return json.loads((run / "evaluation" / "metrics.json").read_text())["iou"]


def test_ddp_publishes_one_checkpoint_and_one_history(runs):
    run = runs["ddp"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt"]
    history = json.loads((run / "training_history.json").read_text())
    assert history["summary"]["devices"] == 2
    assert [row["epoch"] for row in history["epochs"]] == list(range(history["summary"]["epochs_run"]))
    summary = json.loads((run / "summary.json").read_text())
    assert summary["best_val_iou"] == history["summary"]["best_val_iou"]
    for name in ("model.pth", "model.pt", "model.onnx"):
        assert (run / "models" / name).is_file()
    assert not list(run.rglob("lightning_logs")) and not list(run.rglob(".partial"))


def test_ddp_val_iou_is_that_of_the_whole_val_split(runs, data):
    """The val IoU the DDP ranks selected the checkpoint on equals the checkpoint's val IoU
    recomputed in one process over every val chip."""
    run = runs["ddp"]
    layout = RunLayout(run)
    prep = Preprocessing.from_stats(json.loads(layout.stats.read_text()))
    val = [p for p in read_manifest(layout, data) if p.split == "val"]
    task = SegmentationTask.load_from_checkpoint(str(layout.checkpoint), map_location="cpu")
    trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False)
    [metrics] = trainer.validate(task, DataLoader(ChipDataset(val, prep), batch_size=8), verbose=False)
    recorded = json.loads((run / "training_history.json").read_text())["summary"]["best_val_iou"]
    assert metrics["val_iou"] == pytest.approx(recorded, abs=1e-4)


def test_ddp_test_metrics_are_within_noise_of_one_process(runs):
    single, ddp = _test_iou(runs["single"]), _test_iou(runs["ddp"])
    assert single > 0.5, f"the single-process reference did not learn (test IoU {single:.3f})"
    assert abs(ddp - single) <= TOLERANCE, f"DDP test IoU {ddp:.3f} vs one process {single:.3f}"


def _torchrun(*args: str, port: int) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m components -- ARGS`` on this node, as a TrainJob's pod runs it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
               "-m", "components", "--", *args]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})


def test_torchrun_ranks_train_with_ddp_and_rank_zero_publishes(data, tmp_path):
    """Ranks started by torchrun (two gloo processes here; one per GPU on every node of a TrainJob)
    join with plain ``ddp``: each runs the train stage, only global rank 0 locks and writes."""
    run = tmp_path / "run"
    run_components("stats", "--data", str(data), "--out", str(run), "--image-size", "64", "--depth", "3")
    proc = _torchrun("train", "--run", str(run), "--accelerator", "cpu", "--devices", "2", "--epochs", "2",
                     "--base-channels", "8", "--depth", "3", "--batch-size", "4", port=29531)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert '"published": false' in proc.stdout  # rank 1 trained and wrote nothing
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt"]
    summary = json.loads((run / "training_history.json").read_text())["summary"]
    assert summary["devices"] == 2 and summary["num_nodes"] == 1 and summary["epochs_run"] == 2
    assert not (run / ".campseg.lock").exists()
    # the whole chain is not for torchrun: every rank would compute statistics and export
    refused = _torchrun("all", "--data", str(data), "--out", str(tmp_path / "all"), "--accelerator", "cpu",
                        "--devices", "2", port=29532)
    assert refused.returncode != 0 and "launch only the train stage" in refused.stderr
    assert not (tmp_path / "all").exists()
