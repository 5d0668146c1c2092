#!/usr/bin/env bash
# Every GPU measurement in one call on a single-GPU machine with no network and PyTorch
# 2.11 (run through the device tool with carry=["gpu_carry"], gpu_carry/ holding the
# wheels of pydicom, nibabel, importlib_resources, packaging and zlib-ng at the versions of
# constraints.txt: pip download --no-deps -d gpu_carry, zlib-ng's with --only-binary=:all:
# --python-version 3.12 --platform manylinux2014_x86_64 for the machine's Python 3.12):
# installs the carried wheels, then measures
#   1. segmentation throughput of the shipped model on rendered volumes, and the network
#      alone on the same inputs, with a profile of the segment call (gpu_check.py);
#   2. the end-to-end library path, DICOM on local disk -> decode -> segment -> mask ->
#      score: one study at a time, several at once on threads, and 15 and 24 processes
#      sharing the GPU, 15 also asleep while they wait for it (gpu_pipeline.py);
#   3. segmentation alone in several processes sharing the GPU, volumes in memory
#      (gpu_pipeline.py --segment-only);
#   4. the host CPU work per study on this node's cores, network replayed
#      (bench_host_cpu.py, as in make bench): the same figure as on a CPU machine, so that
#      its projections to a GPU node can be calibrated stage by stage.
# Figures go to $OUT (gpu_check.json, segment_profile.txt, gpu_pipeline.json,
# gpu_segment.json) and stdout. At most 10 minutes (the timeouts below), about 6 on one
# H100 with 16 cores.
# One measurement failing does not stop the other.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
python3 -m pip install --no-deps --no-index -q gpu_carry/*.whl 2>&1 | grep -v WARNING || true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
lscpu | grep -E "^Model name|^CPU\(s\)" || true
timeout 150 python3 bench/gpu_check.py || echo "gpu_check.py failed: $?"
timeout 250 python3 bench/gpu_pipeline.py --device cuda --precision bf16 \
    || echo "gpu_pipeline.py failed: $?"
timeout 130 python3 bench/gpu_pipeline.py --device cuda --precision bf16 --segment-only \
    || echo "gpu_pipeline.py --segment-only failed: $?"
timeout 60 python3 bench/bench_host_cpu.py --studies 4 --rounds 2 \
    || echo "bench_host_cpu.py failed: $?"
