"""Training options are real options: each loss, optimizer and schedule trains and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.ml.losses import build_loss
from components.ml.networks import UNet
from components.ml.task import ChipDataset, SegmentationTask, load_network
from components.stages.stats import compute_statistics
from components.stages.train import train
from tests.support.datasets import make_dataset

TINY = dict(base_channels=4, depth=2, epochs=2, batch_size=4)


@pytest.fixture(scope="module")
def tiny_stats(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("tiny") / "data", n_groups=6, per_group=4, size=32)
    run = tmp_path_factory.mktemp("tiny_run")
    compute_statistics(data, run, network_depth=2)
    return run


def fresh_run(tiny_stats, tmp_path):
    for name in ("stats.json", "dataset_manifest.json", ".campseg-run.json"):  # the marker makes it a run folder
        (tmp_path / name).write_bytes((tiny_stats / name).read_bytes())
    return tmp_path


@pytest.mark.parametrize(
    "options",
    [
        dict(loss="bce", optimizer="adam", lr_schedule="none"),
        dict(loss="dice", optimizer="sgd", lr_schedule="plateau"),
        dict(loss="focal", optimizer="adamw", lr_schedule="cosine", augment=False),
        dict(loss="bce_dice", optimizer="adamw", lr_schedule="cosine"),
    ],
)
def test_each_option_trains_and_checkpoints(tiny_stats, tmp_path, options):
    run = fresh_run(tiny_stats, tmp_path)
    result = train(run, TrainConfig(**TINY, **options), progress_bar=False)
    history = json.loads((run / "training_history.json").read_text())["epochs"]
    assert result["epochs_run"] == len(history) == 2
    assert all({"train_loss", "val_loss", "val_iou", "lr"} <= set(row) for row in history)
    if options["lr_schedule"] == "cosine":
        assert history[1]["lr"] < history[0]["lr"]  # the schedule acts and the rate is logged
    if options["lr_schedule"] == "none":
        assert history[1]["lr"] == history[0]["lr"]
    network = load_network(run / "checkpoints" / "best.ckpt")  # the checkpoint rebuilds its model
    assert isinstance(network, UNet)
    assert json.loads((run / "train_config.json").read_text())["loss"] == options["loss"]
    assert not (run / "checkpoints" / ".partial").exists()


def test_training_is_seeded(tiny_stats, tmp_path):
    weights = []
    for name in ("a", "b"):
        run = fresh_run(tiny_stats, tmp_path / name) if (tmp_path / name).mkdir() is None else None
        train(run, TrainConfig(**{**TINY, "epochs": 1}), progress_bar=False)
        weights.append(load_network(run / "checkpoints" / "best.ckpt").state_dict())
    for key in weights[0]:
        torch.testing.assert_close(weights[0][key], weights[1][key])


def test_augmentation_moves_chip_and_mask_together():
    prep = Preprocessing(32, ("red", "green", "blue"), (0.0,) * 3, (1 / 255,) * 3)
    dataset = ChipDataset([], prep, augment=True, seed=3)
    chip = np.zeros((3, 32, 32), np.float32)
    mask = np.zeros((32, 32), np.uint8)
    chip[:, 2:6, 20:30] = 200.0  # a bright object and its mask at the same place
    mask[2:6, 20:30] = 1
    moved = 0
    for _ in range(20):
        a_chip, a_mask = dataset._augment(chip.copy(), mask.copy())
        bright = a_chip.mean(axis=0) > a_chip.mean() + 50
        assert np.array_equal(bright, a_mask.astype(bool))
        moved += not np.array_equal(a_mask, mask)
    assert moved > 5


@pytest.mark.parametrize("name", ["bce", "dice", "focal", "bce_dice"])
def test_losses_prefer_the_right_answer(name):
    target = (torch.rand(2, 1, 16, 16) > 0.7).float()
    good = (target * 2 - 1) * 6
    loss = build_loss(name)
    assert loss(good, target) < loss(-good, target)
    assert loss(good, target) < loss(torch.zeros_like(good), target)


def test_segmentation_task_emits_logits_with_configured_unet():
    task = SegmentationTask(TrainConfig(base_channels=4, depth=3).to_dict())
    out = task(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 1, 64, 64) and (out < 0).any() and (out > 0).any()
    assert len(task.network.encoders) == 3
