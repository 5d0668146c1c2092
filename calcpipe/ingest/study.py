"""Discovery, grouping and selection together, and loading the chosen series of a study.

On an object store, :func:`load_study` downloads the chosen series' files (only those) into
a temporary folder, reads them with :func:`calcpipe.dicom.load_volume` and deletes the
folder; the volume's ``source_files`` then hold the object URLs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from calcpipe.dicom.errors import DicomInputError
from calcpipe.dicom.volume import CTVolume
from calcpipe.ingest.discover import SkippedFile, open_filesystem, scan_headers
from calcpipe.ingest.grouping import SeriesGroup, StudyGroup, group_studies
from calcpipe.ingest.rules import DEFAULT_RULES, Rule
from calcpipe.ingest.select import SelectionDecision, select_series


@dataclass(frozen=True)
class StudyChoice:
    """A study, its series and the selection decision."""

    study: StudyGroup
    decision: SelectionDecision

    @property
    def chosen(self) -> SeriesGroup | None:
        """The chosen series, or None when none passes the hard rules."""
        return next((g for g in self.study.series
                     if g.summary.series_id == self.decision.chosen), None)


@dataclass(frozen=True)
class Discovery:
    """Every study found under a source (sorted by key) and the files skipped."""

    studies: tuple[StudyChoice, ...]
    skipped: tuple[SkippedFile, ...]


def discover(
    source: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None,
    rules: tuple[Rule, ...] = DEFAULT_RULES,
) -> Discovery:
    """Scan headers under ``source`` (a path or fsspec URL), group them into studies and
    series, and choose one series per study under ``rules``."""
    scan = scan_headers(source, storage_options=storage_options)
    studies = tuple(StudyChoice(study, select_series(study, rules))
                    for study in group_studies(scan.headers))
    return Discovery(studies, scan.skipped)


def no_eligible_series(choice: StudyChoice, where: str) -> DicomInputError:
    """The error for a study none of whose series passes the hard rules."""
    listing = "; ".join(f"{v.series_id}: " + ", ".join(v.reasons)
                        for v in choice.decision.verdicts)
    return DicomInputError(
        f"no series of study {choice.study.study_key} can be scored: {listing}",
        code="no_eligible_series", path=where, attribute="series selection",
        fix="add a non-contrast axial CT series of the chest/heart, or pass series_uid=... "
        "to load a series regardless",
    )


def load_study(
    source: str | os.PathLike[str], *, storage_options: Mapping[str, Any] | None = None,
    study_key: str | None = None, rules: tuple[Rule, ...] = DEFAULT_RULES,
) -> CTVolume:
    """Load the chosen series of the study under ``source`` (a path or fsspec URL).

    Parameters
    ----------
    source : path or URL
    storage_options : mapping, optional
        Passed to fsspec.
    study_key : str, optional
        Required when ``source`` holds several studies.
    rules : tuple of Rule

    Returns
    -------
    CTVolume
        With ``selection`` set to the decision.

    Raises
    ------
    DicomInputError
        ``no_files``, ``several_studies``, ``series_not_found`` (unknown study key) or
        ``no_eligible_series``; and whatever :func:`load_volume` raises.
    """
    from calcpipe.dicom.load import load_volume

    where = os.fspath(source)
    found = discover(source, storage_options=storage_options, rules=rules)
    choices = [c for c in found.studies if study_key in (None, c.study.study_key)]
    if not choices:
        raise DicomInputError(
            "no DICOM study found" if study_key is None else f"no study {study_key}",
            code="no_files" if study_key is None else "series_not_found", path=where,
            fix="check the path or URL (and the study key)")
    if len(choices) > 1:
        raise DicomInputError(
            f"{len(choices)} studies found: "
            + ", ".join(c.study.study_key for c in choices), code="several_studies",
            path=where, attribute="StudyInstanceUID", fix="pass study_key=...")
    choice = choices[0]
    chosen = choice.chosen
    if chosen is None:
        raise no_eligible_series(choice, where)
    urls = list(chosen.urls)
    with local_copies(urls, storage_options) as paths:
        volume = load_volume(paths)
    by_path = dict(zip(paths, urls, strict=True))
    return dataclasses.replace(volume, selection=choice.decision, source_files=tuple(
        by_path[p] for p in volume.source_files))


def chosen_series(source: str | os.PathLike[str], *, secret: bytes | None = None,
                  storage_options: Mapping[str, Any] | None = None,
                  ) -> dict[str, tuple[str, ...]]:
    """The files of the chosen series of every scorable study under ``source``, by the
    study key tables carry (:func:`calcpipe.keys.table_key`)."""
    from calcpipe.keys import table_key

    return {table_key(c.study.study_key, secret): c.chosen.urls
            for c in discover(source, storage_options=storage_options).studies
            if c.chosen is not None}


@contextlib.contextmanager
def local_copies(urls: list[str], storage_options: Mapping[str, Any] | None = None,
                 ) -> Iterator[list[str]]:
    """Local paths of ``urls``: the paths themselves on disk; on an object store, copies
    of exactly those objects in a temporary folder that is deleted afterwards."""
    if not urls or "://" not in urls[0]:
        yield list(urls)
        return
    fs, _ = open_filesystem(urls[0], storage_options)
    with tempfile.TemporaryDirectory(prefix="calcpipe-") as tmp:
        paths = [os.path.join(tmp, f"{i:06d}.dcm") for i in range(len(urls))]
        fs.get([u.split("://", 1)[1] for u in urls], paths)
        yield paths
