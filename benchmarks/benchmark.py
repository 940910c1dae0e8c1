"""Benchmark of the pipeline's stages, as users run them, in one run.

Prints a table (and writes JSON with ``--json PATH``) of:

1. Training images/s of the default model (``TrainConfig()`` defaults) and of the seed document's
   recipe (``architecture="seed_baseline"``, BCE, Adam 1e-3, batch 32, fp32, no augmentation, no
   schedule) on the same chips for the same number of epochs, their ratio, and each one's test IoU
   after those epochs. Both go through the real stages: ``compute_statistics`` -> ``train`` ->
   ``export_models`` -> ``evaluate_run`` (ONNX Runtime on the test split).
   Throughput is timed by a callback handed to ``train(callbacks=...)``: from the start of each
   training epoch to the start of its validation (data loading, augmentation, forward, backward
   and optimizer steps; validation excluded). Epoch 0 is warm-up (decoding chips into the
   in-memory cache, allocator growth) and is excluded; the figure is the median over the later
   epochs. ``train()``'s own ``train_images_per_second`` (all epochs, validation included) is
   reported beside it.
2. CPU inference ms per chip (batch 1) of the exported default model: PyTorch eager
   (``models/model.pth`` loaded into ``InferenceModel``) and ONNX Runtime (``models/model.onnx``),
   with the same number of intra-op threads; warm-up runs, then the median of N.
3. The statistics stage's seconds and peak RSS at 500 and at 5,000 synthetic 128x128 chips, each in
   a fresh subprocess (peak RSS from ``RUSAGE_CHILDREN`` of a small launcher, so of that child alone), beside a child
   that only imports the stage, so the stage's own share is visible.

4. With ``--compare-train SRC`` (instead of 1-3): the default recipe's training images/s of two
   source trees side by side, ``SRC`` (e.g. an older commit, ``git archive COMMIT | tar -x -C SRC``)
   and this one, on the same chips, split and epochs, each run in a fresh process, alternated
   A B A B so that shared-machine load hits both alike; the figure of each is the better of its
   two runs, and their ratio.

5. With ``--gpu`` (instead of 1-3): on a CUDA GPU, the bare train step (network + loss + AdamW on
   device-resident tensors) against the real ``train()`` on the same chips and batch size, their
   ratio and the GPU utilisation during the fit, for fp32, bf16-mixed, bf16-mixed +
   ``torch.compile`` and the seed recipe (``benchmarks/gpu_mode.py``). Without CUDA it exits 2;
   ``--gpu --device cpu`` runs the same code on the CPU with tiny sizes (a smoke test; no
   ``torch.compile``, utilisation "unavailable"). ``benchmarks/gpu_check.sh`` runs it in one go.

Usage: ``python benchmarks/benchmark.py [--quick] [--json PATH]`` or
``python benchmarks/benchmark.py --gpu [--device cpu] [--repeat N] [--epochs E] [--json PATH]`` or
``python benchmarks/benchmark.py --compare-train SRC [--data D] [--epochs E] [--json PATH]``. ``--quick`` shrinks everything
(tiny synthetic chips, two epochs, few repetitions) for a smoke run of well under a minute.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

REAL_DATA = REPO.parent / "shared" / "data" / "hotosm-philippines"

FULL = dict(train_chips=96, train_size=256, epochs=3, infer_warmup=5, infer_runs=30,
            stats_sizes=(500, 5000), stats_chip_size=128)
QUICK = dict(train_chips=24, train_size=64, epochs=2, infer_warmup=2, infer_runs=5,
             stats_sizes=(20, 200), stats_chip_size=64)


# --------------------------------------------------------------------------------------------
# machine


def machine_info() -> dict:
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    try:
        import onnxruntime

        ort_version = onnxruntime.__version__
    except ImportError:  # pragma: no cover
        ort_version = None
    return {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": model,
        "torch_threads": torch.get_num_threads(),
        "load_average_at_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "onnxruntime": ort_version,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "gpu": "cuda" if torch.cuda.is_available() else None,
    }


# --------------------------------------------------------------------------------------------
# 1. training


def epoch_timer():
    """A Lightning callback timing each training epoch up to the start of its validation."""
    from lightning.pytorch.callbacks import Callback

    class EpochTimer(Callback):
        def __init__(self) -> None:
            self.epochs: list[dict] = []
            self._start = None
            self._images = 0

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            self._start, self._images = time.perf_counter(), 0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self._images += int(batch[0].shape[0])

        def _close(self) -> None:
            if self._start is not None:
                seconds = time.perf_counter() - self._start
                self.epochs.append({"seconds": seconds, "images": self._images,
                                    "images_per_second": self._images / seconds})
                self._start = None

        def on_validation_start(self, trainer, pl_module) -> None:
            if not trainer.sanity_checking:
                self._close()

        def on_train_epoch_end(self, trainer, pl_module) -> None:
            self._close()  # only when no validation ran in this epoch

    return EpochTimer()


def recipes(epochs: int) -> dict:
    from components.contracts.config import TrainConfig

    return {
        "default": TrainConfig(epochs=epochs, patience=epochs + 1),
        "seed_baseline": TrainConfig(
            architecture="seed_baseline", loss="bce", optimizer="adam", learning_rate=1e-3,
            batch_size=32, lr_schedule="none", augment=False, precision="32",
            epochs=epochs, patience=epochs + 1,
        ),
    }


def bench_training(data: Path, image_size: int, epochs: int, work: Path) -> dict:
    from components.stages.evaluate import evaluate_run
    from components.stages.export import export_models
    from components.stages.stats import compute_statistics
    from components.stages.train import train

    # One statistics pass; both recipes get a copy of the same stats and manifest (same chips,
    # same splits). Depth 4 is the deeper of the two networks' requirements.
    stats_run = work / "stats"
    stats = compute_statistics(data, stats_run, image_size=image_size, network_depth=4)
    out = {"data": str(data), "image_size": image_size, "epochs": epochs, "counts": stats["counts"]}
    for name, config in recipes(epochs).items():
        run = work / name
        run.mkdir(parents=True)
        for file in ("stats.json", "dataset_manifest.json", ".campseg-run.json"):  # the marker: a run folder
            shutil.copy(stats_run / file, run / file)
        timer = epoch_timer()
        result = train(run, config, data, callbacks=[timer], progress_bar=False)
        measured = timer.epochs[1:] or timer.epochs  # epoch 0 is warm-up
        export_models(run, data)
        metrics = evaluate_run(run, data)
        out[name] = {
            "config": {k: v for k, v in config.to_dict().items()
                       if k in ("architecture", "base_channels", "depth", "loss", "optimizer",
                                "learning_rate", "batch_size", "lr_schedule", "augment")},
            "epoch_seconds": [e["seconds"] for e in timer.epochs],
            "images_per_second": statistics.median(e["images_per_second"] for e in measured),
            "median_epoch_seconds": statistics.median(e["seconds"] for e in measured),
            "train_images_per_second_incl_val_and_warmup": result["train_images_per_second"],
            "test_iou": metrics["iou"],
            "test_all_foreground_iou": metrics["baselines"]["all_foreground_iou"],
            "run_dir": str(run),
        }
        print(f"  trained {name}: {out[name]['images_per_second']:.2f} img/s, test IoU {metrics['iou']:.3f}",
              file=sys.stderr, flush=True)
    out["speed_ratio"] = out["default"]["images_per_second"] / out["seed_baseline"]["images_per_second"]
    return out


# --------------------------------------------------------------------------------------------
# 2. inference


def bench_inference(run: Path, warmup: int, runs: int) -> dict:
    import numpy as np
    import torch

    from components.contracts.config import TrainConfig
    from components.contracts.preprocessing import Preprocessing
    from components.contracts.run_layout import RunLayout, read_json
    from components.data.manifest import read_manifest
    from components.data.pairs import load_examples
    from components.ml.inference import onnx_session
    from components.ml.networks import InferenceModel, build_network

    layout = RunLayout(run)
    prep = Preprocessing.from_stats(read_json(layout.stats))
    config = TrainConfig.from_dict(read_json(layout.config))
    model = InferenceModel(build_network(config, len(prep.bands)))
    model.load_state_dict(torch.load(layout.state_dict, map_location="cpu"))
    model.eval()
    pair = [p for p in read_manifest(layout) if p.split == "test"][:1]
    raw, _ = load_examples(pair, prep.image_size)
    x = np.ascontiguousarray(prep.normalize(raw), dtype=np.float32)
    threads = torch.get_num_threads()
    session = onnx_session(layout.onnx, threads=threads)
    name = session.get_inputs()[0].name

    def timed(fn) -> float:
        for _ in range(warmup):
            fn()
        samples = []
        for _ in range(runs):
            t = time.perf_counter()
            fn()
            samples.append((time.perf_counter() - t) * 1000)
        return statistics.median(samples)

    tx = torch.from_numpy(x)

    def eager():
        with torch.inference_mode():
            model(tx)

    # Interleave the two measurements twice (A B A B) so shared-machine load hits both alike.
    eager_ms, onnx_ms = [], []
    for _ in range(2):
        eager_ms.append(timed(eager))
        onnx_ms.append(timed(lambda: session.run(None, {name: x})))
    e, o = min(eager_ms), min(onnx_ms)
    return {"image_size": prep.image_size, "batch": 1, "threads": threads, "warmup": warmup, "runs": runs,
            "pytorch_eager_ms": e, "onnxruntime_ms": o, "eager_over_onnx": e / o}


# --------------------------------------------------------------------------------------------
# 3. statistics stage

_STATS_CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from components.stages.stats import compute_statistics
mode, data, run = sys.argv[2:5]
t = time.perf_counter()
n = None
if mode == "run":
    n = compute_statistics(data, run, network_depth=4)["num_chips"]
print(json.dumps({"seconds": time.perf_counter() - t, "num_chips": n}))
"""


