#!/usr/bin/env bash
# The GPU benchmarks for the lent device (nothing is downloaded there): ImageNet-size training epochs, the
# ImageNet-size sparse head fitted in full, CMS at 50k × 5k × 1k. Prints the tables and leaves them in $OUT
# (or the repository root) as BENCHMARKS-gpu.md.
#
# Needs a Python with this repository's dependencies: carry the virtual environment (.venv) built here, or
# wheels to install with --no-index; then: bash benchmarks/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
out=${OUT:-.}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
export PYTHONPATH=$PWD
{
  echo "# GPU benchmarks"; echo
  echo "## train (\`python benchmarks/train.py --device cuda\`)"; echo
  timeout 200 "$python" benchmarks/train.py --device cuda --skip-paper | sed -n '/^| size/,$p'
  echo; echo "## sparse head at ImageNet size (\`python benchmarks/sparse_head.py --device cuda --full\`)"; echo
  timeout 300 "$python" benchmarks/sparse_head.py --device cuda --full | sed -n '/^Design/,$p'
  echo; echo "## cms (\`python benchmarks/cms.py\`)"; echo
  timeout 100 "$python" benchmarks/cms.py --images 50000
} | tee "$out/BENCHMARKS-gpu.md"
