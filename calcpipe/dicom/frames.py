"""Read one DICOM file into per-frame records and convert stored values to HU.

Single-frame CT and Enhanced CT (multi-frame, functional groups) are both turned into a
list of :class:`Frame` records, one per 2-D image: decoded stored values, rescale, padding
and plane geometry. Conversion to int16 HU happens once, straight into the final volume.
The common file (uncompressed little-endian 16-bit, one frame) is read by
:mod:`calcpipe.dicom.native` without a pydicom data set; any other goes through pydicom.
Uncompressed 16-bit data is read straight from the bytes; everything else goes through
pydicom's plugin system, which uses python-gdcm and pylibjpeg-openjpeg / pylibjpeg-rle
here (never the GPL-licensed pylibjpeg-libjpeg).
"""

from __future__ import annotations

import functools
import io
import os
import struct
import zlib
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.datadict import keyword_dict
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.errors import BytesLengthException, InvalidDicomError
from pydicom.uid import UID

from calcpipe.dicom.errors import DicomDecodeError, DicomInputError
from calcpipe.keys import derived_uid

#: HU written where PixelPaddingValue marks "no data" (below any tissue and any threshold).
PADDING_HU = -2048

_INT16 = np.iinfo(np.int16)
_PIXEL_DATA_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
_NATIVE_LE = {
    pydicom.uid.ImplicitVRLittleEndian,
    pydicom.uid.ExplicitVRLittleEndian,
    pydicom.uid.DeflatedExplicitVRLittleEndian,
}


@dataclass(frozen=True, eq=False)
class Frame:
    """One 2-D image of a series, with the header facts the volume builder needs."""

    path: str
    frame_index: int
    sop_instance_uid: str
    uid_derived: bool
    position: tuple[float, float, float]
    orientation: tuple[float, float, float, float, float, float]
    pixel_spacing: tuple[float, float]
    slice_thickness: float | None
    stored: npt.NDArray[Any]
    slope: float
    intercept: float
    padding: tuple[int, int] | None
    bits_stored: int | None  # set when the decoder guarantees values fit in BitsStored

    def to_hu(self, out: npt.NDArray[np.int16] | None = None) -> tuple[
        npt.NDArray[np.int16], int, bool
    ]:
        """This frame in HU (see :func:`to_hu`)."""
        return to_hu(self.stored, self.slope, self.intercept, self.padding, self.path, out=out,
                     bits_stored=self.bits_stored)


@dataclass(frozen=True, eq=False)
class FileRead:
    """A read file: its frames and its data set (pixels dropped). Where the fast reader
    (:mod:`calcpipe.dicom.native`) read it, ``study_uid`` and ``series_uid`` hold its
    StudyInstanceUID and SeriesInstanceUID, and the data set is parsed when first asked
    for (a series needs one)."""

    path: str
    frames: list[Frame]
    header: Dataset | None = None
    study_uid: str | None = None
    series_uid: str | None = None

    @functools.cached_property
    def dataset(self) -> Dataset:
        return self.header if self.header is not None else _parse(self.path, header_only=True)


def read_dataset(path: str | os.PathLike[str], *, header_only: bool = False) -> Dataset:
    """Parse a DICOM file, turning every failure into a named :class:`DicomInputError`."""
    return _parse(os.fspath(path), header_only=header_only)


#: What pydicom raises on a header cut short, inside a value or its length field (a cut
#: in a 4-byte length: struct.error; in the file meta's group length: a value of the wrong
#: length).
_CUT_HEADER = (EOFError, ValueError, KeyError, TypeError, OverflowError, struct.error,
               BytesLengthException)


