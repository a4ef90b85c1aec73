#!/usr/bin/env bash
# Start, or resume, the CIFAR-10 Table-1 runs in the background: paper/reproduce_colour.py's queue
# (train, then export -> qgen-measure -> qgen-reconstruct through the packed engine, 32-bit
# models by qgen-eval) under `nice -n 15`, so the runs take only CPU time nobody else wants, one
# torch thread per run. Run folders (model.pt after every epoch, log.jsonl, config.json) live
# outside the repository; a run with a checkpoint resumes from it (qgen-train --resume), and a
# run another process is training is left alone, so calling this again is always safe.
#
#   paper/cifar_runs.sh                  # the whole row: 32-bit SDLSS and DCS from scratch,
#                                        # then 1/2/3/4-bit fine-tuned from 32-bit epoch 8
#   paper/cifar_runs.sh 'cifar10-m100-sdlss-4*' ...    # runs whose names match the patterns
#   paper/cifar_runs.sh stop             # stop the queue this script started, and its runs: each
#                                        # keeps its last finished epoch (rerun to resume)
#
# Knobs (environment):
#   CIFAR_RUNS=/work/cifar-runs          run folders, queue logs (queue-*.log), the report
#   CIFAR_DATA=<repo>/../shared/data/cifar10   the JPEG copy's folder (or the binary release)
#   CIFAR_EPOCHS=12                      epochs per model (390 steps each at batch 64)
#   CIFAR_PRECISION=bf16                 qgen-train --precision (run names end in -bf16)
#   CIFAR_FINETUNE_FROM=8                the 32-bit epoch the 1-4-bit runs fine-tune from for
#                                        the remaining epochs (names -ft8); empty: all from scratch
#   CIFAR_LANES=2                        runs trained side by side (one per core)
#   CIFAR_NICE=15                        scheduling niceness of the queue and its runs
#   PYTHON=<repo>/.venv/bin/python       the interpreter whose environment has torch and qgen-*
# Prints the queue's PID and log; `tail -f` the log, or each run's RUNS/NAME.log for its epochs.
set -eu
ROOT=$(cd "$(dirname "$0")/.." && pwd)
RUNS=${CIFAR_RUNS:-/work/cifar-runs}
DATA=${CIFAR_DATA:-$ROOT/../shared/data/cifar10}
EPOCHS=${CIFAR_EPOCHS:-12}
PRECISION=${CIFAR_PRECISION:-bf16}
LANES=${CIFAR_LANES:-2}
NICENESS=${CIFAR_NICE:-15}
FINETUNE_FROM=${CIFAR_FINETUNE_FROM-8}
PY=${PYTHON:-$ROOT/.venv/bin/python}
[ -x "$PY" ] || PY=$(command -v python3)
PIDFILE=$RUNS/queue.pid
if [ "${1:-}" = stop ]; then
  pid=$(cat "$PIDFILE" 2>/dev/null) && tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null |
    grep -q reproduce_colour.py || {
    echo "cifar_runs.sh: no queue of this script is running (no live PID in $PIDFILE)"; exit 0; }
  kill -TERM "$pid"  # the queue passes it on to its qgen-* processes and waits for them
  for _ in $(seq 120); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then
    echo "cifar_runs.sh: queue $pid still running after 2 min" >&2; exit 1
  fi
  rm -f "$PIDFILE"
  echo "cifar_runs.sh: queue $pid stopped; every run keeps its last finished epoch (rerun to resume)"
  exit 0
fi
[ -d "$DATA" ] || { echo "cifar_runs.sh: no data folder $DATA (set CIFAR_DATA)" >&2; exit 2; }
[ $# -eq 0 ] || [ "$1" = all ] && set -- 'cifar10-m100-*'
ONLY=()
for pattern in "$@"; do ONLY+=(--only "$pattern"); done
mkdir -p "$RUNS"
LOG="$RUNS/queue-$(date -u +%Y%m%dT%H%M%SZ).log"
# the queue calls the qgen-* commands by name, from $PY's environment, and they import the
# qgen_infer of the tree this script lives in (so a snapshot of a commit runs that commit's code
# while the working tree changes under it)
export PATH="$(dirname "$PY"):$PATH" PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" \
  OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1
# Under Linux's autogroup scheduling (sched_autogroup_enabled = 1) a nice value ranks a process
# only within its session's group, and each session's group gets an equal share: the queue
# takes a session of its own (setsid) and gives that group its niceness too, else "niced" runs
# still take half the machine from whoever works beside them.
setsid bash -c 'echo "$1" > /proc/self/autogroup 2>/dev/null; shift; exec nohup nice -n "$@"' \
  _ "$NICENESS" "$NICENESS" "$PY" "$ROOT/paper/reproduce_colour.py" --cifar10 "$DATA" \
  --runs "$RUNS" --results "$RUNS/results" --epochs "$EPOCHS" --precision "$PRECISION" \
  --lanes "$LANES" --threads 1 ${FINETUNE_FROM:+--finetune-from "$FINETUNE_FROM"} \
  "${ONLY[@]}" > "$LOG" 2>&1 < /dev/null &
echo $! > "$PIDFILE"
echo "cifar_runs.sh: queue PID $! (nice $NICENESS, $LANES lanes, 1 thread each), log $LOG;" \
  "stop it with: $0 stop"
# the scores so far (partial runs marked) without touching the runs: paper/README.md
echo "scores so far: nice -n 10 env OMP_NUM_THREADS=1 $PY $ROOT/paper/reproduce_colour.py" \
  "--cifar10 $DATA --runs $RUNS --epochs $EPOCHS --precision $PRECISION" \
  "${FINETUNE_FROM:+--finetune-from $FINETUNE_FROM}" \
  "--snapshots $ROOT/runs/cifar10-snapshots   (writes bench/results/cifar10-table1.md)"
