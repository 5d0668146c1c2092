"""Benchmark: header-scan throughput (files/s) on disk and on a local S3 server (moto).

The same N_FILES generated files (N_SERIES series of small 64 x 64 images) are scanned
with ``calcpipe.ingest.scan_headers`` from a local folder (page cache warm) and from a
moto S3 server on 127.0.0.1 (one ranged GET of at most 64 KiB per file, batches in flight
concurrently). Runs alternate; medians of REPEATS runs. The S3 number measures the
client and moto's Python server on this machine, not a real object store's latency.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from calcpipe.dicom.writer import write_series
from calcpipe.ingest import scan_headers
from calcpipe.ingest.local_s3 import LocalS3

N_SERIES = 4
SLICES = 50
N_FILES = N_SERIES * SLICES
REPEATS = 5


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp, LocalS3() as s3:
        root = Path(tmp)
        for n in range(N_SERIES):
            hu = np.zeros((SLICES, 64, 64), dtype=np.int16)
            write_series(root / f"series{n}", hu, spacing_mm=(3, 0.5, 0.5),
                         series_uid=f"1.2.826.0.1.3680043.8.498.5.{n}")
        url = s3.upload(root, "s3://bench/cohort")
        options = s3.storage_options
        sources = {"disk": (str(root), None), "s3 (moto)": (url, options)}
        for source, opts in sources.values():  # warm up imports, page cache, connections
            assert len(scan_headers(source, storage_options=opts).headers) == N_FILES
        times: dict[str, list[float]] = {name: [] for name in sources}
        for _ in range(REPEATS):
            for name, (source, opts) in sources.items():
                start = time.perf_counter()
                scan_headers(source, storage_options=opts)
                times[name].append(time.perf_counter() - start)
    print(f"header scan of {N_FILES} files (64 x 64, {N_SERIES} series), "
          f"median of {REPEATS} runs")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"  {name:10s} {median * 1000:8.1f} ms  {N_FILES / median:8.0f} files/s")
    ratio = statistics.median(times["s3 (moto)"]) / statistics.median(times["disk"])
    print(f"  s3 / disk time ratio: {ratio:.2f}")


if __name__ == "__main__":
    main()
