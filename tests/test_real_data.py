"""Real scans from ../shared/data (see its README); skipped when the folder is absent."""

from __future__ import annotations

import numpy as np
import pytest

from calcpipe.dicom import DicomGeometryError, DicomInputError, load_volume


def test_qrm_phantom_geometry_and_hu(shared_data):
    volume = load_volume(shared_data / "qrm_phantom_canon" / "dicom")
    assert volume.shape == (47, 512, 512)
    assert volume.spacing_mm == pytest.approx((3.0, 0.488, 0.488))
    assert int(volume.hu.min()) == -2048 and int(volume.hu.max()) == 1275
    assert volume.metadata.image_type == ("DERIVED", "PRIMARY", "MPR")
    assert volume.metadata.kvp == 120.0 and volume.metadata.kernel == "FC12"
    # ascending z, 3 mm apart, from the lowest ImagePositionPatient z of the files
    z = volume.affine[2, 3] + 3.0 * np.arange(47)
    assert z[0] == pytest.approx(534.875) and z[-1] == pytest.approx(672.875)
    assert volume.qc_flags == ()


def test_qrm_inserts_lie_in_the_documented_slab(shared_data):
    volume = load_volume(shared_data / "qrm_phantom_canon" / "dicom")
    # the 800 mg HA/cm3 inserts are the brightest objects around slice 22
    dense = (volume.hu >= 600).sum(axis=(1, 2))
    assert 20 <= int(np.argmax(dense[15:28])) + 15 <= 24


def test_head_ct_refused_for_tilt_and_nonuniform_spacing(shared_data):
    with pytest.raises(DicomGeometryError) as info:
        load_volume(shared_data / "head_ct_gantry_tilt")
    codes = set(info.value.codes)
    assert {"gantry_tilt", "nonuniform_spacing"} <= codes
    assert "18.5" in str(info.value)


def test_totalseg_jpeg2000_with_missing_identifiers(shared_data):
    folder = shared_data / "totalseg_ct_jpeg2000" / "dicom"
    volume = load_volume(folder)
    assert volume.shape == (20, 512, 512)
    assert volume.spacing_mm[0] == pytest.approx(2.0)
    assert volume.slice_thickness_mm == 3.0
    for code in ("overlapping_slices", "contrast_agent", "derived_study_uid",
                 "derived_series_uid", "derived_instance_uid"):
        assert volume.has_flag(code), code
    assert volume.study_uid.startswith("2.25.") and volume.series_uid.startswith("2.25.")
    assert len(set(volume.sop_instance_uids)) == 20
    assert volume.metadata.kernel == "Br38f\\3"
    assert load_volume(folder).study_uid == volume.study_uid  # deterministic
    assert -1100 < int(volume.hu.min()) and int(volume.hu.max()) < 3100


def test_chest_ct_two_kernels_need_a_choice(shared_data):
    study = shared_data / "chest_ct_lung_pet_ct_dx" / "study_A0002"
    with pytest.raises(DicomInputError) as info:
        load_volume(study)
    assert info.value.code == "mixed_series" and "30 files" in str(info.value)
    soft = load_volume(study / "series_B40f")
    sharp = load_volume(study / "series_B70f")
    assert soft.metadata.kernel == "B40f" and sharp.metadata.kernel == "B70f"
    assert soft.shape == sharp.shape == (30, 512, 512)
    assert soft.has_flag("slice_thickness_outside_2.5_3.0_mm")
    assert soft.metadata.age_years == 53.0 and soft.metadata.sex == "F"
    np.testing.assert_allclose(soft.affine, sharp.affine)
    assert load_volume(study, series_uid=soft.series_uid).series_uid == soft.series_uid
