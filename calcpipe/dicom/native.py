"""A fast reader for the common CT file: one uncompressed little-endian 16-bit frame.

pydicom turns every element of a header into Python objects and converts each attribute
again on access: two thirds of the time of reading a 512 x 512 slice. This reader walks
the element headers in the file's first bytes, decodes only the attributes a frame needs
and reads the pixel values straight into an array.

It accelerates; it never decides. A file it is not sure of (another transfer syntax, an
undefined length, several frames or functional groups, a missing or unusual value, a
header longer than :data:`HEADER_BYTES`, bytes after the pixel data) returns None and goes
the pydicom way (:func:`calcpipe.dicom.frames.read_file`), which then reads it or names
what is wrong with it. Tests compare both ways on every CT file at hand.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.datadict import dictionary_VR

from calcpipe.dicom.errors import DicomError
from calcpipe.dicom.frames import Frame, _floats, _native_bits, _scalar

#: Bytes read for the header; a longer one (rare: large private headers) goes the pydicom way.
HEADER_BYTES = 1 << 16

_IMPLICIT, _EXPLICIT = "1.2.840.10008.1.2", "1.2.840.10008.1.2.1"
_LONG_VR = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN",
                      b"UR", b"UT", b"UV"})
_SHORT_VR = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS",
                       b"LO", b"LT", b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL",
                       b"US"})
_TAG = struct.Struct("<HH")
_U16, _U32 = struct.Struct("<H"), struct.Struct("<I")
_PIXEL_DATA = 0x7FE00010
# item tags read as one little-endian 32-bit word: (FFFE,E000) is 0xE000FFFE
_ITEM, _SEQUENCE_END = 0xE000FFFE, 0xE0DDFFFE
_ITEM_END_BYTES = bytes.fromhex("FEFF0DE000000000")  # (FFFE,E00D), length 0
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")

# the attributes read, by tag
_META_GROUP_LENGTH, _TRANSFER_SYNTAX, _CHARACTER_SET = 0x00020000, 0x00020010, 0x00080005
_SOP_INSTANCE, _STUDY, _SERIES, _MODALITY = 0x00080018, 0x0020000D, 0x0020000E, 0x00080060
_SAMPLES, _FRAMES, _ROWS, _COLUMNS = 0x00280002, 0x00280008, 0x00280010, 0x00280011
_ALLOCATED, _STORED, _REPRESENTATION = 0x00280100, 0x00280101, 0x00280103
_PADDING, _PADDING_LIMIT = 0x00280120, 0x00280121
_POSITION, _ORIENTATION, _SPACING, _THICKNESS = 0x00200032, 0x00200037, 0x00280030, 0x00180050
_SLOPE, _INTERCEPT = 0x00281053, 0x00281052
_FUNCTIONAL_GROUPS = (0x52009229, 0x52009230)

Element = tuple[bytes | None, int, int]  # explicit VR (None when implicit), start, length


@dataclass(frozen=True, eq=False)
class NativeRead:
    """A file read by :func:`read_native`: its frame and the keys of its study and series."""

    frame: Frame
    study_uid: str
    series_uid: str


class _Unsure(Exception):
    """The file is left to pydicom."""


def read_native(name: str) -> NativeRead | None:
    """The one frame of an uncompressed little-endian 16-bit CT file, exactly as
    :func:`calcpipe.dicom.frames.read_file` reads it, or None when the file is not plainly
    such a file (then read it with pydicom)."""
    try:
        with open(name, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            head = fh.read(HEADER_BYTES)
            implicit, elements, pixels_at = _header(head)
            facts = _Facts(head, elements, implicit)
            vr, start, length = _pixel_element(head, pixels_at, implicit)
            nbytes = facts.rows * facts.columns * 2
            if vr not in (None, b"OW", b"OB") or length < nbytes or start + length != size:
                return None  # a short, encapsulated or trailed pixel data element
            stored = np.empty((facts.rows, facts.columns),
                              dtype="<i2" if facts.signed else "<u2")
            fh.seek(start)
            if fh.readinto(stored.data.cast("B")) != nbytes:
                return None
        return _read(name, facts, _native_bits(stored, signed=facts.signed, bits=facts.bits))
    except (_Unsure, DicomError, OSError, ValueError, UnicodeDecodeError, struct.error):
        return None


def _header(data: bytes) -> tuple[bool, dict[int, Element], int]:
    """Transfer syntax, the data set's elements up to the pixel data, and its offset."""
    if len(data) < 132 or data[128:132] != b"DICM":
        raise _Unsure
    meta, position = _walk(data, 132, implicit=False, meta=True)
    group_length = meta.get(_META_GROUP_LENGTH)
    if group_length is None or group_length[0] != b"UL" or group_length[2] != 4:
        raise _Unsure  # pydicom converts the meta's first element as it reads
    syntax = _text(data, meta.get(_TRANSFER_SYNTAX), b"UI")
    if syntax not in (_IMPLICIT, _EXPLICIT):
        raise _Unsure  # compressed, deflated or big-endian
    implicit = syntax == _IMPLICIT
    if position + 6 > len(data) or _U16.unpack_from(data, position)[0] == 0:
        raise _Unsure  # a command set first: pydicom guesses the VR after it
    if implicit and all(0x41 <= b <= 0x5A for b in data[position + 4:position + 6]):
        raise _Unsure  # two capitals where a VR would be: pydicom's guess decides
    elements, position = _walk(data, position, implicit=implicit, meta=False)
    return implicit, elements, position