_LAUNCHER = r"""
import json, os, subprocess, sys
proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
out, err = proc.communicate()
print(json.dumps({"returncode": proc.returncode, "stdout": out, "stderr": err[-3000:],
                  "maxrss_kib": __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN).ru_maxrss}))
"""


def _child(mode: str, data: Path, run: Path) -> dict:
    """Run the stage in a fresh process and return its seconds and peak RSS.

    Linux carries a process's peak RSS across fork and exec, so a child forked straight from this
    process (which holds torch, hundreds of MiB) would report at least this process's size. A
    small launcher process starts the stage's process instead and reads RUSAGE_CHILDREN, which
    then covers the stage's process alone.
    """
    cmd = [sys.executable, "-c", _LAUNCHER, sys.executable, "-c", _STATS_CHILD, str(REPO), mode, str(data), str(run)]
    launcher = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(launcher.stdout)
    if report["returncode"]:
        raise RuntimeError(f"statistics child ({mode}, {data}) failed:\n{report['stderr']}")
    result = json.loads(report["stdout"].strip().splitlines()[-1])
    result["peak_rss_mib"] = report["maxrss_kib"] / 1024  # kilobytes on Linux
    return result


def sample_datasets(sizes: tuple[int, ...], chip_size: int, cache: Path) -> dict[int, Path]:
    """Synthetic datasets of each size. Chip i depends only on (seed, i), so the smaller sets are
    the first chips of the largest: it is generated once (and kept in ``cache``), the others are
    hard links to its first files, byte-identical to what ``generate_sample_dataset`` writes."""
    from components.data.sample_data import generate_sample_dataset

    largest = max(sizes)
    base = cache / f"sample-{largest}-{chip_size}"
    done = base / ".complete"
    if not done.exists():
        shutil.rmtree(base, ignore_errors=True)
        t = time.perf_counter()
        print(f"  generating {largest} synthetic {chip_size}px chips into {base} (cached for reruns)...",
              file=sys.stderr, flush=True)
        generate_sample_dataset(base, largest, size=chip_size, seed=0)
        done.write_text(f"{time.perf_counter() - t:.1f} s\n")
    out = {largest: base}
    for n in sizes:
        if n == largest:
            continue
        subset = cache / f"sample-{largest}-{chip_size}-first-{n}"
        if not (subset / ".complete").exists():
            shutil.rmtree(subset, ignore_errors=True)
            for sub in ("chips", "labels"):
                (subset / sub).mkdir(parents=True)
                for i in range(n):
                    name = f"sample-{i:04d}.png"
                    os.link(base / sub / name, subset / sub / name)
            (subset / ".complete").write_text("")
        out[n] = subset
    return out


