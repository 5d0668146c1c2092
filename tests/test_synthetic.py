"""The synthetic phantom: determinism, geometry, truth, tissue realism, cohort prevalence."""

from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from calcpipe.dicom import DicomError, load_volume
from calcpipe.synthetic import StudyOptions, render_study, sample_spec, write_cohort
from calcpipe.synthetic.anatomy import tissue_slice
from calcpipe.synthetic.spec import CAC_CATEGORIES, Prevalence
from calcpipe.synthetic.truth import read_labels


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    return write_cohort(out, studies=2, seed=11, matrix=96, workers=2)


def _files(root: Path) -> list[Path]:
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_identical_bytes(cohort, tmp_path):
    again = write_cohort(tmp_path / "again", studies=2, seed=11, matrix=96, workers=1)
    names = _files(cohort)
    assert names == _files(again) and len(names) > 10
    _, mismatch, errors = filecmp.cmpfiles(cohort, again, [str(n) for n in names],
                                           shallow=False)
    assert mismatch == [] and errors == []
    other = write_cohort(tmp_path / "other", studies=1, seed=12, matrix=96, workers=1)
    assert (other / "study_00000" / "series_casc" / "IM0000.dcm").read_bytes() != (
        cohort / "study_00000" / "series_casc" / "IM0000.dcm").read_bytes()


def test_study_loads_with_declared_geometry_and_truth_aligns(cohort):
    import pyarrow.parquet as pq

    spec = sample_spec(11, 0, matrix=96)
    volume = load_volume(cohort / "study_00000" / "series_casc")
    scanner = spec.scanner
    assert volume.shape[1:] == (96, 96)
    assert volume.spacing_mm == pytest.approx((scanner.slice_spacing_mm, scanner.pixel_mm,
                                               scanner.pixel_mm))
    assert volume.metadata.kvp == scanner.kvp and volume.metadata.kernel == scanner.kernel
    assert volume.metadata.age_years == spec.age_years and volume.metadata.sex == spec.sex
    assert volume.metadata.gating.gated
    labels, affine = read_labels(cohort / "_truth" / "labels" / f"{volume.study_uid}.nii.gz")
    assert labels.shape == volume.shape
    np.testing.assert_allclose(affine, volume.affine, atol=1e-4)
    truth = pq.read_table(cohort / "_truth" / "scores.parquet").to_pylist()
    rows = [r for r in truth if r["study_key"] == volume.study_uid]
    assert len(rows) == 10 and rows[0]["series_uid"] == volume.series_uid
    rendered = render_study(spec)
    np.testing.assert_array_equal(rendered.hu, volume.hu)
    np.testing.assert_array_equal(rendered.labels, labels)


def test_truth_labels_only_at_or_above_threshold():
    for index in range(3):
        spec = sample_spec(5, index, matrix=128)
        rendered = render_study(spec)
        labelled = rendered.labels > 0
        assert np.all(rendered.hu[labelled] >= rendered.threshold_hu)
        assert set(np.unique(rendered.labels)) <= set(range(8))


@pytest.fixture(scope="module")
def tissue_study():
    spec = sample_spec(3, 1, matrix=256)
    rendered = render_study(spec)
    anatomy = rendered.anatomy
    n, pixel = spec.scanner.matrix, spec.scanner.pixel_mm
    x0, y0, z0 = rendered.origin_mm
    x = (x0 + np.arange(n) * pixel)[None, :]
    y = (y0 + np.arange(n) * pixel)[:, None]
    k = rendered.hu.shape[0] // 2
    clean = tissue_slice(anatomy, x, y, z0 + k * spec.scanner.slice_spacing_mm)
    return rendered.hu[k].astype(np.float64), clean, anatomy.tissues


def _region(clean, value, erode=3):
    return ndimage.binary_erosion(clean == value, iterations=erode)


def test_tissue_hu_in_literature_ranges(tissue_study):
    hu, clean, tissues = tissue_study
    lung = hu[_region(clean, tissues.lung)].mean()
    fat = hu[_region(clean, tissues.fat)].mean()
    blood = hu[_region(clean, tissues.blood)].mean()
    muscle = hu[_region(clean, tissues.myocardium, erode=1)].mean()
    assert -900 < lung < -800
    assert -120 < fat < -80
    assert 30 < blood < 50 and 30 < muscle < 55
    bone = clean == tissues.cortical_bone
    assert bone.any() and np.percentile(hu[bone], 90) > 700


