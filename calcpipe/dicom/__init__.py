"""DICOM to Hounsfield units: :func:`load_volume` and what it returns or raises."""

from calcpipe.dicom.errors import (
    DicomDecodeError,
    DicomError,
    DicomGeometryError,
    DicomInputError,
    GeometryProblem,
)
from calcpipe.dicom.frames import PADDING_HU, decode_stored, read_hu
from calcpipe.dicom.load import list_files, load_volume
from calcpipe.dicom.volume import CTVolume, Gating, QCFlag, ScanMetadata

__all__ = [
    "PADDING_HU",
    "CTVolume",
    "DicomDecodeError",
    "DicomError",
    "DicomGeometryError",
    "DicomInputError",
    "Gating",
    "GeometryProblem",
    "QCFlag",
    "ScanMetadata",
    "decode_stored",
    "list_files",
    "load_volume",
    "read_hu",
]
