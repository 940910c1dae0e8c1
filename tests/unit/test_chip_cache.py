"""Chips that do not fit in memory are memory-mapped on the scratch disk: same chips, small pickles, no leftovers."""

from __future__ import annotations

import gc
import json
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from components.contracts.preprocessing import Preprocessing
from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.ml.chip_cache import (
    BUDGET_ENV,
    SCRATCH_ENV,
    ChipArrays,
    available_memory,
    decoded_bytes,
    fits_in_memory,
    memory_budget,
    scratch_dir,
)
from components.ml.task import ChipDataset
from components.stages.stats import compute_statistics
from tests.support.datasets import make_dataset


@pytest.fixture(scope="module")
def split(tmp_path_factory):
    data = make_dataset(tmp_path_factory.mktemp("cache") / "data", n_groups=4, per_group=4, size=32)
    run = tmp_path_factory.mktemp("cache_run")
    compute_statistics(data, run, network_depth=2)
    prep = Preprocessing.from_stats(json.loads((run / "stats.json").read_text()))
    return read_manifest(RunLayout(run)), prep, data


def test_decoded_bytes_counts_chips_and_masks():
    assert decoded_bytes(10, 3, 256, np.uint8) == 10 * 256 * 256 * 4
    assert decoded_bytes(2, 4, 64, np.float32) == 2 * 64 * 64 * (16 + 1)


def test_fits_in_memory_decision():
    assert fits_in_memory(10, None)
    assert fits_in_memory(10, 10)
    assert not fits_in_memory(11, 10)
    assert not fits_in_memory(1, 0)


def test_budget_from_the_environment_or_meminfo(tmp_path):
    assert memory_budget({BUDGET_ENV: "1000"}) == 1000
    assert memory_budget({BUDGET_ENV: "2e9"}) == 2_000_000_000
    with pytest.raises(ValueError, match=BUDGET_ENV):
        memory_budget({BUDGET_ENV: "lots"})
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16000000 kB\nMemAvailable:    1000000 kB\n")
    assert available_memory(meminfo) == 1_024_000_000
    assert memory_budget({}, meminfo) == int(1_024_000_000 * 0.4)
    assert memory_budget({}, tmp_path / "absent") is None  # not Linux: no limit


def test_scratch_dir_honours_the_environment(tmp_path):
    assert scratch_dir({SCRATCH_ENV: str(tmp_path)}) == tmp_path
    assert scratch_dir({}).is_dir()


def test_memmapped_dataset_equals_the_in_memory_one_pickles_small_and_cleans_up(split, tmp_path, monkeypatch):
    pairs, prep, data = split
    monkeypatch.setenv(SCRATCH_ENV, str(tmp_path / "scratch"))
    in_memory = ChipDataset(pairs, prep)
    mapped = ChipDataset(pairs, prep, budget=0)
    assert not in_memory.store.mapped and mapped.store.mapped
    folder = mapped.store.folder
    assert folder.parent == tmp_path / "scratch" and sorted(p.name for p in folder.iterdir()) == ["chips.bin",
                                                                                                     "masks.bin"]
    assert not any(data.rglob("*.bin"))  # never in the dataset's folder
    assert isinstance(mapped.chips, np.memmap)
    np.testing.assert_array_equal(mapped.chips, in_memory.chips)
    np.testing.assert_array_equal(mapped.masks, in_memory.masks)
    for i in range(len(in_memory)):
        for a, b in zip(mapped[i], in_memory[i]):
            assert torch.equal(a, b) and a.dtype == b.dtype

    # Pickled (loader workers, DDP spawn): the paths travel, not the pixels; the copy reopens read-only.
    full, small = len(pickle.dumps(in_memory)), len(pickle.dumps(mapped))
    assert small < full / 4 and small < mapped.chips.nbytes
    copy = pickle.loads(pickle.dumps(mapped))
    assert copy.chips.mode == "r" and not copy.chips.flags.writeable
    assert torch.equal(copy[3][0], in_memory[3][0]) and torch.equal(copy[3][1], in_memory[3][1])
    copy[3][0].fill_(0)  # the item is a private copy: the file keeps its pixels
    np.testing.assert_array_equal(copy.chips[3], in_memory.chips[3])
    del copy
    gc.collect()
    assert folder.is_dir()  # only the creating process removes the files

    # Spawned loader workers see the same chips.
    loader = DataLoader(mapped, batch_size=len(mapped), num_workers=1, multiprocessing_context="spawn")
    chips, masks = next(iter(loader))
    assert torch.equal(chips, torch.from_numpy(in_memory.chips)) and torch.equal(masks, torch.from_numpy(in_memory.masks))
    del loader

    del mapped
    gc.collect()
    assert not folder.exists()


def test_close_removes_the_files_now(tmp_path):
    arrays = ChipArrays(3, 2, 8, np.uint8, budget=0, scratch=tmp_path)
    assert arrays.mapped and arrays.folder.is_dir()
    arrays.close()
    assert not arrays.folder.exists()
    in_memory = ChipArrays(3, 2, 8, np.uint8, budget=None, scratch=tmp_path)
    assert not in_memory.mapped and in_memory.chips.shape == (3, 2, 8, 8)
    in_memory.close()