def test_noise_sd_in_homogeneous_regions(tissue_study):
    hu, clean, tissues = tissue_study
    blood = _region(clean, tissues.blood, erode=4)
    assert blood.sum() > 200
    assert 10 <= hu[blood].std() <= 40


@pytest.mark.parametrize(("seed", "n"), [(0, 200), (1, 2000)])
def test_cohort_prevalence_matches_table_1(seed, n):
    """Rates within 3 binomial SD. Fixed seeds make this deterministic; at n = 200 about
    one seed in fifty fails some rate by chance (seed 2024 gave 34.5 % triple-vessel
    disease, -3.3 SD), so the larger sample is checked too."""
    prevalence = Prevalence()
    specs = [sample_spec(seed, i) for i in range(n)]

    def within(observed: float, expected: float) -> bool:
        return abs(observed - expected) <= 3 * np.sqrt(expected * (1 - expected) / n) + 1e-9

    assert within(np.mean([s.sex == "F" for s in specs]), prevalence.female)
    shares = np.asarray(prevalence.cac_categories) / sum(prevalence.cac_categories)
    for category, share in zip(CAC_CATEGORIES, shares, strict=True):
        assert within(np.mean([s.cac_category == category for s in specs]), share)
    for vessel, expected in (("LAD", 0.75), ("RCA", 0.56), ("LCX", 0.57)):
        assert within(np.mean([vessel in s.vessels for s in specs]), expected), vessel
    triple = np.mean([{"LAD", "RCA", "LCX"} <= set(s.vessels) for s in specs])
    assert within(triple, 0.46)
    assert within(np.mean([s.aortic for s in specs]), prevalence.aortic)
    ages = np.array([s.age_years for s in specs])
    assert abs(ages.mean() - 64.2) < 3 * 9.8 / np.sqrt(n)
    assert all(s.cac_target == 0 for s in specs if s.cac_category == "0")


def test_pipeline_test_options(tmp_path):
    options = StudyOptions(localizer=True, contrast_series=True, sharp_series=True,
                           second_phase=True, missing_slice=True)
    write_cohort(tmp_path, studies=1, seed=3, matrix=64, workers=1, options=options)
    study = tmp_path / "study_00000"
    assert sorted(p.name for p in study.iterdir()) == [
        "series_casc", "series_cta", "series_localizer", "series_phase40", "series_sharp"]
    with pytest.raises(DicomError) as info:
        load_volume(study / "series_casc")
    assert info.value.code == "missing_slice"
    assert load_volume(study / "series_cta").has_flag("contrast_agent")
    assert load_volume(study / "series_phase40").metadata.gating.nominal_cardiac_phase_percent \
        == 40.0


def test_corrupt_and_shuffled_and_compressed(tmp_path):
    options = StudyOptions(shuffled_names=True, transfer_syntax="1.2.840.10008.1.2.4.90")
    write_cohort(tmp_path / "a", studies=1, seed=4, matrix=64, workers=1, options=options)
    plain = write_cohort(tmp_path / "b", studies=1, seed=4, matrix=64, workers=1)
    shuffled = load_volume(tmp_path / "a" / "study_00000" / "series_casc")
    np.testing.assert_array_equal(shuffled.hu,
                                  load_volume(plain / "study_00000" / "series_casc").hu)
    write_cohort(tmp_path / "c", studies=1, seed=4, matrix=64, workers=1,
                 options=StudyOptions(corrupt_file=True))
    with pytest.raises(DicomError) as info:
        load_volume(tmp_path / "c" / "study_00000" / "series_casc")
    assert info.value.code == "truncated"


def test_preview_png(tmp_path):
    from calcpipe.synthetic import preview

    path = preview(tmp_path / "p.png", sample_spec(5, 3, matrix=128))
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (4 * 128, 2 * 128)


