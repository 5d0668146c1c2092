"""load_volume on series written by pydicom: exact HU, ordering, geometry and metadata."""

from __future__ import annotations

import shutil

import numpy as np
import pydicom
import pytest
from pydicom.uid import JPEG2000Lossless, RLELossless

from calcpipe.dicom import PADDING_HU, load_volume


def test_round_trip_is_exact(make_series):
    folder, hu, _files = make_series(origin_mm=(-10.0, 20.0, -300.0))
    volume = load_volume(folder)
    assert volume.hu.dtype == np.int16
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.spacing_mm == pytest.approx((3.0, 0.5, 0.6))
    assert volume.slice_thickness_mm == 3.0
    assert volume.qc_flags == ()
    assert volume.shape == hu.shape


def test_affine_maps_indices_to_image_positions(make_series):
    folder, _, files = make_series(origin_mm=(-10.0, 20.0, -300.0))
    volume = load_volume(folder)
    for k, path in enumerate(files):
        ipp = np.array([float(v) for v in pydicom.dcmread(path).ImagePositionPatient])
        np.testing.assert_allclose(volume.affine @ [k, 0, 0, 1], [*ipp, 1], atol=1e-6)
    # one row down = +y by the row spacing, one column right = +x by the column spacing
    np.testing.assert_allclose(volume.affine @ [0, 1, 0, 1], [-10.0, 20.5, -300.0, 1])
    np.testing.assert_allclose(volume.affine @ [0, 0, 1, 1], [-9.4, 20.0, -300.0, 1])


def test_slices_sorted_by_position_not_by_file_name_or_instance_number(make_series):
    folder, hu, files = make_series()
    for path, number in zip(files, [3, 1, 5, 2, 4], strict=True):
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = number
        ds.save_as(path)
    # rename so that directory order is the reverse of position order
    for k, path in enumerate(files):
        path.rename(path.with_name(f"Z{len(files) - k}.dcm"))
    np.testing.assert_array_equal(load_volume(folder).hu, hu)


def test_normal_pointing_to_feet_still_gives_ascending_z(make_series):
    # column cosines along -y: the normal is -z, so file k lies *below* file k-1
    folder, hu, _ = make_series(orientation=(1, 0, 0, 0, -1, 0), origin_mm=(0, 0, 100))
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.hu, hu[::-1])
    z = [(volume.affine @ [k, 0, 0, 1])[2] for k in range(volume.shape[0])]
    assert np.all(np.diff(z) == pytest.approx(3.0))
    assert z[0] == pytest.approx(100 - 4 * 3.0)


