"""Evaluation against ground truth: the paper's Table 2, Agatston agreement, risk categories.

``calcpipe evaluate --pred OUT --truth TRUTH --report DIR`` compares the latest results in a
``calcpipe score`` output folder with a truth folder holding label maps
(``labels/<study_key>.nii.gz``, as ``calcpipe synth`` writes under ``_truth/``) and/or
per-study scores (``scores.parquet``, or a CSV with columns ``study_key``, ``name`` (or
``vessel``) and ``agatston``, such as clinical reports give). With scores only, only the
score statistics are computed.

* Dice per patient and class (vessel-aware, :func:`calcpipe.metrics.dice_per_class`); the
  Table 2 layout: median (Q1, Q3) per structure overall, by sex and by age < 65 / >= 65,
  with Wilcoxon rank-sum (Mann-Whitney U) p-values, two-sided: exact for small groups
  without ties, otherwise the normal approximation with its tie correction (Dice values
  tie often, at 0 and 1; ``scipy.stats.ranksums`` has no tie correction and overstates p).
* Agatston agreement per vessel and for CAC, AC and TOTAL: Spearman rho, Bland-Altman mean
  difference (prediction - truth) and 95 % limits of agreement (mean +/- 1.96 SD, SD with
  n - 1), the same in percent of the pair's mean over pairs whose mean is above 0, and
  ICC(2,1).
* CAC risk categories (0 / 1-99 / 100-399 / >=400): confusion matrix (rows truth, columns
  prediction) and linearly weighted kappa (undefined, NaN, when both sides put every study
  in one category).

Studies found on one side only are listed, never dropped silently: scores of truth without
a prediction and of predictions without truth, and label maps likewise. Truth scores that
are missing (empty or NaN) are left out of the statistics and counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calcpipe.metrics import icc_2_1, median_iqr, spearman, weighted_kappa
from calcpipe.scoring.features import PAPER_CATEGORIES

#: Table 2 structures: (row name, dice class)
STRUCTURES = (("Coronary", "coronary"), ("LAD", "LAD"), ("RCA", "RCA"), ("LCX", "LCX"),
              ("Aorta", "aorta"), ("LM", "LM"))
SCORE_NAMES = ("LM", "LAD", "LCX", "RCA", "TAC", "AVC", "CAC", "AC", "TOTAL")
CATEGORIES = PAPER_CATEGORIES


@dataclass
class Evaluation:
    dice: list[dict[str, Any]] = field(default_factory=list)  # study_key, class, dice
    table2: list[dict[str, Any]] = field(default_factory=list)
    agreement: list[dict[str, Any]] = field(default_factory=list)
    confusion: list[list[int]] = field(default_factory=list)
    kappa: float | None = None
    n_studies: int = 0
    truth_only: list[str] = field(default_factory=list)  # scores without a prediction
    prediction_only: list[str] = field(default_factory=list)  # scores without truth
    labels_without_prediction: list[str] = field(default_factory=list)
    predictions_without_labels: list[str] = field(default_factory=list)
    #: results whose study's stored mask another model or other inputs made (no Dice)
    masks_not_of_result: list[str] = field(default_factory=list)
    truth_scores_missing: int = 0  # truth rows without a number


def bland_altman(truth: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Mean difference and limits of agreement, absolute and in percent of the mean."""
    diff = pred - truth
    mean = float(diff.mean())
    sd = float(diff.std(ddof=1)) if diff.size > 1 else float("nan")
    pair_mean = (pred + truth) / 2
    keep = pair_mean > 0
    pct = 100 * diff[keep] / pair_mean[keep]
    pct_mean = float(pct.mean()) if pct.size else float("nan")
    pct_sd = float(pct.std(ddof=1)) if pct.size > 1 else float("nan")
    return {"ba_mean_au": mean, "ba_lower_au": mean - 1.96 * sd,
            "ba_upper_au": mean + 1.96 * sd, "ba_mean_percent": pct_mean,
            "ba_lower_percent": pct_mean - 1.96 * pct_sd,
            "ba_upper_percent": pct_mean + 1.96 * pct_sd, "ba_pairs_percent": int(pct.size)}


def _cell(values: list[float | None]) -> dict[str, Any]:
    median, q1, q3, n, excluded = median_iqr(values)
    return {"median": median, "q1": q1, "q3": q3, "n": n, "excluded": excluded}


