#!/usr/bin/env bash
# The GPU check, sized for a short slot on a fresh machine (empty caches): <= 6 minutes in all.
#
#   bench/gpu_suite.sh OUTDIR          on a CUDA machine (torch + triton preinstalled, no network)
#   bench/gpu_suite.sh --cpu OUTDIR    the same steps on the CPU (TRITON_INTERPRET=1, tiny sizes):
#                                      what tests/test_gpu_suite.py runs, so a GPU slot only
#                                      meets GPU problems
#
# Steps, in order, each under its own `timeout` and never longer than the time left, so a slow
# step cannot eat the rest (the suite's clock: QGEN_SUITE_SECONDS, default 330):
#   env, install   versions; `pip install -e . --no-deps` (C++ extension off)
#   tests          a smoke set of GPU tests (own Triton cache, so the next step starts cold)
#   cold-w1/-w4    qgen-reconstruct of 1,000 images, 1 and 4 bits, fp32 (the default), on an
#                  EMPTY Triton cache and no tuned configs of the user's: the first-call time,
#                  compilation included (issue 23's target: <= 60 s)
#   reconstruct    end to end, batch 256, T = 3 and 20, 1 and 4 bits: packed fp32 / fp16 (and
#                  the fused one-kernel step, fp32 / fp16) vs dense torch fp32 / fp16, all
#                  CUDA-graph replayed (bench_reconstruct_gpu.py)
#   dcgan-w1(-implicit)  the DCGAN generator's reconstruction, 1 bit: packed (unfold/col2im
#                  around the GEMM, then the implicit-GEMM convolutions) vs dense fp32
#   kernels        bench/test_bench_gpu.py (kernels vs cuBLAS) in whatever time is left
# Output: OUTDIR/gpu-suite.tar.gz (every log, table and JSON line), OUTDIR/headline.md (also
# printed) and OUTDIR/steps.txt: three files, nothing deeper.
#
# Knobs: QGEN_SUITE_SECONDS (budget), QGEN_SUITE_BITS ("1 4"), QGEN_SUITE_STEPS ("3 20"),
# QGEN_SUITE_IMAGES (1000), QGEN_SUITE_VARIANTS (bench_reconstruct_gpu.py --variants),
# QGEN_SUITE_MODELS (folder of mnist-m25-{bits}bit.qgen), QGEN_SUITE_INSTALL (1),
# QGEN_SUITE_KERNELS (extra bench/test_bench_gpu.py filters), PYTHON.
set -u
CPU=0
if [ "${1:-}" = "--cpu" ]; then CPU=1; shift; fi
OUTDIR=$(mkdir -p "${1:?usage: gpu_suite.sh [--cpu] OUTDIR}" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
START=$(date +%s)
BUDGET=${QGEN_SUITE_SECONDS:-330}
RESERVE=15   # kept for the headline and the archive
WORK="$OUTDIR/gpu-suite"
rm -rf "$WORK" && mkdir -p "$WORK"
: > "$WORK/steps.txt"
BITS=${QGEN_SUITE_BITS:-1 4}
STEPS=${QGEN_SUITE_STEPS:-3 20}
IMAGES=${QGEN_SUITE_IMAGES:-1000}
MODELS=${QGEN_SUITE_MODELS:-$ROOT/models}
BATCH=256
DEVICE=cuda
if [ "$CPU" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
  IMAGES=${QGEN_SUITE_IMAGES:-24}
  BATCH=16
fi
export PYTHONUNBUFFERED=1
export QGEN_TRITON_CONFIGS="$WORK/triton-configs.json"   # no user-tuned configs: the default path
unset QGEN_TRITON_AUTOTUNE

left() { echo $(( BUDGET - RESERVE - ($(date +%s) - START) )); }

step() {  # step NAME LIMIT_S CMD...: run under min(LIMIT_S, time left); log; never abort
  local name=$1 limit=$2; shift 2
  local room; room=$(left)
  [ "$room" -lt "$limit" ] && limit=$room
  if [ "$limit" -lt 5 ]; then
    echo "$name skipped (no time left)" | tee -a "$WORK/steps.txt"
    return 0
  fi
  echo "== $name (limit ${limit}s): $*" >> "$WORK/commands.txt"
  local t0; t0=$(date +%s%N)
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$WORK/$name.log" 2>&1
  local rc=$?
  local ms=$(( ($(date +%s%N) - t0) / 1000000 ))
  printf '%s rc=%d %d.%ds\n' "$name" "$rc" $(( ms / 1000 )) $(( ms % 1000 / 100 )) |
    tee -a "$WORK/steps.txt"
  [ "$rc" -ne 0 ] && tail -n 3 "$WORK/$name.log"
  return 0
}

if [ "$CPU" = 1 ]; then
  step env 20 "$PY" -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cpu (TRITON_INTERPRET=1)')"
else
  step env 20 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; $PY -c 'import torch, triton; print(\"torch\", torch.__version__, \"cuda\", torch.version.cuda, \"triton\", triton.__version__, torch.cuda.get_device_name())'"
fi

if [ "${QGEN_SUITE_INSTALL:-$(( 1 - CPU ))}" = 1 ]; then
  step install 60 env QGEN_NO_EXT=1 "$PY" -m pip install -e . --no-build-isolation --no-deps -q
fi
if ! "$PY" -c "import qgen_infer.kernels.gemm" > /dev/null 2>&1; then
  # a shim tree mapping qgen_infer.kernels to kernels/ (setup.py's package_dir)
  SHIM="$WORK/shim"; mkdir -p "$SHIM/qgen_infer"
  for f in "$ROOT"/qgen_infer/*; do ln -sfn "$f" "$SHIM/qgen_infer/$(basename "$f")"; done
  ln -sfn "$ROOT/kernels" "$SHIM/qgen_infer/kernels"
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  echo "install fallback: PYTHONPATH shim" | tee -a "$WORK/steps.txt"
fi

# Smoke tests: the graphed solver == eager and Triton on the GPU == the CPU reference (MLP,
# 1 and 4 bits), a CUDA-graph capture of the kernels, full-size products at the solver's batch.
G=tests/test_cuda_graph.py
K=tests/test_triton_kernels.py
F=tests/test_fused_step.py
C=tests/test_triton_conv.py
if [ "$CPU" = 1 ]; then
  SMOKE=(tests/test_triton_configs.py::test_shipped_hopper_table_is_valid_and_used
         tests/test_triton_configs.py::test_autotune_is_off_by_default
         tests/test_fused_step.py::test_fused_threshold_keeps_ties_as_the_solver_does)
else
  SMOKE=("$G::test_graph_replay_equals_eager[300-256-1-10-key0-triton]"
         "$G::test_graph_replay_equals_eager[7-3-2-5-key1-triton]"
         "$G::test_triton_on_gpu_equals_reference_on_cpu[key0]"
         "$G::test_triton_on_gpu_equals_reference_on_cpu[key1]"
         "$G::test_half_precision_tracks_fp32[triton]"
         "$K::test_gpu_cuda_graph_capture" "$K::test_gpu_full_size[1-256-f32]"
         "$K::test_gpu_full_size[4-256-f16]" "$K::test_gpu_full_size[1-1-f16]"
         tests/test_triton_configs.py "$F::test_fused_step_fp16_products"
         "$F::test_fused_step_matches_reference[37x13x21x33x20x17x5-19-1]"
         "$F::test_fused_reconstruction_equals_reference[1-True]"
         "$C::test_dcgan_generator_on_implicit_conv[1-tensor]"
         "$C::test_each_direction_is_the_others_input_gradient")
fi
step tests 75 env TRITON_CACHE_DIR="$WORK/cache-tests" "$PY" -m pytest -q -m "" -p no:cacheprovider \
  --junitxml="$WORK/tests-junit.xml" "${SMOKE[@]}"

# First call on an empty Triton cache: what a user with a shipped model waits for.
for b in $BITS; do
  step "data-w$b" 30 "$PY" bench/bench_reconstruct_gpu.py --device "$DEVICE" --models "$MODELS" \
    --bits "$b" --images "$IMAGES" --save-measurements "$WORK/data-w$b"
  step "cold-w$b" 90 env TRITON_CACHE_DIR="$WORK/cache-cold-w$b" "$PY" -m qgen_infer.cli.reconstruct \
    "$MODELS/mnist-m25-${b}bit.qgen" "$WORK/data-w$b/y.npy" --truth "$WORK/data-w$b/x.npy" \
    --backend triton --device "$DEVICE" --batch-size "$BATCH" --out-dir "$WORK/cold-w$b" --quiet
done

# End to end, all variants graph-replayed (eager ones only on the CPU).
VARIANTS=${QGEN_SUITE_VARIANTS:-torch-fp32+graph torch-fp16+graph packed+graph packed-fp16+graph packed-fused+graph packed-fused-fp16+graph packed-fused-r4+graph}
[ "$CPU" = 1 ] && VARIANTS=${QGEN_SUITE_VARIANTS:-torch-fp32 packed packed-fused}
# shellcheck disable=SC2086
step reconstruct 150 "$PY" bench/bench_reconstruct_gpu.py --device "$DEVICE" --models "$MODELS" \
  --bits $BITS --steps $STEPS --images "$IMAGES" --batch-size "$BATCH" --variants $VARIANTS \
  --out "$WORK/reconstruct-gpu.md" --jsonl "$WORK/reconstruct.jsonl"

# The paper's DCGAN generator (1 bit): the packed layers through unfold/col2im around the GEMM,
# then as implicit-GEMM convolutions (QGEN_TRITON_IMPLICIT_CONV=1), each against dense fp32.
if [ "$CPU" = 0 ]; then
  step dcgan-w1 45 "$PY" bench/time_dcgan_reconstruct.py --device cuda --bits 1 \
    --backends fp32 triton --images 256
  step dcgan-w1-implicit 45 env QGEN_TRITON_IMPLICIT_CONV=1 "$PY" bench/time_dcgan_reconstruct.py \
    --device cuda --bits 1 --backends triton --images 256
fi

# Kernels against cuBLAS, cases in priority order until the time is up.
if [ "$CPU" = 0 ]; then
  room=$(left)
  # shellcheck disable=SC2086
  step kernels $(( room )) "$PY" bench/test_bench_gpu.py "$WORK/bench-gpu.jsonl" \
    --deadline $(( room > 20 ? room - 20 : 1 )) ${QGEN_SUITE_KERNELS:-}
fi

cp "$WORK/steps.txt" "$OUTDIR/steps.txt"
"$PY" bench/gpu_headline.py "$WORK" > "$OUTDIR/headline.md" 2> "$WORK/headline.log" ||
  echo "headline failed: $(tail -n 1 "$WORK/headline.log")" >> "$OUTDIR/headline.md"
cp "$OUTDIR/headline.md" "$WORK/headline.md"
"$PY" bench/summarize_gpu.py "$WORK/bench-gpu.jsonl" > "$WORK/kernels.md" 2>/dev/null
rm -rf "$WORK"/cache-* "$WORK/shim" "$WORK"/cold-w*/x_hat.npy "$WORK"/cold-w*/z.npy \
  "$WORK"/data-w*
tar czf "$OUTDIR/gpu-suite.tar.gz" -C "$OUTDIR" gpu-suite && rm -rf "$WORK"
cat "$OUTDIR/headline.md"
echo "total $(( $(date +%s) - START ))s; results in $OUTDIR" | tee -a "$OUTDIR/steps.txt"
