#!/usr/bin/env bash
# GPU suite: build, GPU tests, GPU benchmarks, markdown summary -- all results into OUTDIR.
#
#   bench/gpu_suite.sh OUTDIR        (run from anywhere; works on the repo root)
#
# Needs: an NVIDIA GPU, torch (CUDA) + triton preinstalled, pytest (pytest-xdist used when there).
# No network. Each step is logged to OUTDIR/<step>.log with its exit code in OUTDIR/steps.txt; a
# failing step does not stop the others. Budget: about 9 minutes in all (each step has its own
# timeout; the kernel benchmark stops starting cases ~520 s after the suite began).
set -u
OUTDIR=$(mkdir -p "${1:?usage: gpu_suite.sh OUTDIR}" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
START=$(date +%s)
PY=${PYTHON:-$(command -v python3 || command -v python)}
: > "$OUTDIR/steps.txt"
export QGEN_TRITON_CONFIGS="$OUTDIR/triton-configs.json"   # tuned configs land here
export QGEN_BENCH_JSONL="$OUTDIR/bench-gpu.jsonl"
rm -f "$QGEN_BENCH_JSONL"

step() {  # step NAME TIMEOUT_S CMD...: run, log, record rc, never abort the suite
  local name=$1 limit=$2; shift 2
  local t0=$(date +%s)
  echo "== $name: $*" | tee -a "$OUTDIR/commands.txt"
  timeout --signal=INT --kill-after=20 "$limit" "$@" > "$OUTDIR/$name.log" 2>&1
  local rc=$?
  echo "$name rc=$rc $(( $(date +%s) - t0 ))s" | tee -a "$OUTDIR/steps.txt"
  tail -n 5 "$OUTDIR/$name.log"
  return 0
}

step env 60 bash -c "nvidia-smi; $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__); print(torch.cuda.get_device_name())'; $PY -c 'import pytest_benchmark' && echo pytest-benchmark present || echo pytest-benchmark ABSENT"

# Install without building the C++ CPU extension (QGEN_NO_EXT) or touching dependencies.
step install 90 env QGEN_NO_EXT=1 $PY -m pip install -e . --no-build-isolation --no-deps
if ! $PY -c "import qgen_infer.kernels.gemm" > /dev/null 2>&1; then
  # Fallback: a shim tree mapping qgen_infer.kernels to kernels/ (setup.py's package_dir).
  SHIM="$OUTDIR/shim"; mkdir -p "$SHIM/qgen_infer"
  for f in "$ROOT"/qgen_infer/*; do ln -sfn "$f" "$SHIM/qgen_infer/$(basename "$f")"; done
  ln -sfn "$ROOT/kernels" "$SHIM/qgen_infer/kernels"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  echo "install fallback: PYTHONPATH=$PYTHONPATH" | tee -a "$OUTDIR/steps.txt"
fi

# Narrowing knobs (defaults: everything), for a short follow-up call:
#   QGEN_SUITE_BITS="1 4"          bit widths of the reconstruction benchmark
#   QGEN_SUITE_K="graph or full"   a pytest -k expression selecting the GPU tests
#   QGEN_SUITE_KERNELS="--shapes mnist_fc1 --ms 256"   filters for the kernel benchmark
#   QGEN_SUITE_SECONDS=230         when the kernel benchmark stops starting cases (default 520)
#   QGEN_SUITE_PREWARM_S=90        time limit of each pre-compilation process (default 120)
SUITE_BITS=${QGEN_SUITE_BITS:-1 2 3 4}
SUITE_SECONDS=${QGEN_SUITE_SECONDS:-520}
PREWARM_S=${QGEN_SUITE_PREWARM_S:-120}

# GPU tests (in the background, beside the pre-compilation below): the whole kernel test file
# on CUDA (small shapes + the gpu-marked full-size ones), the graphed solver, Triton-on-GPU vs
# the CPU reference. xdist spreads Triton's compiles (one CPU core each) over the cores.
XDIST=""
$PY -c "import xdist" > /dev/null 2>&1 && XDIST="-n 6"
SELECT=()
[ -n "${QGEN_SUITE_K:-}" ] && SELECT=(-k "$QGEN_SUITE_K")
# shellcheck disable=SC2086
step tests 200 $PY -m pytest tests/test_triton_kernels.py tests/test_cuda_graph.py -p no:cacheprovider \
  -ra $XDIST "${SELECT[@]}" --junitxml="$OUTDIR/tests-junit.xml" --durations=15 &
TESTS_PID=$!

# Compile every benchmarked kernel first, many processes side by side (Triton compiles each
# specialization single-threaded and caches the binary on disk), with throwaway tuning caches:
# the timed runs below then re-time every candidate on an idle GPU but compile nothing.
prewarm() {
  local d="$OUTDIR/prewarm" pids=()
  mkdir -p "$d"
  for b in $SUITE_BITS; do
    for n in 232 256; do  # the solver's batch shapes for 1,000 images (3 x 256 + 232)
      QGEN_TRITON_CONFIGS="$d/r$b-$n.json" timeout "$PREWARM_S" $PY bench/bench_reconstruct_gpu.py \
        --bits $b --steps 1 --images $n --out "$d/r$b-$n.md" > "$d/r$b-$n.log" 2>&1 &
      pids+=($!)
    done
  done
  for i in 0 1 2 3 4 5; do
    # shellcheck disable=SC2086
    QGEN_TRITON_CONFIGS="$d/k$i.json" timeout "$PREWARM_S" $PY bench/test_bench_gpu.py --warm $i 6 \
      ${QGEN_SUITE_KERNELS:-} > "$d/k$i.log" 2>&1 &
    pids+=($!)
  done
  local rc=0
  for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
  return $rc
}
t0=$(date +%s); prewarm; echo "prewarm rc=$? $(( $(date +%s) - t0 ))s" | tee -a "$OUTDIR/steps.txt"
wait "$TESTS_PID"

# Reconstruction end to end: packed Triton (fp32 and fp16, eager and CUDA graph) vs dense torch
# fp16, with a per-kernel profile of one eager batch; then the kernels against cuBLAS
# (autotuning on: configs land in $QGEN_TRITON_CONFIGS).
# shellcheck disable=SC2086
step reconstruct 240 $PY bench/bench_reconstruct_gpu.py --bits $SUITE_BITS \
  --out "$OUTDIR/reconstruct-gpu.md" --profile "$OUTDIR/reconstruct-profile.md"
# The paper's DCGAN generator (conv layers: per-pixel products and col2im) against dense torch
# fp32, both graph-replayed; 1 and 4 bits.
for b in 1 4; do
  step "dcgan-w$b" 90 $PY bench/time_dcgan_reconstruct.py --device cuda --bits $b \
    --backends fp32 triton --images 256
done
LEFT=$(( SUITE_SECONDS - ($(date +%s) - START) ))
[ "$LEFT" -lt 30 ] && LEFT=30
# shellcheck disable=SC2086
step bench $(( LEFT + 30 )) $PY bench/test_bench_gpu.py "$QGEN_BENCH_JSONL" --deadline "$LEFT" \
  ${QGEN_SUITE_KERNELS:-}

{
  echo "# GPU kernel suite"
  echo
  echo "- device: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null | head -n1)"
  echo "- date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "- commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null) $(git -C "$ROOT" status --porcelain 2>/dev/null | grep -q . && echo '(dirty)')"
  echo "- software: $($PY -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' 2>&1)"
  echo "- command: bench/gpu_suite.sh OUTDIR; steps (rc, seconds):"
  sed 's/^/    /' "$OUTDIR/steps.txt"
  echo "- tests: $(grep -E '(passed|failed|error)' "$OUTDIR/tests.log" | tail -n1)"
  echo "- timing: kernel µs from CUDA-graph replay (median), activations fp16 for qgen/gemlite"
  echo
} > "$OUTDIR/header.md"
step summary 60 $PY bench/summarize_gpu.py "$QGEN_BENCH_JSONL" "$OUTDIR/header.md"
cp "$OUTDIR/summary.log" "$OUTDIR/summary.md" 2>/dev/null
echo "total $(( $(date +%s) - START ))s; results in $OUTDIR" | tee -a "$OUTDIR/steps.txt"
