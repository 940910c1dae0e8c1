"""Benchmark of ``predict``: throughput of the sliding windows against a chip-by-chip loop, and peak RSS.

Prints (and writes JSON with ``--json PATH``):

1. Megapixels per second on CPU of the same ONNX model over the same scene: (a) the sliding
   windows alone (windows read from the GeoTIFF, batched ONNX Runtime calls, blending), with
   overlap 0 and the default overlap; (b) the whole ``predict`` (COGs, polygons, STAC item
   included); (c) a plain loop that reads each tile-sized chip of the scene and runs the model on it
   alone (batch 1, no blending, no output written), the way a user without ``predict`` would.
2. Peak RSS of a whole ``predict_scenes`` run at two scene sizes (default 2048² and 8192², 16x the
   pixels), each in a fresh Python process started by a small launcher (its ``RUSAGE_CHILDREN``
   ``ru_maxrss`` is that child's alone), beside a child that only imports the stage.

The model is a run folder's (``--run``); without one, a small model is trained on the sample data
first (``python -m components all --epochs 1``; its accuracy does not matter here, only its
cost, which depends on the architecture: the default U-Net).

Usage: ``python benchmarks/predict_benchmark.py [--run RUN] [--sizes 2048 8192] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

LAUNCHER = """
import resource, subprocess, sys
proc = subprocess.run(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(proc.returncode)
"""

CHILD = """
import sys
from pathlib import Path
from components.stages.predict import predict_scenes
if sys.argv[1] != "imports-only":
    predict_scenes(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), progress=False)
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def make_scene(path: Path, side: int, tile: int) -> Path:
    """A synthetic scene of ``side`` x ``side`` pixels (sample chips of ``tile`` side by side)."""
    from components.data.sample_data import generate_sample_scene

    return generate_sample_scene(path, tiles=max(1, side // tile), tile=tile, seed=3)


def peak_rss_mib(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MiB, seconds) of ``python -c CHILD args`` in a fresh process."""
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", LAUNCHER, sys.executable, "-c", CHILD, *args], env=_env(),
                         capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - start
    return int(out.stdout.strip().splitlines()[-1]) / 1024, seconds


def chip_loop_mpx_per_s(run: Path, scene: Path) -> float:
    """Megapixels/s of a plain loop: read each tile of the scene, run the model on it alone (batch 1)."""
    import numpy as np
    import rasterio
    from rasterio.windows import Window

    from components.contracts.preprocessing import Preprocessing
    from components.ml.inference import onnx_session, predict_probabilities

    prep = Preprocessing.from_stats(json.loads((run / "stats.json").read_text()))
    session = onnx_session(run / "models" / "model.onnx", threads=2)
    t = prep.image_size
    start = time.perf_counter()
    with rasterio.open(scene) as src:
        for row in range(0, src.height - t + 1, t):
            for col in range(0, src.width - t + 1, t):
                chip = src.read(window=Window(col, row, t, t))
                prep.classify(predict_probabilities(session, prep, chip[None].astype(np.uint8)))
        pixels = (src.height // t * t) * (src.width // t * t)
    return pixels / 1e6 / (time.perf_counter() - start)


def sliding_mpx_per_s(run: Path, scene: Path, overlap: int, batch_size: int = 8) -> float:
    """Megapixels/s of the sliding-window inference alone (windows read from the GeoTIFF, batched
    ONNX Runtime calls, blending; nothing written), the part that replaces the chip loop."""
    from components.contracts.preprocessing import Preprocessing
    from components.data.scenes import SceneReader
    from components.ml.inference import onnx_session, run_model
    from components.ml.windows import sliding_probabilities

    prep = Preprocessing.from_stats(json.loads((run / "stats.json").read_text()))
    session = onnx_session(run / "models" / "model.onnx", threads=2)
    start = time.perf_counter()
    with SceneReader(scene, len(prep.bands), prep.dtype) as reader:
        g = reader.grid
        sliding_probabilities(reader.read, lambda *a: None, g.height, g.width, prep.image_size, overlap,
                              lambda x: run_model(session, x), prep.normalize, batch_size)
    return g.width * g.height / 1e6 / (time.perf_counter() - start)


def predict_mpx_per_s(run: Path, scene: Path, out: Path, overlap: int) -> tuple[float, dict]:
    from components.stages.predict import predict_scenes

    start = time.perf_counter()
    doc = predict_scenes(run, scene, out, overlap=overlap, progress=False)
    seconds = time.perf_counter() - start
    entry = doc["scenes"][0]
    return entry["width"] * entry["height"] / 1e6 / seconds, entry["windows"]


def train_small_run(folder: Path) -> Path:
    run = folder / "run"
    subprocess.run([sys.executable, "-m", "components", "all", "--out", str(run), "--epochs", "1"], env=_env(),
                   cwd=REPO, check=True, capture_output=True)
    return run


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=None, help="run folder whose model to use")
    parser.add_argument("--sizes", type=int, nargs=2, default=(2048, 8192), help="two scene sides for peak RSS")
    parser.add_argument("--throughput-side", type=int, default=1024, help="scene side for megapixels/s")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    import onnxruntime

    with tempfile.TemporaryDirectory(prefix="campseg-predict-bench-") as tmp:
        tmp = Path(tmp)
        run = args.run or train_small_run(tmp)
        from components.contracts.preprocessing import Preprocessing

        tile = Preprocessing.from_stats(json.loads((run / "stats.json").read_text())).image_size
        results: dict = {"machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                                     "python": platform.python_version(), "onnxruntime": onnxruntime.__version__,
                                     "load_average_at_start": os.getloadavg()[0]},
                         "tile": tile}
        scene = make_scene(tmp / "throughput" / "scene.tif", args.throughput_side, tile)
        chip_loop_mpx_per_s(run, scene)  # warm-up: file cache, ONNX Runtime's first calls
        loop = chip_loop_mpx_per_s(run, scene)
        windows0 = sliding_mpx_per_s(run, scene, 0)
        windows_overlap = sliding_mpx_per_s(run, scene, tile // 4)
        whole0, counts0 = predict_mpx_per_s(run, scene, tmp / "p0", 0)
        whole, counts = predict_mpx_per_s(run, scene, tmp / "p1", tile // 4)
        results["throughput"] = {
            "scene_side": args.throughput_side, "chip_loop_batch1_mpx_s": round(loop, 3),
            "sliding_windows_overlap0_mpx_s": round(windows0, 3),
            f"sliding_windows_overlap{tile // 4}_mpx_s": round(windows_overlap, 3),
            "predict_whole_overlap0_mpx_s": round(whole0, 3), "windows_overlap0": counts0,
            f"predict_whole_overlap{tile // 4}_mpx_s": round(whole, 3), f"windows_overlap{tile // 4}": counts}
        rss = {"imports_only_mib": round(peak_rss_mib(["imports-only"])[0], 1)}
        for side in args.sizes:
            big = make_scene(tmp / f"rss{side}" / "scene.tif", side, tile)
            mib, seconds = peak_rss_mib([str(run), str(big), str(tmp / f"out{side}")])
            rss[f"{side}"] = {"peak_rss_mib": round(mib, 1), "seconds": round(seconds, 1)}
            for child in (tmp / f"rss{side}").rglob("*"):
                child.unlink() if child.is_file() else None
        small, large = (rss[str(s)]["peak_rss_mib"] for s in args.sizes)
        rss["growth"] = round(large / small - 1, 3)
        results["peak_rss"] = rss
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