def _parse(name: str, *, header_only: bool) -> Dataset:
    # pydicom reads the file itself: reading it into bytes first costs one more copy of
    # the pixel data, a fifth of the time of a whole series load.
    unreadable = "check that the path exists and is readable"
    try:
        size = os.stat(name).st_size
    except OSError as e:
        raise DicomInputError(f"cannot read the file: {e.strerror or e}", code="unreadable",
                              path=name, fix=unreadable) from e
    if size == 0:
        raise DicomInputError(
            "the file is empty (0 bytes)", code="empty_file", path=name,
            fix="re-copy the file from the source archive",
        )
    ds: Dataset
    try:
        ds = pydicom.dcmread(name, stop_before_pixels=header_only)
    except InvalidDicomError:
        # Files without the 128-byte preamble and 'DICM' marker still exist in archives;
        # accept them only if a forced parse finds the elements every CT image has.
        ds = _forced_parse(name, header_only=header_only)
    except _CUT_HEADER as e:
        raise DicomInputError(
            f"the file ends or breaks inside the DICOM header ({type(e).__name__}: {e})",
            code="truncated", path=name, fix="re-copy the file; it is probably truncated",
        ) from e
    except zlib.error as e:
        raise _not_inflated(e, name) from e
    except OSError as e:
        raise DicomInputError(f"cannot read the file: {e.strerror or e}", code="unreadable",
                              path=name, fix=unreadable) from e
    _check_complete(ds, name)
    return ds


def _not_inflated(e: zlib.error, name: str) -> DicomInputError:
    # pydicom inflates a deflated data set whole; a stream cut short fails there.
    return DicomInputError(
        f"the deflated data set cannot be inflated ({e})", code="truncated", path=name,
        fix="re-copy the file; it is probably truncated",
    )


def _check_complete(ds: Dataset, name: str) -> None:
    """pydicom reads a file cut short without complaint; the last element's value comes
    back short. (Its position is no test: in a deflated file it is one in the inflated
    data set, not in the file.)"""
    truncated = DicomInputError(
        "the file ends before its last element does (truncated copy)", code="truncated",
        path=name, fix="re-copy the file from the source archive",
    )
    if not len(ds):
        raise truncated
    last = ds.get_item(max(ds.keys()))
    if (isinstance(last, RawDataElement) and last.length != 0xFFFFFFFF
            and last.value is not None and len(last.value) < last.length):
        raise truncated


def _is_deflated(ds: Dataset) -> bool:
    syntax = ds.file_meta.get("TransferSyntaxUID")
    return bool(syntax == pydicom.uid.DeflatedExplicitVRLittleEndian)


def _deflated_start(ds: Dataset) -> int:
    """Where a deflated file's compressed data set starts: after the preamble and 'DICM'
    (when present) and the file meta (whose group length is Type 1)."""
    start = 0 if getattr(ds, "preamble", None) is None else 132
    return start + 12 + int(ds.file_meta.get("FileMetaInformationGroupLength", 0))


def _forced_parse(
    name: str, *, header_only: bool, source: str | BinaryIO | None = None
) -> Dataset:
    not_dicom = DicomInputError(
        "not a DICOM file (no 'DICM' marker and no recognisable data set)",
        code="not_dicom", path=name, fix="remove the file from the series folder",
    )
    if source is not None and not isinstance(source, str):
        source.seek(0)
    try:
        ds = pydicom.dcmread(name if source is None else source, force=True,
                             stop_before_pixels=header_only)
        keys = [int(t) for t in ds.keys()]
    except Exception as e:  # a forced parse of arbitrary bytes fails in arbitrary ways
        raise not_dicom from e
    if not keys or not any(k in (0x00080016, 0x00080060) for k in keys):
        raise not_dicom
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    return ds


@dataclass(frozen=True, eq=False)
class HeaderParse:
    """A header parsed from the first bytes of a file (see :func:`parse_header_bytes`).

    ``pixel_offset`` is the byte offset of the pixel data element's tag (the file size when
    there is none): the bytes before it are the header that derived instance keys hash. A
    deflated file cannot be cut at its pixel data: there it is where the compressed data
    set starts, and the preamble and file meta stand for the header.
    """

    dataset: Dataset
    pixel_offset: int


