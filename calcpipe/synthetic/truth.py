"""Ground-truth files: label maps as NIfTI on the DICOM grid, scores as Parquet.

NIfTI convention (stated in each file's header ``descrip``): array axes (i, j, k) =
(column, row, slice) of the DICOM series, slices in ascending patient z; the affine maps
them to RAS millimetres (the DICOM LPS affine with x and y negated); sform and qform codes
are 1 (scanner). Files are gzip-compressed with a zero timestamp, so the same truth gives
the same bytes. A file may carry a note (a NIfTI comment extension, code 6): the
pipeline's masks record there which model made them from which inputs.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import numpy.typing as npt

_DEFLATE: ModuleType = zlib  # zlib-ng where installed: the same module interface
try:
    from zlib_ng import zlib_ng as _DEFLATE
except ImportError:  # an installation without it (the GPU benchmark machine)
    pass

_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
DESCRIPTION = b"calcpipe truth; axes col,row,slice; RAS mm"
#: The header description of predicted label maps (the masks ``calcpipe score`` writes)
PREDICTION = b"calcpipe prediction; axes col,row,slice; RAS mm"
_COMMENT = 6  # NIFTI_ECODE_COMMENT


def nifti_bytes(labels: npt.NDArray[np.uint8], affine_zyx_lps: npt.NDArray[np.float64],
                note: bytes | None = None, description: bytes = DESCRIPTION) -> bytes:
    """Gzipped NIfTI-1 of a (Z, Y, X) label map with its (z, y, x) -> LPS affine (and
    ``note`` as a comment extension): the bytes of :func:`gzip_labels` of
    :func:`plain_nifti_bytes`, compressed as nibabel writes them (no uncompressed copy of
    the file: a third of the time on 512 x 512 studies)."""
    sink = _GzipSink()
    image = _nifti_image(labels, affine_zyx_lps, note, description)
    image.to_file_map(image.make_file_map({"image": sink, "header": sink}))
    return sink.value()


def plain_nifti_bytes(labels: npt.NDArray[np.uint8],
                      affine_zyx_lps: npt.NDArray[np.float64], note: bytes | None = None,
                      ) -> bytes:
    """:func:`nifti_bytes` before compression."""
    data: bytes = _nifti_image(labels, affine_zyx_lps, note).to_bytes()
    return data


def _nifti_image(labels: npt.NDArray[np.uint8], affine_zyx_lps: npt.NDArray[np.float64],
                 note: bytes | None = None, description: bytes = DESCRIPTION) -> Any:
    import nibabel as nib

    ijk_to_zyx = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    affine = _LPS_TO_RAS @ affine_zyx_lps @ ijk_to_zyx
    # (Z, Y, X) in C order is (X, Y, Z) in Fortran order, NIfTI's order on disk: the
    # transposed view is written as it lies, where a C-ordered copy of it would be
    # transposed twice (110 ms against 45 ms for a 512 x 512 x 49 study, the same bytes).
    image = nib.Nifti1Image(np.ascontiguousarray(labels).transpose(2, 1, 0), affine)
    image.header["descrip"] = description
    if note is not None:
        image.header.extensions.append(nib.nifti1.Nifti1Extension(_COMMENT, note))
    image.set_sform(affine, code=1)
    image.set_qform(affine, code=1)
    return image


def gzip_labels(data: bytes, deflate: ModuleType = _DEFLATE) -> bytes:
    """Gzip (zero timestamp) with deflate's run-length strategy: a label map is long runs
    of zeros, which it packs as small as level 9 does in less than half its time on
    512 x 512 studies (bench/bench_masks.py); every worker writes one per study. zlib-ng
    writes the same bytes as zlib here, several times faster; zlib where it is absent.
    ``deflate``: the module (zlib's interface) that compresses."""
    packer = _packer(deflate)
    return packer.compress(data) + packer.flush()


def _packer(deflate: ModuleType) -> Any:
    return deflate.compressobj(9, deflate.DEFLATED, 31, 9, deflate.Z_RLE)


class _GzipSink:
    """A write-only file that gzips what nibabel writes to it, as it comes."""

    def __init__(self) -> None:
        self._packer, self._parts, self._written = _packer(_DEFLATE), list[bytes](), 0

    def write(self, data: Any) -> int:
        self._parts.append(self._packer.compress(data))
        size = memoryview(data).nbytes
        self._written += size
        return size

    def tell(self) -> int:
        return self._written

    def seek(self, position: int, whence: int = 0) -> int:
        if (position, whence) != (self._written, 0):  # nibabel only seeks where it is
            raise OSError("a gzip stream cannot seek")
        return position

    def read(self, *_: Any) -> bytes:  # nibabel takes objects with read and write as files
        raise OSError("write-only")

    def flush(self) -> None:
        pass

    def value(self) -> bytes:
        return b"".join(self._parts) + self._packer.flush()


def read_labels(path: str | Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """A truth (or predicted) label map back as (Z, Y, X) with its (z, y, x) -> LPS affine."""
    import nibabel as nib

    return _labels(nib.Nifti1Image.from_filename(str(path)))


def labels_from_bytes(data: bytes) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    """:func:`read_labels` of the bytes of a (gzipped) NIfTI file."""
    labels, affine, _ = labels_and_note_from_bytes(data)
    return labels, affine


def labels_and_note_from_bytes(data: bytes) -> tuple[npt.NDArray[np.uint8],
                                                     npt.NDArray[np.float64], bytes | None]:
    """:func:`labels_from_bytes` and the file's note (None without one)."""
    import nibabel as nib

    image = nib.Nifti1Image.from_bytes(gzip.decompress(data))
    notes = [e.get_content() for e in image.header.extensions if e.get_code() == _COMMENT]
    return (*_labels(image), notes[0] if notes else None)


def _labels(image: Any) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float64]]:
    data = np.asarray(image.dataobj).astype(np.uint8).transpose(2, 1, 0)
    zyx_to_ijk = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1.0]])
    affine = _LPS_TO_RAS @ image.affine @ zyx_to_ijk
    return np.ascontiguousarray(data), affine
