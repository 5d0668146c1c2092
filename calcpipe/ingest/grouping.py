"""Group header rows into studies and series, and summarise each series for selection.

A series is the files sharing a study key and a series key (real UIDs or the derived keys
of :mod:`calcpipe.keys`), split further where orientation, matrix, pixel spacing or image
type differ: such a split series gets ``series_id = "<series key>/<k>"`` (k from 1, in
sorted order of the split attributes) and the QC flag ``series_split``.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from calcpipe.dicom import geometry
from calcpipe.ingest.headers import InstanceHeader


@dataclass(frozen=True)
class SeriesSummary:
    """What selection knows of a series (header facts only; no identifiers but UIDs).

    Attributes
    ----------
    study_key, series_key : str
        Real or derived UIDs; ``series_id`` adds ``/<k>`` when the series was split.
    n_files, n_slices : int
        Files, and 2-D images (frames) in them.
    slice_thickness_mm : float or None
        The most common SliceThickness.
    slice_spacing_mm : float or None
        Median distance between slice centres along the normal (None below two slices).
    z_extent_mm : float
        Distance between the first and last slice centres along the normal.
    axial_angle_deg : float or None
        Angle between the slice normal and the patient z axis.
    geometry_problems : tuple of str
        ``code: detail`` of the hard geometry checks of :mod:`calcpipe.dicom.geometry`
        (also ``missing_geometry`` when a file lacks its plane attributes).
    cardiac_phase_percent : float or None
        NominalPercentageOfCardiacPhase, else 100 x TriggerTime / RR interval.
    gated : bool
        Any ECG-gating evidence (synchronisation technique, trigger time, phase, RR).
    qc_flags : tuple of str
        ``derived_study_uid``, ``derived_series_uid``, ``series_split``.
    series_description : str or None
        INTERNAL: free text, shown by ``calcpipe inspect`` only, never written to tables.
    """

    study_key: str
    series_id: str
    series_key: str
    modality: str
    sop_class_uid: str
    image_type: tuple[str, ...]
    body_part: str | None
    kernel: str | None
    manufacturer: str | None
    kvp: float | None
    contrast_agent_present: bool
    has_pixel_data: bool
    n_files: int
    n_slices: int
    rows: int | None
    columns: int | None
    pixel_spacing_mm: tuple[float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    slice_thickness_mm: float | None
    slice_spacing_mm: float | None
    z_extent_mm: float
    axial_angle_deg: float | None
    gantry_tilt_deg: float | None
    geometry_problems: tuple[str, ...]
    synchronization_technique: str | None
    cardiac_phase_percent: float | None
    gated: bool
    qc_flags: tuple[str, ...]
    series_description: str | None


@dataclass(frozen=True)
class SeriesGroup:
    """A series: its summary and its header rows (sorted by URL)."""

    summary: SeriesSummary
    instances: tuple[InstanceHeader, ...]

    @property
    def urls(self) -> tuple[str, ...]:
        """INTERNAL: the files of the series."""
        return tuple(h.url for h in self.instances)


@dataclass(frozen=True)
class StudyGroup:
    """A study: its key and its series, sorted by ``series_id``."""

    study_key: str
    series: tuple[SeriesGroup, ...]


def group_studies(headers: Iterable[InstanceHeader]) -> tuple[StudyGroup, ...]:
    """Group header rows into studies and series (both sorted by key)."""
    by_series: dict[tuple[str, str], list[InstanceHeader]] = defaultdict(list)
    for header in headers:
        by_series[(header.study_key, header.series_key)].append(header)
    studies: dict[str, list[SeriesGroup]] = defaultdict(list)
    for (study, series), members in sorted(by_series.items()):
        parts: dict[tuple[object, ...], list[InstanceHeader]] = defaultdict(list)
        for header in members:
            parts[_split_key(header)].append(header)
        ordered = sorted(parts.items(), key=lambda item: repr(item[0]))
        for k, (_, part) in enumerate(ordered, start=1):
            series_id = series if len(ordered) == 1 else f"{series}/{k}"
            instances = tuple(sorted(part, key=lambda h: h.url))
            studies[study].append(SeriesGroup(
                summarise(instances, series_id, split=len(ordered) > 1), instances))
    return tuple(StudyGroup(study, tuple(sorted(groups, key=lambda g: g.summary.series_id)))
                 for study, groups in sorted(studies.items()))


def _split_key(h: InstanceHeader) -> tuple[object, ...]:
    orientation = None if h.orientation is None else tuple(round(v, 4) for v in h.orientation)
    spacing = None if h.pixel_spacing_mm is None else tuple(
        round(v, 4) for v in h.pixel_spacing_mm)
    return (orientation, (h.rows, h.columns), spacing, h.image_type)


def _mode(values: Iterable[object]) -> object:
    counts: dict[object, int] = defaultdict(int)
    for v in values:
        if v is not None:
            counts[v] += 1
    return max(sorted(counts, key=repr), key=lambda v: counts[v]) if counts else None


def _phase(h: InstanceHeader) -> float | None:
    """A file's cardiac phase, % of the R-R interval: nominal, else from its trigger time."""
    if h.nominal_cardiac_phase_percent is not None:
        return h.nominal_cardiac_phase_percent
    if h.trigger_time_ms is not None and h.rr_interval_ms:
        return 100.0 * h.trigger_time_ms / h.rr_interval_ms
    return None


