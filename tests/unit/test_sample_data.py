"""Tests of the synthetic sample dataset: layout, determinism, class mix, colour is not enough."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from components.data.sample_data import (
    SHELTER_COLOURS,
    camps_for_index,
    compose_scene,
    generate_sample_dataset,
    render_scene,
)

N_CHIPS, SIZE = 64, 128


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The default dataset (64 chips of 128 px, seed 0) and the CPU seconds it took."""
    out = tmp_path_factory.mktemp("sample")
    start = time.process_time()
    returned = generate_sample_dataset(out, n_chips=N_CHIPS, size=SIZE, seed=0)
    elapsed = time.process_time() - start
    assert returned == out
    return out, elapsed


@pytest.fixture(scope="module")
def arrays(dataset: tuple[Path, float]) -> tuple[np.ndarray, np.ndarray]:
    """All chips ``(N, H, W, 3)`` and masks ``(N, H, W)`` bool of the default dataset."""
    out, _ = dataset
    names = [f"sample-{i:04d}.png" for i in range(N_CHIPS)]
    chips = np.stack([np.asarray(Image.open(out / "chips" / n)) for n in names])
    masks = np.stack([np.asarray(Image.open(out / "labels" / n)) for n in names]) > 0
    return chips, masks


def _file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.png"))}


def _iou(pred: np.ndarray, truth: np.ndarray) -> float:
    union = np.count_nonzero(pred | truth)
    return np.count_nonzero(pred & truth) / union if union else 0.0


def test_layout_modes_and_shapes(dataset: tuple[Path, float]) -> None:
    out, _ = dataset
    expected = [f"sample-{i:04d}.png" for i in range(N_CHIPS)]
    assert sorted(p.name for p in (out / "chips").iterdir()) == expected
    assert sorted(p.name for p in (out / "labels").iterdir()) == expected
    for name in expected[:8]:
        chip, label = Image.open(out / "chips" / name), Image.open(out / "labels" / name)
        assert (chip.mode, chip.size) == ("RGB", (SIZE, SIZE))
        assert (label.mode, label.size) == ("L", (SIZE, SIZE))
        assert np.asarray(chip).dtype == np.uint8 and np.asarray(chip).shape == (SIZE, SIZE, 3)


def test_masks_hold_only_0_and_255(dataset: tuple[Path, float]) -> None:
    out, _ = dataset
    values = set()
    for path in (out / "labels").iterdir():
        values |= set(np.unique(np.asarray(Image.open(path))).tolist())
    assert values == {0, 255}


def test_same_seed_writes_identical_bytes(tmp_path: Path) -> None:
    a = generate_sample_dataset(tmp_path / "a", n_chips=6, size=64, seed=7)
    b = generate_sample_dataset(tmp_path / "b", n_chips=6, size=64, seed=7)
    files_a, files_b = _file_bytes(a), _file_bytes(b)
    assert len(files_a) == 12
    assert files_a == files_b


def test_different_seed_writes_different_chips(tmp_path: Path) -> None:
    a = _file_bytes(generate_sample_dataset(tmp_path / "a", n_chips=4, size=64, seed=1))
    b = _file_bytes(generate_sample_dataset(tmp_path / "b", n_chips=4, size=64, seed=2))
    assert all(a[name] != b[name] for name in a if name.startswith("chips"))


def test_chip_depends_only_on_seed_and_index(
    tmp_path: Path, dataset: tuple[Path, float]
) -> None:
    small = generate_sample_dataset(tmp_path / "small", n_chips=3, size=SIZE, seed=0)
    out, _ = dataset
    for name in ("chips/sample-0002.png", "labels/sample-0002.png"):
        assert (small / name).read_bytes() == (out / name).read_bytes()