def _ranksums(a: list[float | None], b: list[float | None]) -> float | None:
    """Two-sided Wilcoxon rank-sum p-value (see the module docstring)."""
    from scipy.stats import mannwhitneyu

    x = [v for v in a if v is not None]
    y = [v for v in b if v is not None]
    if len(x) < 2 or len(y) < 2:
        return None
    if len(set(x) | set(y)) == 1:  # every value alike: no ranks to compare
        return 1.0
    return float(mannwhitneyu(x, y, alternative="two-sided", method="auto",
                              use_continuity=False).pvalue)


def evaluate(pred_scores: dict[tuple[str, str], float],
             truth_scores: dict[tuple[str, str], float],
             dice: dict[str, dict[str, float | None]] | None = None,
             demographics: dict[str, tuple[float | None, str | None]] | None = None,
             ) -> Evaluation:
    """Statistics of predictions against truth.

    Parameters
    ----------
    pred_scores, truth_scores : mapping (study_key, name) -> Agatston
    dice : mapping study_key -> {class: Dice or None}, optional (label-map truth)
    demographics : mapping study_key -> (age in years, sex), optional
    """
    from calcpipe.scoring.features import risk_category

    result = Evaluation()
    demographics = demographics or {}
    truth_keys, pred_keys = {k for k, _ in truth_scores}, {k for k, _ in pred_scores}
    studies = sorted(truth_keys & pred_keys)
    result.n_studies = len(studies)
    result.truth_only = sorted(truth_keys - pred_keys)
    result.prediction_only = sorted(pred_keys - truth_keys)
    for name in SCORE_NAMES:
        pairs = [(truth_scores[(s, name)], pred_scores[(s, name)]) for s in studies
                 if (s, name) in truth_scores and (s, name) in pred_scores]
        if len(pairs) < 2:
            continue
        t, p = (np.asarray(x, dtype=np.float64) for x in zip(*pairs, strict=True))
        row = {"name": name, "n": len(pairs), "spearman": spearman(t, p),
               **bland_altman(t, p), "icc_2_1": icc_2_1(np.column_stack([t, p]))}
        result.agreement.append(row)
    index = {c: i for i, c in enumerate(CATEGORIES)}
    cac = [(truth_scores[(s, "CAC")], pred_scores[(s, "CAC")]) for s in studies
           if (s, "CAC") in truth_scores and (s, "CAC") in pred_scores]
    if cac:
        matrix = np.zeros((4, 4), dtype=int)
        truth_cat = [index[risk_category(t)] for t, _ in cac]
        pred_cat = [index[risk_category(p)] for _, p in cac]
        np.add.at(matrix, (truth_cat, pred_cat), 1)
        result.confusion = matrix.tolist()
        result.kappa = weighted_kappa(truth_cat, pred_cat, 4)
    if dice:
        for study, classes in sorted(dice.items()):
            for cls, value in classes.items():
                result.dice.append({"study_key": study, "class": cls, "dice": value})
        result.table2 = _table2(dice, demographics)
    return result


def _table2(dice: dict[str, dict[str, float | None]],
            demographics: dict[str, tuple[float | None, str | None]]) -> list[dict[str, Any]]:
    def age(study: str) -> float | None:
        return demographics.get(study, (None, None))[0]

    def sex(study: str) -> str | None:
        return demographics.get(study, (None, None))[1]

    groups = {
        "overall": list(dice),
        "male": [s for s in dice if sex(s) == "M"],
        "female": [s for s in dice if sex(s) == "F"],
        "age<65": [s for s in dice if (a := age(s)) is not None and a < 65],
        "age>=65": [s for s in dice if (a := age(s)) is not None and a >= 65],
    }
    rows = []
    for row_name, cls in STRUCTURES:
        values = {g: [dice[s].get(cls) for s in members] for g, members in groups.items()}
        row: dict[str, Any] = {"structure": row_name}
        for g, vals in values.items():
            row.update({f"{g}_{k}": v for k, v in _cell(vals).items()})
        row["p_sex"] = _ranksums(values["male"], values["female"])
        row["p_age"] = _ranksums(values["age<65"], values["age>=65"])
        rows.append(row)
    return rows


