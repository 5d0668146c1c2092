"""Benchmark: load_volume against a plain pydicom.dcmread loop on the same files, and
against itself with the fast reader for uncompressed files (calcpipe.dicom.native) off.

All read the same series from page cache (one warm-up pass first) and decode every pixel;
load_volume also sorts, checks geometry, rescales to int16 HU and stacks. Runs alternate
so drift hits every side alike; medians of REPEATS runs. Target: ratio <= 1.3.
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

from calcpipe.dicom import list_files, load_volume, native
from calcpipe.dicom.writer import write_series

REPEATS = 7
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def plain_loop(files: list[str]) -> object:
    return [pydicom.dcmread(f).pixel_array for f in files]


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pydicom_path(folder: Path) -> object:
    """load_volume with every file read through pydicom (the fast reader declines)."""
    fast = native.read_native
    native.read_native = lambda name: None  # type: ignore[assignment]
    try:
        return load_volume(folder)
    finally:
        native.read_native = fast


def compare(label: str, folder: Path) -> float:
    files = list_files(folder)
    plain_loop(files), load_volume(folder)  # warm page cache and imports
    assert np.array_equal(load_volume(folder).hu, pydicom_path(folder).hu)  # type: ignore[attr-defined]
    plain, ours, without = [], [], []
    for _ in range(REPEATS):
        plain.append(timed(lambda: plain_loop(files)))
        ours.append(timed(lambda: load_volume(folder)))
        without.append(timed(lambda: pydicom_path(folder)))
    p, o, w = statistics.median(plain), statistics.median(ours), statistics.median(without)
    print(f"{label:<40} {len(files):>3} files  dcmread loop {p * 1000:6.1f} ms  "
          f"load_volume {o * 1000:6.1f} ms  ratio {o / p:4.2f}  "
          f"(pydicom path {w * 1000:6.1f} ms: fast reader {w / o:4.2f}x)")
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
    chest = SHARED / "chest_ct_lung_pet_ct_dx" / "study_A0002" / "series_B40f"
    if chest.is_dir():
        compare("chest CT 512x512x30, explicit VR LE", chest)
    j2k = SHARED / "totalseg_ct_jpeg2000" / "dicom"
    if j2k.is_dir():
        compare("TotalSegmentator 512x512x20, JPEG 2000", j2k)
    print(f"target ratio <= 1.30 on the 512x512x60 study: {'met' if ratio <= 1.3 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