def parse_header_bytes(data: bytes, name: str, *, size: int) -> HeaderParse | None:
    """Parse a DICOM header from the first ``len(data)`` bytes of a file of ``size`` bytes.

    Parameters
    ----------
    data : bytes
        The start of the file (the whole file when ``len(data) >= size``).
    name : str
        The file's path or URL, for error messages only.
    size : int
        The file's size in bytes.

    Returns
    -------
    HeaderParse or None
        None when ``data`` is a prefix that ends before the header does: read the whole
        file and call again.

    Raises
    ------
    DicomInputError
        ``empty_file``, ``not_dicom`` or ``truncated``, as :func:`read_dataset`.
    """
    if size == 0:
        raise DicomInputError("the file is empty (0 bytes)", code="empty_file", path=name,
                              fix="re-copy the file from the source archive")
    complete = len(data) >= size
    buffer = io.BytesIO(data)
    ds: Dataset
    try:
        ds = pydicom.dcmread(buffer, stop_before_pixels=True)
    except InvalidDicomError:
        ds = _forced_parse(name, header_only=True, source=buffer)
    except _CUT_HEADER as e:
        if not complete:
            return None
        raise DicomInputError(
            f"the file ends or breaks inside the DICOM header ({type(e).__name__}: {e})",
            code="truncated", path=name, fix="re-copy the file; it is probably truncated",
        ) from e
    except zlib.error as e:
        if not complete:
            return None  # a deflated data set inflates only whole
        raise _not_inflated(e, name) from e
    if _is_deflated(ds):
        # pydicom read past the pixel data (it inflated all of it): parse the whole file
        # to learn whether there are pixels and whether they are complete.
        whole = pydicom.dcmread(io.BytesIO(data), force=True)
        _check_complete(whole, name)
        has_pixels = _has_pixels(whole)
        return HeaderParse(dataset=ds,
                           pixel_offset=_deflated_start(ds) if has_pixels else len(data))
    offset = buffer.tell()
    at_pixels = _is_pixel_tag(data[offset:offset + 4], ds)
    if not complete and not at_pixels:
        return None  # the prefix ended inside the header (or the file has no pixels)
    if complete:
        _check_complete(ds, name)
    return HeaderParse(dataset=ds, pixel_offset=offset if at_pixels else len(data))


def _is_pixel_tag(head: bytes, ds: Dataset) -> bool:
    if len(head) < 4:
        return False
    little = ds.original_encoding[1] is not False
    group = int.from_bytes(head[:2], "little" if little else "big")
    element = int.from_bytes(head[2:4], "little" if little else "big")
    return (group << 16 | element) in _PIXEL_DATA_TAGS


def read_file(path: str | os.PathLike[str]) -> FileRead:
    """Read a CT image file into frames of int16 HU.

    Raises
    ------
    DicomInputError
        The file is empty, truncated, not DICOM, not CT, or lacks pixel data or geometry.
    DicomDecodeError
        The pixel data cannot be decoded or converted to HU.
    """
    from calcpipe.dicom.native import read_native

    name = os.fspath(path)
    fast = read_native(name)
    if fast is not None:
        return FileRead(name, [fast.frame], study_uid=fast.study_uid, series_uid=fast.series_uid)
    ds = _parse(name, header_only=False)
    _require_ct_image(ds, name)
    instance_uid, derived = _instance_uid(ds, name)  # before decoding: needs raw offsets
    stored, bits_stored = _decode(ds, name)
    n_frames = stored.shape[0]
    frames = []
    for i in range(n_frames):
        geometry = frame_geometry(ds, i, name, multi=n_frames > 1 or is_enhanced(ds))
        slope, intercept = _rescale(ds, i, name)
        frames.append(
            Frame(
                path=name,
                frame_index=i,
                sop_instance_uid=instance_uid if n_frames == 1 else f"{instance_uid}#{i}",
                uid_derived=derived,
                stored=stored[i],
                slope=slope,
                intercept=intercept,
                padding=_padding(ds),
                bits_stored=bits_stored,
                **geometry,
            )
        )
    # Frames hold the pixels (decoded, or a view on uncompressed bytes); the data set,
    # which may outlive them as the series metadata source, does not.
    del ds.PixelData
    return FileRead(name, frames, header=ds)


