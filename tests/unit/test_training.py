"""Training options are real options: each loss, optimizer and schedule trains and checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from components.contracts.config import TrainConfig
from components.contracts.preprocessing import Preprocessing
from components.data.pairs import IGNORE
from components.ml.augmentation import BatchTransform
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
    # Without the default warm-up, so that the rates are the schedule's own (the warm-up has its tests below).
    result = train(run, TrainConfig(**TINY, warmup_epochs=0.0, **options), progress_bar=False)
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


PREP = Preprocessing(32, ("red", "green", "blue"), (0.3, 0.4, 0.5), (0.2, 0.25, 0.3))


def _object_batch(n: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Dark uint8 chips, each with a bright object off-centre and its mask at the same place."""
    chips = torch.full((n, 3, 32, 32), 20, dtype=torch.uint8)
    masks = torch.zeros((n, 32, 32), dtype=torch.uint8)
    for i in range(n):
        r, c = 2 + i % 5, 18 + i % 7
        chips[i, :, r:r + 4, c:c + 10] = 230
        masks[i, r:r + 4, c:c + 10] = 1
    return chips, masks


def test_batched_augmentation_moves_chip_and_mask_together():
    chips, masks = _object_batch()
    transform = BatchTransform(PREP, seed=3)
    moved = 0
    for _ in range(5):
        x, y = transform(chips, masks, augment=True)
        assert x.dtype == torch.float32 and y.shape == (16, 1, 32, 32)
        for i in range(16):
            bright = x[i].mean(dim=0) > x[i].mean()  # the object, wherever the transform put it
            assert torch.equal(bright, y[i, 0].bool())
            moved += not torch.equal(y[i, 0], masks[i].float())
    assert moved > 40  # 3 in 4 draws of flips and turns move an off-centre object


def test_batched_augmentation_is_seeded_and_varies_per_chip():
    chips, masks = _object_batch()
    a = BatchTransform(PREP, seed=5)(chips, masks, augment=True)
    b = BatchTransform(PREP, seed=5)(chips, masks, augment=True)
    c = BatchTransform(PREP, seed=6)(chips, masks, augment=True)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    # Each chip draws its own flips and quarter turn: find which of the 8 moves each one got.
    moves = []
    for i in range(16):
        for k in range(4):
            for flip in (False, True):
                m = torch.rot90(masks[i].flip(-1) if flip else masks[i], k, dims=(-2, -1))
                if torch.equal(m.float(), a[1][i, 0]):
                    moves.append((k, flip))
    assert len(moves) >= 16 and len(set(moves)) >= 3


