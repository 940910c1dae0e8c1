"""Every bad input gets an error naming the file or parameter, a non-zero exit, and no stats."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support.cli import error_line, run_components
from tests.support.datasets import make_dataset


@pytest.fixture
def dataset(tmp_path) -> Path:
    return make_dataset(tmp_path / "data")


def first(folder: Path) -> Path:
    return sorted(folder.iterdir())[0]


def assert_rejected(data: Path, out: Path, *expected: str, extra: tuple[str, ...] = ()) -> str:
    proc = run_components("stats", "--data", str(data), "--out", str(out), *extra, check=False)
    error_line(proc, single=False)
    for text in expected:  # a message may list several files, one per line
        assert text in proc.stderr, f"{text!r} not in: {proc.stderr}"
    assert not (out / "stats.json").exists() and not (out / "dataset_manifest.json").exists()
    return proc.stderr


def test_valid_dataset_passes(dataset, tmp_path):
    run_components("stats", "--data", str(dataset), "--out", str(tmp_path / "run"))
    assert (tmp_path / "run" / "stats.json").exists()


@pytest.mark.parametrize("missing", ["chips", "labels"])
def test_missing_folder(dataset, tmp_path, missing):
    shutil.rmtree(dataset / missing)
    assert_rejected(dataset, tmp_path / "run", f"lacks {missing}/", str(dataset))


def test_empty_dataset(tmp_path):
    data = tmp_path / "empty"
    (data / "chips").mkdir(parents=True)
    (data / "labels").mkdir()
    assert_rejected(data, tmp_path / "run", "is empty")


def test_chips_without_masks_and_masks_without_chips_are_listed(dataset, tmp_path):
    chip, mask = first(dataset / "chips"), sorted((dataset / "labels").iterdir())[-1]
    chip_name = chip.name
    (dataset / "labels" / chip.name).unlink()
    mask.rename(dataset / "labels" / "orphan.png")
    err = assert_rejected(dataset, tmp_path / "run", "without a mask", chip_name, "without a chip", "orphan.png")
    assert "2 chip(s)" in err and "1 mask(s)" in err


def test_truncated_image(dataset, tmp_path):
    chip = first(dataset / "chips")
    chip.write_bytes(chip.read_bytes()[:200])
    assert_rejected(dataset, tmp_path / "run", chip.name, "unreadable or truncated")


def test_unreadable_image(dataset, tmp_path):
    mask = first(dataset / "labels")
    mask.write_bytes(b"this is not an image")
    assert_rejected(dataset, tmp_path / "run", mask.name, "unreadable")


def test_chip_not_three_band(dataset, tmp_path):
    chip = first(dataset / "chips")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(chip)
    assert_rejected(dataset, tmp_path / "run", chip.name, "1 band(s); expected 3")


def test_mask_with_several_bands(dataset, tmp_path):
    mask = first(dataset / "labels")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(mask)
    assert_rejected(dataset, tmp_path / "run", mask.name, "3 bands; expected a single band")


def test_size_mismatch(dataset, tmp_path):
    mask = first(dataset / "labels")
    Image.fromarray(np.zeros((16, 32), np.uint8)).save(mask)
    assert_rejected(dataset, tmp_path / "run", mask.name, "16x32", "32x32")


def test_too_few_groups_for_splits(tmp_path):
    data = make_dataset(tmp_path / "data", n_groups=2, per_group=4)
    assert_rejected(data, tmp_path / "run", "2 group(s)", "train, val and test")


@pytest.mark.parametrize(
    "flags, text",
    [
        (("--train-ratio", "1.2"), "train_ratio=1.2"),
        (("--val-ratio", "0"), "val_ratio=0.0"),
        (("--test-ratio", "0.3"), "sum to"),
        (("--threshold", "1.5"), "threshold=1.5"),
    ],
)
def test_parameters_out_of_range(dataset, tmp_path, flags, text):
    assert_rejected(dataset, tmp_path / "run", text, extra=flags)


@pytest.mark.parametrize("size", ["100", "8"])
def test_image_size_the_network_cannot_take(dataset, tmp_path, size):
    assert_rejected(dataset, tmp_path / "run", f"image_size={size}", "multiple of 16", extra=("--image-size", size))


def test_image_size_0_is_the_chips_own_size_as_in_the_pipeline(dataset, tmp_path):
    import json

    proc = run_components("stats", "--data", str(dataset), "--out", str(tmp_path / "run"), "--image-size", "0")
    chips = {Image.open(chip).size for chip in (dataset / "chips").iterdir()}
    assert len(chips) == 1 and json.loads(proc.stdout)["preprocessing"]["image_size"] == chips.pop()[0]


def test_native_size_the_network_cannot_take(tmp_path):
    data = make_dataset(tmp_path / "data", size=40)
    assert_rejected(data, tmp_path / "run", "the chips' size", "multiple of 16")


def test_train_on_a_folder_without_stats(tmp_path):
    proc = run_components("train", "--run", str(tmp_path / "nothing"), check=False)
    assert proc.returncode != 0 and "stats.json" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_option_value_is_refused(tmp_path):
    proc = run_components("all", "--out", str(tmp_path / "r"), "--loss", "hinge", check=False)
    assert proc.returncode != 0 and "hinge" in proc.stderr


def test_invalid_model_name_is_refused_before_any_work(tmp_path):
    proc = run_components("all", "--out", str(tmp_path / "r"), "--model-name", "m1", check=False)
    assert proc.returncode == 2 and "model_name='m1'" in proc.stderr
    assert not (tmp_path / "r" / "stats.json").exists()
