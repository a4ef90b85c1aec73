#!/usr/bin/env bash
# Create .venv (if missing) and install qgen-infer into it with its test extras.
# PyTorch is installed first and pinned: a bare `torch` requirement on a machine without it would
# pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[test,plot]"
# Triton runs the GPU kernels (and, under TRITON_INTERPRET=1, their tests on the CPU). Where no
# wheel exists for this platform the Triton tests skip instead of failing the setup.
python -m pip install -q "triton>=3.0" || echo "setup: triton is not installable here; its tests will be skipped"
