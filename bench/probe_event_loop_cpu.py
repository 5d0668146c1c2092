"""Diagnostic (not part of ``make bench``): the CPU a single-threaded Dask worker's event
loop (its main thread) uses while the worker scores studies, against the study work.

A one-worker cluster started as the flow starts it scores 16 synthetic 128 x 128 studies,
four in flight (as the flow submits them), once per ``--ticks`` value of Dask's event-loop
tick, ``--rounds`` times in alternation. Printed per run: the wall time, the study work and
the CPU seconds of the worker's main thread and of its other threads (``psutil``). CPU
seconds, unlike wall time, hardly move with this shared machine's drift.

    python bench/probe_event_loop_cpu.py --ticks 20ms 1s --rounds 2
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

STUDIES = 16


def _thread_cpu() -> dict[str, float]:
    """CPU seconds of this process's main thread and of its other threads."""
    import threading

    import psutil

    main = threading.main_thread().native_id
    out = {"main": 0.0, "other": 0.0}
    for thread in psutil.Process().threads():
        out["main" if thread.id == main else "other"] += thread.user_time + thread.system_time
    return out


def measure(params: Any) -> tuple[float, float, float, float]:
    """Wall seconds, study work, event-loop CPU and other threads' CPU for one block."""
    from bench_pipeline import on_worker, planned_run
    from calcpipe.flows.cluster import SegmenterPlugin, cluster_client, torch_threads

    run, items = planned_run(params)
    spec = (params.model, params.device, params.precision, torch_threads(params))
    with cluster_client(params) as client:
        client.register_plugin(SegmenterPlugin(*spec))
        on_worker(client, run, items[:2], 2)  # warm-up
        (before,) = client.run(_thread_cpu).values()
        start = time.perf_counter()
        outcomes = on_worker(client, run, items, 4)
        wall = time.perf_counter() - start
        (after,) = client.run(_thread_cpu).values()
    run.remove_scratch()
    return (wall, sum(float(o.seconds) for o in outcomes), after["main"] - before["main"],
            after["other"] - before["other"])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--ticks", nargs="+", default=["20ms", "1s"])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    from calcpipe.flows import cluster

    from calcpipe.pipeline import ScoreParams
    from calcpipe.synthetic import write_cohort

    with tempfile.TemporaryDirectory() as tmp:
        cohort = write_cohort(Path(tmp) / "cohort", studies=STUDIES, seed=77, matrix=128,
                              workers=2)
        for number in range(args.rounds):
            for tick in args.ticks:
                cluster.EVENT_LOOP_TICK = tick
                params = ScoreParams(source=str(cohort), out=str(Path(tmp) / f"{tick}-{number}"),
                                     workers=1, torch_threads=1, shard_size=STUDIES)
                wall, study, loop, other = measure(params)
                print(f"tick {tick}: wall {wall:.1f} s, study work {study:.1f} s, worker event "
                      f"loop CPU {loop:.2f} s ({100 * loop / study:.1f} % of study work), "
                      f"other threads {other:.1f} s", flush=True)


if __name__ == "__main__":
    main()
