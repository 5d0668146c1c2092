"""Benchmark: the CPU work a GPU worker does per study, on this machine's cores.

A GPU node scoring a registry is CPU-bound (``docs/scale.md``: the H100 and H200 nodes'
16 cores were 90 % busy and the GPU under 40 %), so the studies per second of a node are
its cores over the core-seconds of a study's host work. This measures that work here,
stage by stage, without a GPU: the library path of ``bench/gpu_pipeline.py`` (decode the
DICOM series from local disk, segment, write the mask as gzipped NIfTI, score) with the
network's logits recorded once per study and replayed, so that the network's own time
(on the GPU there) is left out. The resampling of the body crop and the reading of logits
at the candidates still run on the CPU here (on the GPU there), so the figure is an upper
bound of the host work.

Side by side, on the same studies: the connected-region size gate as shipped (regions
measured in small windows grown around the labelled voxels) against the same answer from
labelling the whole volume (``oversized_regions``).

Usage: ``python bench/bench_host_cpu.py [--studies 8] [--rounds 3]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gpu_pipeline import _write, process
from replay import Replay, on_gpu_there

from calcpipe.models import segment
from calcpipe.models.segment import UNetSegmenter

#: a GPU node's cores, for the studies per second they allow at this cost
NODE_CORES = 16


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core per worker process, as on a GPU node
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.studies):
            _write((i, 512, tmp))
        studies = [sorted(p.glob("*.dcm")) for p in sorted(Path(tmp).glob("study_*"))]
        segmenter = UNetSegmenter.load("default", device="cpu", batch_size=64)
        replay = Replay(segmenter.logits)
        segmenter.logits = replay  # type: ignore[method-assign]
        gate_cases: list[tuple[Any, ...]] = []
        shipped_gate = segment.in_oversized_regions

        def recording_gate(*a: Any, **k: Any) -> Any:
            gate_cases.append(a)
            return shipped_gate(*a, **k)

        segment.in_oversized_regions = recording_gate  # type: ignore[assignment]
        cac = [process(paths, segmenter) for paths in studies]  # records logits
        segment.in_oversized_regions = shipped_gate  # type: ignore[assignment]
        replay.at = 0
        rounds: list[dict[str, float]] = []
        for _ in range(args.rounds):
            stages: dict[str, float] = {}
            with on_gpu_there(stages):
                replayed = [process(paths, segmenter, stages) for paths in studies]
            assert replayed == cac, "replayed logits gave other scores"
            rounds.append(stages)
        gate = {"windows (shipped)": shipped_gate, "whole volume": whole_volume_gate}
        gate_s: dict[str, list[float]] = {name: [] for name in gate}
        for _ in range(args.rounds):
            for name, function in gate.items():
                t0 = time.perf_counter()
                answers = [function(*case) for case in gate_cases]
                gate_s[name].append(time.perf_counter() - t0)
            assert all((a == b).all() for a, b in zip(
                answers, [shipped_gate(*case) for case in gate_cases], strict=True))
    n = len(studies)
    per_stage = {name: statistics.median(r[name] for r in rounds) / n for name in rounds[0]}
    print(f"host CPU work per study of a GPU worker, this CPU, one thread, {n} synthetic "
          f"512 x 512 studies of {len(studies[0])} slices, network replayed, median of "
          f"{args.rounds} rounds:")
    device_side = per_stage.pop("resampling") + per_stage.pop("reading logits")
    total = sum(per_stage.values())
    for name, seconds in per_stage.items():
        print(f"  {name:<8} {seconds * 1000:7.1f} ms")
    print(f"  total    {total * 1000:7.1f} ms: {NODE_CORES} such cores allow "
          f"{NODE_CORES / total:5.1f} studies/s")
    host = total - device_side
    print(f"  of the segment stage, {device_side * 1000:.1f} ms run on the GPU of a GPU node "
          f"(the body crop's transform and resampling, reading logits at the candidates): "
          f"host work there {host * 1000:.1f} ms, {NODE_CORES / host:5.1f} studies/s on "
          f"{NODE_CORES} such cores")
    whole, windows = (statistics.median(gate_s[k]) / n for k in ("whole volume",
                                                                  "windows (shipped)"))
    print(f"  region size gate: windows {windows * 1000:.1f} ms, whole volume "
          f"{whole * 1000:.1f} ms per study ({whole / windows:.1f}x), the same answers")
    return 0


def whole_volume_gate(candidates: Any, at: Any, spacing_mm: Any, max_mm3: float) -> Any:
    """The size gate's reference: every region of the volume measured."""
    return segment.oversized_regions(candidates, spacing_mm, max_mm3).ravel()[at]


if __name__ == "__main__":
    sys.exit(main())
