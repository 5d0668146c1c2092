"""Benchmark: the cohort flow's orchestration overhead and its scaling from 1 to 2 workers.

One synthetic cohort (N_STUDIES studies, MATRIX x MATRIX) is scored three times into fresh
output folders, side by side in this one process:

* single process (``run_single_process``, no Prefect, no Dask, one torch thread): the
  per-study compute;
* the Prefect flow on a LocalCluster of 1 single-threaded worker (one torch thread);
* the same flow on 2 single-threaded workers.

A one-study flow run first starts Prefect's API (not timed). Reported: the score stage
(shards plus commits) of each, the flow's overhead per study
against the single process (target: at most 5 % of the per-study compute), the 2-worker
over 1-worker throughput (target: at least 1.5x), the fixed start-up cost of a flow run
(Prefect API, cluster, model loading) apart, and the number of Prefect task runs.
Prefect runs against its local ephemeral API under a temporary PREFECT_HOME.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

N_STUDIES = 16
MATRIX = 128
SHARD = 8


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        from calcpipe.flows.score_cohort import score_cohort

        from calcpipe.pipeline import ScoreParams, run_single_process
        from calcpipe.synthetic import write_cohort

        cohort = write_cohort(Path(tmp) / "cohort", studies=N_STUDIES, seed=77,
                              matrix=MATRIX, workers=2)
        base = {"source": str(cohort), "shard_size": SHARD, "in_flight": 4,
                "torch_threads": 1}

        # warm-up, not timed: Prefect's ephemeral API starts (and runs its start-up
        # services) on the first flow call; that is a fixed cost per process, not per study
        score_cohort(ScoreParams(out=str(Path(tmp) / "warm-up"), workers=1,
                                 **{**base, "source": str(cohort / "study_00000")}),
                     show_progress=False)
        start = time.perf_counter()
        single = run_single_process(ScoreParams(out=str(Path(tmp) / "single"), **base),
                                    threads=1)
        single_wall = time.perf_counter() - start
        results = {}
        for workers in (1, 2):
            start = time.perf_counter()
            row = score_cohort(ScoreParams(out=str(Path(tmp) / f"flow{workers}"),
                                           workers=workers, **base), show_progress=False)
            results[workers] = (row, time.perf_counter() - start)
        assert all(r["studies_scored"] == N_STUDIES for r, _ in results.values())

    per_study = single["score_s"] / N_STUDIES
    flow1 = results[1][0]["score_s"]
    overhead = (flow1 - single["score_s"]) / N_STUDIES
    speedup = results[1][0]["score_s"] / results[2][0]["score_s"]
    shards = -(-N_STUDIES // SHARD)
    print(f"pipeline: {N_STUDIES} synthetic studies {MATRIX}x{MATRIX}, shards of {SHARD}")
    print(f"  single process (1 torch thread): score+commit {single['score_s']:.1f} s "
          f"({per_study:.2f} s/study), run {single_wall:.1f} s")
    for workers, (row, wall) in results.items():
        print(f"  flow, {workers} worker(s):              score+commit {row['score_s']:.1f} s "
              f"({N_STUDIES / row['score_s']:.2f} studies/s); index {row['index_s']:.1f} s, "
              f"plan {row['plan_s']:.1f} s; whole call {wall:.1f} s (start-up included)")
    print(f"  orchestration overhead per study, 1 worker vs single process: "
          f"{overhead:+.3f} s = {100 * overhead / per_study:+.1f} % of compute (target <= 5 %)")
    print(f"  throughput 2 workers / 1 worker: {speedup:.2f}x (target >= 1.5x)")
    print(f"  Prefect task runs per flow run: {2 * shards + 3} "
          f"(index, plan, {shards} score-shard, {shards} commit, report)")


if __name__ == "__main__":
    main()