def _per_chip_reference(chips: np.ndarray, masks: np.ndarray, prep: Preprocessing, rng: np.random.Generator):
    """The per-chip numpy path the batched transform replaced (``ChipDataset`` before issue 12), chip
    after chip: what a seed meant for training until then."""
    xs, ys = [], []
    for chip, mask in zip(chips, masks):
        chip = chip.astype(np.float32)
        nodata = mask == IGNORE
        chip[:, nodata] = prep.raw_mean.astype(np.float32)[:, None]
        if rng.random() < 0.5:
            chip, mask = chip[:, :, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            chip, mask = chip[:, ::-1, :], mask[::-1, :]
        k = int(rng.integers(4))
        chip, mask = np.rot90(chip, k, axes=(1, 2)), np.rot90(mask, k)
        contrast = rng.uniform(0.8, 1.2)
        brightness = rng.uniform(-0.1, 0.1) * prep.max_value
        mean = chip.mean(axis=(1, 2), keepdims=True)
        low, high = prep.raw_range
        chip = np.clip((chip - mean) * contrast + mean + brightness, max(low, 0.0), high)
        x = prep.normalize(chip)
        x[:, mask == IGNORE] = 0.0
        xs.append(x)
        ys.append(mask.astype(np.float32)[None])
    return np.stack(xs), np.stack(ys)


def test_a_seed_augments_as_the_per_chip_path_did():
    """Moving augmentation onto the device must not change what a seed trains: the same chips in the
    same order get the same flips, turns, contrast and brightness as the per-chip numpy path. (A new
    stream of draws, equally random, turned the dev set's 4-epoch test IoU from 0.45 into 0.09.)"""
    chips, masks = _object_batch(12)
    chips = chips + torch.randint(0, 20, chips.shape, dtype=torch.uint8)  # texture: contrast shows
    masks[:3, :, :4] = IGNORE
    transform, rng = BatchTransform(PREP, seed=42), np.random.default_rng(42)
    for batch in (slice(0, 8), slice(8, 12)):  # the stream runs on across batches
        x, y = transform(chips[batch], masks[batch], augment=True)
        ref_x, ref_y = _per_chip_reference(chips[batch].numpy(), masks[batch].numpy(), PREP, rng)
        np.testing.assert_array_equal(y.numpy(), ref_y)
        np.testing.assert_allclose(x.numpy(), ref_x, rtol=1e-5, atol=1e-4)


def test_only_training_batches_are_augmented(tiny_stats):
    """Inside a fit, training batches are augmented and validation batches are the plain
    ``Preprocessing.normalize`` of their chips."""
    import lightning as L
    from torch.utils.data import DataLoader

    from components.contracts.run_layout import RunLayout
    from components.data.manifest import read_manifest

    prep = Preprocessing.from_stats(json.loads((tiny_stats / "stats.json").read_text()))
    dataset = ChipDataset(read_manifest(RunLayout(tiny_stats)), prep)
    task = SegmentationTask(TrainConfig(**TINY).to_dict(), preprocessing=prep.to_dict())
    seen: dict[str, list[torch.Tensor]] = {}
    step = task._step

    def record(batch, stage, metrics):
        seen.setdefault(stage, []).append(batch[0].clone())
        return step(batch, stage, metrics)

    task._step = record
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    loader = DataLoader(dataset, batch_size=len(dataset))  # one batch, in order
    trainer.fit(task, loader, loader)
    plain = prep.normalize(dataset.chips)
    assert len(seen["val"]) == 2  # the sanity check and the epoch's validation
    for x in seen["val"]:
        np.testing.assert_allclose(x.numpy(), plain, rtol=1e-5, atol=1e-5)
    assert not np.allclose(seen["train"][0].numpy(), plain, atol=1e-2)


def test_normalisation_matches_preprocessing():
    chips = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    masks = torch.randint(0, 2, (4, 32, 32), dtype=torch.uint8)
    x, y = BatchTransform(PREP)(chips, masks, augment=False)
    np.testing.assert_allclose(x.numpy(), PREP.normalize(chips.numpy()), rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, 0], masks.float())


def test_nodata_pixels_stay_ignored_and_neutral():
    chips, masks = _object_batch(8)
    chips[:, :, :, :6] = 255  # an extreme value where there is no data
    masks[:, :, :6] = IGNORE
    x, y = BatchTransform(PREP, seed=1)(chips, masks, augment=True)
    nodata = y[:, 0] == IGNORE
    assert nodata.sum() == masks.eq(IGNORE).sum()  # turned and flipped, never lost or blended
    assert (x.permute(1, 0, 2, 3)[:, nodata] == 0).all()  # the training mean, in every band
    assert set(y.unique().tolist()) == {0.0, 1.0, float(IGNORE)}


def test_dataset_keeps_uint8_chips(tiny_stats):
    from components.contracts.run_layout import RunLayout
    from components.data.manifest import read_manifest

    prep = Preprocessing.from_stats(json.loads((tiny_stats / "stats.json").read_text()))
    dataset = ChipDataset(read_manifest(RunLayout(tiny_stats)), prep)
    chip, mask = dataset[0]
    assert dataset.chips.dtype == np.uint8 and chip.dtype == torch.uint8 and mask.dtype == torch.uint8
    assert chip.shape == (3, prep.image_size, prep.image_size)


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