def bench_statistics(sizes: tuple[int, ...], chip_size: int, cache: Path, work: Path) -> dict:
    datasets = sample_datasets(sizes, chip_size, cache)
    baseline = _child("import", datasets[min(sizes)], work / "import-only")
    out = {"chip_size": chip_size, "import_only_peak_rss_mib": baseline["peak_rss_mib"]}
    for n in sizes:
        result = _child("run", datasets[n], work / f"stats-{n}")
        assert result["num_chips"] == n, result
        out[str(n)] = {"seconds": result["seconds"], "peak_rss_mib": result["peak_rss_mib"],
                       "peak_rss_above_import_mib": result["peak_rss_mib"] - baseline["peak_rss_mib"]}
    return out


# --------------------------------------------------------------------------------------------
# 4. training throughput of two source trees

_TRAIN_CHILD = r"""
import json, shutil, statistics, sys, time, warnings, logging
src, run, stats_run, data, epochs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
sys.path.insert(0, src)
warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
from pathlib import Path
from lightning.pytorch.callbacks import Callback
from components.contracts.config import TrainConfig
from components.stages.train import train

class Timer(Callback):  # as epoch_timer(): each training epoch up to its validation
    def __init__(self):
        self.rates, self.start, self.images = [], None, 0
    def on_train_epoch_start(self, trainer, pl_module):
        self.start, self.images = time.perf_counter(), 0
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.images += int(batch[0].shape[0])
    def on_validation_start(self, trainer, pl_module):
        if self.start is not None and not trainer.sanity_checking:
            self.rates.append(self.images / (time.perf_counter() - self.start))
            self.start = None

run = Path(run)
run.mkdir(parents=True)
for name in ("stats.json", "dataset_manifest.json", ".campseg-run.json"):
    shutil.copy(Path(stats_run) / name, run / name)
timer = Timer()
t = time.perf_counter()
result = train(run, TrainConfig(epochs=epochs, patience=epochs + 1), Path(data), callbacks=[timer], progress_bar=False)
print(json.dumps({"images_per_second": statistics.median(timer.rates[1:] or timer.rates), "epoch_rates": timer.rates,
                  "train_seconds": time.perf_counter() - t, "best_val_iou": result["best_val_iou"]}))
"""


