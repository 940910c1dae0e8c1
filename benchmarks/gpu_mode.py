"""GPU mode of ``benchmarks/benchmark.py`` (``--gpu``): the bare train step against the real ``train()``.

For each variant (fp32, bf16-mixed, bf16-mixed + ``torch.compile``, and the seed document's recipe)
on the same chips and at the same batch size:

- **bare step**: network + loss + optimizer on device-resident tensors (one batch of the train
  split, normalised once), no Lightning, no loader, no metrics; images/s after warm-up steps;
- **train()**: :func:`components.stages.train.train` as users run it; images/s of each training
  epoch up to its validation (median of the epochs after the first), and ``train()``'s own figure
  (all epochs, validation included);
- their ratio, and the GPU's utilisation sampled every 200 ms during the fit (``pynvml`` when
  importable, else ``nvidia-smi``; "unavailable" when neither works or on the CPU).

Imports: torch, lightning, torchmetrics, numpy, PyYAML (a lightning dependency) and Pillow. The
project reads GeoTIFFs (the dev set's labels) with rasterio; where it is not importable (the GPU
image) they are rewritten as PNG with Pillow first (:func:`needs_png`). Not needed: pystac,
jsonschema, mlflow, kfp, onnx, onnxruntime.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path
from typing import Callable

#: Sampling period of the utilisation, seconds.
PERIOD_S = 0.2


class UtilisationSampler:
    """GPU utilisation (%) and memory used (MiB) of device ``index``, polled in the background."""

    def __init__(self, index: int = 0, enabled: bool = True) -> None:
        self.index, self.enabled = index, enabled
        self.samples: list[tuple[float, float, float]] = []  # (time, utilisation %, memory MiB)
        self.source = "unavailable"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.samples, self._stop = [], threading.Event()
        if not self.enabled:
            return
        try:
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.source = "pynvml"

            def poll() -> None:
                while not self._stop.is_set():
                    rates = pynvml.nvmlDeviceGetUtilizationRates(handle)
                    memory = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                    self.samples.append((time.perf_counter(), float(rates.gpu), memory))
                    self._stop.wait(PERIOD_S)

            self._thread = threading.Thread(target=poll, daemon=True)
            self._thread.start()
            return
        except Exception:  # no pynvml, or no NVML library: try the command line
            pass
        if shutil.which("nvidia-smi") is None:
            return
        try:
            self._proc = subprocess.Popen(
                ["nvidia-smi", "-i", str(self.index), "--query-gpu=utilization.gpu,memory.used",
                 "--format=csv,noheader,nounits", "-lms", str(int(PERIOD_S * 1000))],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        except OSError:
            return
        self.source = "nvidia-smi"

        def read() -> None:
            for line in self._proc.stdout:
                try:
                    util, memory = (float(v) for v in line.split(",")[:2])
                except ValueError:
                    continue
                self.samples.append((time.perf_counter(), util, memory))

        self._thread = threading.Thread(target=read, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._proc is not None:
            self._proc.terminate()
            self._proc.wait(timeout=10)
            self._proc = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def summary(self, since: float | None = None) -> dict:
        """Mean and median utilisation and peak memory of the samples (after ``since``)."""
        chosen = [s for s in self.samples if since is None or s[0] >= since]
        if not chosen:
            return {"source": self.source, "samples": 0, "mean_percent": None, "median_percent": None,
                    "max_memory_mib": None, "note": "unavailable"}
        utils = [s[1] for s in chosen]
        return {"source": self.source, "samples": len(chosen), "mean_percent": statistics.fmean(utils),
                "median_percent": statistics.median(utils), "max_memory_mib": max(s[2] for s in chosen)}


def fit_sampler(sampler: UtilisationSampler):
    """A Lightning callback sampling utilisation from the start of the fit to its end; it notes
    when the second epoch starts (the figures after it exclude warm-up and compilation)."""
    from lightning.pytorch.callbacks import Callback

    class FitSampler(Callback):
        def __init__(self) -> None:
            self.steady_from: float | None = None

        def on_fit_start(self, trainer, pl_module) -> None:
            sampler.start()

        def on_train_epoch_start(self, trainer, pl_module) -> None:
            if trainer.current_epoch == 1:
                self.steady_from = time.perf_counter()

        def on_fit_end(self, trainer, pl_module) -> None:
            sampler.stop()

    return FitSampler()


def needs_png(data: Path) -> bool:
    """Whether ``data`` holds GeoTIFFs and rasterio is not importable (the GPU image has none)."""
    try:
        import rasterio  # noqa: F401

        return False
    except ImportError:
        return any(f.suffix.lower() in (".tif", ".tiff") for sub in ("chips", "labels") for f in (data / sub).iterdir())


def repeated_dataset(data: Path, repeat: int, out: Path, to_png: bool = False) -> Path:
    """``data``'s chips and labels ``repeat`` times (``r<k>-<stem>``, hard links where possible), so an
    epoch is long enough to time; with ``to_png``, GeoTIFFs decoded by Pillow and written as PNG (the
    same pixels; georeferencing is dropped, which XYZ-named tiles do not need). Copies are other
    tiles to the splitter: the split is a different one from ``data``'s own, which a throughput
    figure does not mind."""
    if repeat <= 1 and not to_png:
        return data
    for sub in ("chips", "labels"):
        (out / sub).mkdir(parents=True, exist_ok=True)
        for file in sorted((data / sub).iterdir()):
            if not file.is_file():
                continue
            if to_png and file.suffix.lower() in (".tif", ".tiff"):
                from PIL import Image

                source = out / sub / (file.stem + ".png")
                with Image.open(file) as image:
                    image.save(source)
            else:
                source = file
            for k in range(repeat):
                target = out / sub / (source.name if k == 0 else f"r{k}-{source.name}")
                if target == source:
                    continue
                try:
                    os.link(source, target)
                except OSError:
                    shutil.copyfile(source, target)
    return out


def variants(batch_size: int, epochs: int, device: str) -> dict:
    """The trained configurations: the default recipe in bf16-mixed (deterministic, the default, and
    not: ``_fast``), bf16-mixed compiled and fp32, at ``batch_size``, and the seed document's recipe
    (its own batch of 32)."""
    from benchmark import recipes

    from components.contracts.config import TrainConfig

    accelerator = "gpu" if device == "cuda" else "cpu"
    common = dict(epochs=epochs, patience=epochs + 1, accelerator=accelerator, batch_size=batch_size)
    seed = recipes(epochs)["seed_baseline"]
    # In order of what the acceptance needs first, so a run cut short still has it.
    return {
        "bf16": TrainConfig(precision="bf16-mixed", **common),
        "bf16_fast": TrainConfig(precision="bf16-mixed", deterministic=False, **common),
        "seed_recipe": TrainConfig(**{**seed.to_dict(), "accelerator": accelerator}),
        "bf16_compile_fast": TrainConfig(precision="bf16-mixed", compile=True, deterministic=False, **common),
        "fp32": TrainConfig(precision="32", **common),
    }


def bare_step(config, prep, pairs, device: str, warmup: int, steps: int) -> dict:
    """Images/s of network + loss + optimizer on one device-resident batch of ``pairs``' chips."""
    import torch

    from components.ml.augmentation import BatchTransform
    from components.ml.task import ChipDataset, SegmentationTask

    batch = config.batch_size
    chosen = (list(pairs) * (batch // max(1, len(pairs)) + 1))[:batch]
    data = ChipDataset(chosen, prep)
    chips, masks = torch.from_numpy(data.chips).to(device), torch.from_numpy(data.masks).to(device)
    x, y = BatchTransform(prep, config.seed)(chips, masks, augment=False)
    # The task builds the network, loss and optimizer exactly as train() does.
    task = SegmentationTask(config.to_dict(), in_channels=len(prep.bands), threshold=prep.threshold).to(device)
    network, criterion = task.network, task.criterion
    optimizer = task.build_optimizer()  # the schedule needs a Trainer; a bare step keeps the initial rate
    if config.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    torch_flags(config.deterministic)  # as train()'s Trainer sets them: the same kernels on both sides
    model = torch.compile(network) if config.compile else network
    autocast = config.precision in ("bf16-mixed", "16-mixed")
    dtype = torch.bfloat16 if config.precision == "bf16-mixed" else torch.float16
    network.train()

    def step() -> None:
        with torch.autocast(device_type=device, dtype=dtype, enabled=autocast):
            loss = criterion(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device == "cuda":
            torch.cuda.synchronize()

    started = time.perf_counter()
    for _ in range(warmup):
        step()
    sync()
    warm = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = time.perf_counter() - started
    return {"batch_size": batch, "warmup_steps": warmup, "steps": steps, "warmup_seconds": warm,
            "images_per_second": batch * steps / seconds}


def torch_flags(deterministic: bool) -> None:
    """The process-wide flags Lightning's ``Trainer(deterministic="warn" | False, benchmark=...)`` sets,
    as ``components.stages.train`` chooses them."""
    import torch

    torch.use_deterministic_algorithms(deterministic, warn_only=deterministic)
    torch.backends.cudnn.benchmark = not deterministic
    if deterministic:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = ":4096:8"


def real_train(config, stats_run: Path, data: Path, run: Path, sampler: UtilisationSampler,
               count_syncs: bool = False) -> dict:
    """Images/s of :func:`train` with ``config`` on the statistics of ``stats_run``, and the
    utilisation during its fit; with ``count_syncs``, also the training process's waits for the GPU
    (``torch.cuda.set_sync_debug_mode``), grouped by the line of code that waited."""
    from benchmark import epoch_timer

    from components.stages.train import train

    run.mkdir(parents=True)
    for file in ("stats.json", "dataset_manifest.json", ".campseg-run.json"):  # the marker: a run folder
        shutil.copy(stats_run / file, run / file)
    timer, watch = epoch_timer(), fit_sampler(sampler)
    started = time.perf_counter()
    with sync_counter(count_syncs) as syncs:
        result = train(run, config, data, callbacks=[timer, watch], progress_bar=False)
    measured = timer.epochs[1:] or timer.epochs  # epoch 0 is warm-up (and compilation)
    return {
        "batch_size": result.get("batch_size", config.batch_size),
        "precision": result["precision"],
        "epochs_run": result["epochs_run"],
        "epoch_images_per_second": [e["images_per_second"] for e in timer.epochs],
        "images_per_second": statistics.median(e["images_per_second"] for e in measured),
        "train_images_per_second_incl_val_and_warmup": result["train_images_per_second"],
        "wall_seconds": time.perf_counter() - started,
        "best_val_iou": result["best_val_iou"],
        "utilisation_fit": sampler.summary(),
        "utilisation_after_epoch_0": sampler.summary(since=watch.steady_from),
        **({"syncs": syncs} if count_syncs else {}),
    }


@contextlib.contextmanager
def sync_counter(enabled: bool):
    """Counts of CUDA synchronisations by the code line that caused them (``enabled`` only)."""
    counts: dict[str, int] = {}
    if not enabled:
        yield counts
        return
    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
    for w in caught:
        if "synchroniz" in str(w.message):  # the innermost Python line that called the waiting operation
            key = f"{w.filename}:{w.lineno}"
            counts[key] = counts.get(key, 0) + 1


def bench_gpu(data: Path, image_size: int | None, work: Path, device: str, epochs: int, repeat: int,
              batch_size: int | None, warmup: int, steps: int, skip: tuple[str, ...] = (),
              on_variant: Callable[[dict], None] | None = None, only: list[str] | None = None,
              count_syncs: bool = False) -> dict:
    """Every variant's bare step and real ``train()`` on the same chips; see the module's docstring.
    A variant that raises is recorded with its error and the next one runs; ``on_variant`` gets the
    results so far after each variant (the command line writes them, so a run cut short keeps them)."""
    import torch

    from components.contracts.preprocessing import Preprocessing
    from components.contracts.run_layout import RunLayout, read_json
    from components.data.manifest import read_manifest
    from components.ml.batch_size import default_batch_size, device_memory
    from components.stages.stats import compute_statistics

    to_png = needs_png(data)
    chips = repeated_dataset(data, repeat, work / "repeated", to_png)
    stats_run = work / "stats"
    stats = compute_statistics(chips, stats_run, image_size=image_size, network_depth=4)
    prep = Preprocessing.from_stats(read_json(stats_run / "stats.json"))
    train_pairs = [p for p in read_manifest(RunLayout(stats_run)) if p.split == "train"]
    memory = device_memory() if device == "cuda" else None
    auto = default_batch_size(device == "cuda", prep.image_size, len(prep.bands), len(train_pairs), 1, memory)
    batch = batch_size or auto
    out: dict = {
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu (dry run: tiny sizes)",
        "device_memory_bytes": memory, "data": str(data), "repeat": repeat, "image_size": prep.image_size,
        "counts": stats["counts"], "epochs": epochs, "batch_size": batch, "auto_batch_size": auto,
        "torch": torch.__version__, "variants": {},
        "tiff_as_png": "GeoTIFFs read by Pillow and written as PNG (rasterio is not importable)" if to_png else None,
    }
    sampler = UtilisationSampler(enabled=device == "cuda")
    chosen = variants(batch, epochs, device)
    unknown = sorted(set(only or ()) - set(chosen))
    if unknown:
        raise SystemExit(f"error: --variants {' '.join(unknown)}: no such variant (choose from {', '.join(chosen)})")
    for name, config in chosen.items():
        if only and name not in only:
            continue
        if name in skip:
            out["variants"][name] = {"skipped": skip_reason(name, device)}
            print(f"  {name}: skipped ({skip_reason(name, device)})", file=sys.stderr, flush=True)
            continue
        try:
            bare = bare_step(config, prep, train_pairs, device, warmup * (5 if config.compile else 1), steps)
            if device == "cuda":
                torch.cuda.empty_cache()
            real = real_train(config, stats_run, chips, work / name, sampler, count_syncs)
        except Exception as exc:  # noqa: BLE001 - one variant's failure is a result; the others still run
            sampler.stop()
            out["variants"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            print(f"  {name}: failed: {out['variants'][name]['error']}", file=sys.stderr, flush=True)
            if on_variant is not None:
                on_variant(out)
            continue
        finally:
            if device == "cuda":
                torch.cuda.empty_cache()
        out["variants"][name] = {
            "config": {k: v for k, v in config.to_dict().items()
                       if k in ("architecture", "loss", "optimizer", "batch_size", "precision", "compile",
                                "augment", "channels_last", "deterministic")},
            "bare_step": bare, "train": real,
            "train_over_bare": real["images_per_second"] / bare["images_per_second"],
        }
        print(f"  {name}: bare {bare['images_per_second']:.1f} img/s, train() {real['images_per_second']:.1f} "
              f"img/s, utilisation {_percent(real['utilisation_fit'])}", file=sys.stderr, flush=True)
        if on_variant is not None:
            on_variant(out)
    return out


def skip_reason(name: str, device: str) -> str:
    return "torch.compile is not run in the CPU dry run (minutes of C++ compilation)" if device == "cpu" else "asked"


def _percent(summary: dict) -> str:
    if not summary["samples"]:
        return "unavailable"
    return f"mean {summary['mean_percent']:.0f}%, median {summary['median_percent']:.0f}% ({summary['samples']} samples)"


def gpu_figures(results: dict) -> dict:
    """The headline figures, flat: numbers, or None where not measured."""
    out: dict = {"batch_size": results["batch_size"]}
    for name, v in results["variants"].items():
        if "skipped" in v or "error" in v:
            continue
        out[f"{name}_bare_images_per_second"] = v["bare_step"]["images_per_second"]
        out[f"{name}_train_images_per_second"] = v["train"]["images_per_second"]
        out[f"{name}_train_over_bare"] = v["train_over_bare"]
        out[f"{name}_utilisation_mean_percent"] = v["train"]["utilisation_fit"]["mean_percent"]
    return out


def gpu_table(results: dict) -> str:
    head = (f"{results['device']}, torch {results['torch']}, {results['image_size']}px chips, "
            f"split {results['counts']} (data x{results['repeat']}), batch {results['batch_size']} "
            f"(auto: {results['auto_batch_size']}), {results['epochs']} epochs")
    rows = [("variant", "batch", "bare img/s", "train() img/s", "ratio", "incl. val", "GPU util (fit)",
             "after epoch 0")]
    for name, v in results["variants"].items():
        if "skipped" in v:
            rows.append((name, "-", "-", "-", "-", "-", "skipped: " + v["skipped"], ""))
            continue
        if "error" in v:
            rows.append((name, "-", "-", "-", "-", "-", "failed: " + v["error"].splitlines()[0][:120], ""))
            continue
        b, t = v["bare_step"], v["train"]
        rows.append((name, str(b["batch_size"]), f"{b['images_per_second']:.1f}", f"{t['images_per_second']:.1f}",
                     f"{v['train_over_bare']:.2f}", f"{t['train_images_per_second_incl_val_and_warmup']:.1f}",
                     _percent(t["utilisation_fit"]), _percent(t["utilisation_after_epoch_0"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join([head, *lines])
