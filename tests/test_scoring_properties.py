"""Invariances of the scores (hypothesis, capped examples, fixed derandomised seed)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import ndimage

from calcpipe.scoring import score

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
ADDITIVE = ("agatston", "volume_mm3", "mass_mg", "area_mm2", "n_voxels")


@st.composite
def studies(draw):
    """A small volume with a few labelled calcium voxels among soft tissue."""
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shape = (draw(st.integers(2, 5)), draw(st.integers(4, 10)), draw(st.integers(4, 10)))
    hu = rng.integers(-100, 120, size=shape).astype(np.int16)
    calcium = rng.random(shape) < draw(st.floats(0.05, 0.4))
    hu[calcium] = rng.integers(130, 700, size=int(calcium.sum()))
    labels = np.where(rng.random(shape) < 0.8, rng.integers(1, 8, size=shape), 0)
    spacing = (draw(st.sampled_from([2.5, 3.0])), draw(st.sampled_from([0.4, 0.5, 1.0])),
               draw(st.sampled_from([0.4, 0.5, 1.0])))
    profile = draw(st.sampled_from(["standard", "orcascore", "lessmann", "deepcac",
                                    "philips", "canon"]))
    return hu, labels.astype(np.uint8), spacing, profile


def _values(row):
    return tuple(getattr(row, f) for f in ADDITIVE)


@SETTINGS
@given(studies(), st.integers(0, 3), st.integers(0, 4), st.integers(0, 4))
def test_translation_invariance(study, dz, dy, dx):
    hu, labels, spacing, profile = study
    big_hu = np.full((hu.shape[0] + 3, hu.shape[1] + 4, hu.shape[2] + 4), -50, np.int16)
    big_labels = np.zeros(big_hu.shape, np.uint8)
    region = (slice(dz, dz + hu.shape[0]), slice(dy, dy + hu.shape[1]),
              slice(dx, dx + hu.shape[2]))
    big_hu[region], big_labels[region] = hu, labels
    a = score(hu, labels, spacing, profile=profile)
    b = score(big_hu, big_labels, spacing, profile=profile)
    for ra, rb in zip(a.rows, b.rows, strict=True):
        assert _values(ra) == pytest.approx(_values(rb))
    assert [les.centroid_z + dz for les in a.lesions] == pytest.approx(
        [les.centroid_z for les in b.lesions])


@SETTINGS
@given(studies())
def test_adding_empty_labels_changes_nothing_else(study):
    hu, labels, spacing, profile = study
    names = {v: f"L{v}" for v in range(1, 8)}
    base = score(hu, labels, spacing, profile=profile, label_names=names)
    more = score(hu, labels, spacing, profile=profile,
                 label_names={**names, 20: "empty", 21: "also_empty"})
    assert more.rows[:7] == base.rows
    assert all(r.n_voxels == 0 for r in more.rows[7:])


@SETTINGS
@given(studies(), st.permutations(list(range(1, 8))))
def test_renaming_label_values(study, permutation):
    hu, labels, spacing, profile = study
    names = {v: f"L{v}" for v in range(1, 8)}
    mapping = np.array([0, *permutation], dtype=np.uint8)
    renamed = mapping[labels]
    renamed_names = {int(mapping[v]): name for v, name in names.items()}
    a = {r.name: _values(r) for r in score(hu, labels, spacing, profile=profile,
                                           label_names=names).rows}
    b = {r.name: _values(r) for r in score(hu, renamed, spacing, profile=profile,
                                           label_names=renamed_names).rows}
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == pytest.approx(b[name])


@SETTINGS
@given(studies(), st.integers(0, 2**31 - 1))
def test_splitting_a_label_along_2d_components_adds_up(study, seed):
    hu, labels, spacing, _ = study
    single = np.where(labels > 0, 1, 0).astype(np.uint8)
    calcium = (single > 0) & (hu >= 130)
    planar = np.zeros((3, 3, 3), bool)
    planar[1] = True
    components, n = ndimage.label(calcium, structure=planar)
    moved = np.random.default_rng(seed).random(n + 1) < 0.5
    split = single.copy()
    split[moved[components] & calcium] = 2
    names = {1: "a", 2: "b"}
    whole = score(hu, single, spacing, label_names={1: "a"}).row("a")
    parts = score(hu, split, spacing, label_names=names)
    summed = np.add(_values(parts.row("a")), _values(parts.row("b")))
    assert tuple(summed) == pytest.approx(_values(whole))


@SETTINGS
@given(studies())
def test_zero_case(study):
    hu, labels, spacing, profile = study
    cold = np.minimum(hu, 129)
    result = score(cold, labels, spacing, profile=profile)
    assert all(_values(r) == (0, 0, 0, 0, 0) for r in result.rows) and not result.lesions


@SETTINGS
@given(studies())
def test_rows_do_not_depend_on_hu(study):
    hu, labels, spacing, profile = study
    labels = np.where(labels == 7, 12, labels)  # a value outside the canonical map
    for dtype in (np.uint8, np.int32):  # the byte and the slab search
        hot = score(hu, labels.astype(dtype), spacing, profile=profile)
        cold = score(np.minimum(hu, 129), labels.astype(dtype), spacing, profile=profile)
        assert [r.name for r in hot.rows] == [r.name for r in cold.rows]


@SETTINGS
@given(studies())
def test_slice_spacing_normalisation(study):
    hu, labels, spacing, profile = study
    at_3 = score(hu, labels, (3.0, *spacing[1:]), profile=profile)
    at_25 = score(hu, labels, (2.5, *spacing[1:]), profile=profile)
    if profile != "lessmann":  # its minimum lesion volume depends on the spacing
        assert at_25.row("TOTAL").agatston == pytest.approx(at_3.row("TOTAL").agatston * 2.5 / 3)
        assert at_25.row("TOTAL").density_score == pytest.approx(at_3.row("TOTAL").density_score)
