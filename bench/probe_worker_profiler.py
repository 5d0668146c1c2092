"""Diagnostic (not part of ``make bench``): study work back to back in a single-threaded
Dask worker against a plain process, with Dask's statistical profiler on or off.

Over ``--pairs`` fresh pairs of processes (a one-worker LocalCluster started as the flow
starts it, and a plain spawned process holding the same segmenter), both score 8 synthetic
128 x 128 studies as blocks, back to back: the worker with one study in flight and with
four (as ``bench_pipeline`` runs the flow), each against the plain process
(``bench_pipeline.worker_block_ratios``). Printed: the worker/plain ratio of each pair and
their mean.

    python bench/probe_worker_profiler.py --pairs 3 --profiler on
    python bench/probe_worker_profiler.py --pairs 3 --profiler off
    python bench/probe_worker_profiler.py --pairs 3 --in-flights 1 2 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--profiler", choices=("on", "off"), default="off")
    parser.add_argument("--in-flights", type=int, nargs="+", default=[1, 4],
                        help="studies outstanding in the worker, each compared")
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    import bench_pipeline as bp

    from calcpipe.pipeline import ScoreParams
    from calcpipe.synthetic import write_cohort

    with tempfile.TemporaryDirectory() as tmp:
        cohort = write_cohort(Path(tmp) / "cohort", studies=bp.PAIR_STUDIES, seed=77,
                              matrix=bp.MATRIX, workers=2)
        params = ScoreParams(source=str(cohort), out=str(Path(tmp) / "out"), workers=1,
                             torch_threads=1,
                             cluster_options={"profiler": args.profiler == "on"})
        ratios = bp.worker_block_ratios(params, tuple(args.in_flights), args.pairs)
    for in_flight, values in ratios.items():
        print(f"profiler {args.profiler}, in_flight {in_flight}: worker/plain mean "
              f"{statistics.mean(values):.3f} (pairs: "
              + ", ".join(f"{v:.3f}" for v in values) + ")")


if __name__ == "__main__":
    main()
