"""The fast reader (calcpipe.dicom.native) against the pydicom path, file by file: either
the same frame and keys, or None (the file then goes the pydicom way)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import ImplicitVRLittleEndian

from calcpipe.dicom import frames as frames_module
from calcpipe.dicom import load_volume
from calcpipe.dicom.errors import DicomError
from calcpipe.dicom.native import HEADER_BYTES, read_native


def _slow(path: Path, monkeypatch: pytest.MonkeyPatch) -> frames_module.FileRead:
    with monkeypatch.context() as m:
        m.setattr("calcpipe.dicom.native.read_native", lambda name: None)
        return frames_module.read_file(path)


def _assert_same(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fast = read_native(str(path))
    assert fast is not None, f"{path} was left to pydicom"
    slow = _slow(path, monkeypatch)
    assert len(slow.frames) == 1
    expected, got = slow.frames[0], fast.frame
    for field in dataclasses.fields(expected):
        a, b = getattr(expected, field.name), getattr(got, field.name)
        if field.name == "stored":
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field.name
    assert fast.study_uid == str(slow.dataset.StudyInstanceUID)
    assert fast.series_uid == str(slow.dataset.SeriesInstanceUID)


def _rewrite(path: Path, change) -> Path:  # type: ignore[no-untyped-def]
    ds = pydicom.dcmread(path)
    change(ds)
    ds.save_as(path)
    return path


@pytest.mark.parametrize("implicit", [False, True])
def test_written_series_read_fast_and_the_same(make_series, monkeypatch, implicit):
    _, _, files = make_series(shape=(3, 16, 20))
    for path in files:
        if implicit:
            _rewrite(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID",
                                              ImplicitVRLittleEndian))
        _assert_same(path, monkeypatch)


def test_signed_padded_rescaled_twelve_bit_files_read_the_same(make_series, monkeypatch):
    """Signed storage with bits above BitsStored set, padding (SS), a non-integer rescale,
    in both VR encodings (implicit: padding's VR from PixelRepresentation)."""
    _, _, files = make_series(shape=(2, 8, 8))

    def change(ds: Dataset) -> None:
        pixels = ds.pixel_array.astype(np.int16) - 1024
        pixels[0, :3] = -2000
        raw = pixels.view(np.uint16) & 0x0FFF  # 12 bits two's complement ...
        raw[1, :] |= 0xF000  # ... with stray high bits in row 1
        ds.PixelData = raw.tobytes()
        ds.PixelRepresentation, ds.BitsStored, ds.HighBit = 1, 12, 11
        ds.RescaleSlope, ds.RescaleIntercept = "1.5", "-3.25"
        ds.add_new(0x00280120, "SS", -2000)

    for k, path in enumerate(files):
        _rewrite(path, change)
        if k:
            _rewrite(path, lambda ds: setattr(ds.file_meta, "TransferSyntaxUID",
                                              ImplicitVRLittleEndian))
        _assert_same(path, monkeypatch)
        assert read_native(str(path)).frame.padding == (-2000, -2000)  # type: ignore[union-attr]


@pytest.mark.parametrize("implicit", [False, True])
def test_sequences_of_undefined_length_are_stepped_over(make_series, monkeypatch, implicit):
    """Nested sequences, items of defined and undefined length (as scanners write them)."""
    _, _, files = make_series(shape=(1, 8, 8))

    def change(ds: Dataset) -> None:
        inner = Dataset()
        inner.CodeValue, inner.CodeMeaning = "T-D3000", "Chest"
        outer = [Dataset(), Dataset()]
        outer[0].ReferencedSOPInstanceUID = "1.2.3"
        outer[1].AnatomicRegionSequence = Sequence([inner])
        ds.ReferencedImageSequence = Sequence(outer)
        ds.ProcedureCodeSequence = Sequence([inner])  # defined length, below
        for keyword in ("ReferencedImageSequence", "AnatomicRegionSequence"):
            element = ds[keyword] if keyword in ds else outer[1][keyword]
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
        if implicit:
            ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian

    path = _rewrite(files[0], change)
    assert b"\xfe\xff\xdd\xe0" in path.read_bytes()  # a sequence delimiter was written
    _assert_same(path, monkeypatch)
    assert len(frames_module.read_file(path).dataset.ReferencedImageSequence) == 2


@pytest.mark.parametrize("case", [
    "several frames", "not CT", "no series UID",
    "bytes after the pixels", "truncated pixels", "header too long", "float pixel data",
    "no DICM marker",
])
def test_files_it_is_not_sure_of_go_the_pydicom_way(make_series, monkeypatch, case):
    path = make_series(shape=(1, 8, 8))[2][0]
    ds = pydicom.dcmread(path)
    if case == "several frames":
        ds.NumberOfFrames = "2"
    elif case == "not CT":
        ds.Modality = "MR"
    elif case == "no series UID":
        del ds.SeriesInstanceUID
    elif case == "bytes after the pixels":
        ds.add_new(0xFFFCFFFC, "OB", b"\0\0")  # DataSetTrailingPadding
    elif case == "header too long":
        ds.add_new(0x00291010, "OB", b"\0" * HEADER_BYTES)  # a large private element
    elif case == "float pixel data":
        ds.add_new(0x7FE00008, "OF", b"\0" * 4)
    ds.save_as(path)
    if case == "truncated pixels":
        path.write_bytes(path.read_bytes()[:-10])
    elif case == "no DICM marker":
        path.write_bytes(path.read_bytes()[132:])
    assert read_native(str(path)) is None
    refused = ("not CT", "truncated pixels", "several frames")  # 2 frames of bytes for 1
    try:
        slow = _slow(path, monkeypatch)
    except DicomError as e:  # the pydicom path names the problem itself
        assert case in refused
        with pytest.raises(DicomError) as again:
            frames_module.read_file(path)
        assert (type(again.value), again.value.code) == (type(e), e.code)
    else:
        assert case not in refused
        np.testing.assert_array_equal(frames_module.read_file(path).frames[0].to_hu()[0],
                                      slow.frames[0].to_hu()[0])


def test_load_volume_is_the_same_either_way(make_series, monkeypatch):
    folder, hu, _ = make_series(shape=(4, 16, 16))
    fast = load_volume(folder)
    with monkeypatch.context() as m:
        m.setattr("calcpipe.dicom.native.read_native", lambda name: None)
        slow = load_volume(folder)
    np.testing.assert_array_equal(fast.hu, hu)
    for field in dataclasses.fields(fast):
        a, b = getattr(fast, field.name), getattr(slow, field.name)
        if isinstance(a, np.ndarray):
            np.testing.assert_array_equal(a, b)
        else:
            assert a == b, field.name


def test_real_scans_read_the_same(shared_data, monkeypatch):
    """The QRM phantom (implicit VR), the chest CT (sequences of undefined length) and the
    head CT (padding) read fast, each file the same as pydicom reads it; the JPEG 2000
    files go the pydicom way."""
    from calcpipe.dicom import list_files

    fast_files = 0
    for folder in ("qrm_phantom_canon/dicom", "chest_ct_lung_pet_ct_dx/study_A0002",
                   "head_ct_gantry_tilt/dicom"):
        for name in list_files(shared_data / folder):
            path = Path(name)
            if read_native(name) is not None:
                _assert_same(path, monkeypatch)
                fast_files += 1
            else:
                slow, now = _slow(path, monkeypatch), frames_module.read_file(path)
                np.testing.assert_array_equal(slow.frames[0].stored, now.frames[0].stored)
    assert fast_files == 47 + 60 + 28
    assert all(read_native(name) is None
               for name in list_files(shared_data / "totalseg_ct_jpeg2000/dicom"))
