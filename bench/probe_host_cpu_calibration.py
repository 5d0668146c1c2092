"""Probe: a GPU worker's host CPU work per study, stage by stage, for any checkout.

The same method as ``bench/bench_host_cpu.py`` (the library path of
``bench/gpu_pipeline.py`` on 8 synthetic 512 x 512 studies, one thread, the network's
logits recorded once and replayed), but run against the library of another checkout, so
that a GPU node's figures for old code can be set beside this machine's for the same code:
that ratio is what turns this machine's figures for new code into a projection.
``gpu_side`` is the part of the segment stage a GPU node runs on its GPU (the crop's
transform and resampling, reading logits at the candidates); host work is decode +
segment - gpu_side + mask + score.

Usage (the code the H200 run of 2026-12-04 measured, then this checkout)::

    git worktree add /tmp/f3e7848 f3e7848
    python bench/probe_host_cpu_calibration.py /tmp/f3e7848
    python bench/probe_host_cpu_calibration.py .
"""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1]).resolve()
    studies_n = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    # the checkout's library and benchmark scripts first; replay.py from this folder
    sys.path[:0] = [str(root), str(root / "bench")]
    sys.path.append(str(Path(__file__).resolve().parent))
    import torch

    torch.set_num_threads(1)
    import calcpipe

    assert str(root) in calcpipe.__file__, f"calcpipe imported from {calcpipe.__file__}"
    from gpu_pipeline import _write, process
    from replay import Replay, on_gpu_there

    from calcpipe.models.segment import UNetSegmenter

    with tempfile.TemporaryDirectory() as tmp:
        for i in range(studies_n):
            _write((i, 512, tmp))
        studies = [sorted(p.glob("*.dcm")) for p in sorted(Path(tmp).glob("study_*"))]
        segmenter = UNetSegmenter.load("default", device="cpu", batch_size=64)
        replay = Replay(segmenter.logits)
        segmenter.logits = replay
        reference = [process(paths, segmenter) for paths in studies]  # records logits
        replay.at = 0
        rounds = []
        for _ in range(3):
            stages: dict[str, float] = {}
            with on_gpu_there(stages, "gpu_side", "gpu_side"):
                assert [process(p, segmenter, stages) for p in studies] == reference
            rounds.append(stages)
    per = {k: [r[k] / studies_n * 1000 for r in rounds] for k in rounds[0]}
    print(f"{root}: ms per study, {studies_n} studies, 3 rounds")
    for name, values in per.items():
        print(f"  {name:9s} " + " ".join(f"{v:6.1f}" for v in values)
              + f"   median {statistics.median(values):6.1f}")
    host = [sum(r[k] for k in ("decode", "segment", "mask", "score")) - r["gpu_side"]
            for r in rounds]
    print(f"  host work median {statistics.median(host) / studies_n * 1000:6.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
