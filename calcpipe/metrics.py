"""Agreement metrics for segmentation and scores (pure numpy; scipy for ranks).

* :func:`dice_per_class` - vessel-aware Dice per patient: a voxel is a true positive only
  when prediction and truth carry the *same* label; group Dice ("coronary" over LM, LAD,
  LCX, RCA; "aorta" over TAC, AVC) count a voxel as a true positive only when both are in
  the group *and* agree on the label. A patient whose truth and prediction are both empty
  for a class has no Dice for it (None): it is excluded from medians and counted apart.
* :func:`spearman`, :func:`weighted_kappa` (linear weights), :func:`icc_2_1` (two-way random
  effects, absolute agreement, single rater: Shrout & Fleiss ICC(2,1)).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from calcpipe.labels import GROUPS, LABEL_NAMES

#: Dice classes: every canonical label, plus the paper's "coronary" and "aorta" groups
DICE_GROUPS = {"coronary": GROUPS["CAC"], "aorta": GROUPS["AC"]}


def dice_per_class(truth: npt.ArrayLike, prediction: npt.ArrayLike,
                   label_names: Mapping[int, str] = LABEL_NAMES) -> dict[str, float | None]:
    """Vessel-aware Dice of one patient for every label and for the coronary/aorta groups.

    Returns
    -------
    dict
        name -> Dice in [0, 1], or None when truth and prediction are both empty.
    """
    t, p = np.asarray(truth), np.asarray(prediction)
    if t.shape != p.shape:
        raise ValueError(f"truth shape {t.shape} differs from prediction shape {p.shape}")
    t_counts = np.bincount(t.ravel(), minlength=256)
    p_counts = np.bincount(p.ravel(), minlength=256)
    agree = np.bincount(t[t == p].ravel(), minlength=256)
    values = {name: value for value, name in label_names.items()}
    result: dict[str, float | None] = {}

    def dice(members: Sequence[int]) -> float | None:
        tp = int(agree[list(members)].sum())
        total = int(t_counts[list(members)].sum() + p_counts[list(members)].sum())
        return None if total == 0 else 2.0 * tp / total

    for value, name in label_names.items():
        result[name] = dice([value])
    for group, members in DICE_GROUPS.items():
        result[group] = dice([values[m] for m in members if m in values])
    return result


def spearman(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Spearman rank correlation (average ranks for ties); NaN when either is constant."""
    from scipy.stats import rankdata

    ra, rb = rankdata(np.asarray(a, dtype=float)), rankdata(np.asarray(b, dtype=float))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def weighted_kappa(a: Sequence[int], b: Sequence[int], n_categories: int) -> float:
    """Cohen's kappa with linear weights for ordinal categories 0..n_categories-1."""
    x, y = np.asarray(a, dtype=int), np.asarray(b, dtype=int)
    if x.shape != y.shape or x.size == 0:
        raise ValueError("kappa needs two equally long, non-empty sequences")
    if x.min() < 0 or y.min() < 0 or max(x.max(), y.max()) >= n_categories:
        raise ValueError(f"categories must lie in 0..{n_categories - 1}")
    observed = np.zeros((n_categories, n_categories))
    np.add.at(observed, (x, y), 1.0)
    observed /= observed.sum()
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0))
    i, j = np.indices((n_categories, n_categories))
    weights = np.abs(i - j) / (n_categories - 1)
    disagreement_expected = float((weights * expected).sum())
    if disagreement_expected == 0:  # both raters put everyone in one category: 0/0
        return float("nan")
    return 1.0 - float((weights * observed).sum()) / disagreement_expected


def icc_2_1(ratings: npt.ArrayLike) -> float:
    """ICC(2,1): two-way random effects, absolute agreement, single measurement.

    Parameters
    ----------
    ratings : (n_subjects, k_raters) array
    """
    y = np.asarray(ratings, dtype=np.float64)
    if y.ndim != 2 or y.shape[0] < 2 or y.shape[1] < 2:
        raise ValueError(f"ratings must be (subjects >= 2, raters >= 2); got {y.shape}")
    if (y == y.flat[0]).all():  # no variance at all: 0/0, whatever rounding leaves
        return float("nan")
    n, k = y.shape
    grand = y.mean()
    ss_rows = k * ((y.mean(axis=1) - grand) ** 2).sum()
    ss_cols = n * ((y.mean(axis=0) - grand) ** 2).sum()
    ss_error = ((y - grand) ** 2).sum() - ss_rows - ss_cols
    ms_rows = ss_rows / (n - 1)
    ms_cols = ss_cols / (k - 1)
    ms_error = ss_error / ((n - 1) * (k - 1))
    denominator = ms_rows + (k - 1) * ms_error + k * (ms_cols - ms_error) / n
    return float((ms_rows - ms_error) / denominator) if denominator else float("nan")


def median_iqr(values: Sequence[float | None]) -> tuple[float, float, float, int, int]:
    """(median, Q1, Q3, n used, n excluded as None) of per-patient values."""
    used = np.asarray([v for v in values if v is not None], dtype=np.float64)
    excluded = sum(v is None for v in values)
    if used.size == 0:
        return (float("nan"), float("nan"), float("nan"), 0, excluded)
    q1, median, q3 = np.percentile(used, [25, 50, 75])
    return float(median), float(q1), float(q3), int(used.size), excluded
