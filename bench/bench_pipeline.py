"""Benchmark: the cohort flow's orchestration overhead and its scaling from 1 to 2 workers.

One synthetic cohort (N_STUDIES studies, MATRIX x MATRIX) is scored into fresh output
folders, side by side in this one process, in REPEATS rounds (medians reported; the order
rotates each round, because this shared machine drifts by 10-20 % over minutes):

* single process (``run_single_process``, no Prefect, no Dask, one torch thread, in a
  fresh process each round, as each flow run starts fresh workers): the per-study compute;
* the Prefect flow on a LocalCluster of 1 single-threaded worker (one torch thread);
* the same flow on 2 single-threaded workers.

A one-study flow run first starts Prefect's API (not timed). Reported: the score stage
(for the flow: the wall time of all its score-shard task runs, Prefect's own cost
included) of each, the flow's overhead per study
against the single process (target: at most 5 % of the per-study compute), the 2-worker
over 1-worker throughput (target: at least 1.5x), the fixed start-up cost of a flow run
(Prefect API, cluster, model loading) apart, and the number of Prefect task runs.
Prefect runs against its local ephemeral API under a temporary PREFECT_HOME.

This 2-core VM drifts by as much as the 5 % target between identical rounds, so the overhead
is also measured in two drift-free parts, each within one run:

* around the study work: each run's score stage minus its study work (``study_s``: the
  seconds inside ``score_study``, summed over studies, measured where they ran), the flow's
  against the single process's (which is its commits and shard reading);
* the study work itself in a Dask worker against in a plain process, each scoring the same
  PAIR_STUDIES studies back to back (twice, in reverse order the second time), over
  PAIR_TRIALS fresh pairs of processes (a new cluster and a new plain process each time).
  One process runs the same work faster or slower than another by up to about 10 % on
  this machine (two identical plain processes, paired, gave ratios from 0.89 to 1.08), so
  a single pair measures that luck, not the worker; the mean over pairs, with its 95 %
  interval, does not.

Their sum is one overhead estimate. The other is direct: in each round, the flow's 1-worker
score stage over the fresh single process's (run next to each other), averaged over the
REPEATS rounds with its 95 % interval, since each round is again one pair of processes.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from scipy import stats

N_STUDIES = 16
MATRIX = 128
SHARD = 8
REPEATS = 8  # rounds; each is a fresh pair (flow worker, single process) for the direct ratio
PAIR_TRIALS = 12  # fresh pairs of processes for the paired study-work ratio
PAIR_STUDIES = 8  # studies in a block (each pair runs each block twice)


def main() -> None:
    global REPEATS, PAIR_TRIALS
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=REPEATS, help="rounds of the three runs")
    parser.add_argument("--pairs", type=int, default=PAIR_TRIALS,
                        help="fresh pairs of processes for the study-work ratio")
    args = parser.parse_args()
    REPEATS, PAIR_TRIALS = args.repeats, args.pairs
    # single-threaded like each worker (the nanny sets these there): a fair baseline
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[name] = "1"
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PREFECT_HOME"] = str(Path(tmp) / "prefect")
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        from calcpipe.flows.score_cohort import score_cohort

        from calcpipe.pipeline import ScoreParams
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
        runs: dict[str, list[tuple[dict[str, float], float]]] = {
            "single": [], "flow1": [], "flow2": []}

        def once(kind: str, number: int) -> None:
            out = str(Path(tmp) / f"{kind}-{number}")
            start = time.perf_counter()
            if kind == "single":  # in a fresh process, as each flow gets fresh workers
                with ProcessPoolExecutor(1, multiprocessing.get_context("spawn")) as fresh:
                    row = fresh.submit(_single_process, ScoreParams(out=out, **base)).result()
            else:
                row = score_cohort(ScoreParams(out=out, workers=int(kind[-1]), **base),
                                   show_progress=False)
            assert row["studies_scored"] == N_STUDIES
            runs[kind].append((row, time.perf_counter() - start))

        kinds = list(runs)
        for number in range(REPEATS):
            for kind in kinds[number % 3:] + kinds[:number % 3]:
                once(kind, number)
        worker_ratio = paired_worker_ratio(ScoreParams(out=str(Path(tmp) / "paired"),
                                                       **{**base, "shard_size": N_STUDIES}))

    def median(kind: str, key: str) -> float:
        return statistics.median(row[key] for row, _ in runs[kind])

    def around(kind: str) -> float:  # per round: the score stage minus its study work
        return statistics.median(row["score_s"] - row["study_s"] for row, _ in runs[kind])

    single = median("single", "score_s")
    per_study = single / N_STUDIES
    flow1, flow2 = median("flow1", "score_s"), median("flow2", "score_s")
    rounds = [f["score_s"] / s["score_s"]  # each round: flow 1 worker / its single process
              for (f, _), (s, _) in zip(runs["flow1"], runs["single"], strict=True)]
    direct, direct_half = mean_interval(rounds)
    around_pct = 100 * (around("flow1") - around("single")) / N_STUDIES / per_study
    ratio, half_width = worker_ratio
    worker_pct = 100 * (ratio - 1)
    speedup = flow1 / flow2
    shards = -(-N_STUDIES // SHARD)
    print(f"pipeline: {N_STUDIES} synthetic studies {MATRIX}x{MATRIX}, shards of {SHARD}, "
          f"medians of {REPEATS} rounds")
    print(f"  single process (1 torch thread): score+commit {single:.1f} s "
          f"({per_study:.2f} s/study); rounds "
          + ", ".join(f"{row['score_s']:.1f}" for row, _ in runs["single"]))
    for kind in ("flow1", "flow2"):
        seconds = median(kind, "score_s")
        print(f"  flow, {kind[-1]} worker(s): score stage {seconds:.1f} s "
              f"({N_STUDIES / seconds:.2f} studies/s; rounds "
              + ", ".join(f"{row['score_s']:.1f}" for row, _ in runs[kind])
              + f"); index {median(kind, 'index_s'):.1f} s, plan {median(kind, 'plan_s'):.1f} s;"
              f" whole call {statistics.median(w for _, w in runs[kind]):.1f} s "
              "(start-up included)")
    print(f"  around the study work (score stage - study work, median of rounds): single "
          f"{around('single'):.2f} s, flow 1 worker {around('flow1'):.2f} s: "
          f"{around_pct:+.1f} % of compute")
    print(f"  study work in a Dask worker / in a plain process, back to back, mean of "
          f"{PAIR_TRIALS} process pairs: {ratio:.3f} ({worker_pct:+.1f} %, 95 % interval "
          f"{100 * (ratio - half_width - 1):+.1f} to {100 * (ratio + half_width - 1):+.1f} %)")
    total = around_pct + worker_pct
    print(f"  orchestration overhead per study (the two parts): {total:+.1f} % of compute, "
          f"95 % interval {total - 100 * half_width:+.1f} to {total + 100 * half_width:+.1f} % "
          f"(target <= 5 %: {'met' if total <= 5 else 'MISSED'})")
    print(f"  direct: score stage, flow 1 worker / fresh single process, mean of {REPEATS} "
          f"rounds: {direct:.3f} ({100 * (direct - 1):+.1f} %, 95 % interval "
          f"{100 * (direct - direct_half - 1):+.1f} to {100 * (direct + direct_half - 1):+.1f} %;"
          " rounds " + ", ".join(f"{r:.3f}" for r in rounds) + ")")
    print(f"  throughput 2 workers / 1 worker: {speedup:.2f}x (target >= 1.5x)")
    print(f"  Prefect task runs per flow run: {shards + 3} "
          f"(index, plan, {shards} score-shard (score and commit), report)")


def _single_process(params: Any) -> dict[str, Any]:
    from calcpipe.pipeline import run_single_process

    return dict(run_single_process(params, threads=1))


_PLAIN: dict[str, Any] = {}  # the plain process's segmenter


def _load_plain(model: str, device: str, precision: str, threads: int | None) -> None:
    from calcpipe.pipeline.run import load_segmenter

    _PLAIN["segmenter"] = load_segmenter(model, device, precision, threads)


def _score_plain(item: Any, provenance: Any, root: str) -> Any:
    """One study in the plain process's main thread, as ``run_single_process`` scores it."""
    from calcpipe.pipeline.work import score_study

    return score_study(item, _PLAIN["segmenter"], provenance, out_root=root,
                       storage_options=None, secret=None)


