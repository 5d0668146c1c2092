"""GPU measurements in one run (``bench/gpu_check.sh``): segmentation studies per second
with the shipped model on synthetic 512 x 512 studies rendered on the CPU cores, in one
process, fp32 and bf16; the network alone on the same studies' model inputs (already on
the GPU), which bounds what the CPU-side work leaves of it; the labels' agreement (bf16
run twice, and against the CPU in fp32, on 4 studies); and a profile of the segment
call (top functions by own time) showing where a study's time goes.

Needs numpy, scipy, torch and pydicom (carry the pydicom wheel in gpu_carry/).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.models.preprocess import model_input
from calcpipe.models.segment import UNetSegmenter
from calcpipe.synthetic import render_study, sample_spec

STUDIES = 40


def _render(index: int) -> tuple[npt.NDArray[np.int16], tuple[float, float, float]]:
    rendered = render_study(sample_spec(9001, index))
    return rendered.hu, rendered.spacing_mm


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda", help="cpu: a smoke run")
    parser.add_argument("--studies", type=int, default=STUDIES)
    args = parser.parse_args()
    import torch

    def synchronize() -> None:
        if args.device == "cuda":
            torch.cuda.synchronize()

    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as pool:
        studies = list(pool.map(_render, range(args.studies)))
    figures = {"gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
               "studies": args.studies,
               "slices": int(sum(hu.shape[0] for hu, _ in studies)),
               "torch": torch.__version__, "date": time.strftime("%Y-%m-%d")}
    for precision in ("fp32", "bf16") if args.device == "cuda" else ("fp32",):
        segmenter = UNetSegmenter.load("default", device=args.device, precision=precision,
                                       batch_size=64)
        segmenter.segment(*studies[0])
        synchronize()
        start = time.monotonic()
        for hu, spacing in studies:
            segmenter.segment(hu, spacing)
        synchronize()
        figures[f"{precision}_studies_per_s"] = args.studies / (time.monotonic() - start)
        inputs = [model_input(hu, spacing, model_spacing_mm=segmenter.spacing,
                              stride=2**segmenter.config.depth,
                              context=segmenter.config.context, device=args.device)[0]
                  for hu, spacing in studies]
        synchronize()
        start = time.monotonic()
        for x in inputs:
            for i in range(0, x.shape[0], segmenter.batch_size):
                segmenter.logits(x[i : i + segmenter.batch_size])
        synchronize()
        figures[f"{precision}_network_only_studies_per_s"] = args.studies / (
            time.monotonic() - start)
        print(json.dumps(figures), flush=True)
        (out / "gpu_check.json").write_text(json.dumps(figures, indent=1))  # so far
    if args.device == "cuda":
        figures["agreement"] = agreement(studies[:4], segmenter)
        print(json.dumps(figures["agreement"]), flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for hu, spacing in studies[:min(10, args.studies)]:
        segmenter.segment(hu, spacing)
    synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(25)
    (out / "segment_profile.txt").write_text(text.getvalue())
    print(text.getvalue()[:6000])
    print(json.dumps(figures, indent=1))
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    return 0


def agreement(studies: list[tuple[npt.NDArray[np.int16], tuple[float, float, float]]],
              segmenter: UNetSegmenter) -> dict[str, Any]:
    """The GPU's labels (``segmenter``) against themselves run again (deterministic for a
    device and precision) and against the CPU's in fp32: labelled voxels, and the voxels
    whose label differs between the GPU and CPU runs."""
    cpu = UNetSegmenter.load("default", device="cpu", precision="fp32", batch_size=16)
    labelled = repeat_differs = cpu_differs = 0
    for hu, spacing in studies:
        first = segmenter.segment(hu, spacing).labels
        repeat_differs += int(np.count_nonzero(first != segmenter.segment(hu, spacing).labels))
        cpu_differs += int(np.count_nonzero(first != cpu.segment(hu, spacing).labels))
        labelled += int(np.count_nonzero(first))
    return {"studies": len(studies), "precision": segmenter.precision,
            "labelled_voxels": labelled, "differ_on_repeat": repeat_differs,
            "differ_from_cpu_fp32": cpu_differs}


if __name__ == "__main__":
    sys.exit(main())