def read_hu(path: str | os.PathLike[str]) -> npt.NDArray[np.int16]:
    """Pixels of one CT file in HU.

    Returns
    -------
    (F, Y, X) ndarray of int16
        One plane per frame (F = 1 for a single-frame file), rescaled and padding-masked.
    """
    return np.stack([f.to_hu()[0] for f in read_file(path).frames])


def decode_stored(path: str | os.PathLike[str]) -> npt.NDArray[Any]:
    """Stored pixel values of any DICOM image (any modality), shape (F, Y, X[, C]).

    For checking decoders against uncompressed twins; :func:`read_hu` is the CT path.
    """
    name = os.fspath(path)
    ds = read_dataset(name)
    if not _has_pixels(ds):
        raise DicomInputError("the file has no pixel data", code="no_pixel_data", path=name)
    return _decode(ds, name, allow_color=True)[0]


def _has_pixels(ds: Dataset) -> bool:
    return any(tag in ds for tag in _PIXEL_DATA_TAGS)


def _require_ct_image(ds: Dataset, name: str) -> None:
    modality = str(ds.get("Modality", "") or "")
    if modality != "CT":
        raise DicomInputError(
            f"Modality is {modality or 'missing'!r}, not 'CT'", code="not_ct", path=name,
            attribute="Modality", fix="pass only CT image series",
        )
    if not _has_pixels(ds):
        raise DicomInputError(
            "the file has no PixelData (a dose report, a structured report, or images "
            "stored with private compression)", code="no_pixel_data", path=name,
            attribute="PixelData", fix="export the series as standard DICOM images",
        )


def _decode(
    ds: Dataset, name: str, *, allow_color: bool = False
) -> tuple[npt.NDArray[Any], int | None]:
    """Decoded stored values (F, Y, X[, C]) and, when the decoder guarantees it, the number
    of bits the values fit in."""
    syntax = UID(ds.file_meta.get("TransferSyntaxUID", pydicom.uid.ImplicitVRLittleEndian))
    if not allow_color and int(ds.get("SamplesPerPixel", 1)) != 1:
        raise DicomDecodeError(
            f"SamplesPerPixel is {ds.SamplesPerPixel}; CT images are greyscale",
            code="unsupported_pixel_format", path=name, attribute="SamplesPerPixel",
        )
    if syntax in _NATIVE_LE and not allow_color:
        pixels = _decode_native(ds, name)
        if pixels is not None:
            return pixels, int(ds.get("BitsStored", 16))
    try:
        pixels = ds.pixel_array
    except NotImplementedError as e:
        raise DicomDecodeError(
            f"no installed decoder handles transfer syntax {syntax} ({syntax.name})",
            code="unsupported_transfer_syntax", path=name, attribute="TransferSyntaxUID",
            fix="transcode the series to an uncompressed or standard compressed syntax "
            "(JPEG 2000, JPEG lossless, JPEG-LS, RLE, Deflate), e.g. with gdcmconv --raw",
        ) from e
    except (ValueError, RuntimeError, EOFError, AttributeError, KeyError) as e:
        text = str(e)
        truncated = "length" in text.lower() or "end of" in text.lower()
        raise DicomDecodeError(
            f"cannot decode the pixel data ({syntax.name}): {text}",
            code="truncated" if truncated else "decode_failed", path=name,
            attribute="PixelData",
            fix="re-copy the file; it is probably truncated or corrupt" if truncated else
            "check the file with gdcminfo/dciodvfy and re-export it",
        ) from e
    if frame_count(ds, name) == 1:
        pixels = pixels[np.newaxis]  # pydicom drops the frame axis of single-frame images
    return pixels, None


