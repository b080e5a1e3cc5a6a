#!/usr/bin/env bash
# The GPU programme (issues 13 and 31): what this project checks on a lent GPU machine, in one call of at most
# 10 minutes (its steps' limits add up to 9), run from the repository root.
#
#   bash benchmarks/gpu_programme.sh             # on the GPU machine: results and logs under $OUT (else /tmp/gpu-out)
#   bash benchmarks/gpu_programme.sh --dry-run   # here, without a GPU: the same steps, short; the GPU rows skip
#
# What that machine has (the device tool's KINDS.md): Python 3.12 with torch (CUDA 13), CuPy (cuda13x), onnx and
# onnxruntime (a CPU build); no diffusers, no onnxruntime-gpu, no TensorRT, no network. So it runs:
#   1. the gpu-marked tests that need no exported fixtures (tests/kernels: the SVD on CuPy against NumPy;
#      tests/runtime/test_device_path.py on the embedded engine: CuPy through the runner, CUDA graphs where
#      onnxruntime-gpu was carried in, the pipeline's latents kept on the GPU against the host path);
#   2. bench_svd: svdedit.kernels on CuPy (cuSOLVER) against cupy.linalg.svd, torch on CUDA and NumPy;
#   3. bench_io_binding on the embedded engine: the runner's IO binding with the latents kept on the GPU (CuPy)
#      against NumPy feeds, and Pipeline.generate with its latents kept on the GPU against on the host; on
#      onnxruntime's CPU build that is the host-copy path, on onnxruntime-gpu (wheels carried in .whl/, installed
#      first) the CUDA provider.
# TensorRT rows cannot run there (no TensorRT libraries can be carried in).
#
# The call that runs it must carry the embedded engine (ignored in git; `make dist` writes it) and any wheels:
#   carry: ["runtime/svdedit/runtime/packaged", ".whl"]
# The tracked tree is about 78 MiB (models/shapes and models/shapes_xl hold 73 MB of weights) and a call takes 64 MiB:
# leave the models out of the working tree first and restore them after:
#   git sparse-checkout set --no-cone '/*' '!/models/shapes/' '!/models/shapes_xl/'    # before
#   git sparse-checkout disable                                                       # after
set -u
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# the source roots of the namespace package svdedit (no install: the machine's Python is 3.12, the project's 3.11)
export PYTHONPATH=$PWD/cli:$PWD/export:$PWD/runtime:$PWD/kernels:$PWD/serve:$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    date -u
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "no nvidia-smi"
    $PY - <<'EOF'
import numpy, onnxruntime
print("numpy", numpy.__version__, "| onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
try:
    import cupy
    print("cupy", cupy.__version__, "| GPU seen by CuPy:", cupy.cuda.is_available())
except Exception as exc:  # noqa: BLE001
    print("cupy: not usable here:", type(exc).__name__, exc)
EOF
} > "$OUT/environment.txt" 2>&1
cat "$OUT/environment.txt"

step() {  # step NAME SECONDS COMMAND...: run it under a time limit, its log in $OUT/NAME.log, one line in summary.txt
    local name=$1 limit=$2
    shift 2
    local start=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name: rc=$rc, $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
    tail -n 15 "$OUT/$name.log"
}

if [ $DRY = 1 ]; then  # a dry run leaves no figures of a short CPU run among the results: they are put back after
    REPEATS=1; STEPS=2
    SNAP=$(mktemp -d) && cp -a benchmarks/results/. "$SNAP"/ || exit 1
else
    REPEATS=5; STEPS=20
fi
step pytest-gpu 120 $PY -m pytest -q -m gpu -p no:cacheprovider tests/kernels tests/runtime/test_device_path.py
step bench-svd 300 $PY -m benchmarks.speed.bench_svd --repeats $((REPEATS < 3 ? REPEATS : 3))  # NumPy's rows take most
step bench-io-binding 120 $PY -m benchmarks.speed.bench_io_binding --steps $STEPS --repeats $REPEATS
cp benchmarks/results/svd_*.json benchmarks/results/io_binding_*.json benchmarks/results/io_binding_*.md "$OUT"/ 2>/dev/null
if [ $DRY = 1 ]; then
    rm -rf benchmarks/results && mv "$SNAP" benchmarks/results && chmod 755 benchmarks/results
fi
echo "results in $OUT"
