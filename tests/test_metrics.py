"""Metrics on hand-made inputs with hand-computed answers."""

from __future__ import annotations

import numpy as np
import pytest

from calcpipe.metrics import dice_per_class, icc_2_1, median_iqr, spearman, weighted_kappa


def test_vessel_aware_dice():
    truth = np.array([2, 2, 2, 3, 0, 5, 5, 0])
    pred = np.array([2, 2, 3, 3, 0, 5, 0, 6])
    dice = dice_per_class(truth, pred)
    assert dice["LAD"] == 2 * 2 / (3 + 2)  # two LAD voxels agree; 3 true, 2 predicted
    assert dice["LCX"] == 2 * 1 / (1 + 2)
    # coronary: agreeing coronary voxels 3 (2 LAD + 1 LCX) over 4 true + 4 predicted;
    # the voxel predicted LCX where truth is LAD is *not* a true positive
    assert dice["coronary"] == 2 * 3 / (4 + 4)
    assert dice["TAC"] == 2 * 1 / (2 + 1)
    assert dice["aorta"] == 2 * 1 / (2 + 2)  # AVC predicted where truth is background
    assert dice["LM"] is None and dice["RCA"] is None and dice["MAC"] is None


def test_dice_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        dice_per_class(np.zeros(3, int), np.zeros(4, int))


def test_spearman_by_hand():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3) vs (1, 3, 2): 1 - 6 * (0 + 1 + 1) / (3 * 8) = 0.5
    assert spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(0.5)
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_linear_weighted_kappa_by_hand():
    assert weighted_kappa([0, 1, 2, 3], [0, 1, 2, 3], 4) == 1.0
    # two raters, 3 categories: observed [[1,1,0],[0,1,0],[0,0,1]] / 4
    # weights |i-j|/2; observed disagreement = (1 x 0.5) / 4 = 0.125
    # marginals rows (2,1,1)/4, cols (1,2,1)/4; expected disagreement =
    # sum w_ij r_i c_j = (2*2*0.5 + 2*1*1 + 1*1*0.5 + 1*1*0.5 + 1*1*1 + 1*2*0.5)/16 = 7/16
    assert weighted_kappa([0, 0, 1, 2], [0, 1, 1, 2], 3) == pytest.approx(1 - 0.125 / (7 / 16))
    with pytest.raises(ValueError):
        weighted_kappa([0, 4], [0, 1], 3)
    # everyone in one category on both sides: agreement by chance is total, kappa 0/0
    assert np.isnan(weighted_kappa([3, 3, 3], [3, 3, 3], 4))


def test_icc_2_1_by_hand():
    # Shrout & Fleiss (1979) data, 6 subjects x 4 judges: ICC(2,1) = 0.29
    ratings = [[9, 2, 5, 8], [6, 1, 3, 2], [8, 4, 6, 8], [7, 1, 2, 6], [10, 5, 6, 9],
               [6, 2, 4, 7]]
    assert icc_2_1(ratings) == pytest.approx(0.2898, abs=5e-4)
    assert icc_2_1([[1, 1], [2, 2], [3, 3]]) == pytest.approx(1.0)
    # no variance at all is 0/0, not whatever rounding leaves of it
    assert np.isnan(icc_2_1([[356.2, 356.2]] * 16))


def test_risk_category_refuses_nan():
    from calcpipe.scoring.features import risk_category

    with pytest.raises(ValueError, match="non-negative"):
        risk_category(float("nan"))


def test_median_iqr_excludes_none():
    median, q1, q3, used, excluded = median_iqr([0.5, None, 1.0, 0.0, None])
    assert (median, q1, q3, used, excluded) == (0.5, 0.25, 0.75, 3, 2)
