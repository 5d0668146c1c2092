"""Benchmark: synthetic study generation, and the QRM replica against the real scan.

1. Seconds to render and write one 512 x 512 study (about 50-60 slices) on one core.
2. Cohort throughput (studies per minute) writing 512 x 512 studies with one worker and
   with both cores, side by side.
3. The QRM replica scored like the real scan, insert by insert, beside the FQM reference
   (needs ../shared/data; skipped with a note otherwise).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from calcpipe.synthetic import sample_spec, write_cohort, write_study
from calcpipe.synthetic.qrm import format_report, qrm_report

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
COHORT = 4


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        spec = sample_spec(99, 0, matrix=512)
        start = time.perf_counter()
        write_study(spec, tmp)
        one = time.perf_counter() - start
        print(f"one 512x512 study ({spec.scanner.slice_spacing_mm:g} mm slices), one core: "
              f"{one:.2f} s")
        rates = {}
        for workers in (1, 2):
            start = time.perf_counter()
            write_cohort(Path(tmp) / f"w{workers}", studies=COHORT, seed=5, matrix=512,
                         workers=workers)
            rates[workers] = COHORT / (time.perf_counter() - start) * 60
        print(f"cohort of {COHORT} studies: {rates[1]:.1f} studies/min on 1 worker, "
              f"{rates[2]:.1f} on 2 workers (speed-up {rates[2] / rates[1]:.2f}x)")
    reference = SHARED / "qrm_phantom_canon" / "reference.csv"
    if reference.is_file():
        print("QRM replica (seed 0) vs the real scan, standard profile, c_HA 0.722048:")
        print(format_report(qrm_report(reference)))
    else:
        print(f"(QRM comparison skipped: {reference} absent)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
