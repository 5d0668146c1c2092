"""Scoring rules on tiny hand-made arrays; every expected number is worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from calcpipe.scoring import (
    NOMINAL_C_HA,
    PROFILES,
    LabelScore,
    LesionScore,
    Profile,
    ScoringInputError,
    score,
)

C_HA = 0.5  # a round calibration factor keeps the hand arithmetic exact


def blank(shape=(3, 8, 8)):
    return np.zeros(shape, dtype=np.int16), np.zeros(shape, dtype=np.uint8)


def test_standard_profile_by_hand():
    hu, lab = blank()
    hu[1, 1:3, 1:3] = 250  # 4 px of 1 mm^2 at peak 250: 4 mm^2 x weight 2 = 8
    lab[1, 1:3, 1:3] = 2
    hu[1, 5, 5] = 500  # 1 px at 500: 1 mm^2 x weight 4 = 4
    lab[1, 5, 5] = 2
    result = score(hu, lab, (3.0, 1.0, 1.0), mass_calibration=C_HA)
    lad = result.row("LAD")
    assert lad.agatston == 12.0  # (8 + 4) x 3/3
    assert lad.volume_mm3 == 15.0  # 5 voxels x 3 mm^3
    assert lad.area_mm2 == 5.0
    assert lad.density_score == 12.0 / 5.0
    assert lad.mass_mg == C_HA * (4 * 250 + 500) * 3.0 / 1000.0  # c x sum(HU) x mm^3/1000
    assert (lad.n_lesions, lad.n_voxels, lad.peak_hu, lad.mean_hu) == (2, 5, 500.0, 300.0)
    assert result.threshold_hu == 130.0 and result.profile == "standard"
    assert result.mass_calibration == C_HA and result.flags == ()


def test_rows_cover_every_canonical_label_then_groups():
    hu, lab = blank()
    hu[0, 0, 0], lab[0, 0, 0] = 300, 1  # LM
    hu[2, 7, 7], lab[2, 7, 7] = 300, 5  # TAC
    hu[1, 4, 4], lab[1, 4, 4] = 300, 7  # MAC
    rows = score(hu, lab, (3.0, 1.0, 1.0)).rows
    assert [r.name for r in rows] == ["LM", "LAD", "LCX", "RCA", "TAC", "AVC", "MAC",
                                      "CAC", "AC", "TOTAL"]
    by_name = {r.name: r for r in rows}
    assert by_name["LAD"] == LabelScore(2, "LAD", False, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0,
                                        None, None)
    assert by_name["CAC"].agatston == 3.0 and by_name["CAC"].n_lesions == 1  # LM only
    assert by_name["AC"].agatston == 3.0  # TAC; MAC is in neither group
    assert by_name["TOTAL"].agatston == 9.0 and by_name["TOTAL"].n_voxels == 3
    assert by_name["TOTAL"].is_group and by_name["TOTAL"].label is None


@pytest.mark.parametrize(("peak", "weight"), [(129, 0), (130, 1), (199, 1), (200, 2),
                                              (299, 2), (300, 3), (399, 3), (400, 4),
                                              (2000, 4)])
def test_threshold_and_weight_bands(peak, weight):
    hu, lab = blank()
    hu[1, 2, 2:4] = [peak, 130]  # a 2 mm^2 component whose peak sets the weight
    lab[1, 2, 2:4] = 3
    lcx = score(hu, lab, (3.0, 1.0, 1.0)).row("LCX")
    expected_area = 2.0 if weight else 1.0  # below 130 the pixel is not calcium at all
    assert lcx.agatston == expected_area * max(weight, 1)
    assert lcx.area_mm2 == expected_area


def test_kvp_thresholds_and_fallback():
    hu, lab = blank()
    hu[1, 2, 2], lab[1, 2, 2] = 140, 4
    assert score(hu, lab, (3.0, 1.0, 1.0), kvp=120).row("RCA").agatston == 1.0
    at_100 = score(hu, lab, (3.0, 1.0, 1.0), kvp=100)
    assert at_100.threshold_hu == 146.0 and at_100.row("RCA").agatston == 0.0
    at_80 = score(hu, lab, (3.0, 1.0, 1.0), kvp=80)
    assert at_80.threshold_hu == 130.0 and at_80.has_flag("kvp_threshold_fallback")
    assert at_80.row("RCA").agatston == 1.0


def _component(n_pixels):
    hu, lab = blank((1, 8, 8))
    hu[0, 0, :n_pixels], lab[0, 0, :n_pixels] = 300, 2
    return hu, lab


@pytest.mark.parametrize(("profile", "pixels", "kept"), [
    ("standard", 3, False), ("standard", 4, True),  # 0.75 vs 1.0 mm^2
    ("ge", 3, False), ("ge", 4, True),
    ("philips", 1, False), ("philips", 2, True),  # 0.25 vs 0.5 mm^2
    ("canon", 2, False), ("canon", 3, True),  # pixels, not area
    ("deepcac", 3, False), ("deepcac", 4, True),  # more than 3 pixels
    ("siemens", 1, True),
])
def test_minimum_component_sizes(profile, pixels, kept):
    hu, lab = _component(pixels)
    lad = score(hu, lab, (3.0, 0.5, 0.5), profile=profile).row("LAD")
    assert lad.agatston == (pixels * 0.25 * 3 if kept else 0.0)
    assert lad.n_voxels == (pixels if kept else 0)


def test_diagonal_pixels_are_one_component_with_8_connectivity():
    hu, lab = blank((1, 4, 4))
    hu[0, 0, 0] = hu[0, 1, 1] = 300
    lab[0, 0, 0] = lab[0, 1, 1] = 2
    spacing = (3.0, 0.5, 1.0)  # 0.5 mm^2 pixels: only the joined pair reaches 1 mm^2
    assert score(hu, lab, spacing).row("LAD").agatston == 1.0 * 3
    four = Profile("four", "test", "test", min_area_mm2=1.0, slice_connectivity=4)
    assert score(hu, lab, spacing, profile=four).row("LAD").agatston == 0.0


def test_components_never_cross_labels():
    hu, lab = blank((1, 4, 4))
    hu[0, 0, 0:2] = 300
    lab[0, 0, 0], lab[0, 0, 1] = 2, 3  # touching, but LAD and LCX
    result = score(hu, lab, (3.0, 0.5, 1.0))  # each half is 0.5 mm^2 < 1 mm^2
    assert result.row("LAD").agatston == 0.0 and result.row("LCX").agatston == 0.0


def test_loose_region_of_interest_equals_tight_label():
    hu, lab = blank()
    hu[1, 3:5, 3:5] = 350
    hu[1, 0, 0] = 20
    tight = lab.copy()
    tight[1, 3:5, 3:5] = 4
    loose = lab.copy()
    loose[:, 1:7, 1:7] = 4  # a whole box of soft tissue around the plaque
    assert score(hu, tight, (3, 1, 1)).rows == score(hu, loose, (3, 1, 1)).rows


def test_slice_component_weight_versus_lesion_slice_weight():
    # Slice 1 holds two blobs, A (peak 150) and B (peak 450), joined through slice 0.
    hu, lab = blank((2, 1, 5))
    hu[0, 0, :] = 160  # the bridge: 5 px, peak 160 -> weight 1
    hu[1, 0, 0:2] = [150, 140]  # A: 2 px, weight 1
    hu[1, 0, 3:5] = [450, 140]  # B: 2 px, weight 4
    lab[:] = 2
    spacing = (3.0, 1.0, 1.0)
    # standard: 5x1 + 2x1 + 2x4 = 15
    assert score(hu, lab, spacing).row("LAD").agatston == 15.0
    # one 3-D lesion; in slice 1 its cross-section is 4 px at peak 450: 5x1 + 4x4 = 21
    assert score(hu, lab, spacing, profile="orcascore").row("LAD").agatston == 21.0
    assert score(hu, lab, spacing, profile="lessmann").row("LAD").agatston == 21.0


def test_lesion_connectivity_6_versus_26():
    hu, lab = blank((2, 3, 3))
    hu[0, 0, 0] = hu[1, 1, 1] = 300  # diagonal neighbours across slices
    lab[:] = 1
    assert score(hu, lab, (1, 1, 1), profile="orcascore").row("LM").n_lesions == 2
    assert score(hu, lab, (1, 1, 1), profile="lessmann").row("LM").n_lesions == 1
    assert score(hu, lab, (1, 1, 1), profile="siemens").row("LM").n_lesions == 1


def test_lessmann_minimum_lesion_volume():
    hu, lab = blank((2, 3, 3))
    hu[0, 0, 0] = 300  # 1 mm^3 lesion: dropped
    hu[0, 2, 2] = hu[1, 2, 2] = 300  # 2 mm^3 lesion: kept
    lab[:] = 2
    lad = score(hu, lab, (1, 1, 1), profile="lessmann").row("LAD")
    assert (lad.n_lesions, lad.n_voxels) == (1, 2)
    assert lad.agatston == 2 * 3 * (1 / 3)


def test_lesion_volume_minimum_also_drops_slice_components():
    hu, lab = blank((3, 16, 16))
    hu[1, 2:4, 2:4], lab[1, 2:4, 2:4] = 300, 2  # 1 mm^2 component, a 3 mm^3 lesion
    profile = Profile("area+volume", "test", "test", min_area_mm2=1.0, min_lesion_volume_mm3=5.0)
    lad = score(hu, lab, (3.0, 0.5, 0.5), profile=profile).row("LAD")
    assert (lad.agatston, lad.n_voxels, lad.n_lesions) == (0.0, 0, 0)
    hu[2, 2:4, 2:4], lab[2, 2:4, 2:4] = 300, 2  # now 6 mm^3: kept, both slices count
    lad = score(hu, lab, (3.0, 0.5, 0.5), profile=profile).row("LAD")
    assert (lad.agatston, lad.n_voxels, lad.n_lesions) == (6.0, 8, 1)


def test_component_minimum_also_applies_to_lesion_slices():
    hu, lab = blank((3, 16, 16))
    hu[1, 2:4, 2:4], lab[1, 2:4, 2:4] = 300, 2  # 4 px = 1 mm^2: kept
    hu[1, 10, 10], lab[1, 10, 10] = 300, 2  # 1 px = 0.25 mm^2: not calcium
    for minimum in ({"min_area_mm2": 1.0}, {"min_pixels": 3}):
        profile = Profile("lesion+area", "test", "test", unit="lesion_slice", **minimum)
        lad = score(hu, lab, (3.0, 0.5, 0.5), profile=profile).row("LAD")
        assert (lad.agatston, lad.n_voxels, lad.n_lesions) == (3.0, 4, 1)


@pytest.mark.parametrize(("fields", "field"), [
    ({"threshold_by_kvp_hu": ((80.0, 150.0),)}, "threshold_by_kvp_hu"),
    ({"slice_connectivity": 8, "lesion_connectivity": 6}, "lesion_connectivity"),
    ({"threshold_by_kvp_hu": None}, "threshold_by_kvp_hu"),
    ({"threshold_by_kvp_hu": ((120.0, 130.0, 1.0),)}, "threshold_by_kvp_hu"),
    ({"threshold_by_kvp_hu": ((120.0, "130"),)}, "threshold_by_kvp_hu"),
    ({"slice_connectivity": 5}, "slice_connectivity"),
    ({"lesion_connectivity": True}, "lesion_connectivity"),
    ({"unit": "blob"}, "unit"),
    ({"min_area_mm2": "1"}, "min_area_mm2"),
    ({"min_lesion_volume_mm3": -1.0}, "min_lesion_volume_mm3"),
    ({"min_pixels": 0}, "min_pixels"),
    ({"slice_stride": "some"}, "slice_stride"),
])
def test_profiles_that_cannot_be_scored_are_refused(fields, field):
    with pytest.raises(ValueError, match=field):
        Profile("bad", "test", "test", **fields)


def test_8_connected_lesion_slices_in_6_connected_lesions_are_allowed():
    # lesion_slice weighs each lesion's cross-section: no 2-D component to attribute
    hu, lab = blank((1, 6, 6))
    hu[0, 1, 1], hu[0, 2, 2] = 150, 450  # diagonal: two 6-connected lesions
    lab[0, 1:3, 1:3] = 2
    result = score(hu, lab, (3.0, 1.0, 1.0), profile="orcascore")
    assert [les.agatston for les in result.lesions] == [1.0, 4.0]
    four = Profile("p46", "test", "test", slice_connectivity=4, lesion_connectivity=6)
    result = score(hu, lab, (3.0, 1.0, 1.0), profile=four)
    assert [les.agatston for les in result.lesions] == [1.0, 4.0]


def test_spacing_and_thickness_normalisation():
    hu, lab = blank((4, 4, 4))
    hu[:, 1, 1], lab[:, 1, 1] = 300, 2  # 1 mm^2 x weight 3 on each of 4 slices = 12
    assert score(hu, lab, (3.0, 1, 1)).row("LAD").agatston == 12.0
    assert score(hu, lab, (2.5, 1, 1)).row("LAD").agatston == pytest.approx(12 * 2.5 / 3)
    ai = score(hu, lab, (2.0, 1, 1), profile="ai_cac", slice_thickness_mm=3.0)
    assert ai.row("LAD").agatston == 12.0  # thickness 3 / 3, whatever the 2 mm spacing
    assert ai.row("LAD").volume_mm3 == 4 * 2.0  # volume keeps the real spacing


def test_every_nth_slice_of_an_overlapping_series():
    hu, lab = blank((6, 4, 4))
    hu[:, 1, 1], lab[:, 1, 1] = 300, 2
    hu[1, 2, 2] = 300  # only on an odd slice: skipped by the stride
    lab[1, 2, 2] = 2
    spacing = (1.5, 1, 1)  # 3 mm slices every 1.5 mm: n = 2, slices 0, 2, 4 count
    lad = score(hu, lab, spacing, profile="cacslabeler", slice_thickness_mm=3.0).row("LAD")
    assert lad.agatston == 3 * 3 * (2 * 1.5 / 3)
    assert lad.volume_mm3 == 7 * 1.5  # volume uses every slice
    standard = score(hu, lab, spacing).row("LAD")
    assert standard.agatston == 7 * 3 * 1.5 / 3


def test_lesion_rows_add_up_and_locate():
    hu, lab = blank((4, 10, 10))
    hu[1:3, 2:4, 2:4] = 250
    lab[1:3, 2:4, 2:4] = 2
    hu[2, 6:8, 7:9] = 410  # 4 px of 0.25 mm^2 = 1 mm^2, weight 4
    lab[2, 6:8, 7:9] = 5
    affine = np.array([[0, 0, 0.5, -10], [0, 0.5, 0, 20], [3, 0, 0, 100], [0, 0, 0, 1.0]])
    result = score(hu, lab, (3.0, 0.5, 0.5), affine=affine, mass_calibration=C_HA)
    lad_lesion, tac_lesion = result.lesions
    assert (lad_lesion.lesion_id, lad_lesion.name, tac_lesion.name) == (0, "LAD", "TAC")
    assert lad_lesion.agatston == result.row("LAD").agatston == 2 * 1.0 * 2  # 2 slices
    assert (lad_lesion.centroid_z, lad_lesion.centroid_y, lad_lesion.centroid_x) == (
        1.5, 2.5, 2.5)
    assert (lad_lesion.centroid_lps_x_mm, lad_lesion.centroid_lps_y_mm,
            lad_lesion.centroid_lps_z_mm) == (-8.75, 21.25, 104.5)
    assert (lad_lesion.first_slice, lad_lesion.last_slice) == (1, 2)
    assert (lad_lesion.bbox_y_min, lad_lesion.bbox_y_max, lad_lesion.bbox_x_min,
            lad_lesion.bbox_x_max) == (2, 3, 2, 3)
    assert (tac_lesion.n_voxels, tac_lesion.agatston, tac_lesion.peak_hu) == (4, 4.0, 410.0)
    assert tac_lesion.mass_mg == C_HA * 4 * 410 * 0.75 / 1000
    assert sum(les.agatston for les in result.lesions) == result.row("TOTAL").agatston


def test_metal_is_flagged():
    hu, lab = blank()
    hu[1, 2:4, 2:4] = 3000
    lab[1, 2:4, 2:4] = 4
    assert score(hu, lab, (3, 1, 1)).has_flag("metal_suspected")
    assert not score(hu, lab // 4 * 0, (3, 1, 1)).has_flag("metal_suspected")


def test_no_calcium_gives_zero_rows_and_flags_nominal_mass():
    hu, lab = blank()
    lab[:] = 2  # labelled, but nothing reaches 130 HU
    result = score(hu, lab, (3, 1, 1))
    assert all(r.agatston == 0 and r.n_voxels == 0 and r.peak_hu is None for r in result.rows)
    assert result.lesions == ()
    assert result.mass_calibration == NOMINAL_C_HA
    assert result.has_flag("mass_calibration_nominal")


def test_custom_label_names_have_no_group_rows():
    hu, lab = blank()
    hu[1, 1, 1:3], lab[1, 1, 1:3] = 300, 9
    hu[1, 5, 1:3], lab[1, 5, 1:3] = 300, 4
    result = score(hu, lab, (3, 1, 1), label_names={9: "insert"})
    assert [r.name for r in result.rows] == ["label_4", "insert"]
    assert result.row("insert").agatston == 6.0


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])  # the byte and the slab search
def test_rows_do_not_depend_on_hu(dtype):
    hu, lab = blank()
    lab[0, 0:3, 0:3] = 9  # a non-canonical label, nowhere near calcium
    lab[1, 4, 4], lab[2, 4, 4] = 2**6, 2
    names = [r.name for r in score(hu, lab.astype(dtype), (3, 1, 1)).rows]
    assert names == ["LM", "LAD", "LCX", "RCA", "TAC", "AVC", "MAC", "label_9", "label_64",
                     "CAC", "AC", "TOTAL"]
    hu[0, 0, 0] = hu[1, 4, 4] = 500
    result = score(hu, lab.astype(dtype), (3, 1, 1))
    assert [r.name for r in result.rows] == names
    assert result.row("label_9").n_voxels == result.row("label_64").n_voxels == 1


@pytest.mark.parametrize(("kwargs", "parameter"), [
    ({"labels": np.zeros((3, 8, 7), np.uint8)}, "labels"),
    ({"labels": -np.ones((3, 8, 8), np.int8)}, "labels"),
    ({"labels": np.zeros((3, 8, 8), np.float32)}, "labels"),
    ({"spacing_mm": (3.0, 0.0, 1.0)}, "spacing_mm"),
    ({"spacing_mm": (3.0, 1.0)}, "spacing_mm"),
    ({"spacing_mm": (3.0, -1.0, 1.0)}, "spacing_mm"),
    ({"hu": np.full((3, 8, 8), np.nan)}, "hu"),
    ({"hu": np.zeros((8, 8))}, "hu"),
    ({"profile": "agatston-ish"}, "profile"),
    ({"profile": "ai_cac"}, "slice_thickness_mm"),
    ({"kvp": 0}, "kvp"),
    ({"mass_calibration": -1.0}, "mass_calibration"),
    ({"affine": np.eye(3)}, "affine"),
    ({"label_names": {0: "background"}}, "label_names"),
    ({"kvp": "120"}, "kvp"),
    ({"kvp": None}, "kvp"),
    ({"kvp": True}, "kvp"),
    ({"mass_calibration": True}, "mass_calibration"),
    ({"mass_calibration": "0.7"}, "mass_calibration"),
    ({"spacing_mm": (1e200, 1e200, 1e200)}, "spacing_mm"),
    ({"spacing_mm": (1e-200, 1e-200, 1e-200)}, "spacing_mm"),
    ({"hu": np.full((3, 8, 8), 1e308)}, "hu"),
    ({"hu": np.full((3, 8, 8), -40000.0, np.float32)}, "hu"),
    ({"labels": np.full((3, 8, 8), 2**63 + 2, np.uint64)}, "labels"),
    ({"labels": np.full((3, 8, 8), 3, np.uint8), "label_names": {2: "label_3"}}, "label_names"),
    ({"label_names": {2**63: "huge"}}, "label_names"),
    ({"kvp": __import__("fractions").Fraction(-120)}, "kvp"),
    ({"profile": "ai_cac", "slice_thickness_mm": "3"}, "slice_thickness_mm"),
])
def test_bad_input_names_the_parameter(kwargs, parameter):
    args = {"hu": np.zeros((3, 8, 8), np.int16), "labels": np.zeros((3, 8, 8), np.uint8),
            "spacing_mm": (3.0, 1.0, 1.0)}
    args.update(kwargs)
    hu, labels, spacing = args.pop("hu"), args.pop("labels"), args.pop("spacing_mm")
    with pytest.raises(ScoringInputError) as info:
        score(hu, labels, spacing, **args)
    assert info.value.parameter == parameter and parameter in str(info.value)


def test_every_profile_is_documented():
    for name, profile in PROFILES.items():
        assert profile.name == name and profile.description and profile.source


def test_arrow_schema_is_pinned():
    import pyarrow as pa

    from calcpipe.records import arrow_schema, to_arrow

    assert arrow_schema(LabelScore) == pa.schema([
        pa.field("label", pa.int64()), pa.field("name", pa.string(), nullable=False),
        pa.field("is_group", pa.bool_(), nullable=False),
        *[pa.field(n, pa.float64(), nullable=False) for n in (
            "agatston", "volume_mm3", "mass_mg", "area_mm2", "density_score")],
        pa.field("n_lesions", pa.int64(), nullable=False),
        pa.field("n_voxels", pa.int64(), nullable=False),
        pa.field("peak_hu", pa.float64()), pa.field("mean_hu", pa.float64()),
    ])
    lesion_schema = arrow_schema(LesionScore)
    assert lesion_schema.field("centroid_lps_x_mm").nullable
    assert not lesion_schema.field("agatston").nullable
    empty = to_arrow([], LesionScore)
    assert empty.num_rows == 0 and empty.schema == lesion_schema
    hu, lab = blank()
    table = to_arrow(score(hu, lab, (3, 1, 1)).rows, LabelScore)
    assert table.num_rows == 10 and table.column("peak_hu").null_count == 10


def test_labelled_voxels_found_word_by_word_equal_the_slab_comparison():
    """One-byte label maps are searched eight labels at a time; the answer is the
    whole-volume comparison's, for any layout and size (the tail of a size that is not a
    multiple of 8 goes the slab way)."""
    from calcpipe.scoring.engine import _find, _find_by_slab

    rng = np.random.default_rng(5)
    for case in range(200):
        shape = (int(rng.integers(1, 5)), int(rng.integers(1, 12)), 8 * int(rng.integers(1, 4))
                 if case % 2 else int(rng.integers(1, 12)))
        hu = rng.integers(-200, 600, size=shape).astype(np.int16)
        labelled = rng.random(shape) < rng.uniform(0.0, 0.3)
        labels = (labelled * rng.integers(1, 8, size=shape)).astype(np.uint8)
        expected = _find_by_slab(hu, labels, 130.0)[0]
        for volume in (hu, np.asfortranarray(hu)):
            np.testing.assert_array_equal(_find(volume, labels, 130.0)[0], expected)
        np.testing.assert_array_equal(_find(hu, labels.astype(np.int16), 130.0)[0], expected)
        assert expected.size == np.count_nonzero((hu >= 130) & (labels > 0))
        present = np.unique(labels[labels > 0])  # at any HU
        np.testing.assert_array_equal(_find(hu, labels, 130.0)[1], present)
        np.testing.assert_array_equal(_find_by_slab(hu, labels, 130.0)[1], present)
