#!/usr/bin/env bash
# Every GPU measurement in one call on a single-GPU machine with no network and PyTorch
# 2.11 (run through the device tool with carry=["gpu_carry"], gpu_carry/ holding the
# pydicom wheel): installs the carried wheels, then measures
#   1. segmentation throughput of the shipped model on rendered volumes (gpu_check.py);
#   2. the end-to-end library path, DICOM on local disk -> decode -> segment -> score, one
#      study at a time against STUDIES_PER_GPU at once (gpu_pipeline.py).
# Figures go to $OUT (gpu_check.json, gpu_pipeline.json) and stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install --no-deps --no-index -q gpu_carry/*.whl 2>&1 | grep -v WARNING || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
timeout 240 python3 bench/gpu_check.py
timeout 300 python3 bench/gpu_pipeline.py --device cuda --precision bf16
