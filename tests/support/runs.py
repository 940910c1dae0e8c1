"""Copies of a trained run folder that tests may change."""

from __future__ import annotations

import json
import shutil
from pathlib import Path


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def copy_with_iou(trained_run: Path, tmp_path: Path, iou: float, name: str) -> Path:
    """A copy of the trained run whose evaluation says ``iou`` (what the promotion reads)."""
    run_dir = tmp_path / name
    shutil.copytree(trained_run, run_dir)
    metrics = read_json(run_dir / "evaluation" / "metrics.json")
    metrics["iou"] = iou
    (run_dir / "evaluation" / "metrics.json").write_text(json.dumps(metrics, indent=2))
    return run_dir
