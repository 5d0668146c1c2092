"""Encoding a study's predicted mask (``masks/<study_key>.nii.gz``), side by side.

Every study's label map is written as gzipped NIfTI by the worker that scored it, on the
CPU cores that also decode DICOM and feed the GPU. Label maps are almost all zeros, and
deflate decides most of the cost. This measures, on the same synthetic 512 x 512 label
maps, :func:`calcpipe.synthetic.truth.nifti_bytes` (NIfTI encoding and deflate's
run-length strategy, since 2026-11-28, by zlib-ng since 2026-12-04, compressed as nibabel
writes since 2026-12-04 (session 2)) against the whole uncompressed file built first and
then compressed (the same bytes), the same with the standard library's zlib (the same
bytes) and the same NIfTI bytes deflated at levels 1, 6 and 9 of the default strategy
(level 9 shipped before), and checks that every encoding reads back to the same labels.

Usage: ``python bench/bench_masks.py [--studies 6] [--repeats 5]`` (part of ``make bench``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.synthetic import render_study, sample_spec
from calcpipe.synthetic.truth import gzip_labels, labels_from_bytes, nifti_bytes, plain_nifti_bytes


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    studies = [render_study(sample_spec(9100, i, matrix=512)) for i in range(args.studies)]
    affine = np.eye(4)

    def deflate(level: int) -> Callable[[np.ndarray], bytes]:
        return lambda labels: zlib.compress(plain_nifti_bytes(labels, affine), level, wbits=31)

    def run_length_zlib(labels: np.ndarray) -> bytes:
        packed = gzip_labels(plain_nifti_bytes(labels, affine), deflate=zlib)
        assert packed == nifti_bytes(labels, affine)  # zlib-ng wrote the same bytes
        return packed

    def whole_file_first(labels: np.ndarray) -> bytes:
        packed = gzip_labels(plain_nifti_bytes(labels, affine))
        assert packed == nifti_bytes(labels, affine)  # compressed as written: the same bytes
        return packed

    methods: dict[str, Callable[[np.ndarray], bytes]] = {
        "run-length (shipped)": lambda labels: nifti_bytes(labels, affine),
        "whole file first": whole_file_first,
        "run-length, zlib": run_length_zlib,
        "level 9 (before)": deflate(9), "level 6": deflate(6), "level 1": deflate(1)}
    seconds: dict[str, list[float]] = {name: [] for name in methods}
    sizes: dict[str, int] = {}
    for _ in range(args.repeats):  # interleaved, so that a slow moment hits every method
        for name, method in methods.items():
            t0 = time.perf_counter()
            packed = [method(s.labels) for s in studies]
            seconds[name].append(time.perf_counter() - t0)
            sizes[name] = sum(len(b) for b in packed)
            for data, study in zip(packed, studies, strict=True):
                assert np.array_equal(labels_from_bytes(data)[0], study.labels)
    n = len(studies)
    reference = statistics.median(seconds["level 9 (before)"])
    print(f"mask encoding (NIfTI + gzip), {n} synthetic label maps of "
          f"{studies[0].labels.size:,} voxels, median of {args.repeats} rounds:")
    for name, values in seconds.items():
        median = statistics.median(values)
        print(f"  {name:<21} {median / n * 1000:6.1f} ms per mask, {sizes[name] / n / 1024:5.1f} "
              f"KiB per mask, {reference / median:4.2f}x the speed of level 9")
    return 0


if __name__ == "__main__":
    sys.exit(main())