def _element_header(data: bytes, position: int, implicit: bool, end: int,
                    ) -> tuple[int, bytes | None, int, int]:
    """Tag, VR (None when implicit), length and value offset of the element at
    ``position``, whose header must lie before ``end``."""
    if position + 8 > end:
        raise _Unsure
    group, number = _TAG.unpack_from(data, position)
    if implicit:
        return group << 16 | number, None, _U32.unpack_from(data, position + 4)[0], position + 8
    vr = data[position + 4:position + 6]
    if vr in _SHORT_VR:
        return group << 16 | number, vr, _U16.unpack_from(data, position + 6)[0], position + 8
    if vr not in _LONG_VR or position + 12 > end:
        raise _Unsure
    return group << 16 | number, vr, _U32.unpack_from(data, position + 8)[0], position + 12


def _is_sequence(tag: int, vr: bytes | None) -> bool:
    """Whether an element of undefined length is a sequence as pydicom reads it: VR SQ, or
    in implicit VR a tag the dictionary knows as one (others pydicom scans differently)."""
    if vr is not None:
        return vr == b"SQ"
    try:
        return bool(dictionary_VR(tag) == "SQ")
    except KeyError:  # private or unknown
        return False


def _walk(data: bytes, position: int, *, implicit: bool, meta: bool,
          ) -> tuple[dict[int, Element], int]:
    """Element headers from ``position`` to the end of the file meta group (``meta``) or to
    the pixel data, which must lie inside ``data``. A sequence of undefined length is
    stepped over and recorded with length -1 (its values unread: asking for one is unsure)."""
    elements: dict[int, Element] = {}
    end = len(data)
    while position + 8 <= end:
        group = _U16.unpack_from(data, position)[0]
        if meta and group != 2:
            return elements, position
        tag, vr, length, start = _element_header(data, position, implicit, end)
        if not meta and tag >= 0x7FE00008:
            if tag != _PIXEL_DATA:
                raise _Unsure  # float pixel data, or none
            return elements, position
        if tag == _CHARACTER_SET:
            _check_character_set(data, vr, start, length)
        if length == 0xFFFFFFFF:
            if meta or not _is_sequence(tag, vr):
                raise _Unsure
            elements[tag] = (vr, start, -1)
            position = _skip_sequence(data, start, implicit)
            continue
        if start + length > end:
            raise _Unsure
        elements[tag] = (vr, start, length)
        position = start + length
    raise _Unsure  # the header goes on past the bytes read


def _check_character_set(data: bytes, vr: bytes | None, start: int, length: int) -> None:
    """SpecificCharacterSet, which pydicom converts as it reads (at the top level and in the
    items it reads whole): unsure of any value it might fail on."""
    if vr not in (None, b"CS") or length == 0xFFFFFFFF:
        raise _Unsure
    if b"\x00" in data[start:start + length].rstrip(b" \x00") or not data[
            start:start + length].isascii():
        raise _Unsure


def _skip_sequence(data: bytes, position: int, implicit: bool) -> int:
    """The position after a sequence of undefined length whose items start at
    ``position``. pydicom reads such a sequence's items element by element, so each item
    is walked: to its delimiter (undefined length) or to exactly its stated end."""
    end = len(data)
    while position + 8 <= end:
        tag, length = _U32.unpack_from(data, position)[0], _U32.unpack_from(data, position + 4)[0]
        position += 8
        if tag == _SEQUENCE_END:
            return position
        if tag != _ITEM:
            raise _Unsure
        if length == 0xFFFFFFFF:
            position = _skip_item(data, position, None, implicit)
        elif position + length > end:
            raise _Unsure
        else:
            position = _skip_item(data, position, position + length, implicit)
    raise _Unsure


def _skip_item(data: bytes, position: int, stop: int | None, implicit: bool) -> int:
    """The position after an item's elements: past its delimiter (``stop`` None) or at
    ``stop``, where the last element must end."""
    end = len(data) if stop is None else stop
    while position != stop:
        if stop is None and data[position:position + 8] == _ITEM_END_BYTES:
            return position + 8
        tag, vr, length, start = _element_header(data, position, implicit, end)
        if tag >> 16 == 0xFFFE:
            raise _Unsure  # a delimiter out of place
        if tag == _CHARACTER_SET:
            _check_character_set(data, vr, start, length)
        if length == 0xFFFFFFFF:
            if not _is_sequence(tag, vr):
                raise _Unsure
            position = _skip_sequence(data, start, implicit)
        else:
            position = start + length
        if position > end:
            raise _Unsure
    return position