def test_validation_shards_cover_the_split_once():
    """Under DDP each rank validates its own chips; together exactly the whole split, none twice
    (a padding sampler would count a chip twice in the synced metrics)."""
    from types import SimpleNamespace

    from components.ml.task import ChipDataModule

    val = list(range(7))  # odd: a padding sampler would repeat one chip
    seen = []
    for rank in range(2):
        module = ChipDataModule(train=list(range(10)), val=val, batch_size=2)
        module.trainer = SimpleNamespace(world_size=2, global_rank=rank)
        seen += [int(i) for batch in module.val_dataloader() for i in batch]
    assert sorted(seen) == val


def test_devices_must_leave_every_rank_a_validation_chip(tiny_stats, tmp_path):
    from components.contracts.errors import DatasetError

    run = fresh_run(tiny_stats, tmp_path)
    val = json.loads((run / "stats.json").read_text())["counts"]["val"]
    with pytest.raises(DatasetError, match=f"val split has {val} chip"):
        train(run, TrainConfig(**TINY, devices=val + 1, accelerator="cpu"), progress_bar=False)
    assert not (run / "checkpoints").exists()


# --- the tuned recipe's parts: crops, band gains, warm-up, weight averaging, loss balance -------


def test_crops_keep_chip_and_mask_aligned_and_labels_whole():
    chips, masks = _object_batch()
    masks[:, 0, :4] = IGNORE  # a no-data strip must stay no data, never blend into 0/1
    x, y = BatchTransform(PREP, seed=4, crop_scale=0.4)(chips, masks, augment=True)
    assert set(torch.unique(y).tolist()) <= {0.0, 1.0, float(IGNORE)}
    zoomed = 0
    for i in range(16):
        valid = y[i, 0] != IGNORE
        bright = x[i].mean(dim=0) > 0.5 * (x[i][:, valid].max() + x[i][:, valid].min())
        # Bilinear chip and nearest mask may differ on the object's one-pixel rim only.
        disagree = (bright != (y[i, 0] == 1)) & valid
        assert disagree.sum() <= 2 * 32 + 2 * 32 * 0.5
        zoomed += int((y[i, 0] == 1).sum()) > int((masks[i] == 1).sum())
    assert zoomed >= 8  # a crop resized up enlarges the object


def test_no_crop_or_gain_draws_unless_asked():
    chips, masks = _object_batch()
    plain = BatchTransform(PREP, seed=9)(chips, masks, augment=True)
    explicit = BatchTransform(PREP, seed=9, crop_scale=1.0, color_jitter=0.0)(chips, masks, augment=True)
    assert torch.equal(plain[0], explicit[0]) and torch.equal(plain[1], explicit[1])
    draws = BatchTransform(PREP, seed=9, crop_scale=0.5, color_jitter=0.2).draw(64)
    assert draws["crop_area"].min() >= 0.5 and draws["crop_area"].max() <= 1.0
    assert draws["gain"].shape == (64, 3) and 0.8 <= draws["gain"].min() and draws["gain"].max() <= 1.2
    assert np.ptp(draws["gain"], axis=1).max() > 0.05  # bands get their own gains: a colour shift


def test_transform_pickles_with_its_augmentation_settings():
    import pickle

    copy = pickle.loads(pickle.dumps(BatchTransform(PREP, seed=2, crop_scale=0.6, color_jitter=0.1)))
    assert (copy.seed, copy.crop_scale, copy.color_jitter) == (2, 0.6, 0.1)


