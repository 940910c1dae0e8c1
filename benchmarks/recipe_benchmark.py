"""What a training recipe reaches on real chips at an equal epoch budget, over several seeds.

For each recipe and each training seed, in a fresh process: ``train`` -> ``export_models`` ->
``evaluate_run`` on one statistics pass (same chips, same split for every run), recording the
best validation IoU (the figure recipes are tuned on) and the test IoU of the exported ONNX
model (the figure reported), without and with flip test-time augmentation (``evaluate --tta``). Prints, per recipe, the mean and the sample standard deviation
over the seeds, and each seed's figures; ``--json PATH`` writes everything.

Recipes (:data:`RECIPES`) are ``TrainConfig`` overrides:

- ``before``: the default recipe before issue 12's tuning, spelled out so that it stays
  reproducible after the defaults change;
- ``default``: ``TrainConfig()`` as it is now;
- ``seed_baseline``: the seed document's recipe;
- single changes and combinations, the candidates of the tuning.

Usage::

    python benchmarks/recipe_benchmark.py [--recipes before default ...] [--seeds 1 2 3]
        [--epochs 10] [--jobs 2] [--data DIR] [--json PATH]

Runs of 10 epochs on the 84-chip dev set take one to two minutes each on two CPU cores;
``--jobs 2`` runs two at a time with one thread each.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REAL_DATA = REPO.parent / "shared" / "data" / "hotosm-philippines"

#: The recipe defaults before the tuning (what ``TrainConfig()`` gave up to then).
BEFORE = dict(warmup_epochs=0.0, crop_scale=1.0, color_jitter=0.0, dice_weight=1.0, ema_decay=0.0)

SEED_BASELINE = dict(architecture="seed_baseline", loss="bce", optimizer="adam", learning_rate=1e-3,
                     batch_size=32, lr_schedule="none", augment=False, precision="32", **BEFORE)

RECIPES: dict[str, dict] = {
    "before": BEFORE,
    "default": {},
    "seed_baseline": SEED_BASELINE,
    "warmup": {**BEFORE, "warmup_epochs": 1.0},
    "warmup_lr": {**BEFORE, "warmup_epochs": 1.0, "learning_rate": 6e-3},
    "crop": {**BEFORE, "crop_scale": 0.5},
    "color": {**BEFORE, "color_jitter": 0.1},
    "ema": {**BEFORE, "ema_decay": 0.9},
    "dice2": {**BEFORE, "dice_weight": 2.0},
    "wd": {**BEFORE, "weight_decay": 1e-2},
    "aug": {**BEFORE, "crop_scale": 0.5, "color_jitter": 0.1},
    "aug_ema": {**BEFORE, "crop_scale": 0.5, "color_jitter": 0.1, "ema_decay": 0.9},
    "warmup_ema": {**BEFORE, "warmup_epochs": 1.0, "ema_decay": 0.9},
    "all": {**BEFORE, "warmup_epochs": 1.0, "crop_scale": 0.5, "color_jitter": 0.1, "ema_decay": 0.9},
    "warmup_wd": {**BEFORE, "warmup_epochs": 1.0, "weight_decay": 1e-2},
    "warmup_dice2": {**BEFORE, "warmup_epochs": 1.0, "dice_weight": 2.0},
    "warmup_dice3": {**BEFORE, "warmup_epochs": 1.0, "dice_weight": 3.0},
}

_CHILD = r"""
import json, shutil, sys, time
from pathlib import Path
import torch
torch.set_num_threads(int(sys.argv[5]))
from components.contracts.config import TrainConfig
from components.stages.evaluate import evaluate_run
from components.stages.export import export_models
from components.stages.train import train

stats_run, run, data, overrides = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), json.loads(sys.argv[4])
if not run.is_dir():
    run.mkdir(parents=True)
    for name in ("stats.json", "dataset_manifest.json", ".campseg-run.json"):
        shutil.copy(stats_run / name, run / name)
record = run.with_suffix(".json")
if record.is_file():  # trained before this script scored TTA: score the exported model with it
    row = json.loads(record.read_text())["result"]
else:
    config = TrainConfig.from_dict({**TrainConfig().to_dict(), **overrides})
    started = time.perf_counter()
    result = train(run, config, data, progress_bar=False)
    export_models(run, data)
    metrics = evaluate_run(run, data, overlays=False)
    row = {"val_iou": result["best_val_iou"], "test_iou": metrics["iou"], "best_epoch": result["best_epoch"],
           "epochs_run": result["epochs_run"], "seconds": time.perf_counter() - started}