def table2_cell(row: dict[str, Any], group: str) -> str:
    """``median (Q1, Q3)`` of one group of a Table 2 row, ``-`` without values."""
    median = row[f"{group}_median"]
    if math.isnan(median):
        return "-"
    return f"{median:.3f} ({row[f'{group}_q1']:.3f}, {row[f'{group}_q3']:.3f})"


def p_value(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_table2(rows: list[dict[str, Any]]) -> str:
    """The paper's Table 2 layout as markdown."""
    head = ("| structure | overall | male | female | p (sex) | age < 65 | age >= 65 | p (age) |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        cells = [table2_cell(r, g) for g in ("overall", "male", "female")]
        ages = [table2_cell(r, g) for g in ("age<65", "age>=65")]
        lines.append(f"| {r['structure']} | " + " | ".join(cells) + f" | {p_value(r['p_sex'])} | "
                     + " | ".join(ages) + f" | {p_value(r['p_age'])} |")
    return "\n".join(lines)


def format_agreement(rows: list[dict[str, Any]]) -> str:
    lines = ["| score | n | Spearman | BA mean (AU) | LoA (AU) | BA mean (%) | LoA (%) "
             "| ICC(2,1) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(
            f"| {r['name']} | {r['n']} | {r['spearman']:.3f} | {r['ba_mean_au']:.1f} | "
            f"{r['ba_lower_au']:.1f} to {r['ba_upper_au']:.1f} | {r['ba_mean_percent']:.1f} | "
            f"{r['ba_lower_percent']:.1f} to {r['ba_upper_percent']:.1f} | "
            f"{r['icc_2_1']:.3f} |")
    return "\n".join(lines)


def format_unmatched(result: Evaluation, shown: int = 20) -> list[str]:
    """Lines naming the studies found on one side only (none when every study matched)."""
    lines = []
    for what, keys in (("truth scores without a prediction", result.truth_only),
                       ("predictions without truth scores", result.prediction_only),
                       ("truth label maps without a prediction",
                        result.labels_without_prediction),
                       ("predictions without a truth label map",
                        result.predictions_without_labels),
                       ("predictions whose mask another model or other inputs have "
                        "replaced since (score them again for their Dice)",
                        result.masks_not_of_result)):
        if keys:
            more = f" and {len(keys) - shown} more" if len(keys) > shown else ""
            lines.append(f"- {len(keys)} {what}: " + ", ".join(keys[:shown]) + more)
    if result.truth_scores_missing:
        lines.append(f"- {result.truth_scores_missing} truth score rows without a number "
                     "(left out)")
    return ["Not compared:", *lines] if lines else []


def format_confusion(matrix: list[list[int]], kappa: float | None) -> str:
    lines = ["| truth \\ prediction | " + " | ".join(CATEGORIES) + " |",
             "|---|" + "---|" * len(CATEGORIES)]
    for name, row in zip(CATEGORIES, matrix, strict=True):
        lines.append(f"| {name} | " + " | ".join(str(v) for v in row) + " |")
    if kappa is not None:
        lines.append("\nLinearly weighted kappa: " + (
            "undefined (every study in one category on both sides)" if math.isnan(kappa)
            else f"{kappa:.3f}"))
    return "\n".join(lines)


# -- loading ------------------------------------------------------------------------------

def truth_scores_path(truth: Path) -> Path | None:
    """The truth's per-study scores: the file given, or ``scores.parquet`` of the folder
    (or of its ``_truth/``); None for a folder without one (label maps only)."""
    if truth.is_file():
        return truth
    folder = truth / "_truth" if (truth / "_truth").is_dir() else truth
    path = folder / "scores.parquet"
    return path if path.is_file() else None


def load_truth_scores(truth: Path) -> dict[tuple[str, str], float]:
    """Per-study scores from ``scores.parquet`` (also under ``_truth/``) or a CSV; rows
    without a number are left out (:func:`read_truth_scores` counts them)."""
    return read_truth_scores(truth)[0]


def read_truth_scores(truth: Path) -> tuple[dict[tuple[str, str], float], int]:
    """:func:`load_truth_scores` and the number of rows without a number (empty or NaN)."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = truth_scores_path(truth)
    if path is None:
        raise FileNotFoundError(f"no truth scores: {truth} is not a file and holds no "
                                "scores.parquet")
    table = pacsv.read_csv(path) if path.suffix.lower() == ".csv" else pq.read_table(path)
    names = "name" if "name" in table.column_names else "vessel"
    missing = {"study_key", names, "agatston"} - set(table.column_names)
    if missing:
        raise ValueError(f"truth scores lack columns {sorted(missing)}: need study_key, "
                         "name (or vessel) and agatston")
    scores, empty = {}, 0
    for r in table.select(["study_key", names, "agatston"]).to_pylist():
        value = r["agatston"]
        if value is None or math.isnan(float(value)):
            empty += 1
            continue
        scores[(str(r["study_key"]), str(r[names]).upper())] = float(value)
    return scores, empty


def truth_labels_dir(truth: Path) -> Path | None:
    for candidate in (truth / "_truth" / "labels", truth / "labels"):
        if candidate.is_dir():
            return candidate
    return None


def run_evaluation(pred: str, truth: Path, report: Path, *,
                   profile: str = "standard") -> Evaluation:
    """Evaluate the latest results under ``profile`` in ``pred`` against ``truth``; write
    Parquet tables and ``evaluation.md`` into ``report``."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from calcpipe.catalog import open_catalog
    from calcpipe.metrics import dice_per_class
    from calcpipe.pipeline.work import result_mask
    from calcpipe.scoring import get_profile
    from calcpipe.synthetic.truth import read_labels

    get_profile(profile)  # KeyError naming the profiles: not an empty result
    catalog = open_catalog(pred)
    con = catalog.connect()
    pred_scores = {(k, n): float(a) for k, n, a in con.execute(
        "SELECT study_key, name, agatston FROM latest_vessel_scores WHERE profile = ?",
        [profile]).fetchall()}
    made = {}  # each result's model checksum and input fingerprint: its mask's origin
    demographics = {}
    for k, age, sex, checksum, fingerprint in con.execute(
            "SELECT study_key, age_years, sex, model_checksum, input_fingerprint FROM "
            "latest_study_scores WHERE profile = ?", [profile]).fetchall():
        demographics[k], made[k] = (age, sex), (checksum, fingerprint)
    labels = truth_labels_dir(truth)
    has_scores = truth_scores_path(truth) is not None
    if labels is None and not has_scores:
        raise FileNotFoundError(f"{truth} holds neither scores (scores.parquet, or a CSV "
                                "given as the path) nor label maps (labels/)")
    truth_scores, empty = read_truth_scores(truth) if has_scores else ({}, 0)
    dice = None
    label_keys: set[str] = set()
    masks_missing: list[str] = []
    if labels is not None:
        dice = {}
        label_keys = {p.name[:-len(".nii.gz")] for p in labels.glob("*.nii.gz")}
        for study in sorted(label_keys & set(demographics)):
            mask = result_mask(pred, None, study, *made[study])
            if mask is None:
                masks_missing.append(study)
                continue
            truth_map, _ = read_labels(labels / f"{study}.nii.gz")
            dice[study] = dice_per_class(truth_map, mask)
    result = evaluate(pred_scores, truth_scores, dice, demographics)
    result.truth_scores_missing = empty
    if not has_scores:
        result.prediction_only = []  # no truth scores were given at all
    if labels is not None:
        result.labels_without_prediction = sorted(label_keys - set(demographics))
        result.predictions_without_labels = sorted(set(demographics) - label_keys)
        result.masks_not_of_result = masks_missing
    report.mkdir(parents=True, exist_ok=True)
    if result.dice:
        pq.write_table(pa.Table.from_pylist(result.dice), report / "dice.parquet")
        pq.write_table(pa.Table.from_pylist(result.table2), report / "table2.parquet")
    if result.agreement:
        pq.write_table(pa.Table.from_pylist(result.agreement), report / "agreement.parquet")
    text = [f"# Evaluation: {result.n_studies} studies with scores on both sides, "
            f"profile `{profile}`", "", *format_unmatched(result), ""]
    if result.table2:
        text += ["## Dice per patient (Table 2)", "", format_table2(result.table2), ""]
    if result.agreement:
        text += ["## Agatston agreement", "", format_agreement(result.agreement), ""]
    if result.confusion:
        text += ["## CAC risk categories", "", format_confusion(result.confusion, result.kappa)]
    (report / "evaluation.md").write_text("\n".join(text) + "\n", encoding="utf-8")
    return result
