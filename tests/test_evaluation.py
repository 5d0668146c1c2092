"""Evaluation: hand-computed values on three patients; score-only truth; the command."""

from __future__ import annotations

import numpy as np
import pytest

from calcpipe.evaluation import bland_altman, evaluate, format_table2


def three_patients():
    """Truth and prediction of three patients whose statistics are worked out by hand."""
    truth = {("a", "CAC"): 0.0, ("b", "CAC"): 10.0, ("c", "CAC"): 100.0,
             ("a", "LAD"): 0.0, ("b", "LAD"): 10.0, ("c", "LAD"): 40.0}
    pred = {("a", "CAC"): 0.0, ("b", "CAC"): 12.0, ("c", "CAC"): 450.0,
            ("a", "LAD"): 0.0, ("b", "LAD"): 12.0, ("c", "LAD"): 30.0}
    # LAD Dice: a perfect (4 of 4), b half (2 of 4 found: 2*2/(4+2)), c disjoint
    dice = {"a": {"LAD": 1.0}, "b": {"LAD": 2 * 2 / 6}, "c": {"LAD": 0.0}}
    people = {"a": (50.0, "M"), "b": (70.0, "F"), "c": (66.0, "M")}
    return truth, pred, dice, people


def test_three_patients_match_hand_computed_statistics():
    truth, pred, dice, people = three_patients()
    result = evaluate(pred, truth, dice, people)
    lad = next(r for r in result.agreement if r["name"] == "LAD")
    # differences 0, 2, -10: mean -8/3; SD sqrt(((8/3)^2 + (14/3)^2 + (22/3)^2) / 2)
    sd = np.sqrt(((8 / 3) ** 2 + (14 / 3) ** 2 + (22 / 3) ** 2) / 2)
    assert lad["ba_mean_au"] == pytest.approx(-8 / 3)
    assert lad["ba_lower_au"] == pytest.approx(-8 / 3 - 1.96 * sd)
    assert lad["ba_upper_au"] == pytest.approx(-8 / 3 + 1.96 * sd)
    # percent over the two pairs with a positive mean: +2/11 and -10/35
    assert lad["ba_mean_percent"] == pytest.approx(100 * (2 / 11 - 10 / 35) / 2)
    assert lad["ba_pairs_percent"] == 2
    assert lad["spearman"] == pytest.approx(1.0)  # same order: 0 < 12 < 30 and 0 < 10 < 40
    # ICC(2,1) by hand from the two-way ANOVA of [[0,0],[10,12],[40,30]]
    y = np.array([[0, 0], [10, 12], [40, 30]], float)
    grand = y.mean()
    msr = 2 * ((y.mean(1) - grand) ** 2).sum() / 2
    msc = 3 * ((y.mean(0) - grand) ** 2).sum() / 1
    mse = (((y - grand) ** 2).sum() - 2 * msr - msc) / 2
    assert lad["icc_2_1"] == pytest.approx((msr - mse) / (msr + mse + 2 * (msc - mse) / 3))
    # categories: a 0->0, b 1-99->1-99, c 100-399->>=400
    assert result.confusion == [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 1], [0, 0, 0, 0]]
    # linear weights: one disagreement of 1 step out of 3 across 3 patients
    observed = 1 / 3 * (1 / 3)
    rows, cols = np.array([1, 1, 1, 0]) / 3, np.array([1, 1, 0, 1]) / 3
    weights = np.abs(np.subtract.outer(range(4), range(4))) / 3
    expected = (weights * np.outer(rows, cols)).sum()
    assert result.kappa == pytest.approx(1 - observed / expected)
    lad_row = next(r for r in result.table2 if r["structure"] == "LAD")
    assert lad_row["overall_median"] == pytest.approx(2 / 3)
    assert lad_row["overall_q1"] == pytest.approx(1 / 3)
    assert lad_row["overall_q3"] == pytest.approx(5 / 6)
    assert lad_row["male_median"] == pytest.approx(0.5) and lad_row["female_n"] == 1
    assert lad_row["age>=65_median"] == pytest.approx(1 / 3)
    assert lad_row["p_sex"] is None  # one female: no rank-sum test
    text = format_table2(result.table2)
    assert text.splitlines()[0].startswith("| structure | overall | male | female | p (sex)")
    assert "| LAD | 0.667 (0.333, 0.833) | 0.500 (0.250, 0.750) |" in text


def test_score_only_truth_gives_the_score_statistics(tmp_path):
    from calcpipe.evaluation import load_truth_scores

    truth, pred, _, _ = three_patients()
    csv = tmp_path / "clinical.csv"
    csv.write_text("study_key,vessel,agatston\n" + "".join(
        f"{k},{n.lower()},{v}\n" for (k, n), v in truth.items()))
    loaded = load_truth_scores(csv)
    assert loaded == truth
    result = evaluate(pred, loaded)
    assert not result.dice and not result.table2
    assert {r["name"] for r in result.agreement} == {"CAC", "LAD"}
    bad = tmp_path / "bad.csv"
    bad.write_text("study,score\nx,1\n")
    with pytest.raises(ValueError, match="need study_key"):
        load_truth_scores(bad)


