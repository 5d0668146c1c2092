"""Diagnostic (not part of ``make bench``): how much light activity on another core slows a
single-threaded worker's study work on this machine.

The cohort flow's worker runs its study work about 7 % slower inside a flow run than alone
(``bench/bench_pipeline.py``), while the flow process and Prefect's server use about a tenth
of the second core. This measures the mechanism directly: one torch thread segments 4
synthetic 128 x 128 studies, alone and then with a busy loop (no memory traffic) running
``--duty`` of the time in another process, in ``--pairs`` alternating pairs; it prints the
mean loaded/alone ratio with its 95 % interval.

    python bench/probe_neighbour_load.py --duty 0.1 --pairs 10
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import statistics
import time
from typing import Any

PERIOD_S = 0.01  # the busy loop's cycle: busy for duty x period, then asleep


def busy(duty: float, stop: Any) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        while time.perf_counter() - start < duty * PERIOD_S:
            pass
        time.sleep((1 - duty) * PERIOD_S)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duty", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=10)
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = "1"
    import torch
    from scipy import stats

    from calcpipe.models.segment import UNetSegmenter
    from calcpipe.synthetic import render_study, sample_spec

    torch.set_num_threads(1)
    studies = [render_study(sample_spec(77, i, matrix=128)) for i in range(4)]
    segmenter = UNetSegmenter.load("default", threads=1)
    segmenter.segment(studies[0].hu, studies[0].spacing_mm)  # warm-up

    def work() -> float:
        start = time.perf_counter()
        for study in studies:
            segmenter.segment(study.hu, study.spacing_mm)
        return time.perf_counter() - start

    context = multiprocessing.get_context("spawn")
    ratios = []
    for _ in range(args.pairs):
        alone = work()
        stop = context.Event()
        neighbour = context.Process(target=busy, args=(args.duty, stop))
        neighbour.start()
        time.sleep(0.5)  # the neighbour's interpreter has started
        loaded = work()
        stop.set()
        neighbour.join()
        ratios.append(loaded / alone)
    mean = statistics.mean(ratios)
    half = stats.t.ppf(0.975, len(ratios) - 1) * statistics.stdev(ratios) / math.sqrt(len(ratios))
    print(f"study work with a busy loop on another core {100 * args.duty:.0f} % of the time / "
          f"alone, {args.pairs} alternating pairs: mean {mean:.3f} (95 % interval "
          f"{mean - half:.3f} to {mean + half:.3f}); pairs "
          + ", ".join(f"{r:.3f}" for r in ratios))


if __name__ == "__main__":
    main()
