#!/usr/bin/env bash
# The CUDA path proven in one run: scripts/gpu_check.sh [OUT] (default: $OUT, else gpu_check_out).
# Leaves OUT/gpu_report.md, OUT/gpu_check.json, OUT/bench.json, OUT/bench.md and OUT/cuda_tests.xml. Without a
# CUDA GPU it says so and runs the same steps on the CPU at a small size (a dry run; CI runs it), exit 0.
# Meant for a bare GPU machine: it needs only torch, numpy, opencv, onnxruntime, safetensors, pyyaml, tqdm and
# pytest (rclpy optional); it runs from the source tree, no install. Budget: about 7 minutes (--minutes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -x .venv/bin/python ]; then PY=${PYTHON:-.venv/bin/python}; else PY=${PYTHON:-python3}; fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$PY" scripts/gpu_check.py "${1:-${OUT:-gpu_check_out}}" "${@:2}"