def paired_worker_ratio(params: Any) -> tuple[float, float]:
    """Mean over PAIR_TRIALS fresh pairs of processes of (median study work in a
    single-threaded Dask worker, 4 studies in flight as the flow submits them) / (median in
    a plain process), both scoring PAIR_STUDIES studies back to back; and the half-width of
    its 95 % interval."""
    ratios = worker_block_ratios(params, (4,), PAIR_TRIALS)[4]
    print("  (worker/plain per process pair, back-to-back blocks of "
          f"{PAIR_STUDIES} studies: " + ", ".join(f"{r:.3f}" for r in ratios) + ")")
    return mean_interval(ratios)


def worker_block_ratios(params: Any, in_flights: tuple[int, ...], pairs: int,
                        ) -> dict[int, list[float]]:
    """For each of ``pairs`` fresh pairs of processes (a one-worker cluster started as the
    flow starts it, and a plain spawned process with the same segmenter): the median
    seconds of study work per study in the worker with each of ``in_flights`` studies
    outstanding, over the median in the plain process. Each scores the same PAIR_STUDIES
    studies as a block, back to back (as a flow run does), every block twice, the second
    time in reverse order of kinds. Study by study in alternation, a worker does not show a
    cost that it shows back to back (Dask's profiler: docs/scale.md)."""
    from calcpipe.flows.cluster import SegmenterPlugin, cluster_client, torch_threads

    run, studies = planned_run(params)
    studies = studies[:PAIR_STUDIES]
    spec = (params.model, params.device, params.precision, torch_threads(params))
    ratios: dict[int, list[float]] = {n: [] for n in in_flights}
    for _ in range(pairs):
        with (ProcessPoolExecutor(1, multiprocessing.get_context("spawn"),
                                  initializer=_load_plain, initargs=spec) as plain,
              cluster_client(params.model_copy(update={"workers": 1})) as client):  # as the flow
            client.register_plugin(SegmenterPlugin(*spec))

            def block(in_flight: int, items: list[Any]) -> list[float]:  # 0: plain process
                if not in_flight:
                    outcomes = [plain.submit(_score_plain, item, run.provenance,
                                             run.store.root).result() for item in items]
                else:
                    outcomes = on_worker(client, run, items, in_flight)
                assert all(o.failure is None for o in outcomes), outcomes
                return [float(o.seconds) for o in outcomes]

            block(0, studies[:1]), block(in_flights[0], studies[:1])  # warm-up, not timed
            seconds: dict[int, list[float]] = {n: [] for n in (0, *in_flights)}
            for order in (list(seconds), list(seconds)[::-1]):
                for in_flight in order:
                    seconds[in_flight] += block(in_flight, studies)
            base = statistics.median(seconds[0])
            for n in in_flights:
                ratios[n].append(statistics.median(seconds[n]) / base)
    run.remove_scratch()
    return ratios


def planned_run(params: Any) -> tuple[Any, list[Any]]:
    """A run of ``params``, indexed and planned in this process, and its study items."""
    from calcpipe.pipeline.run import Run, in_process

    run = Run(params, None)
    run.index(in_process)
    return run, [i for shard in run.plan(in_process) for i in run.shard_items(shard)]


def on_worker(client: Any, run: Any, items: list[Any], in_flight: int) -> list[Any]:
    """The outcomes of scoring ``items`` on the client's workers, with ``in_flight``
    studies outstanding, submitted as the flow submits them."""
    from calcpipe.flows.cluster import score_on_worker
    from calcpipe.flows.score_cohort import in_flight_window

    def submit(item: Any) -> Any:
        return client.submit(score_on_worker, item, run.provenance, run.store.root,
                             None, None, False, pure=False)

    return [future.result() for _, future in in_flight_window(client, items, submit, in_flight)]


def mean_interval(values: list[float]) -> tuple[float, float]:
    """The mean of ``values`` and the half-width of its 95 % Student t interval."""
    t_95 = stats.t.ppf(0.975, len(values) - 1)  # two-sided
    return statistics.mean(values), t_95 * statistics.stdev(values) / math.sqrt(len(values))


if __name__ == "__main__":
    main()
