"""The run report: what this run did, and the cohort as in the paper's Table 1.

Written to ``OUT/report/summary.md`` and ``summary.json``; the flow publishes the same
markdown as a Prefect artifact. Cohort figures use the latest result per study under the
run's profile (``latest_study_scores``), so they cover every study scored so far.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from calcpipe.scoring.features import PAPER_CATEGORIES
from calcpipe.tables.store import join

if TYPE_CHECKING:
    from calcpipe.pipeline.run import Run

VESSELS = ("LM", "LAD", "LCX", "RCA", "TAC", "AVC")
CATEGORIES = PAPER_CATEGORIES


def cohort_summary(out: str, storage_options: Any, profile: str) -> dict[str, Any]:
    """Studies, age, sex, prevalence by vessel and CAC category (latest results)."""
    from calcpipe.catalog import open_catalog

    con = open_catalog(out, storage_options).connect()
    studies = con.execute(
        "SELECT count(*), avg(age_years), stddev_samp(age_years), "
        "avg(CASE WHEN sex = 'F' THEN 1.0 WHEN sex = 'M' THEN 0.0 END) "
        "FROM latest_study_scores WHERE profile = ?", [profile]).fetchone()
    assert studies is not None
    n = int(studies[0])
    prevalence = dict(con.execute(
        "SELECT name, avg(CASE WHEN agatston > 0 THEN 1.0 ELSE 0.0 END) "
        "FROM latest_vessel_scores WHERE profile = ? GROUP BY name", [profile]).fetchall())
    categories = dict(con.execute(
        "SELECT cac_category, count(*) FROM latest_study_scores WHERE profile = ? "
        "GROUP BY cac_category", [profile]).fetchall())
    failures = dict(con.execute(
        "SELECT code, count(DISTINCT study_key) FROM failures f WHERE NOT EXISTS "
        "(SELECT 1 FROM study_scores s WHERE s.study_key = f.study_key "
        "AND s.input_fingerprint = f.input_fingerprint) GROUP BY code").fetchall())
    return {
        "profile": profile, "studies": n,
        "age_mean_years": studies[1], "age_sd_years": studies[2],
        "female_share": studies[3],
        "prevalence": {v: prevalence.get(v, 0.0) for v in (*VESSELS, "CAC", "AC")},
        "cac_category": {c: int(categories.get(c, 0)) for c in CATEGORIES},
        "unscored_studies_by_code": {k: int(v) for k, v in sorted(failures.items())},
    }


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f} %"


def markdown(row: dict[str, Any], cohort: dict[str, Any], codes: dict[str, int]) -> str:
    lines = [
        f"# calcpipe run `{row['run_id']}` ({row['mode']}, cohort {row['cohort']})", "",
        "| | this run |", "|---|---|",
        f"| objects listed | {row['objects_listed']} |",
        f"| headers read | {row['headers_read']} |",
        f"| studies found | {row['studies_found']} |",
        f"| already done (skipped) | {row['studies_skipped']} |",
        f"| to score (planned) | {row['studies_planned']} |",
        f"| scored | {row['studies_scored']} |",
        f"| failed | {row['studies_failed']} |",
        f"| time | {row['total_s']:.1f} s |", "",
    ]
    if codes:
        lines += ["Failures this run by reason: "
                  + ", ".join(f"`{k}` {v}" for k, v in sorted(codes.items())), ""]
    age = cohort["age_mean_years"]
    lines += [
        f"## Cohort ({cohort['studies']} studies scored, profile `{cohort['profile']}`)", "",
        f"Age {age:.1f} +/- {cohort['age_sd_years'] or 0:.1f} years; "
        f"female {_pct(cohort['female_share'])}." if age is not None else "Age unknown.",
        "", "| calcium in | share of studies |", "|---|---|",
        *(f"| {v} | {_pct(p)} |" for v, p in cohort["prevalence"].items()), "",
        "| CAC category | studies |", "|---|---|",
        *(f"| {c} | {k} |" for c, k in cohort["cac_category"].items()), "",
    ]
    if cohort["unscored_studies_by_code"]:
        lines += ["Studies without a result, by reason: " + ", ".join(
            f"`{k}` {v}" for k, v in cohort["unscored_studies_by_code"].items()), ""]
    return "\n".join(lines)


def write_report(run: Run, row: dict[str, Any]) -> str:
    """Write ``OUT/report/summary.{md,json}``; the markdown."""
    from calcpipe.ingest.discover import open_filesystem

    options = run.params.storage_options or None
    cohort = cohort_summary(run.params.out, options, run.params.profile)
    text = markdown(row, cohort, dict(run.counts.failure_codes))
    folder = join(run.params.out, "report")
    fs, path = open_filesystem(folder, options)
    fs.makedirs(path, exist_ok=True)
    fs.pipe_file(f"{path}/summary.md", text.encode("utf-8"))
    payload = {"run": row, "cohort": cohort, "failure_codes": dict(run.counts.failure_codes)}
    fs.pipe_file(f"{path}/summary.json",
                 json.dumps(payload, default=str, indent=2).encode("utf-8"))
    run.report_markdown = text
    return text


def print_summary(console: Any, params: Any, row: dict[str, Any]) -> None:
    """The final console table: counts, where outputs landed, per-vessel summary."""
    from rich.table import Table

    from calcpipe.catalog import open_catalog
    from calcpipe.tables.store import join

    options = params.storage_options or None
    counts = Table(title="calcpipe run", show_header=False)
    counts.add_row("run id", row["run_id"])
    for label, key in (("objects listed", "objects_listed"), ("headers read", "headers_read"),
                       ("studies found", "studies_found"),
                       ("already done", "studies_skipped"), ("planned", "studies_planned"),
                       ("scored", "studies_scored"),
                       ("failed", "studies_failed")):
        counts.add_row(label, str(row[key]))
    counts.add_row("time", f"{row['total_s']:.1f} s")
    console.print(counts)
    vessels = open_catalog(params.out, options).query(
        "SELECT name, count(*) AS studies, "
        "avg(CASE WHEN agatston > 0 THEN 1.0 ELSE 0.0 END) AS prevalence, "
        "median(agatston) FILTER (WHERE agatston > 0) AS median_positive, "
        "max(agatston) AS max_agatston, sum(n_lesions) AS lesions "
        f"FROM latest_vessel_scores WHERE profile = '{params.profile}' "
        "GROUP BY name ORDER BY min(coalesce(label, 100)), name").fetchall()
    table = Table(title=f"Per vessel, latest results (profile {params.profile})")
    for column in ("vessel", "studies", "with calcium", "median AU (if >0)", "max AU",
                   "lesions"):
        table.add_column(column, justify="left" if column == "vessel" else "right")
    for name, n, prevalence, median, peak, lesions in vessels:
        table.add_row(name, str(n), _pct(prevalence),
                      "-" if median is None else f"{median:.1f}", f"{peak:.1f}",
                      str(lesions))
    console.print(table)
    console.print(f"tables:  {join(params.out, 'tables')}/<name>  (Delta Lake)\n"
                  f"masks:   {join(params.out, 'masks')}/<study_key>.nii.gz\n"
                  f"report:  {join(params.out, 'report', 'summary.md')}\n"
                  f"catalog: {join(params.out, 'data_catalog.yaml')}")