def bench_compare_train(before: Path, data: Path, image_size: int, epochs: int, work: Path) -> dict:
    """The default recipe's training images/s of source tree ``before`` and of this one."""
    from components.stages.stats import compute_statistics

    stats_run = work / "stats"
    stats = compute_statistics(data, stats_run, image_size=image_size, network_depth=4)
    trees = {"before": Path(before).resolve(), "after": REPO}
    runs: dict[str, list[dict]] = {name: [] for name in trees}
    for round_ in range(2):
        for name, src in trees.items():
            cmd = [sys.executable, "-c", _TRAIN_CHILD, str(src), str(work / f"{name}-{round_}"), str(stats_run),
                   str(data), str(epochs)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(src)})
            if proc.returncode:
                raise RuntimeError(f"training child ({name}, {src}) failed:\n{proc.stderr[-3000:]}")
            runs[name].append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(f"  {name} round {round_ + 1}: {runs[name][-1]['images_per_second']:.2f} img/s",
                  file=sys.stderr, flush=True)
    best = {name: max(r["images_per_second"] for r in rs) for name, rs in runs.items()}
    return {"data": str(data), "image_size": image_size, "epochs": epochs, "counts": stats["counts"],
            "sources": {k: str(v) for k, v in trees.items()}, "runs": runs,
            "before_images_per_second": best["before"], "after_images_per_second": best["after"],
            "after_over_before": best["after"] / best["before"]}


# --------------------------------------------------------------------------------------------


def figures(results: dict) -> dict:
    """The headline figures, flat: every one is a number."""
    t, i, s = results["training"], results["inference"], results["statistics"]
    small, large = sorted(int(k) for k in s if k.isdigit())
    return {
        "train_default_images_per_second": t["default"]["images_per_second"],
        "train_seed_baseline_images_per_second": t["seed_baseline"]["images_per_second"],
        "train_speed_ratio_default_over_baseline": t["speed_ratio"],
        "test_iou_default": t["default"]["test_iou"],
        "test_iou_seed_baseline": t["seed_baseline"]["test_iou"],
        "inference_pytorch_eager_ms_per_chip": i["pytorch_eager_ms"],
        "inference_onnxruntime_ms_per_chip": i["onnxruntime_ms"],
        "inference_eager_over_onnx_ratio": i["eager_over_onnx"],
        f"stats_{small}_chips_seconds": s[str(small)]["seconds"],
        f"stats_{small}_chips_peak_rss_mib": s[str(small)]["peak_rss_mib"],
        f"stats_{large}_chips_seconds": s[str(large)]["seconds"],
        f"stats_{large}_chips_peak_rss_mib": s[str(large)]["peak_rss_mib"],
        "stats_import_only_peak_rss_mib": s["import_only_peak_rss_mib"],
    }