def test_chips_of_different_index_differ(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    chips, _ = arrays
    flat = chips.reshape(len(chips), -1)
    assert len({row.tobytes() for row in flat}) == len(chips)
    # Not just noise apart: neighbouring chips differ in layout, not by a few grey levels.
    assert np.abs(flat[1:].astype(int) - flat[:-1]).mean() > 15


def test_camp_mix_and_positive_fraction(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    _, masks = arrays
    per_chip = masks.reshape(len(masks), -1).mean(1)
    planned = np.array([camps_for_index(i) for i in range(N_CHIPS)])
    assert np.all(per_chip[planned == 0] == 0)  # about a quarter hold distractors only
    assert (per_chip > 0).sum() >= 0.6 * N_CHIPS
    assert per_chip[planned == 2].mean() > per_chip[planned == 1].mean()
    assert 0.05 <= masks.mean() <= 0.20
    assert per_chip.max() < 0.6  # no chip is nearly all camp


@pytest.mark.parametrize("feature", ["red", "green", "blue", "brightness"])
def test_single_channel_threshold_cannot_find_camps(
    arrays: tuple[np.ndarray, np.ndarray], feature: str
) -> None:
    chips, masks = arrays
    if feature == "brightness":
        values = chips.mean(-1)
    else:
        values = chips[..., ["red", "green", "blue"].index(feature)]
    values = np.rint(values).astype(np.int64).ravel()
    truth = masks.ravel()
    # For every threshold t: pixels with value >= t, and pixels with value <= t, as the prediction.
    total = np.bincount(values, minlength=256)
    positive = np.bincount(values[truth], minlength=256)
    n_truth = truth.sum()
    ge_tp, ge_pred = np.cumsum(positive[::-1])[::-1], np.cumsum(total[::-1])[::-1]
    le_tp, le_pred = np.cumsum(positive), np.cumsum(total)
    best = max(
        np.max(ge_tp / (ge_pred + n_truth - ge_tp)), np.max(le_tp / (le_pred + n_truth - le_tp))
    )
    assert best < 0.35, f"{feature} threshold reaches IoU {best:.2f}"


def test_colour_lookup_classifier_cannot_find_camps(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    chips, masks = arrays
    quantised = chips.reshape(-1, 3).astype(np.int64) // 32
    bins = quantised[:, 0] * 64 + quantised[:, 1] * 8 + quantised[:, 2]
    truth = masks.ravel()
    camp_share = np.bincount(bins[truth], minlength=512) / np.maximum(
        np.bincount(bins, minlength=512), 1
    )
    # Fitted on the very pixels it is scored on: an optimistic bound for any colour-only rule.
    best = max(_iou(camp_share[bins] >= t, truth) for t in np.linspace(0.05, 0.95, 19))
    assert best < 0.5, f"a colour lookup table reaches IoU {best:.2f}"


def test_distractors_share_shelter_colours() -> None:
    shelter_bins, building_bins, camp_free_hits = [], [], 0
    for index in range(16):
        scene = compose_scene(np.random.default_rng([3, index]), SIZE, n_camps=index % 3)
        bins = (scene.chip.astype(np.int64) // 32) @ np.array([64, 8, 1])
        shelter_bins.append(bins[scene.shelters])
        building_bins.append(bins[scene.buildings])
        assert not (scene.buildings & (scene.mask > 0)).any()  # distractors are background
        if index % 3 == 0:
            assert not scene.mask.any()
            palette_distance = np.abs(
                scene.chip[scene.buildings][:, None, :].astype(np.float32) - SHELTER_COLOURS
            ).max(-1).min(-1)
            camp_free_hits += int((palette_distance < 25).sum())
    shelter_colours = np.unique(np.concatenate(shelter_bins))
    buildings = np.concatenate(building_bins)
    assert buildings.size > 1000
    share = np.isin(buildings, shelter_colours).mean()
    assert share > 0.4, f"only {share:.0%} of distractor roof pixels have a shelter colour"
    assert camp_free_hits > 50  # camp-free scenes show shelter-coloured roofs too


def test_render_scene_returns_chip_and_binary_mask() -> None:
    chip, mask = render_scene(np.random.default_rng(5), 96, n_camps=1)
    assert chip.shape == (96, 96, 3) and chip.dtype == np.uint8
    assert mask.shape == (96, 96) and mask.dtype == np.uint8
    assert set(np.unique(mask).tolist()) == {0, 1}
    again, _ = render_scene(np.random.default_rng(5), 96, n_camps=1)
    assert np.array_equal(chip, again)
    scene = compose_scene(np.random.default_rng(5), 96, n_camps=1)
    assert np.array_equal(scene.mask, mask)
    assert scene.shelters.any() and np.all(mask[scene.shelters] == 1)  # footprint covers shelters
    assert scene.mask.sum() > scene.shelters.sum()  # dilated by a pixel


def test_generation_is_fast(dataset: tuple[Path, float]) -> None:
    _, cpu_seconds = dataset
    # About 1 s of CPU on a slow shared core; a per-pixel Python loop would take minutes.
    assert cpu_seconds < 4.0


@pytest.mark.parametrize(
    "kwargs", [{"n_chips": 0}, {"size": 16}], ids=["no-chips", "too-small"]
)
def test_invalid_arguments_are_refused(tmp_path: Path, kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        generate_sample_dataset(tmp_path, **kwargs)
