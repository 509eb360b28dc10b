#!/usr/bin/env bash
# The GPU check (docs/gpu.md) on a machine that has PyTorch and timm but not the harness's other
# dependencies, and no network: installs the wheels `make gpu-wheels` put in .cache/gpu-wheels/
# (carried along) into a folder of its own, puts this checkout on PYTHONPATH (nothing is built or
# installed from it), and runs `python -m competition.bench.gpu_check` with this script's arguments
# (--tiny, --seeds N, --epochs N, --models a,b). Figures go to $GPU_CHECK_OUT, else $OUT (the
# device tool's folder that comes back), else runs/gpu-check/: gpu_check.json and gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
WHEELS=${GPU_WHEELS:-.cache/gpu-wheels}
SITE=${GPU_SITE:-/tmp/gpu-check-site}
export GPU_CHECK_OUT=${GPU_CHECK_OUT:-${OUT:-runs/gpu-check}}
mkdir -p "$GPU_CHECK_OUT"
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "note: no wheels in $WHEELS (make gpu-wheels); using the packages installed here" >&2
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" COMPETITION_OFFLINE=1 PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-160}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PY" -m competition.bench.gpu_check "$@" 2>&1 | tee "$GPU_CHECK_OUT/gpu_check.log"