def test_warmup_rises_per_step_then_follows_the_cosine():
    from components.ml.task import warmup_factor

    factor = warmup_factor(total=50, warmup=5, schedule="cosine")
    rates = [factor(step) for step in range(50)]
    assert rates[:5] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])
    assert all(a >= b for a, b in zip(rates[4:], rates[5:])) and rates[-1] < 0.01
    flat = warmup_factor(total=50, warmup=5, schedule="none")
    assert [flat(s) for s in (0, 4, 5, 49)] == pytest.approx([0.2, 1.0, 1.0, 1.0])


def test_warmup_trains_and_logs_a_rising_rate(tiny_stats, tmp_path):
    run = fresh_run(tiny_stats, tmp_path)
    train(run, TrainConfig(**{**TINY, "epochs": 3}, warmup_epochs=2.0, lr_schedule="none"), progress_bar=False)
    history = json.loads((run / "training_history.json").read_text())["epochs"]
    assert history[0]["lr"] < history[1]["lr"] < history[2]["lr"] == pytest.approx(TrainConfig().learning_rate)


def test_weight_average_is_what_validates_and_exports(tiny_stats, tmp_path):
    run = fresh_run(tiny_stats, tmp_path)
    train(run, TrainConfig(**TINY, ema_decay=0.5), progress_bar=False)
    checkpoint = run / "checkpoints" / "best.ckpt"
    task = SegmentationTask.load_from_checkpoint(str(checkpoint), map_location="cpu")
    exported = load_network(checkpoint).state_dict()
    average = task.ema.module.state_dict()
    last = task.network.state_dict()
    for key in exported:
        torch.testing.assert_close(exported[key], average[key])
    assert any(not torch.equal(average[k], last[k]) for k in last if last[k].is_floating_point())
    assert not any(p.requires_grad for p in task.ema.parameters())  # the optimizer leaves it alone


@pytest.mark.parametrize("option, value", [("crop_scale", 0.0), ("crop_scale", 1.5), ("color_jitter", 1.0),
                                           ("ema_decay", 1.0), ("ema_decay", -0.1), ("warmup_epochs", 99.0),
                                           ("dice_weight", -1.0), ("warmup_epochs", float("nan"))])
def test_recipe_options_refuse_values_out_of_range(option, value):
    from components.contracts.errors import ParameterError

    with pytest.raises(ParameterError, match=option):
        TrainConfig(**{option: value})


def test_warmup_then_plateau_keeps_the_plateaus_reductions(tiny_stats, tmp_path):
    run = fresh_run(tiny_stats, tmp_path)
    train(run, TrainConfig(**{**TINY, "epochs": 3}, warmup_epochs=1.0, lr_schedule="plateau"), progress_bar=False)
    history = json.loads((run / "training_history.json").read_text())["epochs"]
    assert history[0]["lr"] < history[1]["lr"] <= TrainConfig().learning_rate


def test_dice_weight_scales_the_dice_term():
    logits, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.5).float()
    bce, dice = build_loss("bce")(logits, target), build_loss("dice")(logits, target)
    torch.testing.assert_close(build_loss("bce_dice", dice_weight=2.5)(logits, target), bce + 2.5 * dice)


def test_deterministic_is_the_default_and_off_lets_cudnn_pick_its_kernels(tiny_stats, tmp_path):
    """``deterministic=False`` trains with Lightning's non-deterministic flags (cudnn.benchmark on);
    the default sets deterministic algorithms again."""
    from components.contracts.errors import ParameterError

    assert TrainConfig().deterministic is True
    with pytest.raises(ParameterError, match="deterministic"):
        TrainConfig(deterministic="no")
    try:
        train(fresh_run(tiny_stats, tmp_path / "fast") if (tmp_path / "fast").mkdir() is None else None,
              TrainConfig(**{**TINY, "epochs": 1}, deterministic=False), progress_bar=False)
        assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
        train(fresh_run(tiny_stats, tmp_path / "same") if (tmp_path / "same").mkdir() is None else None,
              TrainConfig(**{**TINY, "epochs": 1}), progress_bar=False)
        assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = False
