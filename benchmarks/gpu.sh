#!/usr/bin/env bash
# The GPU benchmarks for the lent device: installs nothing from the network (the device has none), runs in
# well under 8 minutes, prints the table and leaves it in $OUT (or the repository root).
#
# Needs a Python with this repository's dependencies. On the device, carry the virtual environment
# (.venv) built here, or wheels to install with --no-index; then: bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH=$PWD
# full sizes on the GPU: ImageNet-size training on all 1.28M images, CMS at 50k × 5k × 1k
timeout 480 "$python" benchmarks/run_all.py --device cuda --out "$out/BENCHMARKS-gpu.md"
cat "$out/BENCHMARKS-gpu.md"
