"""The default batch size: 8 on the CPU; on a GPU a power of two from memory, image size and the split's size."""

from __future__ import annotations

import pytest

from components.contracts.config import TrainConfig
from components.contracts.errors import ParameterError
from components.ml.batch_size import default_batch_size

H100 = 80 * 10**9
GIB = 2**30


def test_cpu_keeps_eight():
    assert default_batch_size(False, 256, 3, 100_000, 1, None) == 8
    assert default_batch_size(False, 1024, 3, 10, 4, H100) == 8


def test_a_big_split_of_256_chips_on_an_h100_gets_128():
    assert default_batch_size(True, 256, 3, 100_000, 1, H100) == 128


@pytest.mark.parametrize("chips, devices, expected", [
    (42, 1, 8),  # the dev set's train split: 5 steps at batch 8 already; never below 8
    (500, 1, 32),  # 500 / 8 steps = 62 -> 32
    (1024, 1, 128),
    (1024, 2, 64),  # per device: 512 chips each
    (2000, 8, 16),
])
def test_small_splits_keep_eight_steps_per_epoch_and_device(chips, devices, expected):
    size = default_batch_size(True, 256, 3, chips, devices, H100)
    assert size == expected
    assert size == 8 or chips / devices / size >= 8


def test_bigger_images_and_smaller_cards_get_smaller_batches():
    assert default_batch_size(True, 512, 3, 100_000, 1, H100) == 32  # the same pixels per batch
    assert default_batch_size(True, 256, 3, 100_000, 1, 8 * GIB) == 32  # 4 GiB at ~96 MiB a chip
    assert default_batch_size(True, 256, 3, 100_000, 1, None) == 64  # unknown: 16 GiB assumed
    assert default_batch_size(True, 2048, 3, 100_000, 1, H100) == 8  # the floor


def test_always_a_power_of_two_of_at_least_eight():
    for image_size in (32, 64, 128, 256, 384, 512, 1024):
        for memory in (4 * GIB, 16 * GIB, H100, None):
            for chips in (1, 42, 300, 5000, 10**6):
                size = default_batch_size(True, image_size, 4, chips, 1, memory)
                assert size >= 8 and size & (size - 1) == 0, (image_size, memory, chips)
                assert size * image_size**2 <= max(8 * image_size**2, 128 * 256 * 256), (image_size, memory, chips)


def test_config_batch_size_auto_round_trips_and_old_configs_load():
    assert TrainConfig().batch_size is None
    assert TrainConfig.from_dict(TrainConfig().to_dict()) == TrainConfig()
    assert TrainConfig.from_dict({**TrainConfig().to_dict(), "batch_size": 16}).batch_size == 16  # an older config.json
    for bad in (0, -4, 2.5, True, "8"):
        with pytest.raises(ParameterError, match="batch_size"):
            TrainConfig(batch_size=bad)


def test_train_resolves_auto_and_records_it(tmp_path):
    import json

    from components.stages.stats import compute_statistics
    from components.stages.train import train
    from tests.support.datasets import make_dataset

    data = make_dataset(tmp_path / "data", n_groups=6, per_group=4, size=32)
    run = tmp_path / "run"
    compute_statistics(data, run, network_depth=2)
    result = train(run, TrainConfig(base_channels=4, depth=2, epochs=1, accelerator="cpu"), progress_bar=False)
    assert result["batch_size"] == 8
    assert json.loads((run / "training_history.json").read_text())["summary"]["batch_size"] == 8
    assert json.loads((run / "train_config.json").read_text())["batch_size"] == 8  # what it trained with
