"""Benchmark: load_volume against a plain pydicom.dcmread loop on the same files.

Both read the same 512 x 512 x 60 series from page cache (one warm-up pass first) and
decode every pixel; load_volume also sorts, checks geometry, rescales to int16 HU and
stacks. Runs alternate so drift hits both sides alike; medians of REPEATS runs.
Target: ratio <= 1.3.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom

from calcpipe.dicom import list_files, load_volume
from calcpipe.dicom.writer import write_series

REPEATS = 7
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def plain_loop(files: list[str]) -> object:
    return [pydicom.dcmread(f).pixel_array for f in files]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def compare(label: str, folder: Path) -> float:
    files = list_files(folder)
    plain_loop(files), load_volume(folder)  # warm page cache and imports
    plain, ours = [], []
    for _ in range(REPEATS):
        plain.append(timed(lambda: plain_loop(files)))
        ours.append(timed(lambda: load_volume(folder)))
    p, o = statistics.median(plain), statistics.median(ours)
    print(f"{label:<44} {len(files):>4} files  dcmread loop {p * 1000:8.1f} ms  "
          f"load_volume {o * 1000:8.1f} ms  ratio {o / p:5.2f}")
    return o / p


def main() -> int:
    print("load_volume vs plain pydicom.dcmread(...).pixel_array loop, medians of "
          f"{REPEATS} alternating runs, files in page cache")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        hu = rng.integers(-1024, 1500, size=(60, 512, 512)).astype(np.int16)
        folder = Path(tmp) / "series"
        write_series(folder, hu, spacing_mm=(3.0, 0.49, 0.49))
        ratio = compare("synthetic 512x512x60, explicit VR LE", folder)
    qrm = SHARED / "qrm_phantom_canon" / "dicom"
    if qrm.is_dir():
        compare("QRM phantom 512x512x47, implicit VR LE", qrm)
    else:
        print(f"(real QRM phantom skipped: {qrm} absent)")
    j2k = SHARED / "totalseg_ct_jpeg2000" / "dicom"
    if j2k.is_dir():
        compare("TotalSegmentator 512x512x20, JPEG 2000", j2k)
    print(f"target ratio <= 1.30 on the 512x512x60 study: {'met' if ratio <= 1.3 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