def test_qrm_replica_geometry_and_truth():
    from calcpipe.synthetic import qrm_phantom

    volume, labels, names = qrm_phantom(0)
    assert volume.shape == (47, 512, 512) and volume.spacing_mm == (3.0, 0.488, 0.488)
    assert sorted(names.values()) == sorted(
        f"{size}_{density}" for size in ("Large", "Medium", "Small")
        for density in ("HD", "MD", "LD"))
    assert set(np.unique(labels)) == set(range(10))


def test_nifti_bytes_do_not_depend_on_the_arrays_memory_layout_and_read_back():
    """The label map's C-ordered buffer is written as NIfTI's Fortran order as it lies; a
    label map in another memory layout gives the same bytes, and both read back."""
    from calcpipe.synthetic.truth import (
        gzip_labels,
        labels_from_bytes,
        nifti_bytes,
        plain_nifti_bytes,
    )

    rng = np.random.default_rng(3)
    labels = rng.integers(0, 8, size=(5, 7, 9)).astype(np.uint8)
    affine = np.array([[3.0, 0, 0, -40], [0, 0.7, 0, 12], [0, 0, 0.6, 5], [0, 0, 0, 1]])
    data = nifti_bytes(labels, affine)
    assert data == gzip_labels(plain_nifti_bytes(labels, affine))
    assert nifti_bytes(np.asfortranarray(labels), affine) == data
    padded = np.zeros((5, 7, 11), dtype=np.uint8)
    padded[:, :, 1:10] = labels
    assert not padded[:, :, 1:10].flags.c_contiguous
    assert nifti_bytes(padded[:, :, 1:10], affine) == data
    back, back_affine = labels_from_bytes(data)
    np.testing.assert_array_equal(back, labels)
    np.testing.assert_allclose(back_affine, affine)


