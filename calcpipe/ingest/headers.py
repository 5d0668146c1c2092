"""One header row per DICOM file found by discovery (no pixels read).

The row reuses the readers of :mod:`calcpipe.dicom`: plane geometry from
:func:`calcpipe.dicom.frames.frame_geometry`, acquisition facts from
:func:`calcpipe.dicom.metadata.scan_metadata`, and the study and series key rules of
:mod:`calcpipe.keys` through :func:`calcpipe.dicom.load.study_key` / ``series_key``.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from pydicom.dataset import Dataset

from calcpipe.dicom.errors import DicomInputError
from calcpipe.dicom.frames import frame_count, frame_geometry, is_enhanced
from calcpipe.dicom.load import series_key, study_key
from calcpipe.dicom.metadata import find, scan_metadata
from calcpipe.keys import derived_uid

Vector3 = tuple[float, float, float]


@dataclass(frozen=True)
class InstanceHeader:
    """Header facts of one DICOM file, for grouping, selection and incremental re-runs.

    Every field but the two internal ones at the end is free of direct identifiers (no
    names, birth dates, free text or object paths) and may go into tables
    (:data:`TABLE_FIELDS`).

    Attributes
    ----------
    study_key, series_key : str
        StudyInstanceUID / SeriesInstanceUID, or the derived keys of :mod:`calcpipe.keys`.
    study_uid_derived, series_uid_derived, instance_uid_derived : bool
        True where the UID was missing or empty and the key is derived.
    sop_instance_uid : str
        SOPInstanceUID, or a derived key (the header bytes before the pixel data).
    modality, sop_class_uid : str
        As recorded ("" when absent).
    image_type : tuple of str
        ImageType values, e.g. ("ORIGINAL", "PRIMARY", "AXIAL").
    body_part, kernel, manufacturer : str or None
        BodyPartExamined, ConvolutionKernel (values joined by a backslash), Manufacturer.
    kvp : float or None
        Tube voltage, kV.
    contrast_agent_present : bool
        ContrastBolusAgent (or its coded sequence) names an agent (not a text saying
        none: see ``calcpipe.dicom.metadata``).
    has_pixel_data : bool
        The file holds an image (a pixel data element follows the header).
    n_frames : int
        Number of 2-D images in the file (Enhanced CT holds several).
    rows, columns : int or None
        Image matrix.
    pixel_spacing_mm : (float, float) or None
        Row and column spacing.
    orientation : six floats or None
        ImageOrientationPatient (direction cosines).
    positions_mm : tuple of (float, float, float)
        ImagePositionPatient of every frame, LPS mm (empty when the geometry is missing).
    geometry_problem : str or None
        Why the plane geometry could not be read (the attribute at fault).
    slice_thickness_mm, gantry_tilt_deg : float or None
    synchronization_technique : str or None
        CardiacSynchronizationTechnique.
    trigger_time_ms, nominal_cardiac_phase_percent, rr_interval_ms, heart_rate_bpm :
        float or None, ECG-gating evidence.
    size_bytes : int
        Object size.
    etag : str or None
        Object store ETag (None on a local disk).
    mtime : float or None
        Modification time, seconds since the epoch (None where the store gives none).
    url : str
        INTERNAL: where the file is (a path or URL that may contain names); never written to
        tables.
    series_description : str or None
        INTERNAL: SeriesDescription, free text shown by ``calcpipe inspect`` only.
    """

    study_key: str
    series_key: str
    study_uid_derived: bool
    series_uid_derived: bool
    sop_instance_uid: str
    instance_uid_derived: bool
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    body_part: str | None
    kernel: str | None
    manufacturer: str | None
    kvp: float | None
    contrast_agent_present: bool
    has_pixel_data: bool
    n_frames: int
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    positions_mm: tuple[Vector3, ...]
    geometry_problem: str | None
    slice_thickness_mm: float | None
    gantry_tilt_deg: float | None
    synchronization_technique: str | None
    trigger_time_ms: float | None
    nominal_cardiac_phase_percent: float | None
    rr_interval_ms: float | None
    heart_rate_bpm: float | None
    size_bytes: int
    etag: str | None
    mtime: float | None
    url: str
    series_description: str | None


#: Fields that carry no direct identifier and may be written to tables.
TABLE_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(InstanceHeader) if f.name not in {"url", "series_description"})


@dataclass(frozen=True)
class _FrameFacts:
    sop_instance_uid: str
    pixel_spacing: tuple[float, ...]
    orientation: tuple[float, ...]


def instance_header(
    ds: Dataset, header: bytes, *, url: str, size_bytes: int, etag: str | None,
    mtime: float | None,
) -> InstanceHeader:
    """The header row of one file from its parsed data set.

    Parameters
    ----------
    ds : Dataset
        The header, parsed with the pixel data left out.
    header : bytes
        The file's bytes before the pixel data element (the whole file when it has none):
        a missing SOPInstanceUID is derived from them, as :func:`calcpipe.dicom.load_volume`
        does.
    url, size_bytes, etag, mtime
        Where the file is and what identifies its version (see :class:`InstanceHeader`).
    """
    n_frames = frame_count(ds, url, pixel_bytes=max(size_bytes - len(header), 0))
    multi = n_frames > 1 or is_enhanced(ds)
    geometries, problem = [], None
    try:
        geometries = [frame_geometry(ds, i, url, multi=multi) for i in range(n_frames)]
    except DicomInputError as e:
        problem = f"{e.attribute}: {e.message}"
    first = geometries[0] if geometries else None
    uid = str(ds.get("SOPInstanceUID", "") or "").strip()
    sop_uid = uid or derived_uid("instance", [header])
    # the frames' keys as load_volume names them (uid#i in a multi-frame file), so that a
    # key derived from them is the same here and there
    frame_uids = [sop_uid] if n_frames == 1 else [f"{sop_uid}#{i}" for i in range(n_frames)]
    facts = [_FrameFacts(uid_i, first["pixel_spacing"] if first else (),
                         first["orientation"] if first else ()) for uid_i in frame_uids]
    spacing = first["pixel_spacing"] if first else (1.0, 1.0)
    meta = scan_metadata(ds, slice_thickness_mm=first["slice_thickness"] if first else None,
                         slice_increment_mm=None, pixel_spacing_mm=spacing)
    tilt = find(ds, "GantryDetectorTilt")
    rows, columns = ds.get("Rows"), ds.get("Columns")
    return InstanceHeader(
        study_key=study_key(ds, facts),
        series_key=series_key(ds, facts),
        study_uid_derived=not str(ds.get("StudyInstanceUID", "") or "").strip(),
        series_uid_derived=not str(ds.get("SeriesInstanceUID", "") or "").strip(),
        sop_instance_uid=sop_uid,
        instance_uid_derived=not uid,
        modality=meta.modality,
        sop_class_uid=meta.sop_class_uid or "",
        image_type=tuple(v.strip().upper() for v in meta.image_type),
        body_part=meta.body_part,
        kernel=meta.kernel,
        manufacturer=meta.manufacturer,
        kvp=meta.kvp,
        contrast_agent_present=meta.contrast_agent is not None,
        has_pixel_data=len(header) < size_bytes,
        n_frames=n_frames,
        rows=None if rows is None else int(rows),
        columns=None if columns is None else int(columns),
        pixel_spacing_mm=first["pixel_spacing"] if first else None,
        orientation=first["orientation"] if first else None,
        positions_mm=tuple(g["position"] for g in geometries),
        geometry_problem=problem,
        slice_thickness_mm=meta.slice_thickness_mm,
        gantry_tilt_deg=_number(tilt),
        synchronization_technique=meta.gating.synchronization_technique,
        trigger_time_ms=meta.gating.trigger_time_ms,
        nominal_cardiac_phase_percent=meta.gating.nominal_cardiac_phase_percent,
        rr_interval_ms=meta.gating.rr_interval_ms,
        heart_rate_bpm=meta.gating.heart_rate_bpm,
        size_bytes=size_bytes,
        etag=etag,
        mtime=mtime,
        url=url,
        series_description=str(ds.get("SeriesDescription", "") or "").strip() or None,
    )


def _number(value: object) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(str(value))
    except ValueError:
        return None
