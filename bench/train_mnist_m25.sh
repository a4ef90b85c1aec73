#!/usr/bin/env bash
# Train the issue-3 MNIST set (m = 25, s = 100): SDLSS at 32/1/4/2/3 bits and the 32-bit DCS
# baseline, on the first 9,000 images of the real MNIST test split (the last 1,000 are the eval set).
# Two lanes run side by side (one thread each: the fastest use of 2 cores for these small MLPs).
# Re-running resumes every unfinished model from its last per-epoch checkpoint.
#   usage: bench/train_mnist_m25.sh [RUNS_DIR] [EPOCHS] [MNIST_DIR]
set -u
runs=${1:-runs}
epochs=${2:-60}
data=${3:-../shared/data/mnist}
common=(--data mnist --data-root "$data" -m 25 --epochs "$epochs" --threads 1)

train() {  # name, extra flags...
  local name=$1; shift
  local resume=()
  [ -f "$runs/$name/model.pt" ] && resume=(--resume)
  qgen-train --out "$runs/$name" "${common[@]}" "$@" "${resume[@]}" > "$runs/$name.log" 2>&1
  echo "$(date -u +%FT%TZ) $name exit $?"
}

mkdir -p "$runs"
( train mnist-m25-sdlss-32 --bits 32; train mnist-m25-sdlss-4 --bits 4;
  train mnist-m25-sdlss-3 --bits 3 ) &
( train mnist-m25-sdlss-1 --bits 1; train mnist-m25-dcs-32 --method dcs --bits 32;
  train mnist-m25-sdlss-2 --bits 2 ) &
wait
