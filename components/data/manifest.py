"""The split manifest (``dataset_manifest.json``): validated pairs with their ground group and split."""

from __future__ import annotations

import os
from pathlib import Path

from components.contracts.run_layout import RunLayout, read_json, write_json
from components.data.pairs import Pair


def write_manifest(layout: RunLayout, data_dir: Path, pairs: list[Pair]) -> None:
    """Write the pairs with paths relative to the dataset root, so any copy of it can be used."""
    rows = []
    for p in pairs:
        row = p.to_dict()
        row["chip"] = os.path.relpath(p.chip, data_dir)
        row["mask"] = os.path.relpath(p.mask, data_dir)
        rows.append(row)
    write_json(layout.splits, {"dataset_root": str(Path(data_dir).resolve()), "pairs": rows})


def read_manifest(layout: RunLayout, data_dir: Path | None = None) -> list[Pair]:
    """Pairs of the manifest with paths resolved against ``data_dir`` (default: where stats ran)."""
    layout.require(layout.splits, stage="training")
    manifest = read_json(layout.splits)
    root = Path(data_dir) if data_dir is not None else Path(manifest["dataset_root"])
    return [
        Pair(r["stem"], str(root / r["chip"]), str(root / r["mask"]), r["group"], r["split"])
        for r in manifest["pairs"]
    ]
