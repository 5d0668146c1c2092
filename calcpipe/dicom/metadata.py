"""Acquisition metadata for epidemiology, read from a CT data set.

Enhanced CT keeps most of these attributes inside functional-group macros; :func:`find`
looks at the top level first, then inside the shared and first per-frame groups.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from pydicom.dataset import Dataset

from calcpipe.dicom.volume import Gating, ScanMetadata

_AGE_UNITS_PER_YEAR = {"Y": 1.0, "M": 12.0, "W": 52.1775, "D": 365.25}


def find(ds: Dataset, keyword: str) -> Any:
    """Value of ``keyword`` at the top level, else in the functional groups, else None."""
    value = ds.get(keyword)
    if value not in (None, ""):
        return value
    for container in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        groups = ds.get(container)
        if not groups:
            continue
        for element in groups[0]:
            if element.VR == "SQ" and element.value:
                item = element.value[0]
                if keyword in item and item.get(keyword) not in (None, ""):
                    return item.get(keyword)
    return None


def _text(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, list | tuple) or type(value).__name__ == "MultiValue":
        joined = "\\".join(str(v).strip() for v in value if str(v).strip())
        return joined or None
    text = str(value).strip()
    return text or None


def _number(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def parse_date(value: Any) -> dt.date | None:
    """A DICOM DA (YYYYMMDD) as a date, or None when absent or malformed."""
    text = _text(value)
    if not text or len(text) < 8:
        return None
    try:
        return dt.date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def age_years(patient_age: Any, birth_date: Any, study_date: dt.date | None) -> float | None:
    """Age at the scan: PatientAge (nnnY/M/W/D) first, else completed years from dates."""
    text = _text(patient_age)
    if text and len(text) == 4 and text[:3].isdigit() and text[3] in _AGE_UNITS_PER_YEAR:
        return round(int(text[:3]) / _AGE_UNITS_PER_YEAR[text[3]], 2)
    born = parse_date(birth_date)
    if born is None or study_date is None or born > study_date:
        return None
    before_birthday = (study_date.month, study_date.day) < (born.month, born.day)
    return float(study_date.year - born.year - before_birthday)


def _exposure_mas(ds: Dataset) -> float | None:
    for keyword in ("Exposure", "ExposureInmAs"):
        value = _number(find(ds, keyword))
        if value is not None:
            return value
    current, time_ms = _number(find(ds, "XRayTubeCurrent")), _number(find(ds, "ExposureTime"))
    if current is not None and time_ms is not None:
        return current * time_ms / 1000.0
    return None


def _gating(ds: Dataset) -> Gating:
    heart_rate = _number(find(ds, "HeartRate"))
    rr = _number(find(ds, "CardiacRRIntervalSpecified"))
    return Gating(
        synchronization_technique=_text(find(ds, "CardiacSynchronizationTechnique")),
        trigger_time_ms=_number(find(ds, "TriggerTime")),
        nominal_cardiac_phase_percent=_number(find(ds, "NominalPercentageOfCardiacPhase")),
        rr_interval_ms=rr,
        heart_rate_bpm=heart_rate,
    )


def patient_id(path: str) -> str | None:
    """A file's PatientID (None when absent or empty), read without its pixels."""
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["PatientID"])
    return str(ds.get("PatientID", "") or "").strip() or None


#: ContrastBolusAgent texts that say no agent was given, in the words archives use
_NO_AGENT = re.compile(r"(NONE|NO|NIL|N/?A|0|-+|NON[- ]?CONTRAST|NO[- ]CONTRAST|"
                       r"WITHOUT CONTRAST|NONE GIVEN|NOT GIVEN|NATIVE)")


def _says_none(text: str) -> bool:
    return _NO_AGENT.fullmatch(" ".join(text.upper().replace(".", " ").split())) is not None


def _contrast_from_codes(ds: Dataset) -> str | None:
    """Enhanced images code the agent in ContrastBolusAgentSequence instead of text."""
    items = ds.get("ContrastBolusAgentSequence") or []
    meanings = [str(item.get("CodeMeaning", "") or "agent (coded)") for item in items]
    return "\\".join(meanings) or None


def scan_metadata(
    ds: Dataset,
    *,
    slice_thickness_mm: float | None,
    slice_increment_mm: float | None,
    pixel_spacing_mm: tuple[float, float],
) -> ScanMetadata:
    """Epidemiology facts of a series from one of its data sets.

    The birth date is used only to compute the age and is not kept.
    """
    study_date = parse_date(find(ds, "StudyDate")) or parse_date(find(ds, "AcquisitionDate"))
    sex = _text(find(ds, "PatientSex"))
    contrast = _text(find(ds, "ContrastBolusAgent")) or _contrast_from_codes(ds)
    return ScanMetadata(
        age_years=age_years(find(ds, "PatientAge"), find(ds, "PatientBirthDate"), study_date),
        sex=sex.upper() if sex and sex.upper() in {"M", "F", "O"} else None,
        study_date=study_date,
        kvp=_number(find(ds, "KVP")),
        exposure_mas=_exposure_mas(ds),
        manufacturer=_text(find(ds, "Manufacturer")),
        manufacturer_model=_text(find(ds, "ManufacturerModelName")),
        kernel=_text(find(ds, "ConvolutionKernel")),
        slice_thickness_mm=slice_thickness_mm,
        slice_increment_mm=slice_increment_mm,
        pixel_spacing_mm=pixel_spacing_mm,
        reconstruction_diameter_mm=_number(find(ds, "ReconstructionDiameter")),
        contrast_agent=None if contrast is None or _says_none(contrast) else contrast,
        gating=_gating(ds),
        image_type=tuple(str(v) for v in (find(ds, "ImageType") or ())),
        body_part=_text(find(ds, "BodyPartExamined")),
        modality=str(ds.get("Modality", "")),
        sop_class_uid=_text(ds.get("SOPClassUID")),
    )