row["test_iou_tta"] = evaluate_run(run, data, overlays=False, tta=True)["iou"]
record.write_text(json.dumps({"settings": overrides, "result": row}))
print(json.dumps(row))
"""


def run_one(stats_run: Path, work: Path, data: Path, recipe: str, overrides: dict, seed: int, epochs: int,
            threads: int) -> dict:
    """Train, export and evaluate one recipe with one seed in a fresh process."""
    settings = {**overrides, "seed": seed, "epochs": epochs}
    run = work / f"{recipe}-{seed}"
    record = run.with_suffix(".json")  # the child's record: a finished run of the same settings is reused
    known = json.loads(record.read_text()) if record.is_file() else None
    if known is not None and known["settings"] == settings and "test_iou_tta" in known["result"]:
        row = known["result"]
    else:
        if known is None or known["settings"] != settings:
            # Only what this script made goes: a run folder carries the project's marker.
            if run.exists() and not (run / ".campseg-run.json").is_file():
                raise SystemExit(f"--work {work}: {run} is not a run folder of this benchmark; choose another --work")
            record.unlink(missing_ok=True)
            shutil.rmtree(run, ignore_errors=True)
        cmd = [sys.executable, "-c", _CHILD, str(stats_run), str(run), str(data), json.dumps(settings), str(threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(threads)})
        if proc.returncode:
            raise RuntimeError(f"{recipe} seed {seed} failed:\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"  {recipe:>14} seed {seed}: val IoU {row['val_iou']:.3f}  test IoU {row['test_iou']:.3f}  "
          f"with TTA {row['test_iou_tta']:.3f}  "
          f"(best epoch {row['best_epoch']}, {row['seconds']:.0f} s)", file=sys.stderr, flush=True)
    return {"recipe": recipe, "seed": seed, **row}


def summarise(rows: list[dict], names: list[str]) -> dict:
    """Per recipe: mean and sample standard deviation of val and test IoU over the seeds."""
    out = {}
    for name in names:
        mine = [r for r in rows if r["recipe"] == name]
        entry = {"seeds": [r["seed"] for r in mine]}
        for key in ("val_iou", "test_iou", "test_iou_tta"):
            values = [r[key] for r in mine]
            entry[key] = {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                          "values": values}
        out[name] = entry
    return out


def table(summary: dict) -> str:
    lines = ["| recipe | val IoU mean ± sd | test IoU mean ± sd | test IoU per seed | test IoU with TTA mean ± sd |",
             "|---|---|---|---|---|"]
    for name, e in summary.items():
        v, t, a = e["val_iou"], e["test_iou"], e["test_iou_tta"]
        lines.append(f"| {name} | {v['mean']:.3f} ± {v['std']:.3f} | {t['mean']:.3f} ± {t['std']:.3f} | "
                     + ", ".join(f"{x:.3f}" for x in t["values"]) + f" | {a['mean']:.3f} ± {a['std']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=["before", "default", "seed_baseline"],
                        help=f"recipes to run, of: {', '.join(RECIPES)}")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="training seeds")
    parser.add_argument("--epochs", type=int, default=10, help="epoch budget of every run")
    parser.add_argument("--split-seed", type=int, default=42, help="seed of the train/val/test split")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (each gets cores / jobs threads)")
    parser.add_argument("--data", type=Path, default=REAL_DATA, help="labelled chips (chips/ and labels/)")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--work", type=Path, help="run folders go here, and finished runs found here with the same "
                        "settings are reused (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    unknown = [r for r in args.recipes if r not in RECIPES]
    if unknown:
        parser.error(f"--recipes: unknown {', '.join(unknown)}; choose from {', '.join(RECIPES)}")
    if not (args.data / "chips").is_dir():
        parser.error(f"--data {args.data}: no chips/ folder")

    from components.stages.stats import compute_statistics

    work = Path(args.work or tempfile.mkdtemp(prefix="campseg-recipes-"))
    stats_run = work / "stats"
    if (stats_run / "stats.json").is_file():  # an earlier sweep's split in --work: its runs stay comparable
        stats = json.loads((stats_run / "stats.json").read_text())
    else:
        stats = compute_statistics(args.data, stats_run, network_depth=4, seed=args.split_seed)
    threads = max(1, (os.cpu_count() or 1) // args.jobs)
    started = time.time()
    jobs = [(name, seed) for seed in args.seeds for name in args.recipes]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda job: run_one(stats_run, work, args.data, job[0], RECIPES[job[0]], job[1],
                                                 args.epochs, threads), jobs))
    summary = summarise(rows, args.recipes)
    result = {"data": str(args.data), "counts": stats["counts"], "epochs": args.epochs, "split_seed": args.split_seed,
              "seeds": args.seeds, "recipes": {n: RECIPES[n] for n in args.recipes}, "runs": rows,
              "summary": summary, "load_average_at_start": os.getloadavg(), "seconds": time.time() - started}
    print(table(summary))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
