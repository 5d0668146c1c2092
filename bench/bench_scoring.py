"""Benchmark: scoring a study against reading the same study's DICOM.

A 512 x 512 x 60 study with 100 labelled plaques (bench/volumes.py) is written as DICOM
to a temporary folder; after a warm-up pass (page cache warm, imports done), runs of
load_volume (reading) and score (standard profile) alternate. Medians of REPEATS runs.
Target: scoring <= 25 % of reading. Side by side on the same study: finding the labelled
voxels at or above the threshold word by word (shipped) and slab by slab (before, and
still the way of label maps wider than one byte).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

from volumes import calcified_volume

from calcpipe.dicom import load_volume
from calcpipe.dicom.writer import write_series
from calcpipe.scoring import score
from calcpipe.scoring.engine import _find, _find_by_slab

REPEATS = 9


def main() -> int:
    hu, labels = calcified_volume()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "study"
        write_series(folder, hu, spacing_mm=(3.0, 0.49, 0.49))
        volume = load_volume(folder)  # warm-up: page cache, imports
        assert (volume.hu == hu).all()
        result = score(volume.hu, labels, volume.spacing_mm)
        reading, scoring = [], []
        for _ in range(REPEATS):
            start = time.perf_counter()
            load_volume(folder)
            reading.append(time.perf_counter() - start)
            start = time.perf_counter()
            score(volume.hu, labels, volume.spacing_mm)
            scoring.append(time.perf_counter() - start)
    r, s = statistics.median(reading), statistics.median(scoring)
    print(f"scoring vs reading, 512x512x60 study, {len(result.lesions)} lesions, page cache "
          f"warm, medians of {REPEATS} alternating runs")
    print(f"  load_volume {r * 1000:8.1f} ms   score(standard) {s * 1000:8.1f} ms   "
          f"ratio {s / r:5.2f}   target <= 0.25: {'met' if s / r <= 0.25 else 'MISSED'}")
    ways = {"word by word": _find, "slab by slab": _find_by_slab}
    found = [way(hu, labels, 130.0) for way in ways.values()]
    assert all((a == b).all() for a, b in zip(*found, strict=True))
    seconds: dict[str, list[float]] = {name: [] for name in ways}
    for _ in range(REPEATS):
        for name, way in ways.items():
            start = time.perf_counter()
            way(hu, labels, 130.0)
            seconds[name].append(time.perf_counter() - start)
    words, slabs = (statistics.median(seconds[k]) for k in ways)
    print(f"  labelled voxels at 130 HU: word by word {words * 1000:.2f} ms, slab by slab "
          f"{slabs * 1000:.2f} ms ({slabs / words:.1f}x), the same voxels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