def _pixel_element(data: bytes, position: int, implicit: bool) -> Element:
    _, vr, length, start = _element_header(data, position, implicit, len(data))
    return vr, start, length


def _text(data: bytes, element: Element | None, vr: bytes) -> str | None:
    """A value of VR ``vr`` as text, trailing padding stripped as pydicom does (None when
    absent); unsure of another VR or a skipped sequence."""
    if element is None:
        return None
    found, start, length = element
    if found not in (None, vr) or length < 0:
        raise _Unsure
    return data[start:start + length].decode("ascii").rstrip(" \x00")


class _Facts:
    """Typed values of the elements found; anything unusual raises :class:`_Unsure`."""

    def __init__(self, data: bytes, elements: dict[int, Element], implicit: bool) -> None:
        self.data, self.elements, self.implicit = data, elements, implicit
        if any(tag in elements for tag in _FUNCTIONAL_GROUPS):
            raise _Unsure  # Enhanced CT
        if self.text(_MODALITY, b"CS") != "CT" or self.number(_ALLOCATED) != 16:
            raise _Unsure
        if self.number(_SAMPLES, 1) != 1 or self.text(_FRAMES, b"IS") not in (None, "1"):
            raise _Unsure
        representation = self.number(_REPRESENTATION, 0)
        if representation not in (0, 1):
            raise _Unsure
        self.signed = representation == 1
        self.bits = self.number(_STORED, 16)
        self.rows, self.columns = self.number(_ROWS), self.number(_COLUMNS)
        if not 1 <= self.bits <= 16 or not self.rows or not self.columns:
            raise _Unsure

    def text(self, tag: int, vr: bytes) -> str | None:
        return _text(self.data, self.elements.get(tag), vr)

    def uid(self, tag: int) -> str:
        value = self.text(tag, b"UI")
        if not value or not _UID.fullmatch(value):
            raise _Unsure  # missing (keys are derived) or not a plain UID
        return value

    def number(self, tag: int, default: int | None = None) -> int:
        """An unsigned short (US); ``default`` where absent."""
        element = self.elements.get(tag)
        if element is None:
            if default is None:
                raise _Unsure
            return default
        vr, start, length = element
        if length != 2 or vr not in (None, b"US"):  # (a skipped sequence's length is -1)
            raise _Unsure
        return int(_U16.unpack_from(self.data, start)[0])

    def padding_number(self, tag: int) -> int | None:
        """PixelPaddingValue or its range limit: US or SS, by PixelRepresentation where
        the VR is implicit (as pydicom resolves it)."""
        element = self.elements.get(tag)
        if element is None:
            return None
        vr, start, length = element
        if length != 2 or vr not in (None, b"US", b"SS"):
            raise _Unsure
        if vr is None and _REPRESENTATION not in self.elements:
            raise _Unsure
        signed = vr == b"SS" or (vr is None and self.signed)
        return int.from_bytes(self.data[start:start + 2], "little", signed=signed)

    def decimals(self, tag: int) -> list[str] | None:
        """A decimal string's values as text (as frames._fast_get); None where absent or
        empty."""
        text = (self.text(tag, b"DS") or "").lstrip(" \x00")
        return text.split("\\") if text else None


def _read(name: str, facts: _Facts, stored: npt.NDArray[Any]) -> NativeRead:
    geometry: dict[str, Any] = {}
    for tag, n, field in ((_POSITION, 3, "position"), (_ORIENTATION, 6, "orientation"),
                          (_SPACING, 2, "pixel_spacing")):
        values = facts.decimals(tag)
        if values is None:
            raise _Unsure
        geometry[field] = _floats(values, n, field, name)
    if min(geometry["pixel_spacing"]) <= 0:
        raise _Unsure
    thickness = facts.decimals(_THICKNESS)
    slope_text, intercept_text = facts.decimals(_SLOPE), facts.decimals(_INTERCEPT)
    if slope_text is None or intercept_text is None:
        raise _Unsure
    slope = _scalar(slope_text, "RescaleSlope", name)
    intercept = _scalar(intercept_text, "RescaleIntercept", name)
    if slope == 0 or not np.isfinite((slope, intercept)).all():
        raise _Unsure
    padding = facts.padding_number(_PADDING)
    limit = facts.padding_number(_PADDING_LIMIT)
    frame = Frame(
        path=name, frame_index=0, sop_instance_uid=facts.uid(_SOP_INSTANCE), uid_derived=False,
        position=geometry["position"], orientation=geometry["orientation"],
        pixel_spacing=geometry["pixel_spacing"],
        slice_thickness=None if thickness is None else _scalar(thickness, "SliceThickness",
                                                               name),
        stored=stored, slope=slope, intercept=intercept,
        padding=None if padding is None else (padding, padding if limit is None else limit),
        bits_stored=facts.bits,
    )
    return NativeRead(frame, facts.uid(_STUDY), facts.uid(_SERIES))
