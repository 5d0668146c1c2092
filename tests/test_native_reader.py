"""The fast reader (calcpipe.dicom.native) against the pydicom path, file by file: either
the same frame and keys, or None (the file then goes the pydicom way)."""

from __future__ import annotations

import dataclasses
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

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


# Raw files, element by element, for the cases a review found where the fast reader once
# disagreed with pydicom (2026-12-04): each is now left to pydicom.
_UNDEFINED = 0xFFFFFFFF
_LONG = {"OB", "OW", "SQ", "UN", "UT"}


def _element(tag: int, vr: str, value: bytes, implicit: bool, length: int | None = None,
             ) -> bytes:
    size = len(value) if length is None else length
    head = struct.pack("<HH", tag >> 16, tag & 0xFFFF)
    if implicit:
        return head + struct.pack("<I", size) + value
    if vr in _LONG:
        return head + vr.encode() + b"\0\0" + struct.pack("<I", size) + value
    return head + vr.encode() + struct.pack("<H", size) + value


def _delimiter(tag: int, length: int = 0) -> bytes:
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, length)


def _raw_file(path: Path, implicit: bool, extra: bytes = b"", replace: dict | None = None,
              group_length: str | None = "UL", first: bytes = b"") -> Path:
    """A 4 x 4 CT image, with ``extra`` elements after the others, ``replace``d ones
    ({tag: (vr, value)}), the file meta's group length of VR ``group_length`` (None: none)
    and ``first`` before the data set's elements."""
    syntax = b"1.2.840.10008.1.2\0" if implicit else b"1.2.840.10008.1.2.1\0"
    meta = _element(0x00020010, "UI", syntax, False)
    if group_length is not None:
        size = struct.pack("<I" if group_length == "UL" else "<H", len(meta))
        meta = _element(0x00020000, group_length, size, False) + meta
    fields = {
        0x00080018: ("UI", b"1.2.3.4.5\0"), 0x00080060: ("CS", b"CT"),
        0x0020000D: ("UI", b"1.2.3.10"), 0x0020000E: ("UI", b"1.2.3.11"),
        0x00200032: ("DS", b"-10\\-20\\30 "), 0x00200037: ("DS", b"1\\0\\0\\0\\1\\0 "),
        0x00280010: ("US", struct.pack("<H", 4)), 0x00280011: ("US", struct.pack("<H", 4)),
        0x00280030: ("DS", b"0.5\\0.6 "), 0x00280100: ("US", struct.pack("<H", 16)),
        0x00280103: ("US", struct.pack("<H", 1)), 0x00281052: ("DS", b"-1024 "),
        0x00281053: ("DS", b"1 "),
    }
    fields.update(replace or {})
    body = b"".join(_element(tag, vr, value, implicit) for tag, (vr, value) in sorted(
        fields.items()))
    pixels = _element(0x7FE00010, "OW", np.arange(16, dtype="<i2").tobytes(), implicit)
    path.write_bytes(b"\0" * 128 + b"DICM" + meta + first + body + extra + pixels)
    return path


