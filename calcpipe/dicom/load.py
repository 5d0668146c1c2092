"""``load_volume``: DICOM files of one CT series to a :class:`CTVolume` in HU."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
from pydicom.dataset import Dataset

from calcpipe.dicom import geometry
from calcpipe.dicom.errors import DicomGeometryError, DicomInputError, GeometryProblem
from calcpipe.dicom.frames import PADDING_HU, FileRead, Frame, read_file
from calcpipe.dicom.metadata import find, scan_metadata
from calcpipe.dicom.volume import CTVolume, QCFlag, kvp_given
from calcpipe.keys import derived_uid

if TYPE_CHECKING:
    from calcpipe.ingest.select import SelectionDecision

Source = str | os.PathLike[str] | Sequence[str | os.PathLike[str]]


def list_files(folder: str | os.PathLike[str]) -> list[str]:
    """Files under ``folder``, recursively, skipping DICOMDIR and every path component
    that starts with ``_`` or ``.``; sorted for determinism."""
    root = Path(folder)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(("_", ".")))
        for name in filenames:
            if name.startswith(("_", ".")) or name.upper() == "DICOMDIR":
                continue
            found.append(os.path.join(dirpath, name))
    return sorted(found)


def load_volume(source: Source, *, series_uid: str | None = None) -> CTVolume:
    """Read one CT series into a regular volume of int16 Hounsfield units.

    Parameters
    ----------
    source : path or sequence of paths
        A series folder (searched recursively; files that are not DICOM are skipped and
        flagged), one file (a multi-frame Enhanced CT), or an explicit list of files (each
        must be DICOM).
    series_uid : str, optional
        Keep only this series (its real or derived UID). Without it, a folder holding
        several series (a study folder) loads the series chosen by the selection rules of
        :mod:`calcpipe.ingest` and records the decision in ``selection``; an explicit list
        of files must hold one series.

    Returns
    -------
    CTVolume
        ``hu`` (Z, Y, X) int16 in ascending patient z, ``spacing_mm`` (z, y, x) with z the
        distance between slice centres, ``affine`` from (z, y, x) indices to LPS mm,
        metadata and QC flags.

    Raises
    ------
    DicomInputError
        Unreadable, empty, truncated, non-DICOM or non-CT files, missing attributes,
        several series in a list of files (``mixed_series``), several studies in a folder
        (``several_studies``), no eligible series in a study folder
        (``no_eligible_series``), a requested series absent.
    DicomDecodeError
        Pixel data that cannot be decoded or rescaled into int16 HU.
    DicomGeometryError
        Slices that are not one regular, untilted, gap-free stack (all problems named).
    """
    flags: list[QCFlag] = []
    reads = _read_source(source, flags)
    selection = None
    if (series_uid is None and isinstance(source, str | os.PathLike)
            and len({r.series for r in reads}) > 1):
        reads, selection = _select(os.fspath(source), reads, flags)
    reads = _one_series(reads, series_uid)
    volume = _assemble(reads, flags)
    return volume if selection is None else replace(volume, selection=selection)


def _select(
    folder: str, reads: list[_Keyed], flags: list[QCFlag]
) -> tuple[list[_Keyed], SelectionDecision]:
    """The reads of the series the selection rules choose in a study folder."""
    from calcpipe.ingest.study import discover, no_eligible_series

    found = discover(folder)
    if len(found.studies) != 1:
        raise DicomInputError(
            f"the folder holds {len(found.studies)} studies: "
            + ", ".join(c.study.study_key for c in found.studies), code="several_studies",
            path=folder, attribute="StudyInstanceUID",
            fix="pass one study folder, or series_uid=... to choose a series")
    choice = found.studies[0]
    chosen = choice.chosen
    if chosen is None:
        raise no_eligible_series(choice, folder)
    keep = {os.path.abspath(u) for u in chosen.urls}
    n_series = len(choice.study.series)
    flags.append(QCFlag("series_selected", f"series {chosen.summary.series_id} chosen among "
                        f"{n_series} series by the selection rules (see selection)"))
    return [r for r in reads if os.path.abspath(r.path) in keep], choice.decision


@dataclass(frozen=True, eq=False)
class _Keyed:
    """A file's frames with its study and series keys. The parsed data set is kept only
    for the first file of each series (for metadata): holding every header alive costs
    more time than decoding the pixels (garbage-collector passes over ~100 elements each).
    """

    frames: list[Frame]
    study: str
    series: str
    path: str
    dataset: Dataset | None


def _read_source(source: Source, flags: list[QCFlag]) -> list[_Keyed]:
    if isinstance(source, str | os.PathLike):
        path = os.fspath(source)
        if os.path.isdir(path):
            return _read_folder(path, flags)
        if not os.path.exists(path):
            raise DicomInputError("no such file or folder", code="no_files", path=path,
                                  fix="check the path")
        paths: Iterable[str | os.PathLike[str]] = [path]
    else:
        paths = source
    seen: set[str] = set()
    reads = []
    for p in paths:
        reads.append(_keyed(read_file(p), seen))
    if not reads:
        raise DicomInputError("no files were given", code="no_files",
                              fix="pass a series folder or a non-empty list of files")
    return reads


def _read_folder(folder: str, flags: list[QCFlag]) -> list[_Keyed]:
    # Files are read one after another: a thread pool measured slower (header parsing
    # holds the GIL); parallelism belongs to the pipeline, across studies.
    reads, skipped, seen = [], 0, set[str]()
    for path in list_files(folder):
        try:
            read = read_file(path)
        except DicomInputError as e:
            if e.code != "not_dicom":
                raise
            skipped += 1
            continue
        reads.append(_keyed(read, seen))
    if skipped:
        flags.append(QCFlag("non_dicom_files_skipped",
                            f"{skipped} file(s) in the folder are not DICOM and were ignored"))
    if not reads:
        raise DicomInputError("the folder holds no DICOM files", code="no_files", path=folder,
                              fix="point at the folder that holds the series' .dcm files")
    return reads


def _keyed(read: FileRead, seen_series: set[str]) -> _Keyed:
    """A read with its study and series keys (real UIDs or documented derived keys)."""
    series = read.series_uid or series_key(read.dataset, read.frames)
    first = series not in seen_series
    seen_series.add(series)
    return _Keyed(read.frames, read.study_uid or study_key(read.dataset, read.frames), series,
                  read.path, read.dataset if first else None)


class FrameFacts(Protocol):
    """What the key rules read from a frame: a :class:`Frame`, or a header-only stand-in."""

    @property
    def sop_instance_uid(self) -> str: ...
    @property
    def pixel_spacing(self) -> tuple[float, ...]: ...
    @property
    def orientation(self) -> tuple[float, ...]: ...


def study_key(ds: Dataset, frames: Sequence[FrameFacts]) -> str:
    """StudyInstanceUID, or the derived key documented in :mod:`calcpipe.keys`."""
    uid = str(ds.get("StudyInstanceUID", "") or "").strip()
    if uid:
        return uid
    fields = [str(ds.get(k, "") or "").strip()
              for k in ("PatientID", "StudyDate", "StudyTime", "AccessionNumber", "StudyID")]
    if any(fields):
        return derived_uid("study", fields)
    frame_of_reference = str(ds.get("FrameOfReferenceUID", "") or "").strip()
    if frame_of_reference:
        return derived_uid("study", ["FrameOfReferenceUID", frame_of_reference])
    return derived_uid("study", ["instances", *sorted(f.sop_instance_uid for f in frames)])


def series_key(ds: Dataset, frames: Sequence[FrameFacts]) -> str:
    """SeriesInstanceUID, or the derived key documented in :mod:`calcpipe.keys`."""
    uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
    if uid:
        return uid
    first = frames[0]
    parts: list[object] = [study_key(ds, frames)]
    parts += [str(find(ds, k) or "") for k in (
        "Modality", "SeriesNumber", "SeriesDate", "SeriesTime", "FrameOfReferenceUID",
        "ConvolutionKernel", "SliceThickness", "Rows", "Columns")]
    parts += [f"{v:.4f}" for v in (*first.pixel_spacing, *first.orientation)]
    return derived_uid("series", parts)


def _one_series(reads: list[_Keyed], series_uid: str | None) -> list[_Keyed]:
    series = sorted({r.series for r in reads})
    if series_uid is not None:
        kept = [r for r in reads if r.series == series_uid]
        if not kept:
            raise DicomInputError(
                f"series {series_uid} is not among the {len(series)} series found: "
                + ", ".join(series), code="series_not_found", series_uid=series_uid,
                attribute="SeriesInstanceUID", fix="pass one of the series UIDs listed",
            )
        return kept
    if len(series) > 1:
        counts = {s: sum(1 for r in reads if r.series == s) for s in series}
        listing = ", ".join(f"{s} ({n} files)" for s, n in counts.items())
        raise DicomInputError(
            f"the files hold {len(series)} series: {listing}", code="mixed_series",
            path=os.path.dirname(reads[0].path), attribute="SeriesInstanceUID",
            fix="pass series_uid=... to choose one, or one series folder",
        )
    return reads


def _assemble(reads: list[_Keyed], flags: list[QCFlag]) -> CTVolume:
    study_uid, series_uid = reads[0].study, reads[0].series
    ds = next(r.dataset for r in reads if r.dataset is not None)
    where = {"path": os.path.dirname(reads[0].path) or reads[0].path, "series_uid": series_uid}
    frames = [f for read in reads for f in read.frames]

    orientations = np.array([f.orientation for f in frames])
    problems = geometry.consistency_problems(
        orientations,
        np.array([f.stored.shape for f in frames], dtype=np.int64),
        np.array([f.pixel_spacing for f in frames]),
    )
    if problems:
        raise DicomGeometryError(problems, **where)

    normal = geometry.slice_normal(orientations[0])
    keys = geometry.sort_key(np.array([f.position for f in frames]), normal)
    order = np.argsort(keys, kind="stable")
    frames = [frames[i] for i in order]
    keys = keys[order]
    frames, keys, dropped, duplicate_problems = _drop_identical_duplicates(frames, keys)
    if dropped:
        flags.append(QCFlag("duplicate_instances_dropped",
                            f"{dropped} identical duplicate instance(s) were dropped"))
    positions = np.array([f.position for f in frames])
    tilt = find(ds, "GantryDetectorTilt")
    problems = duplicate_problems + geometry.stack_problems(
        keys, positions, normal, None if tilt in (None, "") else float(tilt))
    if problems:
        raise DicomGeometryError(problems, **where)

    spacing_z = float(np.median(np.diff(keys)))
    pixel_spacing = frames[0].pixel_spacing
    affine = geometry.affine_from(positions[0], positions[-1], len(frames),
                                  orientations[0], pixel_spacing)
    thickness = frames[0].slice_thickness
    hu = np.empty((len(frames), *frames[0].stored.shape), dtype=np.int16)
    padded, rounded = 0, False
    for k, frame in enumerate(frames):
        _, frame_padded, frame_rounded = frame.to_hu(out=hu[k])
        padded += frame_padded
        rounded |= frame_rounded
    flags += _qc_flags(frames, thickness, spacing_z, study_uid, series_uid, ds)
    if padded:
        flags.append(QCFlag("pixel_padding", f"{padded} padding pixel(s) set to {PADDING_HU} HU"))
    if rounded:
        flags.append(QCFlag("rescale_rounded", "a non-integer rescale was rounded to whole HU"))
    metadata = scan_metadata(ds, slice_thickness_mm=thickness, slice_increment_mm=spacing_z,
                             pixel_spacing_mm=pixel_spacing)
    if not kvp_given(metadata.kvp):  # scored at DEFAULT_KVP (CTVolume.scoring_kvp)
        flags.append(QCFlag("kvp_missing", f"KVP is {metadata.kvp!r}: scored at 120 kVp"))
    if metadata.contrast_agent:
        flags.append(QCFlag("contrast_agent",
                            f"ContrastBolusAgent is {metadata.contrast_agent!r}"))
    return CTVolume(
        hu=hu,
        spacing_mm=(spacing_z, pixel_spacing[0], pixel_spacing[1]),
        affine=affine,
        slice_thickness_mm=thickness,
        study_uid=study_uid,
        series_uid=series_uid,
        sop_instance_uids=tuple(f.sop_instance_uid for f in frames),
        metadata=metadata,
        qc_flags=tuple(flags),
        source_files=tuple(f.path for f in frames),
    )


def _drop_identical_duplicates(
    frames: list[Frame], keys: np.ndarray
) -> tuple[list[Frame], np.ndarray, int, list[GeometryProblem]]:
    """Drop repeated copies of the same instance; slices of different content at one
    position are a hard problem (the first of them is kept)."""
    kept: list[int] = []
    dropped = 0
    conflicts = []
    for i, frame in enumerate(frames):
        if kept and keys[i] - keys[kept[-1]] < geometry.DUPLICATE_TOLERANCE_MM:
            previous = frames[kept[-1]]
            if (frame.sop_instance_uid == previous.sop_instance_uid
                    and (frame.slope, frame.intercept) == (previous.slope, previous.intercept)
                    and np.array_equal(frame.stored, previous.stored)):
                dropped += 1
                continue
            conflicts.append(f"{os.path.basename(previous.path)} and "
                             f"{os.path.basename(frame.path)} at {keys[i]:.3f} mm")
            # The conflict refuses the stack; one slice per position stays so that the
            # stack checks name only real problems (no zero step, no 90-degree "tilt").
            continue
        kept.append(i)
    problems = []
    if conflicts:
        problems.append(GeometryProblem(
            "duplicate_position",
            f"{len(conflicts)} position(s) hold different slices: " + "; ".join(conflicts[:5])))
    return [frames[i] for i in kept], keys[kept], dropped, problems


def _qc_flags(
    frames: list[Frame], thickness: float | None, spacing_z: float,
    study_uid: str, series_uid: str, ds: Dataset,
) -> list[QCFlag]:
    flags = []
    low, high = geometry.AGATSTON_THICKNESS_MM
    if thickness is None:
        flags.append(QCFlag("slice_thickness_missing", "SliceThickness is absent"))
    else:
        if thickness > spacing_z + geometry.SPACING_TOLERANCE_MM:
            flags.append(QCFlag("overlapping_slices",
                                f"SliceThickness {thickness:g} mm exceeds the spacing "
                                f"{spacing_z:.3f} mm"))
        if not low <= thickness <= high:
            flags.append(QCFlag("slice_thickness_outside_2.5_3.0_mm",
                                f"SliceThickness is {thickness:g} mm"))
    if not str(ds.get("StudyInstanceUID", "") or "").strip():
        flags.append(QCFlag("derived_study_uid",
                            f"StudyInstanceUID is missing or empty; derived key {study_uid}"))
    if not str(ds.get("SeriesInstanceUID", "") or "").strip():
        flags.append(QCFlag("derived_series_uid",
                            f"SeriesInstanceUID is missing or empty; derived key {series_uid}"))
    derived = sum(f.uid_derived for f in frames)
    if derived:
        flags.append(QCFlag("derived_instance_uid",
                            f"{derived} slice(s) lack SOPInstanceUID; keys derived from headers"))
    return flags
