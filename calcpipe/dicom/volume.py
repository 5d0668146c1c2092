"""The volume record returned by :func:`calcpipe.dicom.load_volume`."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeGuard

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from calcpipe.ingest.select import SelectionDecision


@dataclass(frozen=True)
class QCFlag:
    """A soft quality-control finding: the volume is usable but worth knowing about.

    Codes: ``duplicate_instances_dropped``, ``overlapping_slices``,
    ``slice_thickness_outside_2.5_3.0_mm``, ``slice_thickness_missing``,
    ``contrast_agent``, ``derived_study_uid``, ``derived_series_uid``,
    ``derived_instance_uid``, ``pixel_padding``, ``rescale_rounded``,
    ``non_dicom_files_skipped``, ``series_selected``.
    """

    code: str
    detail: str


@dataclass(frozen=True)
class Gating:
    """Evidence of ECG gating, as recorded in the headers (all optional)."""

    synchronization_technique: str | None = None
    trigger_time_ms: float | None = None
    nominal_cardiac_phase_percent: float | None = None
    rr_interval_ms: float | None = None
    heart_rate_bpm: float | None = None

    @property
    def gated(self) -> bool:
        """True when any attribute indicates an ECG-synchronised acquisition."""
        technique = (self.synchronization_technique or "").upper()
        return technique in {"PROSPECTIVE", "RETROSPECTIVE", "PACED", "REALTIME"} or any(
            v is not None
            for v in (self.trigger_time_ms, self.nominal_cardiac_phase_percent, self.rr_interval_ms)
        )


@dataclass(frozen=True)
class ScanMetadata:
    """Acquisition facts for epidemiology; no direct identifiers (no names, no birth date)."""

    age_years: float | None
    sex: str | None
    study_date: dt.date | None
    kvp: float | None
    exposure_mas: float | None
    manufacturer: str | None
    manufacturer_model: str | None
    kernel: str | None
    slice_thickness_mm: float | None
    slice_increment_mm: float | None
    pixel_spacing_mm: tuple[float, float]
    reconstruction_diameter_mm: float | None
    contrast_agent: str | None
    gating: Gating
    image_type: tuple[str, ...]
    body_part: str | None
    modality: str
    sop_class_uid: str | None


#: The kVp scoring takes where the header has no positive KVP (flagged ``kvp_missing``).
DEFAULT_KVP = 120.0


def kvp_given(kvp: float | None) -> TypeGuard[float]:
    """Whether a header's KVP is one scoring can take (a positive number)."""
    return kvp is not None and kvp > 0


@dataclass(frozen=True, eq=False)
class CTVolume:
    """A CT series as a regular volume in Hounsfield units.

    Attributes
    ----------
    hu : (Z, Y, X) ndarray of int16
        Hounsfield units; slices in ascending patient z (ascending along the slice normal
        for non-axial stacks); padding pixels set to ``PADDING_HU``.
    spacing_mm : tuple of float
        (z, y, x): distance between slice centres, then row and column spacing.
    affine : (4, 4) ndarray of float64
        Maps voxel indices in array order (z, y, x, 1) to DICOM patient coordinates
        (LPS, millimetres).
    slice_thickness_mm : float or None
        Nominal reconstructed thickness, kept apart from the spacing.
    study_uid, series_uid : str
        The real UIDs, or derived keys (see :mod:`calcpipe.keys`) flagged in ``qc_flags``.
    sop_instance_uids : tuple of str
        One per slice, in slice order (frames of a multi-frame file share the file's UID
        with ``#<frame>`` appended).
    metadata : ScanMetadata
    qc_flags : tuple of QCFlag
    source_files : tuple of str
        The files read, in slice order (internal use: may contain identifying paths).
    selection : SelectionDecision or None
        Set when the series was chosen among several of a study (which one, and why each
        other series was rejected or out-ranked); None for a single series.
    """

    hu: npt.NDArray[np.int16]
    spacing_mm: tuple[float, float, float]
    affine: npt.NDArray[np.float64]
    slice_thickness_mm: float | None
    study_uid: str
    series_uid: str
    sop_instance_uids: tuple[str, ...]
    metadata: ScanMetadata
    qc_flags: tuple[QCFlag, ...] = field(default=())
    source_files: tuple[str, ...] = field(default=())
    selection: SelectionDecision | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return (z, y, x)

    @property
    def scoring_kvp(self) -> float:
        """The kVp that scoring takes: the header's KVP where it is positive, else 120 (the
        volume is then flagged ``kvp_missing``)."""
        kvp = self.metadata.kvp
        return float(kvp) if kvp_given(kvp) else DEFAULT_KVP

    def has_flag(self, code: str) -> bool:
        return any(f.code == code for f in self.qc_flags)
