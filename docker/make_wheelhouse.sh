#!/usr/bin/env bash
# Fill ./wheelhouse with wheels of every runtime dependency of the project (and the build
# backend), so the images can be built with `--network none` / without a package index:
#   docker build --build-arg WHEELHOUSE=1 ...   (the Dockerfiles then use --no-index)
#
# Usage: docker/make_wheelhouse.sh [OUT_DIR]     (default: <repo>/wheelhouse)
# Env:
#   TORCH_SPEC        torch requirement to pin (default torch==2.13.0+cpu: the CPU build, so the
#                     wheelhouse does not pull the multi-GB CUDA wheels)
#   TORCH_FIND_LINKS  folder holding that torch wheel (default /opt/wheels when it exists)
#   TORCH_INDEX_URL   extra index for torch when no such folder (default
#                     https://download.pytorch.org/whl/cpu)
#   KFP_VERSION       kfp version to pin (default: the kfp installed next to this python, so the
#                     image's kfp equals the host's, as kfp.local's DockerRunner expects)
#   PYTHON            python used to run pip (default python3). Its version must match the
#                     image's Python (3.11) because wheels are per interpreter.
# Uses `pip wheel` (not `pip download`, which leaves sdists that would need a compiler later).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(mkdir -p "${1:-$ROOT/wheelhouse}" && cd "${1:-$ROOT/wheelhouse}" && pwd)"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
if [[ -z "${TORCH_FIND_LINKS:-}" && -d /opt/wheels ]]; then TORCH_FIND_LINKS=/opt/wheels; fi
KFP_VERSION="${KFP_VERSION:-$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("kfp"))' 2>/dev/null || true)}"

extra=()
if [[ -n "${TORCH_FIND_LINKS:-}" ]]; then
    extra+=(--find-links "$TORCH_FIND_LINKS")
else
    extra+=(--extra-index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}")
fi
pins=("$TORCH_SPEC")
if [[ -n "$KFP_VERSION" ]]; then pins+=("kfp==$KFP_VERSION"); fi

# Build from a copy so pip leaves no build/ or *.egg-info in the shared working tree.
src="$(mktemp -d /tmp/campseg-src.XXXXXX)"
trap 'rm -rf "$src"' EXIT
cp -r "$ROOT/pyproject.toml" "$ROOT/components" "$src/"
[[ -f "$ROOT/README.md" ]] && cp "$ROOT/README.md" "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +

start=$(date +%s)
echo "make_wheelhouse: pip wheel -> $OUT (pins: ${pins[*]})"
nice -n 10 "$PYTHON" -m pip wheel --wheel-dir "$OUT" "${extra[@]}" \
    "$src" "${pins[@]}" setuptools wheel pip
# The project itself is installed from the build context by the Dockerfiles, never from here.
rm -f "$OUT"/campseg-*.whl
echo "make_wheelhouse: $(ls "$OUT" | wc -l) wheels, $(du -sh "$OUT" | cut -f1) in $(( $(date +%s) - start )) s"
