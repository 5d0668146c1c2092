"""The README demo: the nightly job on a small synthetic cohort, end to end.

``make demo`` = ``calcpipe demo demo_out``: synthesise a cohort of DICOM studies into
``demo_out/cohort`` (once; kept between runs), run the cohort flow on it exactly as
``calcpipe score demo_out/cohort --out demo_out/results`` does (Prefect's local ephemeral
API, a ``LocalCluster``, the shipped model), print where everything landed, a per-vessel
summary and a DuckDB query, and compare the scores with the cohort's truth.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from rich.console import Console
from rich.table import Table

DEMO_SQL = ("SELECT name, count(*) FILTER (WHERE agatston > 0) AS positive, "
            "round(avg(agatston), 1) AS mean_agatston FROM latest_vessel_scores "
            "WHERE NOT is_group GROUP BY name, label ORDER BY label")


def run_demo(out: Path, console: Console, *, studies: int = 20, matrix: int = 256,
             workers: int = 2) -> None:
    from calcpipe.pipeline.params import ScoreParams
    from calcpipe.pipeline.report import print_summary
    from calcpipe.synthetic import write_cohort

    cohort = out / "cohort"
    if not (cohort / "_truth" / "scores.parquet").exists():
        console.rule(f"1. Synthesising {studies} cardiac CT studies ({matrix}x{matrix})")
        shutil.rmtree(cohort, ignore_errors=True)  # the demo's own, cut short before
        write_cohort(cohort, studies=studies, seed=2026, matrix=matrix, workers=workers)
    else:
        console.rule(f"1. Synthetic cohort already in {cohort}")
    console.rule("2. calcpipe score (Prefect flow on a local Dask cluster)")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from calcpipe.flows.score_cohort import score_cohort

    params = ScoreParams(source=str(cohort), out=str(out / "results"), cohort="demo",
                         workers=workers, shard_size=10)
    row = score_cohort(params)
    console.rule("3. Results")
    print_summary(console, params, row)
    show_query(console, params.out)
    compare_with_truth(console, cohort, params.out)


def show_query(console: Console, results: str) -> None:
    from calcpipe.catalog import open_catalog

    console.print(f'\n$ calcpipe query --out {results} "{DEMO_SQL}"')
    relation = open_catalog(results).query(DEMO_SQL)
    table = Table(*relation.columns)
    for values in relation.fetchall():
        table.add_row(*(str(v) for v in values))
    console.print(table)


def compare_with_truth(console: Console, cohort: Path, results: str) -> None:
    """How far the shipped model's CAC and AC are from the synthetic truth."""
    import numpy as np
    import pyarrow.parquet as pq

    from calcpipe.catalog import open_catalog
    from calcpipe.metrics import spearman

    truth = {(r["study_key"], r["name"]): r["agatston"]
             for r in pq.read_table(cohort / "_truth" / "scores.parquet").to_pylist()}
    rows = open_catalog(results).query(
        "SELECT study_key, name, agatston FROM latest_vessel_scores "
        "WHERE name IN ('CAC', 'AC')").fetchall()
    for group in ("CAC", "AC"):
        pairs = [(a, truth[(k, n)]) for k, n, a in rows if n == group and (k, n) in truth]
        if len(pairs) < 3:
            continue
        got, want = np.array(pairs).T
        rho = spearman(got, want)
        console.print(f"{group}: Spearman rho against the truth {rho:.3f} over "
                      f"{len(pairs)} studies; median |error| "
                      f"{float(np.median(np.abs(got - want))):.1f} AU")