def frame_count(ds: Dataset, name: str, pixel_bytes: int | None = None) -> int:
    """``NumberOfFrames`` (1 where absent), refused (``invalid_attribute``) unless it is a
    positive whole number that ``pixel_bytes`` of pixel data could hold (a frame takes at
    least one byte): a tiny file claiming millions of frames would otherwise cost time and
    memory in proportion to the claim."""
    raw = ds.get("NumberOfFrames", 1)
    try:
        count = int(raw or 1)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or (pixel_bytes is not None and count > max(pixel_bytes, 1)):
        held = "" if pixel_bytes is None else f" in a file with {pixel_bytes} bytes of pixels"
        raise DicomInputError(f"NumberOfFrames is {raw!r}{held}", code="invalid_attribute",
                              path=name, attribute="NumberOfFrames",
                              fix="re-export the file; its header is corrupt")
    return count


def _decode_native(ds: Dataset, name: str) -> npt.NDArray[Any] | None:
    """Uncompressed little-endian 16-bit greyscale straight from the bytes.

    About a third of the time of pydicom's generic path for CT; any other layout returns
    None and goes through pydicom. Unused high bits are masked (unsigned) or sign-extended
    from BitsStored (signed), as PS3.5 section 8 prescribes.
    """
    if int(ds.get("BitsAllocated", 0)) != 16 or "PixelData" not in ds:
        return None
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = frame_count(ds, name)
    signed = int(ds.get("PixelRepresentation", 0)) == 1
    bits = int(ds.get("BitsStored", 16))
    data = ds.PixelData
    expected = rows * columns * frames * 2
    if len(data) < expected:
        raise DicomDecodeError(
            f"PixelData holds {len(data)} bytes; {frames} frame(s) of {rows} x {columns} "
            f"16-bit pixels need {expected}", code="truncated", path=name,
            attribute="PixelData", fix="re-copy the file; it is probably truncated",
        )
    # A read-only view on the element's bytes: copied only when bits must be fixed.
    pixels = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=expected // 2)
    return _native_bits(pixels.reshape(frames, rows, columns), signed=signed, bits=bits)


def _native_bits(pixels: npt.NDArray[Any], *, signed: bool, bits: int) -> npt.NDArray[Any]:
    """16-bit stored values with the bits above ``bits`` masked (unsigned) or the sign
    extended from bit ``bits`` (signed)."""
    if bits < 16:
        if signed:
            shift = 16 - bits
            pixels = np.right_shift(np.left_shift(pixels, shift), shift)
        elif int(pixels.max()) >> bits:
            pixels = np.bitwise_and(pixels, (1 << bits) - 1)
    return pixels


def to_hu(
    stored: npt.NDArray[Any],
    slope: float,
    intercept: float,
    padding: tuple[int, int] | None,
    name: str = "<array>",
    *,
    out: npt.NDArray[np.int16] | None = None,
    bits_stored: int | None = None,
) -> tuple[npt.NDArray[np.int16], int, bool]:
    """Stored values to int16 HU, written into ``out`` when given (no temporaries on the
    common integer-rescale path).

    Returns the HU plane, the number of padding pixels (set to ``PADDING_HU``) and whether
    a non-integer rescale had to be rounded.
    """
    if out is None:
        out = np.empty(stored.shape, dtype=np.int16)
    pad_mask = None
    if padding is not None:
        low, high = sorted(padding)
        pad_mask = (stored >= low) & (stored <= high)
        if not pad_mask.any():
            pad_mask = None
    if bits_stored is not None and pad_mask is None:
        # The stored range is bounded by BitsStored: no pass over the data needed.
        signed = stored.dtype.kind == "i"
        lo = float(-(1 << (bits_stored - 1)) if signed else 0)
        hi = float((1 << (bits_stored - 1)) - 1 if signed else (1 << bits_stored) - 1)
    else:
        values = stored if pad_mask is None else stored[~pad_mask]
        lo, hi = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    # The extremes as np.rint rounds them below (32767.5 becomes 32768, past int16).
    hu_lo, hu_hi = sorted(float(np.rint(v)) for v in (lo * slope + intercept,
                                                      hi * slope + intercept))
    if (hu_lo < _INT16.min or hu_hi > _INT16.max) and bits_stored is not None:
        # The bound was loose (e.g. 16 unsigned bits): check the actual values.
        return to_hu(stored, slope, intercept, padding, name, out=out)
    if hu_lo < _INT16.min or hu_hi > _INT16.max:
        raise DicomDecodeError(
            f"rescaled values span {hu_lo:g}..{hu_hi:g} HU, outside int16; the rescale or "
            "the padding value is probably wrong", code="hu_out_of_range", path=name,
            attribute="RescaleSlope/RescaleIntercept/PixelPaddingValue",
            fix="correct the rescale or declare the padding value (PixelPaddingValue)",
        )
    rounded = False
    if slope == 1.0 and float(intercept).is_integer():
        # Exact in int32; the range check above makes the cast to int16 lossless.
        np.add(stored, np.int32(intercept), out=out, casting="unsafe", dtype=np.int32)
    else:
        scaled = stored.astype(np.float64) * slope + intercept
        np.rint(scaled, out=scaled)
        rounded = not np.array_equal(scaled, stored.astype(np.float64) * slope + intercept)
        np.copyto(out, scaled, casting="unsafe")
    if pad_mask is not None:
        out[pad_mask] = PADDING_HU
    return out, 0 if pad_mask is None else int(pad_mask.sum()), rounded