def table(results: dict) -> str:
    t, i, s, m = results["training"], results["inference"], results["statistics"], results["machine"]
    e = t["epochs"]
    rows = [
        ("machine", f"{m['cpu_model']}, nproc {m['nproc']}, torch threads {m['torch_threads']}, "
                    f"load avg at start {m['load_average_at_start'][0]:.2f}, {m['date']}"),
        ("training data", f"{t['data']} at {t['image_size']}px, split {t['counts']}, {e} epochs each"),
    ]
    for name in ("default", "seed_baseline"):
        r = t[name]
        rows.append((f"train {name} images/s", f"{r['images_per_second']:.2f} (median of epochs 2..{e}; "
                     f"incl. val+warm-up {r['train_images_per_second_incl_val_and_warmup']:.2f})"))
    rows.append(("train speed ratio default/baseline", f"{t['speed_ratio']:.2f}x (target >= 2x)"))
    for name in ("default", "seed_baseline"):
        rows.append((f"test IoU {name}", f"{t[name]['test_iou']:.3f} "
                     f"(all-foreground {t[name]['test_all_foreground_iou']:.3f})"))
    rows += [
        (f"inference PyTorch eager ms/chip ({i['image_size']}px)", f"{i['pytorch_eager_ms']:.1f}"),
        (f"inference ONNX Runtime ms/chip ({i['image_size']}px)", f"{i['onnxruntime_ms']:.1f}"),
        ("inference eager/ONNX ratio", f"{i['eager_over_onnx']:.2f}x ({i['threads']} threads, median of {i['runs']})"),
        ("stats import-only peak RSS MiB", f"{s['import_only_peak_rss_mib']:.0f}"),
    ]
    for key in sorted((k for k in s if k.isdigit()), key=int):
        rows.append((f"stats {key} chips ({s['chip_size']}px)",
                     f"{s[key]['seconds']:.1f} s, peak RSS {s[key]['peak_rss_mib']:.0f} MiB "
                     f"(+{s[key]['peak_rss_above_import_mib']:.0f} above import)"))
    rows.append(("GPU fp32 / bf16 training", "not measured (no GPU)" if not m["gpu"] else "not measured here: see --gpu"))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, for a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--data", type=Path, help="training chips (default: hotosm-philippines if present, "
                        "else synthetic)")
    parser.add_argument("--epochs", type=int, help="training epochs of each recipe (>= 2: epoch 1 is warm-up)")
    parser.add_argument("--compare-train", type=Path, metavar="SRC",
                        help="only compare the default recipe's training images/s of source tree SRC and this one")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "campseg-benchmark-cache",
                        help="where generated synthetic datasets are kept between runs")
    parser.add_argument("--gpu", action="store_true",
                        help="only the GPU mode: bare train step vs train(), utilisation, fp32/bf16/compile/seed recipe")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda",
                        help="--gpu's device; cpu: the same code with tiny sizes, a dry run (default: cuda)")
    parser.add_argument("--repeat", type=int, default=None,
                        help="--gpu: each chip this many times, for epochs long enough to time (default: 24 on "
                             "cuda, 1 on cpu)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="--gpu: batch of the fp32/bf16/compile variants (default: the auto batch size)")
    parser.add_argument("--bare-steps", type=int, default=None,
                        help="--gpu: timed steps of the bare train step (default: 50 on cuda, 2 on cpu)")
    parser.add_argument("--variants", nargs="+", default=None, metavar="NAME",
                        help="--gpu: only these variants (bf16, bf16_fast, seed_recipe, bf16_compile_fast, fp32)")
    parser.add_argument("--count-syncs", action="store_true",
                        help="--gpu: also count the waits for the GPU during each fit (torch.cuda sync debug "
                             "mode; slows the fit, so its images/s are not comparable)")
    args = parser.parse_args(argv)
    if args.gpu:
        return gpu_main(args, parser)
    sizes = dict(QUICK if args.quick else FULL)
    if args.epochs:
        sizes["epochs"] = args.epochs

    import logging
    import warnings

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)

    started = time.perf_counter()
    results: dict = {"quick": args.quick, "machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="campseg-bench-") as tmp:
        work = Path(tmp)
        if args.data:
            data, image_size = args.data, sizes["train_size"]
            if args.data.resolve() == REAL_DATA.resolve():
                image_size = 256
        elif REAL_DATA.is_dir() and not args.quick:
            data, image_size = REAL_DATA, 256
        else:
            from components.data.sample_data import generate_sample_dataset

            data = generate_sample_dataset(work / "train-data", sizes["train_chips"], size=sizes["train_size"], seed=1)
            image_size = sizes["train_size"]
        if args.compare_train:
            if not (args.compare_train / "components").is_dir():
                parser.error(f"--compare-train {args.compare_train}: not a source tree (no components/ in it)")
            compared = bench_compare_train(args.compare_train, data, image_size, sizes["epochs"], work / "compare")
            print(json.dumps({k: v for k, v in compared.items() if k != "runs"}, indent=2))
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps({"machine": results["machine"], "compare_train": compared},
                                                indent=2, default=str) + "\n")
            return 0
        print("1/3 training ...", file=sys.stderr, flush=True)
        results["training"] = bench_training(data, image_size, sizes["epochs"], work / "train")
        print("2/3 inference ...", file=sys.stderr, flush=True)
        results["inference"] = bench_inference(work / "train" / "default", sizes["infer_warmup"], sizes["infer_runs"])
        print("3/3 statistics ...", file=sys.stderr, flush=True)
        cache = args.cache / "quick" if args.quick else args.cache
        results["statistics"] = bench_statistics(tuple(sizes["stats_sizes"]), sizes["stats_chip_size"], cache,
                                                 work / "stats")
    results["figures"] = figures(results)
    results["gpu"] = {"fp32_images_per_second": None, "bf16_images_per_second": None,
                      "note": "not measured in this mode: benchmarks/benchmark.py --gpu"}
    results["wall_seconds"] = time.perf_counter() - started
    print(table(results))
    print(json.dumps(results["figures"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return 0


def gpu_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """``--gpu``: see ``benchmarks/gpu_mode.py``."""
    import logging
    import warnings

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --gpu needs a CUDA GPU and torch.cuda.is_available() is False on this machine "
              f"(torch {torch.__version__}); --gpu --device cpu runs the same code on the CPU with tiny sizes",
              file=sys.stderr)
        return 2
    for name in ("repeat", "epochs", "batch_size", "bare_steps"):
        value = getattr(args, name)
        if value is not None and value < (2 if name == "epochs" else 1):
            parser.error(f"--{name.replace('_', '-')} {value}: too small")
    from gpu_mode import bench_gpu, gpu_figures, gpu_table

    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    logging.getLogger("lightning.fabric").setLevel(logging.ERROR)
    on_cuda = args.device == "cuda"
    started = time.perf_counter()
    results: dict = {"machine": machine_info()}
    with tempfile.TemporaryDirectory(prefix="campseg-bench-gpu-") as tmp:
        work = Path(tmp)
        if args.data:
            data = args.data
            image_size = 256 if args.data.resolve() == REAL_DATA.resolve() else None  # None: the chips' own
        elif on_cuda and REAL_DATA.is_dir():
            data, image_size = REAL_DATA, 256
        else:
            from components.data.sample_data import generate_sample_dataset

            size = 256 if on_cuda else 32
            data = generate_sample_dataset(work / "train-data", 96 if on_cuda else 20, size=size, seed=1)
            image_size = size
        repeat = args.repeat or (24 if on_cuda else 1)

        def write_partial(gpu: dict) -> None:
            if args.json:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                partial = {**results, "gpu": gpu, "partial": True, "wall_seconds": time.perf_counter() - started}
                args.json.write_text(json.dumps(partial, indent=2, default=str) + "\n")

        results["gpu"] = bench_gpu(
            data, image_size, work / "gpu", args.device, epochs=args.epochs or (4 if on_cuda else 2), repeat=repeat,
            batch_size=args.batch_size, warmup=10 if on_cuda else 1, steps=args.bare_steps or (50 if on_cuda else 2),
            skip=() if on_cuda else ("bf16_compile_fast",), on_variant=write_partial, only=args.variants,
            count_syncs=args.count_syncs and on_cuda)
    results["figures"] = gpu_figures(results["gpu"])
    results["wall_seconds"] = time.perf_counter() - started
    print(gpu_table(results["gpu"]))
    print(json.dumps(results["figures"], indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    failed = [name for name, v in results["gpu"]["variants"].items() if "error" in v]
    if failed:
        print(f"error: variants failed: {', '.join(failed)} (their errors are in the table above)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
