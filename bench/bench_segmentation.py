"""Benchmark: segmentation time per study on this CPU, calcpipe's default model against
the paper's configuration, side by side on the same studies.

Paper configuration: the same U-Net family at the paper's size (16 filters, one conv per
block, one input slice), every slice resampled to 1 x 1 mm and run as a full 512 x 512
image, fp32 (untrained weights: timing only). calcpipe: the shipped default (8 filters,
3 input slices) on the body crop at 1 mm, reading logits only at candidate voxels, in fp32
and in bf16 (autocast; ``--precision auto`` picks it on CPUs with bf16 instructions, as this
one has). All: torch.inference_mode, 2 threads, batches of 8 slices. Medians over studies.

Each configuration runs twice, in fresh processes: with PyTorch's CPU allocator on 4 KiB
pages (``THP_MEM_ALLOC_ENABLE=0``) and on transparent huge pages (``=1``, calcpipe's default,
set in ``calcpipe/__init__.py``), so the effect of the allocator shows beside the model's.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from calcpipe.models.preprocess import HU_CLIP, hu_transform
from calcpipe.models.segment import UNetSegmenter
from calcpipe.models.unet import UNet, UNetConfig
from calcpipe.synthetic import render_study, sample_spec

STUDIES = 3


def paper_segment(model: UNet, hu: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    x = hu_transform(hu)
    x = ndimage.zoom(x, (1.0, spacing[1], spacing[2]), order=1)
    full = np.full((x.shape[0], 512, 512), HU_CLIP[0] / 500.0, np.float32)
    h, w = min(512, x.shape[1]), min(512, x.shape[2])
    full[:, :h, :w] = x[:, :h, :w]
    out = []
    with torch.inference_mode():
        for i in range(0, len(full), 8):
            batch = torch.from_numpy(full[i : i + 8, None]).contiguous(
                memory_format=torch.channels_last)
            out.append(model(batch).argmax(1).numpy())
    return np.concatenate(out)


def measure() -> dict[str, float]:
    """Both configurations in this process: median seconds per study, peak memory."""
    torch.set_num_threads(2)
    studies = [render_study(sample_spec(9001, i)) for i in range(STUDIES)]
    ours = {p: UNetSegmenter.load("default", threads=2, batch_size=8, precision=p)
            for p in ("fp32", "bf16")}
    paper = UNet(UNetConfig()).eval().to(memory_format=torch.channels_last)
    for segmenter in ours.values():
        segmenter.segment(studies[0].hu[:4], studies[0].spacing_mm)  # warm-up
    paper_segment(paper, studies[0].hu[:4], studies[0].spacing_mm)
    times: dict[str, list[float]] = {"ours": [], "ours_bf16": [], "paper": []}
    for study in studies:
        for key, run in (("ours", ours["fp32"].segment), ("ours_bf16", ours["bf16"].segment),
                         ("paper", lambda hu, spacing: paper_segment(paper, hu, spacing))):
            start = time.perf_counter()
            run(study.hu, study.spacing_mm)
            times[key].append(time.perf_counter() - start)
    return {**{key: statistics.median(t) for key, t in times.items()},
            "slices": statistics.median(s.hu.shape[0] for s in studies),
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> int:
    if sys.argv[1:] == ["--child"]:
        print(json.dumps(measure()))
        return 0
    runs = {}
    for huge in ("0", "1"):  # fresh processes: torch reads the setting once
        env = {**os.environ, "THP_MEM_ALLOC_ENABLE": huge}
        child = subprocess.run([sys.executable, __file__, "--child"], env=env, check=True,
                               capture_output=True, text=True)
        runs[huge] = json.loads(child.stdout.strip().splitlines()[-1])
    small, huge = runs["0"], runs["1"]
    print(f"segmentation per study, 2-core CPU, {STUDIES} synthetic 512x512 studies "
          f"(median {huge['slices']:.0f} slices), medians:")
    print("                          4 KiB pages   huge pages   pages / huge")
    for key, name in (("paper", "paper configuration"), ("ours", "calcpipe default, fp32"),
                      ("ours_bf16", "calcpipe default, bf16")):
        print(f"  {name:22s} {small[key]:9.2f} s  {huge[key]:9.2f} s  "
              f"{small[key] / huge[key]:9.2f}x")
    for key, name in (("ours", "fp32"), ("ours_bf16", "bf16")):
        speedup = huge["paper"] / huge[key]
        print(f"  speed-up of calcpipe {name} over the paper (huge pages) {speedup:5.1f}x, "
              f"(4 KiB pages) {small['paper'] / small[key]:5.1f}x   "
              f"target >= 10x: {'met' if speedup >= 10 else 'MISSED'}")
    print(f"  peak resident memory per process: {small['peak_mib']:.0f} MiB (4 KiB pages), "
          f"{huge['peak_mib']:.0f} MiB (huge pages)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