def _padding(ds: Dataset) -> tuple[int, int] | None:
    if "PixelPaddingValue" not in ds:
        return None
    value = int(ds.PixelPaddingValue)
    limit = ds.get("PixelPaddingRangeLimit")
    return (value, int(limit) if limit is not None else value)


def is_enhanced(ds: Dataset) -> bool:
    """True for a multi-frame image with functional groups (Enhanced CT)."""
    return "PerFrameFunctionalGroupsSequence" in ds or "SharedFunctionalGroupsSequence" in ds


def functional_group(ds: Dataset, frame: int, sequence: str) -> Dataset | None:
    """The item of a functional-group macro for a frame: per-frame first, then shared."""
    for container, index in (("PerFrameFunctionalGroupsSequence", frame),
                             ("SharedFunctionalGroupsSequence", 0)):
        groups = ds.get(container)
        if groups and len(groups) > index and sequence in groups[index]:
            items = groups[index][sequence]
            if items:
                item: Dataset = items[0]
                return item
    return None


def _attribute(ds: Dataset, frame: int, keyword: str, group: str, *, multi: bool) -> Any:
    if multi:
        item = functional_group(ds, frame, group)
        if item is not None and keyword in item:
            return item.get(keyword)
    return _fast_get(ds, keyword)


def _fast_get(ds: Dataset, keyword: str) -> Any:
    """``ds.get(keyword)``, but a still-raw decimal string (DS) comes back as a list of its
    text values: converting to pydicom's DSfloat objects costs more than decoding pixels."""
    tag = keyword_dict.get(keyword)
    if tag is None or tag not in ds:
        return None
    element = ds.get_item(tag)
    if isinstance(element, RawDataElement) and element.VR in (None, "DS") and element.value:
        text = element.value.decode("ascii", errors="replace").strip(" \x00")
        return text.split("\\") if text else None
    return ds.get(keyword)


def _floats(value: Any, n: int, keyword: str, name: str) -> tuple[float, ...]:
    try:
        numbers = tuple(float(v) for v in value)
    except (TypeError, ValueError) as e:
        raise DicomInputError(
            f"{keyword} is {value!r}, not {n} numbers", code="missing_attribute", path=name,
            attribute=keyword, fix=f"the image needs a valid {keyword}",
        ) from e
    if len(numbers) != n or not all(np.isfinite(numbers)):
        raise DicomInputError(
            f"{keyword} is {value!r}, not {n} finite numbers", code="missing_attribute",
            path=name, attribute=keyword, fix=f"the image needs a valid {keyword}",
        )
    return numbers