def test_list_of_files_and_series_uid_filter(make_series):
    folder, hu, files = make_series()
    volume = load_volume([str(f) for f in reversed(files)])
    np.testing.assert_array_equal(volume.hu, hu)
    assert load_volume(folder, series_uid=volume.series_uid).series_uid == volume.series_uid


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_same_hu(make_series, syntax):
    folder, hu, _ = make_series(shape=(3, 64, 64), transfer_syntax=syntax)
    assert pydicom.dcmread(next(folder.iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(load_volume(folder).hu, hu)


def test_rescale_slope_and_signed_storage(tmp_path, make_series):
    folder, hu, files = make_series(shape=(3, 8, 8))
    for path in files:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.astype(np.int32) - 1024  # now the HU values themselves
        ds.PixelRepresentation = 1
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelData = (stored // 2).astype(np.int16).tobytes()
        ds.RescaleSlope = "2"
        ds.RescaleIntercept = "1"
        ds.save_as(path)
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.hu, (hu.astype(np.int32) // 2) * 2 + 1)
    assert not volume.has_flag("rescale_rounded")


def test_non_integer_rescale_is_rounded_and_flagged(make_series):
    folder, hu, files = make_series(shape=(3, 8, 8))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.RescaleSlope = "0.5"
        ds.RescaleIntercept = "-1024"
        ds.save_as(path)
    volume = load_volume(folder)
    expected = np.rint((hu.astype(np.float64) + 1024) * 0.5 - 1024)
    np.testing.assert_array_equal(volume.hu, expected)
    assert volume.has_flag("rescale_rounded")


def test_pixel_padding_becomes_padding_hu(make_series):
    folder, hu, files = make_series(shape=(3, 8, 8))
    for path in files:
        ds = pydicom.dcmread(path)
        pixels = ds.pixel_array.copy()
        pixels[0, :] = 4095
        ds.PixelData = pixels.tobytes()
        ds.add_new(0x00280120, "US", 4095)  # PixelPaddingValue, unsigned like the pixels
        ds.save_as(path)
    volume = load_volume(folder)
    assert np.all(volume.hu[:, 0, :] == PADDING_HU)
    np.testing.assert_array_equal(volume.hu[:, 1:, :], hu[:, 1:, :])
    assert volume.has_flag("pixel_padding")


def test_unused_high_bits_are_masked(make_series):
    folder, hu, files = make_series(shape=(2, 8, 8))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PixelData = (ds.pixel_array | 0xF000).astype(np.uint16).tobytes()  # overlay bits
        ds.save_as(path)
    np.testing.assert_array_equal(load_volume(folder).hu, hu)


def test_identical_duplicate_instances_are_dropped_and_flagged(make_series):
    folder, hu, files = make_series()
    shutil.copy(files[2], folder / "copy_of_slice_2.dcm")
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.has_flag("duplicate_instances_dropped")


def test_overlap_and_thickness_flags(make_series):
    folder, _, _ = make_series(spacing_mm=(2.0, 0.5, 0.5), slice_thickness_mm=3.0)
    volume = load_volume(folder)
    assert volume.has_flag("overlapping_slices")
    assert not volume.has_flag("slice_thickness_outside_2.5_3.0_mm")
    folder, _, _ = make_series(spacing_mm=(5.0, 0.5, 0.5))
    volume = load_volume(folder)
    assert volume.has_flag("slice_thickness_outside_2.5_3.0_mm")
    assert not volume.has_flag("overlapping_slices")


def test_metadata_for_epidemiology(make_series):
    folder, _, _ = make_series(extra={
        "PatientAge": "", "PatientBirthDate": "19580615", "StudyDate": "20230614",
        "PatientSex": "F", "ConvolutionKernel": ["Br38f", "3"], "XRayTubeCurrent": "200",
        "ExposureTime": "250", "ReconstructionDiameter": "220",
        "CardiacSynchronizationTechnique": "PROSPECTIVE",
        "NominalPercentageOfCardiacPhase": 75.0, "ContrastBolusAgent": "Iohexol",
    })
    volume = load_volume(folder)
    meta = volume.metadata
    assert meta.age_years == 64.0  # the day before the 65th birthday
    assert meta.sex == "F"
    assert meta.kernel == "Br38f\\3"
    assert meta.exposure_mas == pytest.approx(50.0)
    assert meta.reconstruction_diameter_mm == 220.0
    assert meta.kvp == 120.0
    assert meta.gating.gated and meta.gating.nominal_cardiac_phase_percent == 75.0
    assert meta.contrast_agent == "Iohexol" and volume.has_flag("contrast_agent")
    assert meta.image_type == ("ORIGINAL", "PRIMARY", "AXIAL")
    assert not any("birth" in name.lower() for name in vars(meta))


def test_patient_age_wins_over_dates(make_series):
    folder, _, _ = make_series(extra={"PatientAge": "006M", "PatientBirthDate": "19000101"})
    assert load_volume(folder).metadata.age_years == 0.5


def test_missing_uids_get_stable_derived_keys(tmp_path, make_series):
    folder, hu, files = make_series(extra={"StudyInstanceUID": "", "PatientID": ""})
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.SOPInstanceUID = ""
        ds.save_as(path)
    first = load_volume(folder)
    moved = shutil.copytree(folder, tmp_path / "elsewhere" / "renamed")
    second = load_volume(moved)
    assert first.study_uid == second.study_uid and first.study_uid.startswith("2.25.")
    assert first.series_uid == second.series_uid and first.series_uid.startswith("2.25.")
    assert first.sop_instance_uids == second.sop_instance_uids
    assert len(set(first.sop_instance_uids)) == len(files)
    for code in ("derived_study_uid", "derived_series_uid", "derived_instance_uid"):
        assert first.has_flag(code)
    np.testing.assert_array_equal(first.hu, hu)
