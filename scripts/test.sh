#!/usr/bin/env bash
# Set up (scripts/setup.sh) and run the test suite: Triton kernels run under TRITON_INTERPRET=1 on
# the CPU, GPU-only tests skip without a CUDA device.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
python -m pytest -q tests "$@"