def _assert_left_to_pydicom(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fast reader declines ``path``, and read_file gives pydicom's outcome: the same
    error, or the same position and pixels."""
    assert read_native(str(path)) is None
    try:
        expected = _slow(path, monkeypatch)
    except Exception as e:
        with pytest.raises(type(e)):
            frames_module.read_file(path)
    else:
        got = frames_module.read_file(path).frames[0]
        assert got.position == expected.frames[0].position
        np.testing.assert_array_equal(got.stored, expected.frames[0].stored)


@pytest.mark.parametrize("implicit", [False, True])
def test_raw_files_read_fast_and_the_same(tmp_path, monkeypatch, implicit):
    """The raw builder's plain file, and one with a sequence of undefined length holding
    items of defined and of undefined length, read fast and the same."""
    _assert_same(_raw_file(tmp_path / "plain.dcm", implicit), monkeypatch)
    inner = _element(0x00080100, "SH", b"T-D3000 ", implicit)
    sequence = (_element(0x00081140, "SQ", b"", implicit, _UNDEFINED)
                + _delimiter(0xFFFEE000, len(inner)) + inner
                + _delimiter(0xFFFEE000, _UNDEFINED) + inner + _delimiter(0xFFFEE00D)
                + _delimiter(0xFFFEE0DD))
    _assert_same(_raw_file(tmp_path / "items.dcm", implicit, extra=sequence), monkeypatch)


@pytest.mark.parametrize("case", [
    "Modality of VR OB", "UID of VR OB", "NumberOfFrames of VR US",
    "functional groups of undefined length", "attribute repeated as a sequence",
    "implicit non-sequence of undefined length", "implicit length reading as capitals",
    "item shorter than its elements", "rows and columns far beyond the file",
])
def test_files_a_review_found_go_the_pydicom_way(tmp_path, monkeypatch, case):
    implicit = case.startswith("implicit")
    replace: dict[int, tuple[str, bytes]] = {}
    extra = b""
    if case == "Modality of VR OB":
        replace[0x00080060] = ("OB", b"CT")
    elif case == "UID of VR OB":
        replace[0x0020000E] = ("OB", b"1.2.3.11")
    elif case == "NumberOfFrames of VR US":
        replace[0x00280008] = ("US", b"1\0")
    elif case in ("functional groups of undefined length", "attribute repeated as a sequence"):
        position = _element(0x00200032, "DS", b"1\\2\\3 ", implicit)
        item = (_delimiter(0xFFFEE000, _UNDEFINED) + position + _delimiter(0xFFFEE00D))
        tag = 0x52009229 if case.startswith("functional") else 0x00280030
        extra = (_element(tag, "SQ", b"", implicit, _UNDEFINED) + item
                 + _delimiter(0xFFFEE0DD))
        if tag == 0x00280030:  # PixelSpacing again, after the elements, as a sequence
            replace[0x00280030] = ("DS", b"0.5\\0.6 ")
    elif case == "implicit non-sequence of undefined length":
        extra = (_element(0x00181030, "LO", b"", True, _UNDEFINED)  # ProtocolName
                 + _delimiter(0xFFFEE000, _UNDEFINED) + _delimiter(0xFFFEE00D)
                 + _delimiter(0xFFFEE0DD))
    elif case == "implicit length reading as capitals":
        replace[0x00071000] = ("UN", b"\0" * 0x4142)  # a private element first: "BA"
    elif case == "item shorter than its elements":
        # The item's length ends inside its element's value, where a sequence delimiter and
        # a position follow: stepping by the item's length would read that position.
        value = (_delimiter(0xFFFEE0DD) + _element(0x00200032, "DS", b"1\\2\\3 ", implicit)
                 + _element(0x00091002, "OB", b"", implicit, 8))
        head = _element(0x00091001, "OB", b"", implicit, len(value))
        extra = (_element(0x00400275, "SQ", b"", implicit, _UNDEFINED)
                 + _delimiter(0xFFFEE000, len(head)) + head + value + _delimiter(0xFFFEE0DD))
    elif case == "rows and columns far beyond the file":
        replace[0x00280010] = replace[0x00280011] = ("US", struct.pack("<H", 65535))
    path = _raw_file(tmp_path / "case.dcm", implicit, extra=extra, replace=replace)
    if case == "rows and columns far beyond the file":
        # checked before any allocation: 8 GiB would be asked for, past a 4 GiB limit
        code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30));"
                "from calcpipe.dicom.native import read_native;"
                "sys.exit(0 if read_native(sys.argv[1]) is None else 1)")
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    _assert_left_to_pydicom(path, monkeypatch)


def test_a_header_cut_inside_a_nested_item_is_left_to_pydicom(tmp_path, monkeypatch):
    """The bytes read for the header end inside an item's element: no error, pydicom reads
    the file."""
    inner = _element(0x00091010, "OB", b"\1" * 8, False)

    def written(pad: int) -> Path:
        item = _element(0x00091011, "OB", b"\0" * pad, False) + inner
        extra = (_element(0x00091001, "SQ", b"", False, _UNDEFINED)
                 + _delimiter(0xFFFEE000, _UNDEFINED) + item + _delimiter(0xFFFEE00D)
                 + _delimiter(0xFFFEE0DD))
        return _raw_file(tmp_path / "long.dcm", False, extra=extra)

    start = written(1000).read_bytes().find(inner)
    path = written(1000 + HEADER_BYTES - 10 - start)  # the read ends in its length
    assert path.read_bytes().find(inner) == HEADER_BYTES - 10
    assert read_native(str(path)) is None
    np.testing.assert_array_equal(frames_module.read_file(path).frames[0].stored,
                                  _slow(path, monkeypatch).frames[0].stored)


@pytest.mark.parametrize("case", [
    "character set with a NUL inside", "character set in an item with a NUL inside",
    "character set as a sequence", "meta group length of VR US", "no meta group length",
    "command set first",
])
def test_files_a_second_review_found_go_the_pydicom_way(tmp_path, monkeypatch, case):
    """pydicom converts SpecificCharacterSet (top level and in the items it reads whole)
    and the file meta's first element as it reads, and guesses the VR after a command set:
    where it might fail, the fast reader leaves the file to it."""
    implicit = case == "command set first"
    options: dict[str, Any] = {}
    if case == "character set with a NUL inside":
        options["replace"] = {0x00080005: ("CS", b"X\0Y ")}
    elif case == "character set in an item with a NUL inside":
        charset = _element(0x00080005, "CS", b"X\0Y ", implicit)
        options["extra"] = (_element(0x00081140, "SQ", b"", implicit, _UNDEFINED)
                            + _delimiter(0xFFFEE000, _UNDEFINED) + charset
                            + _delimiter(0xFFFEE00D) + _delimiter(0xFFFEE0DD))
    elif case == "character set as a sequence":
        options["first"] = (_element(0x00080005, "SQ", b"", implicit, _UNDEFINED)
                            + _delimiter(0xFFFEE0DD))
    elif case == "meta group length of VR US":
        options["group_length"] = "US"
    elif case == "no meta group length":
        options["group_length"] = None
    elif case == "command set first":  # then a length reading as capitals ("BA")
        options["first"] = _element(0x00000000, "UL", struct.pack("<I", 0), True) + (
            _element(0x00071000, "UN", b"\0" * 0x4142, True))
    _assert_left_to_pydicom(_raw_file(tmp_path / "case.dcm", implicit, **options), monkeypatch)
