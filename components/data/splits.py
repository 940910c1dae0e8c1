"""Deterministic, growth-stable train/val/test splits over groups of chips that share ground.

A chip's split depends only on its group's identity and the seed: a hash of both picks a point in
[0, 1) that falls into the train, val or test interval of the ratios. Adding chips never moves an
old chip, with two documented exceptions inherent to grouping by ground: a new coarser XYZ tile or
a new chip that overlaps two groups merges them. Groups:

- XYZ-named tiles (``<prefix>-<x>-<y>-<z>``, e.g. ``OAM-1772464-966380-21``) group by their
  ancestor at the coarsest zoom present (or ``group_zoom``), so a coarse tile stays with every
  finer tile inside it;
- other georeferenced chips group by overlapping bounds (EPSG:4326);
- anything else is its own group.

With few groups a split can come out empty by chance; then the group whose hash lies nearest to
that split's interval is moved there from the split that has most groups (a "repair" that only
small datasets need; it is reported in the statistics).
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Mapping, Sequence

from components.contracts.errors import DatasetError, ParameterError

XYZ_NAME = re.compile(r"^(?P<prefix>.*?)-?(?P<x>\d+)-(?P<y>\d+)-(?P<z>\d+)$")
Bounds = tuple[float, float, float, float]


@dataclass(frozen=True)
class SplitRatios:
    """Fractions of groups for train, val and test; each in (0, 1), summing to 1."""

    train: float = 0.7
    val: float = 0.15
    test: float = 0.15

    def __post_init__(self) -> None:
        for name in ("train", "val", "test"):
            value = getattr(self, name)
            if not 0 < value < 1:
                raise ParameterError(f"{name}_ratio={value!r}: must lie strictly between 0 and 1")
        total = self.train + self.val + self.test
        if abs(total - 1) > 1e-6:
            raise ParameterError(
                f"split ratios train={self.train}, val={self.val}, test={self.test} sum to {total:g}; they must sum to 1"
            )

    def as_dict(self) -> dict[str, float]:
        return {"train": self.train, "val": self.val, "test": self.test}


def group_keys(stems: Sequence[str], bounds: Mapping[str, Bounds | None], group_zoom: int | None = None) -> dict[str, str]:
    """Map each stem to the key of the group of chips that cover the same ground."""
    keys: dict[str, str] = {}
    xyz = {s: m for s in stems if (m := XYZ_NAME.match(s))}
    if xyz:
        zoom = group_zoom if group_zoom is not None else min(int(m["z"]) for m in xyz.values())
        for stem, m in xyz.items():
            z = int(m["z"])
            shift = max(z - zoom, 0)
            keys[stem] = f"xyz:{m['prefix']}-{int(m['x']) >> shift}-{int(m['y']) >> shift}-{min(z, zoom)}"
    georeferenced = [s for s in stems if s not in keys and bounds.get(s) is not None]
    keys.update(_overlap_groups(georeferenced, bounds))
    for stem in stems:
        keys.setdefault(stem, f"chip:{stem}")
    return keys


def _overlap_groups(stems: Sequence[str], bounds: Mapping[str, Bounds | None]) -> dict[str, str]:
    """Union-find over chips whose bounds overlap (sweep over west edges)."""
    parent = {s: s for s in stems}

    def find(s: str) -> str:
        while parent[s] != s:
            parent[s] = parent[parent[s]]
            s = parent[s]
        return s

    ordered = sorted(stems, key=lambda s: bounds[s][0])
    active: list[str] = []
    for stem in ordered:
        w, s, e, n = bounds[stem]
        active = [a for a in active if bounds[a][2] > w]
        for other in active:
            _, s2, _, n2 = bounds[other]
            if s < n2 and s2 < n:
                ra, rb = find(stem), find(other)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
        active.append(stem)
    return {s: f"bounds:{find(s)}" for s in stems}


def _hash_point(group: str, seed: int) -> float:
    digest = hashlib.sha256(f"{seed}:{group}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_splits(group_of: Mapping[str, str], ratios: SplitRatios, seed: int) -> tuple[dict[str, str], list[str]]:
    """Split by group; return ``{stem: split}`` and the list of repairs made (empty normally)."""
    groups = sorted(set(group_of.values()))
    if len(groups) < 3:
        raise DatasetError(
            f"the dataset has {len(groups)} group(s) of chips that cover separate ground, but train, val "
            "and test each need at least one so that no ground is shared between them; add chips from "
            "other places"
        )
    cut_val = ratios.train
    cut_test = ratios.train + ratios.val
    point = {g: _hash_point(g, seed) for g in groups}
    split_of_group = {g: "train" if p < cut_val else "val" if p < cut_test else "test" for g, p in point.items()}
    intervals = {"train": (0.0, cut_val), "val": (cut_val, cut_test), "test": (cut_test, 1.0)}
    repairs = []
    for split in ("val", "test", "train"):
        members = defaultdict(list)
        for g, s in split_of_group.items():
            members[s].append(g)
        if members[split]:
            continue
        donor = max(("train", "val", "test"), key=lambda s: len(members[s]))
        lo, hi = intervals[split]
        moved = min(members[donor], key=lambda g: min(abs(point[g] - lo), abs(point[g] - hi)))
        split_of_group[moved] = split
        repairs.append(f"group {moved} moved from {donor} to {split} (no group hashed into {split})")
    return {stem: split_of_group[g] for stem, g in group_of.items()}, repairs