def test_lower_chest_has_liver_below_the_diaphragm_and_unlabelled_calcified_cartilage():
    """The scan reaches the upper abdomen (liver under the right dome, no lung there) and
    calcified costal cartilage is dense but never in the calcium truth."""
    spec = sample_spec(9001, 3, matrix=128)
    rendered = render_study(spec)
    anatomy, tissues = rendered.anatomy, rendered.anatomy.tissues
    assert anatomy.diaphragm is not None
    assert any(c.calcified for c in anatomy.cartilages)
    n, pixel = spec.scanner.matrix, spec.scanner.pixel_mm
    x0, y0, z0 = rendered.origin_mm
    x = (x0 + np.arange(n) * pixel)[None, :]
    y = (y0 + np.arange(n) * pixel)[:, None]
    slice_z = z0 + np.arange(rendered.hu.shape[0]) * spec.scanner.slice_spacing_mm
    clean = np.stack([tissue_slice(anatomy, x, y, float(z)) for z in slice_z])
    lowest, middle = clean[0], clean[len(clean) // 2]
    assert (lowest == tissues.liver).sum() > (lowest == tissues.lung).sum()
    assert not (middle == tissues.liver).any() and (middle == tissues.lung).any()
    # calcified cartilage: painted denser than cartilage and soft tissue, not bone
    bone = {tissues.cortical_bone, tissues.cancellous_bone, tissues.table}
    calcified_hu = {hu for c in anatomy.cartilages for _, _, hu, _ in c.calcified}
    cartilage_calcium = np.isin(clean, np.float32(sorted(calcified_hu - bone)))
    dense = cartilage_calcium & (rendered.hu >= rendered.threshold_hu)
    assert dense.sum() > 5
    assert not rendered.labels[dense].any()


def test_airways_are_air_in_the_mediastinum_and_calcified_nodes_are_not_calcium_truth():
    spec = sample_spec(9001, 3, matrix=128)
    anatomy = render_study(spec).anatomy
    tissues = anatomy.tissues
    assert len(anatomy.airways) == 3 and len(anatomy.nodes) == 4
    right_bronchus = anatomy.airways[1][0]
    px, py, pz = right_bronchus[len(right_bronchus) // 2]
    x = np.arange(-100.0, 100.0, 0.5)[None, :]
    y = np.arange(-100.0, 100.0, 0.5)[:, None] + anatomy.body_centre_y
    plane = tissue_slice(anatomy, x, y, float(pz))
    row, col = np.argmin(np.abs(y[:, 0] - py)), np.argmin(np.abs(x[0] - px))
    assert plane[row, col] == tissues.air
    # a calcified node: dense at its centre, and no plaque labels it (truth comes from
    # plaques only, so render a study whose node is calcified and check its voxels)
    for index in range(40):
        spec = sample_spec(9001, index, matrix=128)
        rendered = render_study(spec)
        calcified = [n for n in rendered.anatomy.nodes if n.calcified is not None]
        x0, y0, z0 = rendered.origin_mm
        pixel, dz = spec.scanner.pixel_mm, spec.scanner.slice_spacing_mm
        for node in calcified:
            k = round((node.centre[2] - z0) / dz)
            r, c = round((node.centre[1] - y0) / pixel), round((node.centre[0] - x0) / pixel)
            if 0 <= k < rendered.hu.shape[0] and rendered.hu[k, r, c] >= rendered.threshold_hu:
                assert rendered.labels[k, r, c] == 0
                return
    pytest.fail("no calcified node in view in 40 studies")


def test_randomised_phantom_labels_insert_calcium_and_never_rods_or_spine():
    from calcpipe.synthetic import physics
    from calcpipe.synthetic.phantom import PHANTOM_LABEL, render_phantom

    rods_seen = 0
    for index in range(6):
        phantom = render_phantom(5, index)
        again = render_phantom(5, index)
        assert np.array_equal(phantom.hu, again.hu)  # deterministic
        assert phantom.labels.shape == phantom.hu.shape
        assert set(np.unique(phantom.labels)) <= {0, PHANTOM_LABEL}
        labelled = phantom.labels > 0
        assert (phantom.hu[labelled] >= 130).all()  # the truth threshold, both kVp
        assert len(phantom.inserts) >= 3
        for row, col, z, diameter, length, _density in phantom.rods:
            rods_seen += 1
            box, fraction = physics.cylinder_occupancy(
                row, col, z, diameter / 2, length, slice_z0_mm=0.0,
                spacing_mm=phantom.spacing_mm, shape=phantom.hu.shape)
            assert not labelled[box][fraction > 0.5].any()
        for row, col, z, diameter, length, density in phantom.inserts:
            box, fraction = physics.cylinder_occupancy(
                row, col, z, diameter / 2, length, slice_z0_mm=0.0,
                spacing_mm=phantom.spacing_mm, shape=phantom.hu.shape)
            if diameter >= 3 and density >= 300:  # visible at any slice thickness drawn
                assert labelled[box][fraction > 0.5].any()
        # the spine's cortex reaches calcium HU and is never calcium truth
        bone = (phantom.hu >= 300) & ~ndimage.binary_dilation(labelled, iterations=3)
        assert bone.sum() > 1000
    assert rods_seen  # the draw includes calibration rods to learn from
    # a rod longer than the heart is not placed (was a crash for such a draw)
    from calcpipe.synthetic.phantom import _place

    assert _place(np.random.default_rng(0), [], (0.0, 0.0), 40.0, (0.0, 20.0), 10.0, 12.5) is None


def test_label_maps_gzip_deterministically_and_as_small_as_level_9():
    import gzip
    import zlib

    from calcpipe.synthetic.truth import (
        gzip_labels,
        labels_from_bytes,
        nifti_bytes,
        plain_nifti_bytes,
    )

    labels = np.zeros((40, 512, 512), dtype=np.uint8)  # a study's size: sparse calcium
    labels[5:8, 240:250, 260:264] = 2
    labels[12, 290:295, 210:230] = 5
    data = nifti_bytes(labels, np.eye(4))
    assert data == nifti_bytes(labels, np.eye(4))
    # compressed as nibabel writes, piece by piece: the bytes of the whole file compressed
    assert data == gzip_labels(plain_nifti_bytes(labels, np.eye(4)))
    assert data[4:8] == b"\0\0\0\0"  # gzip's timestamp
    assert np.array_equal(labels_from_bytes(data)[0], labels)
    plain = gzip.decompress(data)
    assert len(gzip_labels(plain)) <= 1.05 * len(zlib.compress(plain, 9, wbits=31))
