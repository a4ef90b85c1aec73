#!/usr/bin/env bash
# Train the issue-3 MNIST set (m = 25 and 100, s = 100) on the first 9,000 images of the real MNIST test
# split (the last 1,000 are the eval set), in two lanes side by side (one thread each: the fastest
# use of 2 cores for these small MLPs). Re-running resumes every unfinished model from its last
# per-epoch checkpoint and skips finished ones.
#
#   lane A: SDLSS 32-bit (from scratch)      -> DCS 32-bit baseline (from scratch)
#           -> m = 100: SDLSS 32-bit (from scratch)
#   lane B: SDLSS 1-bit (from scratch, paper) -> then, once the 32-bit model is done, quantization-
#           aware fine-tuning from the 32-bit weights (--init-from, lower rate): 4, 1 (per-channel
#           scales), 2, 3 bits
#   lane C: SDLSS 4-bit from scratch (the paper's recipe, for comparison with the fine-tuned one)
#           -> m = 100: SDLSS 1-bit (from scratch)
#   lanes D, E (1-bit experiments, run last): per-channel scales from scratch (60 epochs), and the
#           paper's per-tensor 1-bit trained twice as long (120 epochs)
#
#   usage: paper/train_mnist_m25.sh [RUNS_DIR] [EPOCHS] [FINETUNE_EPOCHS] [MNIST_DIR]
set -u
runs=${1:-runs}
epochs=${2:-60}
ft_epochs=${3:-20}
data=${4:-../shared/data/mnist}
common=(--data mnist --data-root "$data" -s 100 --threads 1)

train() {  # name, extra flags...
  local name=$1; shift
  local resume=()
  [ -f "$runs/$name/model.pt" ] && resume=(--resume)
  qgen-train --out "$runs/$name" "${common[@]}" "$@" "${resume[@]}" > "$runs/$name.log" 2>&1
  local rc=$?
  echo "$(date -u +%FT%TZ) $name exit $rc"
  [ $rc -eq 0 ] && touch "$runs/$name.done"
}

wait_for() {  # name: block until that run has finished
  until [ -f "$runs/$1.done" ]; do sleep 20; done
}

finetune() {  # name, bits, extra flags...
  local name=$1 bits=$2; shift 2
  wait_for mnist-m25-sdlss-32
  train "$name" -m 25 --bits "$bits" --epochs "$ft_epochs" --lr 3e-4 \
    --init-from "$runs/mnist-m25-sdlss-32/model.pt" "$@"
}

mkdir -p "$runs"
( train mnist-m25-sdlss-32 -m 25 --bits 32 --epochs "$epochs"
  train mnist-m25-dcs-32 -m 25 --method dcs --bits 32 --epochs "$epochs"
  train mnist-m100-sdlss-32 -m 100 --bits 32 --epochs "$epochs" ) &
( train mnist-m25-sdlss-1 -m 25 --bits 1 --epochs "$epochs"
  finetune mnist-m25-sdlss-4-ft 4
  finetune mnist-m25-sdlss-1-ft 1 --granularity channel
  finetune mnist-m25-sdlss-2-ft 2
  finetune mnist-m25-sdlss-3-ft 3 ) &
( train mnist-m25-sdlss-4 -m 25 --bits 4 --epochs "$epochs"
  train mnist-m100-sdlss-1 -m 100 --bits 1 --epochs "$epochs" ) &
wait
( train mnist-m25-sdlss-1-ch -m 25 --bits 1 --granularity channel --epochs "$epochs" ) &
( train mnist-m25-sdlss-1-long -m 25 --bits 1 --epochs $((2 * epochs)) ) &
wait
