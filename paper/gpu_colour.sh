#!/usr/bin/env bash
# The colour Table 1 (DCGAN generator) on a GPU: train 1/2/3/4/32-bit SDLSS and 32-bit DCS with
# paper/reproduce_colour.py --device cuda, score the quantized models through the packed engine
# (qgen-reconstruct, Triton backend on the GPU), write the table -- all results into OUTDIR.
#
#   paper/gpu_colour.sh OUTDIR       (run from anywhere; works on the repo root)
#
# Data: CIFAR10 / SVHN / STL10 from the folder QGEN_COLOUR_DATA_ROOT names (cifar10/, svhn/,
# stl10/ inside it). Unset: the first of ROOT/../shared/data and ROOT/shared/data that holds
# cifar10/ (the CIFAR-10 JPEG copy of issue 24, as paper/cifar_runs.sh reads it; on the lent GPU
# machine only a shared/ folder inside the checkout travels: paper/README.md), else the embedded
# 'patches' set (needs scikit-image's bundled photos). Set but empty: the embedded set. The table
# says which data it used.
# Knobs:
#   QGEN_COLOUR_EPOCHS=20      epochs per model (the table states them)
#   QGEN_COLOUR_SECONDS=360    training stops (Ctrl-C: checkpoints kept) this long after the start;
#                              unfinished models are then scored as they are (<= 150 s more),
#                              marked in the table: the whole script fits a 10-minute call
#   QGEN_COLOUR_BACKEND=auto   qgen-reconstruct backend (auto: triton on the GPU, with the
#                              untuned heuristic tiles: QGEN_TRITON_AUTOTUNE=0 unless set)
#   QGEN_COLOUR_LANES=3        models trained side by side on the one GPU
#   QGEN_COLOUR_DEVICE=cuda    (cpu: a smoke run of this script on a machine without a GPU)
#   QGEN_COLOUR_FALLBACK=patches  embedded set without QGEN_COLOUR_DATA_ROOT ('digits': smoke)
#   QGEN_COLOUR_BITS="1 2 3 4 32"
#   QGEN_COLOUR_LR=            Adam learning rate of every run (default: qgen-train's)
#   QGEN_COLOUR_SREC_DATA_PAIRS=   1 / 0: data-data pairs in the S-REC loss forced on / off for
#                              every run (run names -dp / -nodp; default: qgen-train's, on)
# Needs torch (+ triton on a GPU), scikit-image for 'patches'; no network. What comes back is
# OUTDIR/colour-table1.md, OUTDIR/queue.log and OUTDIR/colour-runs.tar.gz (per-run logs, eval
# records and the packed .qgen files; the training checkpoints stay behind: they are large).
set -u
OUTDIR=$(mkdir -p "${1:?usage: gpu_colour.sh OUTDIR}" && cd "$1" && pwd)
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
PY=${PYTHON:-$(command -v python3 || command -v python)}
EPOCHS=${QGEN_COLOUR_EPOCHS:-20}
SECONDS_BUDGET=${QGEN_COLOUR_SECONDS:-360}
BACKEND=${QGEN_COLOUR_BACKEND:-auto}
export QGEN_TRITON_AUTOTUNE=${QGEN_TRITON_AUTOTUNE:-0}  # scoring must not spend minutes tuning
LANES=${QGEN_COLOUR_LANES:-3}
DEVICE=${QGEN_COLOUR_DEVICE:-cuda}
FALLBACK=${QGEN_COLOUR_FALLBACK:-patches}
BITS=${QGEN_COLOUR_BITS:-1 2 3 4 32}
RUNS="$OUTDIR/runs"
mkdir -p "$RUNS"

# The qgen-* commands the queue runs: the installed console scripts when pip can install the
# package here (no dependencies touched, no C++ build on a GPU machine), else wrappers that run
# the modules from this tree.
# (QGEN_COLOUR_INSTALL=0 skips the install: the wrappers alone.)
if [ "${QGEN_COLOUR_INSTALL:-1}" = 1 ] && ! QGEN_NO_EXT=${QGEN_NO_EXT:-1} $PY -m pip install -q \
     -e . --no-build-isolation --no-deps > "$OUTDIR/install.log" 2>&1; then
  echo "pip install failed (see install.log): using module wrappers" | tee -a "$OUTDIR/queue.log"
fi
BIN="$OUTDIR/bin"
mkdir -p "$BIN"
for pair in train:train eval:evaluate export:export measure:measure reconstruct:reconstruct; do
  name=${pair%%:*} mod=${pair#*:}
  printf '#!/bin/sh\nexec %s -m qgen_infer.cli.%s "$@"\n' "$PY" "$mod" > "$BIN/qgen-$name"
  chmod +x "$BIN/qgen-$name"
done
export PATH="$BIN:$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if [ -z "${QGEN_COLOUR_DATA_ROOT+set}" ]; then
  for candidate in "$ROOT/../shared/data" "$ROOT/shared/data"; do
    if [ -d "$candidate/cifar10" ]; then QGEN_COLOUR_DATA_ROOT=$candidate; break; fi
  done
fi
RUN_ARGS=(--fallback "$FALLBACK")
[ -n "${QGEN_COLOUR_DATA_ROOT:-}" ] && RUN_ARGS=(--data-root "$QGEN_COLOUR_DATA_ROOT")
[ -n "${QGEN_COLOUR_LR:-}" ] && RUN_ARGS+=(--lr "$QGEN_COLOUR_LR")
case "${QGEN_COLOUR_SREC_DATA_PAIRS:-}" in
  1) RUN_ARGS+=(--srec-data-pairs) ;;
  0) RUN_ARGS+=(--no-srec-data-pairs) ;;
esac
# shellcheck disable=SC2086
COMMON=(--runs "$RUNS" --results "$OUTDIR" --epochs "$EPOCHS" --bits $BITS --backend "$BACKEND"
        "${RUN_ARGS[@]}")
{ echo "== $(date -u +%FT%TZ) $DEVICE; epochs $EPOCHS, lanes $LANES, budget ${SECONDS_BUDGET}s"
  echo "data: ${QGEN_COLOUR_DATA_ROOT:-none named: the embedded '$FALLBACK' set}"
  [ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
  $PY -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
} >> "$OUTDIR/queue.log" 2>&1

# Train and score; at the deadline the queue gets Ctrl-C (children keep their last epoch).
timeout --signal=INT --kill-after=30 "$SECONDS_BUDGET" \
  $PY paper/reproduce_colour.py "${COMMON[@]}" --lanes "$LANES" --device "$DEVICE" \
  >> "$OUTDIR/queue.log" 2>&1
echo "queue rc=$?" >> "$OUTDIR/queue.log"
# Score what the deadline left unfinished (marked short of the target in the table).
timeout --signal=INT --kill-after=30 150 \
  $PY paper/reproduce_colour.py "${COMMON[@]}" --lanes "$LANES" --score-only \
  >> "$OUTDIR/queue.log" 2>&1
echo "scoring rc=$?" >> "$OUTDIR/queue.log"
$PY paper/reproduce_colour.py "${COMMON[@]}" --report-only >> "$OUTDIR/queue.log" 2>&1
echo "report rc=$?" >> "$OUTDIR/queue.log"
tar czf "$OUTDIR/colour-runs.tar.gz" -C "$RUNS" --exclude='model.pt' --exclude='*.npy' . \
  2>> "$OUTDIR/queue.log"
tail -n 25 "$OUTDIR/colour-table1.md" 2>/dev/null
