"""Smoke test of benchmarks/recipe_benchmark.py: it trains, exports and evaluates (with and without TTA)
each recipe per seed, summarises over the seeds and reuses finished runs. Not a timed test, and its figures mean nothing."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.datasets import make_dataset
from tests.support.paths import REPO


def _sweep(data, work, out):
    return subprocess.run(
        [sys.executable, "benchmarks/recipe_benchmark.py", "--recipes", "before", "--seeds", "1", "2",
         "--epochs", "1", "--data", str(data), "--work", str(work), "--json", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )


def test_recipe_sweep_reports_mean_and_spread_per_recipe(tmp_path):
    data = make_dataset(tmp_path / "data", n_groups=8, per_group=3, size=32)
    work, out = tmp_path / "work", tmp_path / "out.json"
    proc = _sweep(data, work, out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert {(r["recipe"], r["seed"]) for r in result["runs"]} == {("before", 1), ("before", 2)}
    for key in ("test_iou", "test_iou_tta"):
        test = result["summary"]["before"][key]
        assert len(test["values"]) == 2 and 0.0 <= min(test["values"]) <= max(test["values"]) <= 1.0
        assert abs(test["mean"] - sum(test["values"]) / 2) < 1e-9
    assert "| before |" in proc.stdout
    # A second sweep over the same --work trains nothing again: the figures are the recorded ones.
    stamps = {p.name: p.stat().st_mtime_ns for p in work.glob("*.json")}
    again = _sweep(data, work, tmp_path / "again.json")
    assert again.returncode == 0, again.stderr[-4000:]
    assert {p.name: p.stat().st_mtime_ns for p in work.glob("*.json")} == stamps
    assert json.loads((tmp_path / "again.json").read_text())["summary"] == result["summary"]