def _scalar(value: Any, keyword: str, name: str) -> float:
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        value = value[0] if len(value) else None
    try:
        return float(value)
    except (TypeError, ValueError) as e:
        raise DicomInputError(
            f"{keyword} is {value!r}, not a number", code="missing_attribute", path=name,
            attribute=keyword, fix=f"correct {keyword}",
        ) from e


def frame_geometry(ds: Dataset, i: int, name: str, *, multi: bool) -> dict[str, Any]:
    """Plane geometry of frame ``i``: ``position``, ``orientation``, ``pixel_spacing`` (tuples
    of float, mm and direction cosines) and ``slice_thickness`` (mm or None); ``multi`` looks
    in the functional groups first. Raises :class:`DicomInputError` (``missing_attribute``)."""
    facts: dict[str, Any] = {}
    for keyword, group, n, field in (
        ("ImagePositionPatient", "PlanePositionSequence", 3, "position"),
        ("ImageOrientationPatient", "PlaneOrientationSequence", 6, "orientation"),
        ("PixelSpacing", "PixelMeasuresSequence", 2, "pixel_spacing"),
    ):
        value = _attribute(ds, i, keyword, group, multi=multi)
        if value is None or value == "":
            raise DicomInputError(
                f"{keyword} is missing" + (f" for frame {i}" if multi else ""),
                code="missing_attribute", path=name, attribute=keyword,
                fix="slice geometry cannot be guessed; re-export the series with "
                "complete image plane attributes",
            )
        facts[field] = _floats(value, n, keyword, name)
    if min(facts["pixel_spacing"]) <= 0:
        raise DicomInputError(
            f"PixelSpacing is {facts['pixel_spacing']}, not positive", code="missing_attribute",
            path=name, attribute="PixelSpacing", fix="the image needs a valid PixelSpacing",
        )
    thickness = _attribute(ds, i, "SliceThickness", "PixelMeasuresSequence", multi=multi)
    facts["slice_thickness"] = (
        _scalar(thickness, "SliceThickness", name) if thickness not in (None, "") else None)
    return facts


def _rescale(ds: Dataset, i: int, name: str) -> tuple[float, float]:
    multi = is_enhanced(ds)
    values = []
    for keyword in ("RescaleSlope", "RescaleIntercept"):
        value = _attribute(ds, i, keyword, "PixelValueTransformationSequence", multi=multi)
        if value is None or value == "":
            raise DicomInputError(
                f"{keyword} is missing; HU cannot be computed without it",
                code="missing_attribute", path=name, attribute=keyword,
                fix="CT images must carry RescaleSlope and RescaleIntercept",
            )
        values.append(_scalar(value, keyword, name))
    if values[0] == 0 or not all(np.isfinite(values)):
        raise DicomInputError(
            f"RescaleSlope/RescaleIntercept are {values}", code="missing_attribute",
            path=name, attribute="RescaleSlope", fix="correct the rescale attributes",
        )
    return values[0], values[1]


def _instance_uid(ds: Dataset, name: str) -> tuple[str, bool]:
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    if uid:
        return uid, False
    # Documented in calcpipe.keys: the header bytes, up to the pixel data element.
    return derived_uid("instance", [_header_bytes(ds, name)]), True


def _header_bytes(ds: Dataset, name: str) -> bytes:
    """The file's bytes before the pixel data element's tag (the whole file if none; in a
    deflated file, the bytes before the compressed data set, as :class:`HeaderParse`)."""
    length = -1
    if _is_deflated(ds):
        # Compressed bytes cannot be cut at the pixel data.
        length = _deflated_start(ds) if _has_pixels(ds) else -1
    else:
        for tag in _PIXEL_DATA_TAGS:
            if tag in ds:
                offset = getattr(ds.get_item(tag), "value_tell", None)
                if offset:
                    # The value starts after the tag and length (8 bytes in implicit VR;
                    # 12 in explicit VR, where pixel data is always OB/OW with a 4-byte
                    # length).
                    implicit = ds.original_encoding[0] is True
                    length = max(0, int(offset) - (8 if implicit else 12))
                    break
    with open(name, "rb") as fh:
        return fh.read(length)