def summarise(
    instances: tuple[InstanceHeader, ...], series_id: str, *, split: bool = False
) -> SeriesSummary:
    """Summary of one series (its header rows sorted by URL). Attributes that may differ
    between its files come from the file with the lowest SOPInstanceUID, and the cardiac
    phase is the median of the files': the same files under other names give the same
    summary, and so the same choice."""
    first = min(instances, key=lambda h: h.sop_instance_uid)
    problems, spacing, extent, angle = _geometry(instances)
    flags = []
    if first.study_uid_derived:
        flags.append("derived_study_uid")
    if first.series_uid_derived:
        flags.append("derived_series_uid")
    if split:
        flags.append("series_split")
    phases = [p for p in map(_phase, instances) if p is not None]
    phase = float(statistics.median(phases)) if phases else None
    thickness = _mode(h.slice_thickness_mm for h in instances)
    tilts = [abs(h.gantry_tilt_deg) for h in instances if h.gantry_tilt_deg is not None]
    technique = (first.synchronization_technique or "").upper()
    gated = technique in {"PROSPECTIVE", "RETROSPECTIVE", "PACED", "REALTIME"} or any(
        v is not None for v in (first.trigger_time_ms, first.nominal_cardiac_phase_percent,
                                first.rr_interval_ms))
    return SeriesSummary(
        study_key=first.study_key,
        series_id=series_id,
        series_key=first.series_key,
        modality=first.modality,
        sop_class_uid=first.sop_class_uid,
        image_type=first.image_type,
        body_part=first.body_part,
        kernel=first.kernel,
        manufacturer=first.manufacturer,
        kvp=first.kvp,
        contrast_agent_present=any(h.contrast_agent_present for h in instances),
        has_pixel_data=all(h.has_pixel_data for h in instances),
        n_files=len(instances),
        n_slices=sum(len(h.positions_mm) or h.n_frames for h in instances),
        rows=first.rows,
        columns=first.columns,
        pixel_spacing_mm=first.pixel_spacing_mm,
        orientation=first.orientation,
        slice_thickness_mm=thickness if isinstance(thickness, float) else None,
        slice_spacing_mm=spacing,
        z_extent_mm=extent,
        axial_angle_deg=angle,
        gantry_tilt_deg=max(tilts) if tilts else None,
        geometry_problems=problems,
        synchronization_technique=first.synchronization_technique,
        cardiac_phase_percent=phase,
        gated=gated,
        qc_flags=tuple(flags),
        series_description=first.series_description,
    )


def _geometry(
    instances: tuple[InstanceHeader, ...],
) -> tuple[tuple[str, ...], float | None, float, float | None]:
    """Hard geometry problems (the checks of :mod:`calcpipe.dicom.geometry`), the median
    slice spacing, the z extent and the angle of the normal to patient z."""
    missing = [h for h in instances if h.geometry_problem is not None]
    if missing:
        return ((f"missing_geometry: {len(missing)} file(s); {missing[0].geometry_problem}",),
                None, 0.0, None)
    rows = [(p, h) for h in instances for p in h.positions_mm]
    orientations = np.array([h.orientation for _, h in rows], dtype=np.float64)
    problems = geometry.consistency_problems(
        orientations, np.array([(h.rows or 0, h.columns or 0) for _, h in rows], dtype=np.int64),
        np.array([h.pixel_spacing_mm for _, h in rows], dtype=np.float64))
    normal = geometry.slice_normal(orientations[0])
    angle = float(np.degrees(np.arccos(min(1.0, abs(float(normal[2]))))))
    positions = np.array([p for p, _ in rows], dtype=np.float64)
    keys = geometry.sort_key(positions, normal)
    order = np.argsort(keys, kind="stable")
    uids = [rows[i][1].sop_instance_uid for i in order]
    keys, positions = keys[order], positions[order]
    kept, conflicts = [0], 0
    for i in range(1, len(keys)):
        if keys[i] - keys[kept[-1]] < geometry.DUPLICATE_TOLERANCE_MM:
            conflicts += uids[i] != uids[kept[-1]]
            continue
        kept.append(i)
    keys, positions = keys[kept], positions[kept]
    messages = [f"{p.code}: {p.detail}" for p in problems]
    if conflicts:
        messages.append(f"duplicate_position: {conflicts} position(s) hold different slices")
    tilts = [h.gantry_tilt_deg for h in instances if h.gantry_tilt_deg is not None]
    tilt = max(tilts, key=abs) if tilts else None
    messages += [f"{p.code}: {p.detail}"
                 for p in geometry.stack_problems(keys, positions, normal, tilt)]
    spacing = float(np.median(np.diff(keys))) if len(keys) > 1 else None
    extent = float(keys[-1] - keys[0]) if len(keys) else 0.0
    return tuple(messages), spacing, extent, angle
