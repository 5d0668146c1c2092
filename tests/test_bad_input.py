"""Every bad input gets a specific exception naming the file, series and attribute."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate

from calcpipe.dicom import (
    DicomDecodeError,
    DicomGeometryError,
    DicomInputError,
    load_volume,
    read_hu,
)
from calcpipe.dicom.writer import write_series


def _edit(path, **changes):
    ds = pydicom.dcmread(path)
    for keyword, value in changes.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_zero_byte_file(make_series):
    folder, _, files = make_series()
    files[1].write_bytes(b"")
    with pytest.raises(DicomInputError) as info:
        load_volume(folder)
    assert info.value.code == "empty_file" and info.value.path == str(files[1])


@pytest.mark.parametrize("keep", [0.5, 0.05, 0.999])
def test_truncated_file(make_series, keep):
    folder, _, files = make_series()
    raw = files[2].read_bytes()
    files[2].write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises((DicomInputError, DicomDecodeError)) as info:
        load_volume(folder)
    assert info.value.code == "truncated" and str(files[2]) in str(info.value)


def test_non_dicom_file_in_a_list(make_series, tmp_path):
    _, _, files = make_series()
    notes = tmp_path / "notes.txt"
    notes.write_text("patient notes, not an image\n" * 20)
    with pytest.raises(DicomInputError) as info:
        load_volume([*files, notes])
    assert info.value.code == "not_dicom" and info.value.path == str(notes)


def test_non_dicom_file_in_a_folder_is_skipped_and_flagged(make_series):
    folder, hu, _ = make_series()
    (folder / "README").write_text("exported by the PACS\n")
    volume = load_volume(folder)
    np.testing.assert_array_equal(volume.hu, hu)
    assert volume.has_flag("non_dicom_files_skipped")


def test_non_ct_modality(make_series):
    folder, _, files = make_series()
    _edit(files[0], Modality="MR")
    with pytest.raises(DicomInputError) as info:
        load_volume(folder)
    assert info.value.code == "not_ct" and info.value.attribute == "Modality"


def test_no_pixel_data(make_series):
    folder, _, files = make_series()
    _edit(files[0], PixelData=None)
    with pytest.raises(DicomInputError) as info:
        load_volume(folder)
    assert info.value.code == "no_pixel_data" and "private compression" in str(info.value)


def test_unsupported_transfer_syntax(make_series):
    _, _, files = make_series(shape=(2, 16, 16))
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG-2 video
    ds.PixelData = encapsulate([ds.PixelData])
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DicomDecodeError) as info:
        read_hu(files[0])
    assert info.value.code == "unsupported_transfer_syntax"
    assert "1.2.840.10008.1.2.4.100" in str(info.value) and info.value.fix


def test_corrupt_compressed_pixels(make_series):
    _, _, files = make_series(shape=(2, 16, 16))
    ds = pydicom.dcmread(files[0])
    ds.file_meta.TransferSyntaxUID = pydicom.uid.JPEG2000Lossless
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds.save_as(files[0], enforce_file_format=True)
    with pytest.raises(DicomDecodeError) as info:
        read_hu(files[0])
    assert info.value.code in {"decode_failed", "truncated"}


@pytest.mark.parametrize("keyword", ["ImagePositionPatient", "ImageOrientationPatient",
                                     "PixelSpacing", "RescaleIntercept"])
def test_missing_required_attribute(make_series, keyword):
    folder, _, files = make_series()
    _edit(files[3], **{keyword: None})
    with pytest.raises(DicomInputError) as info:
        load_volume(folder)
    assert info.value.code == "missing_attribute" and info.value.attribute == keyword
    assert info.value.path == str(files[3])


def test_folder_mixing_two_series(tmp_path):
    hu = np.zeros((3, 8, 8), dtype=np.int16)
    write_series(tmp_path / "study" / "a", hu, spacing_mm=(3, 1, 1), series_uid="1.2.3.1")
    write_series(tmp_path / "study" / "b", hu, spacing_mm=(3, 1, 1), series_uid="1.2.3.2")
    # a study folder: selection decides (an exact tie goes to the first series id)
    chosen = load_volume(tmp_path / "study")
    assert chosen.series_uid == "1.2.3.1" and chosen.selection is not None
    assert chosen.selection.verdict("1.2.3.2").rules == ("series_id_order",)
    with pytest.raises(DicomInputError) as info:
        load_volume(sorted((tmp_path / "study").rglob("*.dcm")))
    assert info.value.code == "mixed_series"
    assert "1.2.3.1" in str(info.value) and "1.2.3.2" in str(info.value)
    assert load_volume(tmp_path / "study", series_uid="1.2.3.2").shape == (3, 8, 8)
    with pytest.raises(DicomInputError) as info:
        load_volume(tmp_path / "study", series_uid="9.9")
    assert info.value.code == "series_not_found"


def test_single_slice(make_series):
    _, _, files = make_series()
    with pytest.raises(DicomGeometryError) as info:
        load_volume(files[0])
    assert info.value.codes == ("single_slice",)


def _geometry_codes(folder):
    with pytest.raises(DicomGeometryError) as info:
        load_volume(folder)
    return set(info.value.codes)


def _move(path, dz=0.0, dx=0.0):
    ds = pydicom.dcmread(path)
    x, y, z = (float(v) for v in ds.ImagePositionPatient)
    ds.ImagePositionPatient = [f"{x + dx:.4f}", f"{y:.4f}", f"{z + dz:.4f}"]
    ds.save_as(path)


def test_missing_slice(make_series):
    folder, _, files = make_series(shape=(6, 8, 8))
    files[3].unlink()
    assert _geometry_codes(folder) == {"missing_slice"}


def test_nonuniform_spacing(make_series):
    folder, _, files = make_series(shape=(6, 8, 8))
    _move(files[3], dz=0.7)
    assert _geometry_codes(folder) == {"nonuniform_spacing"}


def test_duplicate_positions_with_different_content(make_series):
    folder, _, files = make_series(shape=(6, 8, 8))
    _move(files[3], dz=-3.0)  # now at slice 2's position, other pixels, other UID
    assert "duplicate_position" in _geometry_codes(folder)


def test_sheared_stack_is_gantry_tilt(make_series):
    folder, _, files = make_series(shape=(6, 8, 8))
    for k, path in enumerate(files):
        _move(path, dx=k * 1.0)  # 1 mm per 3 mm slice: 18 degrees of shear
    assert _geometry_codes(folder) == {"gantry_tilt"}


def test_gantry_detector_tilt_attribute(make_series):
    folder, _, _ = make_series(extra={"GantryDetectorTilt": "12"})
    assert _geometry_codes(folder) == {"gantry_tilt"}


def test_mismatched_matrix(make_series, tmp_path):
    _folder, _, files = make_series(shape=(4, 8, 8))
    series_uid = pydicom.dcmread(files[0]).SeriesInstanceUID
    other = write_series(tmp_path / "other", np.zeros((5, 8, 10), dtype=np.int16),
                         spacing_mm=(3.0, 0.5, 0.6), series_uid=series_uid)
    assert _geometry_codes([*files, other[4]]) == {"mismatched_matrix"}


def test_mismatched_pixel_spacing(make_series):
    folder, _, files = make_series(shape=(4, 8, 8))
    _edit(files[1], PixelSpacing=["0.7", "0.7"])
    assert _geometry_codes(folder) == {"mismatched_pixel_spacing"}


def test_hu_out_of_int16_range(make_series):
    folder, _, files = make_series(shape=(2, 8, 8))
    for path in files:
        _edit(path, BitsStored=16, HighBit=15, RescaleIntercept="0",
              PixelData=np.full((8, 8), 40000, dtype=np.uint16).tobytes())
    with pytest.raises(DicomDecodeError) as info:
        load_volume(folder)
    assert info.value.code == "hu_out_of_range"


def test_errors_are_chained_and_readable(make_series):
    folder, _, files = make_series()
    _edit(files[0], ImagePositionPatient=["1.5", "2.5"])
    with pytest.raises(DicomInputError) as info:
        load_volume(folder)
    text = str(info.value)
    assert "ImagePositionPatient" in text and "fix:" in text and str(files[0]) in text