def test_bland_altman_without_positive_pairs_reports_no_percentages():
    out = bland_altman(np.zeros(3), np.zeros(3))
    assert out["ba_mean_au"] == 0 and out["ba_pairs_percent"] == 0
    assert np.isnan(out["ba_mean_percent"])


def test_evaluate_command_on_a_scored_synthetic_cohort(tmp_path):
    from typer.testing import CliRunner

    from calcpipe.cli import app
    from calcpipe.pipeline import ScoreParams, run_single_process
    from calcpipe.synthetic import write_cohort

    cohort = write_cohort(tmp_path / "cohort", studies=3, seed=3, matrix=64, workers=1)
    run_single_process(ScoreParams(source=str(cohort), out=str(tmp_path / "out")))
    result = CliRunner().invoke(app, ["evaluate", "--pred", str(tmp_path / "out"),
                                      "--truth", str(cohort), "--report",
                                      str(tmp_path / "eval")])
    assert result.exit_code == 0, result.output
    assert "Table 2" in result.output and "Spearman" in result.output
    import pyarrow.parquet as pq

    dice = pq.read_table(tmp_path / "eval" / "dice.parquet").to_pylist()
    assert {r["study_key"] for r in dice} and all(
        r["dice"] is None or 0 <= r["dice"] <= 1 for r in dice)
    agreement = {r["name"]: r for r in pq.read_table(
        tmp_path / "eval" / "agreement.parquet").to_pylist()}
    assert agreement["CAC"]["n"] == 3

    # studies on one side only are named, not dropped: a label map without a prediction,
    # a prediction without a label map; then label maps alone (no scores.parquet)
    from calcpipe.evaluation import run_evaluation

    labels = cohort / "_truth" / "labels"
    first, *_ = sorted(labels.glob("*.nii.gz"))
    first.rename(labels / "not-scored.nii.gz")
    result = run_evaluation(str(tmp_path / "out"), cohort, tmp_path / "eval2")
    assert result.labels_without_prediction == ["not-scored"]
    assert result.predictions_without_labels == [first.name[:-len(".nii.gz")]]
    assert len({r["study_key"] for r in result.dice}) == 2
    text = (tmp_path / "eval2" / "evaluation.md").read_text()
    assert "1 truth label maps without a prediction: not-scored" in text
    (cohort / "_truth" / "scores.parquet").unlink()
    labels_only = run_evaluation(str(tmp_path / "out"), cohort, tmp_path / "eval3")
    assert labels_only.table2 and not labels_only.agreement
    assert not labels_only.prediction_only  # no truth scores were given at all


def test_studies_on_one_side_and_missing_truth_scores_are_reported(tmp_path):
    from calcpipe.evaluation import format_unmatched, read_truth_scores

    truth, pred, _, _ = three_patients()
    truth[("t", "CAC")] = 5.0
    pred[("p", "CAC")] = 7.0
    result = evaluate(pred, truth)
    assert (result.n_studies, result.truth_only, result.prediction_only) == (3, ["t"], ["p"])
    assert format_unmatched(result)[1:] == ["- 1 truth scores without a prediction: t",
                                            "- 1 predictions without truth scores: p"]
    csv = tmp_path / "clinical.csv"
    csv.write_text("study_key,name,agatston\na,CAC,0\nb,CAC,\nc,CAC,nan\n")
    assert read_truth_scores(csv) == ({("a", "CAC"): 0.0}, 2)


def test_rank_sum_p_values_are_corrected_for_ties():
    from calcpipe.evaluation import _ranksums

    # Dice-like values, many tied at 1.0: the normal approximation with the tie-corrected
    # variance, by hand. Ranks of the 10 values (five 1.0s share rank 8)
    x, y = [1.0, 1.0, 1.0, 1.0, 0.5], [1.0, 0.2, 0.3, 0.4, 0.6]
    n1 = n2 = 5
    u = (8 + 8 + 8 + 8 + 4) - n1 * (n1 + 1) / 2  # x's rank sum less its minimum
    ties = 5**3 - 5
    variance = n1 * n2 / 12 * ((n1 + n2 + 1) - ties / ((n1 + n2) * (n1 + n2 - 1)))
    from math import erf, sqrt

    z = (u - n1 * n2 / 2) / sqrt(variance)
    assert _ranksums(x, y) == pytest.approx(2 * (1 - 0.5 * (1 + erf(abs(z) / sqrt(2)))))
    assert _ranksums([1.0, 1.0], [1.0, 1.0, 1.0]) == 1.0  # nothing to rank apart
