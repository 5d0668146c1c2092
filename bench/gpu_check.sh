#!/usr/bin/env bash
# Every GPU measurement in one call on a single-GPU machine with no network and PyTorch
# 2.11 (run through the device tool with carry=["gpu_carry"], gpu_carry/ holding the
# pydicom wheel): installs the carried wheels, then measures segmentation throughput.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --no-deps --no-index -q gpu_carry/*.whl 2>&1 | grep -v WARNING || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 bench/gpu_check.py
