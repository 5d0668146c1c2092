"""Benchmark: segmentation time per study on this CPU, calcpipe's default model against
the paper's configuration, side by side on the same studies.

Paper configuration: the same U-Net family at the paper's size (16 filters, one conv per
block, one input slice), every slice resampled to 1 x 1 mm and run as a full 512 x 512
image, fp32 (untrained weights: timing only). calcpipe: the shipped default (8 filters,
3 input slices) on the body crop at 1 mm, reading logits only at candidate voxels.
Both: torch.inference_mode, fp32, 2 threads, batches of 8 slices. Medians over studies.
"""

from __future__ import annotations

import resource
import statistics
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


def main() -> int:
    torch.set_num_threads(2)
    studies = [render_study(sample_spec(9001, i)) for i in range(STUDIES)]
    ours = UNetSegmenter.load("default", threads=2, batch_size=8)
    paper = UNet(UNetConfig()).eval().to(memory_format=torch.channels_last)
    ours.segment(studies[0].hu[:4], studies[0].spacing_mm)  # warm-up
    paper_segment(paper, studies[0].hu[:4], studies[0].spacing_mm)
    t_ours, t_paper = [], []
    for study in studies:
        start = time.perf_counter()
        ours.segment(study.hu, study.spacing_mm)
        t_ours.append(time.perf_counter() - start)
        start = time.perf_counter()
        paper_segment(paper, study.hu, study.spacing_mm)
        t_paper.append(time.perf_counter() - start)
    o, p = statistics.median(t_ours), statistics.median(t_paper)
    slices = statistics.median(s.hu.shape[0] for s in studies)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"segmentation per study, 2-core CPU, {STUDIES} synthetic 512x512 studies "
          f"(median {slices:.0f} slices), medians:")
    print(f"  paper configuration {p:6.2f} s   calcpipe default {o:6.2f} s   "
          f"speed-up {p / o:5.1f}x   target >= 10x: {'met' if p / o >= 10 else 'MISSED'}")
    print(f"  peak resident memory of this process: {peak:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
