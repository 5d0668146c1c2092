"""Write a CT series as DICOM files (the synthetic phantom, tests and the demo use it).

Files follow the CT Image IOD closely enough for any PACS or viewer: one file per slice,
unsigned 12-bit stored values with RescaleIntercept -1024, explicit VR little endian unless
a compressed transfer syntax is asked for.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    generate_uid,
)

_PREFIX = "1.2.826.0.1.3680043.8.498."  # pydicom's UID root, for generated test data


def stable_uid(*parts: object) -> str:
    """A UID that is the same for the same parts (no randomness in generated data)."""
    return str(generate_uid(prefix=_PREFIX, entropy_srcs=[str(p) for p in parts]))


def write_series(
    folder: str | os.PathLike[str],
    hu: npt.ArrayLike,
    *,
    spacing_mm: Sequence[float],
    origin_mm: Sequence[float] = (0.0, 0.0, 0.0),
    orientation: Sequence[float] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
    slice_thickness_mm: float | None = None,
    study_uid: str | None = None,
    series_uid: str | None = None,
    patient_id: str = "SYNTH-0001",
    kvp: float = 120.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    extra: Mapping[str, Any] | None = None,
) -> list[Path]:
    """Write ``hu`` as one DICOM file per slice and return the paths.

    Parameters
    ----------
    folder : path
        Created if missing; files are named ``IM<index>.dcm``.
    hu : (Z, Y, X) array of int
        Hounsfield units, slice 0 at ``origin_mm``, slices stepping along the normal.
    spacing_mm : (z, y, x) floats
        Distance between slice centres, row spacing, column spacing.
    orientation : six floats
        ImageOrientationPatient (row cosines, column cosines).
    extra : mapping, optional
        DICOM keywords set on every slice (after the defaults, so they override them).
    """
    volume = np.asarray(hu)
    if volume.ndim != 3:
        raise ValueError(f"hu must be (Z, Y, X); got shape {volume.shape}")
    stored = volume.astype(np.int32) + 1024
    if stored.min() < 0 or stored.max() > 4095:
        raise ValueError(
            f"hu spans {volume.min()}..{volume.max()}; 12-bit storage holds -1024..3071"
        )
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    study_uid = study_uid or stable_uid("study", patient_id)
    series_uid = series_uid or stable_uid("series", study_uid, out.name)
    frame_of_reference = stable_uid("for", study_uid)
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    today = dt.date(2024, 1, 1).strftime("%Y%m%d")
    paths = []
    for k, plane in enumerate(stored.astype(np.uint16)):
        position = np.asarray(origin_mm, dtype=np.float64) + k * spacing_mm[0] * normal
        ds = _slice_dataset(
            plane, k, position, iop, spacing_mm, slice_thickness_mm or spacing_mm[0],
            study_uid, series_uid, frame_of_reference, patient_id, kvp, today,
        )
        for keyword, value in (extra or {}).items():
            setattr(ds, keyword, value)
        path = out / f"IM{k:04d}.dcm"
        if UID(transfer_syntax) != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _slice_dataset(
    plane: npt.NDArray[np.uint16], k: int, position: npt.NDArray[np.float64],
    iop: npt.NDArray[np.float64], spacing_mm: Sequence[float], thickness: float,
    study_uid: str, series_uid: str, frame_of_reference: str, patient_id: str,
    kvp: float, date: str,
) -> Dataset:
    sop_uid = stable_uid("instance", series_uid, k)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop_uid
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.FrameOfReferenceUID = frame_of_reference
    ds.Modality = "CT"
    ds.PatientID = patient_id
    ds.PatientSex = "O"
    ds.PatientAge = "065Y"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = date
    ds.StudyTime = ds.SeriesTime = "120000"
    ds.SeriesNumber = 1
    ds.InstanceNumber = k + 1
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.BodyPartExamined = "HEART"
    ds.Manufacturer = "calcpipe"
    ds.ManufacturerModelName = "synthetic"
    ds.KVP = f"{kvp:g}"
    ds.ConvolutionKernel = "B35f"
    ds.SliceThickness = f"{thickness:g}"
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position]
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in iop]
    ds.PixelSpacing = [f"{spacing_mm[1]:g}", f"{spacing_mm[2]:g}"]
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = plane.shape
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(plane).tobytes()
    return ds
