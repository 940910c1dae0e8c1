"""Splits are deterministic, stable as the dataset grows, and never split shared ground."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from components.data.splits import SplitRatios, assign_splits, group_keys


def xyz_tiles(parents: int, zoom: int = 17, depth: int = 2) -> list[str]:
    """Names of ``parents`` tiles at ``zoom`` plus all their descendants ``depth`` zooms deeper."""
    names = []
    for i in range(parents):
        x, y = 5000 + 7 * i, 9000 + 3 * i
        for d in range(depth + 1):
            k = 2**d
            names += [f"OAM-{x * k + dx}-{y * k + dy}-{zoom + d}" for dx in range(k) for dy in range(k)]
    return names


def split(names, seed=42, bounds=None):
    return assign_splits(group_keys(names, bounds or {}), SplitRatios(), seed)[0]


def test_deterministic_and_seeded():
    names = xyz_tiles(40)
    assert split(names) == split(list(reversed(names)))
    assert split(names, seed=1) != split(names, seed=2)


def test_adding_chips_keeps_old_splits():
    old = xyz_tiles(60)
    new = xyz_tiles(200)  # a superset: the 60 parents and their children, plus 140 new places
    assert set(old) < set(new)
    before, after = split(old), split(new)
    assert {n: after[n] for n in old} == before
    assert set(after.values()) == {"train", "val", "test"}


def test_coarse_tile_stays_with_every_finer_tile_inside_it():
    names = xyz_tiles(30)
    groups = group_keys(names, {})
    by_group = defaultdict(set)
    for name, s in split(names).items():
        by_group[groups[name]].add(s)
    assert len(by_group) == 30 and all(len(s) == 1 for s in by_group.values())
    # a zoom-19 tile and its zoom-17 ancestor share a group
    assert groups["OAM-20000-36000-19"] == groups["OAM-5000-9000-17"]



def test_finer_tiles_group_at_the_coarsest_zoom_present():
    names = [n for n in xyz_tiles(10) if not n.endswith("-17")]  # zooms 18 and 19 only
    groups = group_keys(names, {})
    assert len(set(groups.values())) == 40  # one group per zoom-18 tile
    assert groups["OAM-20000-36000-19"] == groups["OAM-10000-18000-18"]


def test_overlapping_georeferenced_chips_share_a_split():
    rng = random.Random(0)
    bounds, names = {}, []
    for place in range(40):
        x0 = place * 1.0
        for k in range(5):  # five overlapping chips around each place
            name = f"scene_{place}_{k}"
            w = x0 + rng.uniform(0, 0.3)
            bounds[name] = (w, 0.0 + rng.uniform(0, 0.3), w + 0.5, 0.5 + rng.uniform(0, 0.3))
            names.append(name)
    groups = group_keys(names, bounds)
    assert len(set(groups.values())) == 40
    splits = split(names, bounds=bounds)
    for place in range(40):
        assert len({splits[f"scene_{place}_{k}"] for k in range(5)}) == 1


def test_hotosm_names_make_four_groups_and_three_nonempty_splits(hotosm):
    names = [p.stem for p in (hotosm / "chips").iterdir()]
    groups = group_keys(names, {})
    assert len(set(groups.values())) == 4
    splits, repairs = assign_splits(groups, SplitRatios(), 42)
    counts = Counter(splits.values())
    assert set(counts) == {"train", "val", "test"} and counts["train"] >= counts["test"]
    per_group = defaultdict(set)
    for name, s in splits.items():
        per_group[groups[name]].add(s)
    assert all(len(s) == 1 for s in per_group.values())
