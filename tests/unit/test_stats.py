"""The statistics stage computes what a direct computation gives, and records the footprint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from components.contracts.run_layout import RunLayout
from components.data.manifest import read_manifest
from components.stages.stats import compute_statistics


def direct_statistics(run_dir):
    pairs = read_manifest(RunLayout(run_dir))
    train = [np.asarray(Image.open(p.chip), dtype=np.float64) / 255 for p in pairs if p.split == "train"]
    pixels = np.concatenate([c.reshape(-1, 3) for c in train])
    positives = {}
    for split in ("train", "val", "test"):
        masks = [np.asarray(Image.open(p.mask)) > 0 for p in pairs if p.split == split]
        positives[split] = float(np.mean(np.concatenate([m.ravel() for m in masks])))
    return pixels.mean(axis=0), pixels.std(axis=0), positives


def test_statistics_match_a_direct_computation(sample_data, tmp_path):
    stats = compute_statistics(sample_data, tmp_path)
    mean, std, positives = direct_statistics(tmp_path)
    prep = stats["preprocessing"]
    np.testing.assert_allclose(prep["mean"], mean, rtol=1e-9)
    np.testing.assert_allclose(prep["std"], std, rtol=1e-6)
    for split, value in positives.items():
        assert abs(stats["positive_fraction"][split] - value) < 1e-12
    assert sum(stats["counts"].values()) == stats["num_chips"] == 64
    assert prep["image_size"] == 128 and prep["bands"] == ["red", "green", "blue"] and prep["max_value"] == 255
    assert stats["footprint"] is None and "georeferenced" in stats["footprint_reason"]
    assert json.loads((tmp_path / "stats.json").read_text()) == stats


def test_footprint_of_georeferenced_masks(hotosm, tmp_path):
    stats = compute_statistics(hotosm, tmp_path)
    west, south, east, north = stats["footprint"]["bbox"]
    # Catanduanes, Philippines (about 124.26 E, 13.97 N), a few hundred metres across
    assert 124.2 < west < east < 124.3 and 13.9 < south < north < 14.0
    assert stats["footprint"]["geometry"]["type"] == "Polygon"
    assert stats["footprint_reason"] is None
    assert stats["groups"] == {"train": 2, "val": 1, "test": 1}


def test_ground_sampling_distance_of_georeferenced_chips(hotosm, tmp_path):
    import math

    stats = compute_statistics(hotosm, tmp_path / "native")
    gsd = stats["ground_sampling_distance_m"]
    # XYZ tiles of 256 px at zooms 21 (finest) to 19 at 13.97 N: 156543.03 m / 2**z * cos(latitude)
    at_zoom = {z: 156543.03 / 2**z * math.cos(math.radians(13.97)) for z in (19, 21)}
    assert gsd["min"] == pytest.approx(at_zoom[21], rel=0.01)
    assert gsd["max"] == pytest.approx(at_zoom[19], rel=0.01)
    assert gsd["chips"] == 84
    halved = compute_statistics(hotosm, tmp_path / "halved", image_size=128)["ground_sampling_distance_m"]
    assert halved["min"] == pytest.approx(2 * gsd["min"], rel=1e-3)  # the model sees chips at half the size


def test_chips_are_resized_to_the_requested_size(sample_data, tmp_path):
    stats = compute_statistics(sample_data, tmp_path, image_size=64)
    assert stats["preprocessing"]["image_size"] == 64 and stats["source_sizes"] == [[128, 128]]
