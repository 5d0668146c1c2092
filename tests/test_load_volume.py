"""load_volume on series written by pydicom: exact HU, ordering, geometry and metadata."""

from __future__ import annotations

import shutil
import zlib

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from calcpipe.dicom import (
    PADDING_HU,
    DicomDecodeError,
    DicomError,
    DicomGeometryError,
    load_volume,
)
from calcpipe.dicom.frames import to_hu
from calcpipe.dicom.writer import write_series
from calcpipe.ingest import discover, scan_headers


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


def _deflated_series(folder):
    """A series saved as Deflated Explicit VR Little Endian; the images compress well, so
    the inflated data set is longer than the file."""
    hu = np.zeros((3, 64, 64), dtype=np.int16)
    hu[:, 16:48, 16:48] = 400
    files = write_series(folder, hu, spacing_mm=(3.0, 0.5, 0.5))
    for path in files:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.save_as(path, enforce_file_format=True)
    return hu, files


def test_deflated_series_loads_and_is_chosen(tmp_path):
    hu, files = _deflated_series(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    assert ds.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert len(ds.PixelData) > files[0].stat().st_size
    volume = load_volume(tmp_path / "s")
    np.testing.assert_array_equal(volume.hu, hu)
    np.testing.assert_array_equal(volume.hu[0], ds.pixel_array.astype(np.int32) - 1024)
    (study,) = discover(tmp_path).studies
    assert study.chosen is not None and study.chosen.summary.n_slices == 3
    assert study.chosen.summary.has_pixel_data


def test_truncated_deflated_file_is_refused_by_name(tmp_path):
    _, files = _deflated_series(tmp_path / "s")
    data = files[1].read_bytes()
    files[1].write_bytes(data[:len(data) - 40])  # cut inside the compressed stream
    with pytest.raises(DicomError) as info:
        load_volume(tmp_path / "s")
    assert info.value.code == "truncated"
    skipped = scan_headers(tmp_path).skipped
    assert [(s.url, s.code) for s in skipped] == [(str(files[1]), "truncated")]
    # a complete stream whose inflated data set ends inside the pixel data
    ds = pydicom.dcmread(files[2])
    start = 132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength)
    body = zlib.decompress(data[start:], -zlib.MAX_WBITS)
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    short = packer.compress(body[:-100]) + packer.flush()
    files[1].write_bytes(data[:start] + short)
    with pytest.raises(DicomError) as info:
        load_volume(tmp_path / "s")
    assert info.value.code == "truncated"


def test_rescale_rounding_to_32768_is_refused():
    stored = np.array([[65535, 2048]], dtype=np.uint16)  # 32767.5 HU rounds to 32768
    for bits in (None, 16):
        with pytest.raises(DicomDecodeError) as info:
            to_hu(stored, 0.5, 0.0, None, bits_stored=bits)
        assert info.value.code == "hu_out_of_range"
    hu, _, rounded = to_hu(np.array([[65534]], dtype=np.uint16), 0.5, 0.4, None)
    assert hu.tolist() == [[32767]] and rounded
    low = np.array([[-32768, 0]], dtype=np.int16)
    assert to_hu(low, 1.0, -0.5, None)[0].tolist() == [[-32768, 0]]  # -32768.5 rounds to even
    with pytest.raises(DicomDecodeError):
        to_hu(low, 1.0, -1.5, None)


def test_duplicate_position_names_only_the_duplicate(make_series):
    folder, _, files = make_series()
    ds = pydicom.dcmread(files[2])
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.999"
    ds.PixelData = (ds.pixel_array ^ 1).astype(np.uint16).tobytes()  # other content
    ds.save_as(folder / "other_slice_at_2.dcm")
    with pytest.raises(DicomGeometryError) as info:
        load_volume(folder)
    assert info.value.codes == ("duplicate_position",)


def test_sagittal_stack_with_cosine_noise_ascends_along_the_normal(make_series):
    # normal (-1, 0, -1e-6): patient x descends from slice to slice, still ascending keys
    iop = (0.0, 1.0, 0.0, 1e-6, 0.0, -1.0)
    folder, hu, _ = make_series(orientation=iop)
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.hu, hu)
    normal = np.cross(iop[:3], iop[3:])
    assert volume.affine[:3, 0] @ normal == pytest.approx(3.0)


def test_a_series_without_a_positive_kvp_is_flagged_and_scored_at_120(make_series):
    folder, _, files = make_series()
    assert not load_volume(folder).has_flag("kvp_missing")
    for value in (None, "0", "-100"):
        for path in files:
            ds = pydicom.dcmread(path)
            if value is None:
                del ds.KVP
            else:
                ds.KVP = value
            ds.save_as(path)
        volume = load_volume(folder)
        assert volume.has_flag("kvp_missing"), value
        assert volume.scoring_kvp == 120.0, value


@pytest.mark.parametrize("where", ["pixel length", "file meta group length"])
def test_a_file_cut_inside_a_length_field_is_refused_as_truncated(make_series, where):
    folder, _, files = make_series()
    data = files[1].read_bytes()
    at = pydicom.dcmread(files[1]).get_item(0x7FE00010).value_tell
    files[1].write_bytes(data[:at - 2] if where == "pixel length" else data[:141])
    with pytest.raises(DicomError) as info:
        load_volume(folder)
    assert info.value.code == "truncated"
    assert [(s.url, s.code) for s in scan_headers(folder).skipped] == [
        (str(files[1]), "truncated")]
