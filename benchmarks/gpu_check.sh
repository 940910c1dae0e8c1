#!/usr/bin/env bash
# The GPU check of issue 12 in one go: `benchmarks/benchmark.py --gpu` on the real chips, repeated
# so that an epoch is long enough to time (bare train step vs train(), their ratio, GPU utilisation
# during fit; bf16-mixed, bf16-mixed non-deterministic, the seed recipe, bf16 + torch.compile, fp32).
#
# Usage (from anywhere): bash benchmarks/gpu_check.sh
#   $OUT        folder for the results (default /tmp/campseg-gpu-check): gpu_benchmark.json,
#               gpu_benchmark.log, nvidia-smi.txt, imports.txt
#   $REPEAT     copies of each chip (default 24: 84 chips -> 2,016), $EPOCHS (default 4: epoch 0 is
#               warm-up), $TIMEOUT_S (default 540: under a 10-minute command limit)
#   $DATA       the chips (default ../shared/data/hotosm-philippines or shared/data/..., else synthetic)
#
# Imports needed: torch (CUDA), lightning, torchmetrics, numpy, PyYAML (a lightning dependency) and
# Pillow. Not needed: rasterio (the dev set's labels are GeoTIFFs, which the project reads with
# rasterio; without it the benchmark rewrites them as PNG with Pillow first, same pixels), pystac,
# jsonschema, mlflow, kfp, onnx, onnxruntime. pynvml is optional (else nvidia-smi is polled).
# Wall time on one H100 (2026-11-28, REPEAT=48 EPOCHS=5): 3-4 minutes, torch.compile's first steps included.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/campseg-gpu-check}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

python - <<'PY' 2>&1 | tee "$OUT_DIR/imports.txt"
import importlib
for name in ("torch", "lightning", "torchmetrics", "numpy", "yaml", "PIL", "pynvml", "rasterio"):
    try:
        module = importlib.import_module(name)
        print(f"{name}: {getattr(module, '__version__', 'ok')}")
    except Exception as exc:  # report, do not stop: only the first six are needed
        print(f"{name}: missing ({type(exc).__name__}: {exc})")
import torch
print("cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi: unavailable" > "$OUT_DIR/nvidia-smi.txt"

data="${DATA:-}"
if [ -z "$data" ]; then
  for candidate in ../shared/data/hotosm-philippines shared/data/hotosm-philippines; do
    if [ -d "$candidate/chips" ]; then data="$candidate"; break; fi
  done
fi
args=(--gpu --json "$OUT_DIR/gpu_benchmark.json" --repeat "${REPEAT:-24}" --epochs "${EPOCHS:-4}")
if [ -n "$data" ]; then args+=(--data "$data"); else echo "no real chips found: synthetic 256px chips" >&2; fi

timeout "${TIMEOUT_S:-540}" python benchmarks/benchmark.py "${args[@]}" 2>&1 | tee "$OUT_DIR/gpu_benchmark.log"
status=${PIPESTATUS[0]}
echo "benchmark exit status: $status" | tee -a "$OUT_DIR/gpu_benchmark.log"
exit "$status"
