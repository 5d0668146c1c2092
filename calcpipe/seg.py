"""DICOM SEG export and import of calcium label maps (highdicom).

:func:`to_seg` writes a label map (canonical values) as a binary DICOM Segmentation that
references its CT series: one segment per canonical label, segment number = label value
(1 LM ... 7 MAC), property "pathologic calcification" (SNOMED 18115005), algorithm
calcpipe. With a pseudonymisation secret, identifiers are replaced as in the tables:
PatientID and PatientName become the HMAC pseudonym of the PatientID; birth date,
accession number and physicians' names are emptied, other names and institutions removed;
every UID (study, series, frame of reference, referenced instances) becomes
``2.25.<first 128 bits of its HMAC>`` - a valid UID, the same for the same key - so the
SEG references the pseudonymised copy of the series.

:func:`from_seg` reads a SEG back onto the series it references, in slice order, and
refuses a SEG that references another series.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from calcpipe.annotations import AnnotationError
from calcpipe.labels import LABEL_NAMES


def pseudo_uid(uid: str, secret: bytes) -> str:
    """A valid DICOM UID standing for ``uid`` under ``secret`` (2.25. + 128 bits of HMAC)."""
    from calcpipe.keys import pseudonymise

    return "2.25." + str(int(pseudonymise(uid, secret)[:32], 16))


def _pseudonymised(datasets: list[Any], secret: bytes) -> list[Any]:
    from calcpipe.keys import pseudonymise

    out = []
    for ds in datasets:
        ds = ds.copy()
        patient = str(ds.get("PatientID", "") or "")
        key = pseudonymise(patient, secret) if patient else ""
        ds.PatientID = key[:64]
        ds.PatientName = key[:64]
        for keyword in ("PatientBirthDate", "ReferringPhysicianName", "AccessionNumber",
                        "StudyID"):
            setattr(ds, keyword, "")  # type 2: present and empty
        for keyword in ("OtherPatientIDs", "OtherPatientNames", "InstitutionName",
                        "InstitutionAddress", "PerformingPhysicianName", "OperatorsName"):
            if keyword in ds:
                delattr(ds, keyword)
        for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID",
                        "FrameOfReferenceUID"):
            if keyword in ds:
                setattr(ds, keyword, pseudo_uid(str(ds.get(keyword)), secret))
        if "file_meta" in dir(ds) and ds.file_meta is not None and "SOPInstanceUID" in ds:
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        out.append(ds)
    return out


def to_seg(source_files: Sequence[str | os.PathLike[str]], labels: npt.NDArray[np.integer],
           *, secret: bytes | None = None) -> Any:
    """A DICOM SEG (pydicom dataset) of ``labels`` (Z, Y, X) on the series whose files are
    ``source_files`` in slice order (``CTVolume.source_files``)."""
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes
    from pydicom.sr.coding import Code

    from calcpipe import __version__

    datasets = [pydicom.dcmread(os.fspath(f)) for f in source_files]
    if len(datasets) != labels.shape[0]:
        raise ValueError(f"{len(datasets)} source files for {labels.shape[0]} label slices")
    for ds in datasets:  # type 2 attributes the SEG copies: present, if empty
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex",
                        "StudyDate", "StudyTime", "StudyID", "AccessionNumber",
                        "ReferringPhysicianName"):
            if keyword not in ds:
                setattr(ds, keyword, "")
    if secret:
        datasets = _pseudonymised(datasets, secret)
    calcification = Code("18115005", "SCT", "Pathologic calcification")
    algorithm = hd.AlgorithmIdentificationSequence(
        name="calcpipe", family=codes.cid7162.ArtificialIntelligence,
        version=__version__)
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=value, segment_label=name,
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=calcification, algorithm_type="AUTOMATIC",
            algorithm_identification=algorithm)
        for value, name in sorted(LABEL_NAMES.items())]
    series_uid: str = str(hd.UID())
    if secret:  # the SEG's own UIDs carry nothing identifying; derived for reproducibility
        series_uid = pseudo_uid(f"seg:{datasets[0].SeriesInstanceUID}", secret)
    seg = hd.seg.Segmentation(
        source_images=datasets, pixel_array=np.asarray(labels, dtype=np.uint8),
        segmentation_type="BINARY", segment_descriptions=descriptions,
        series_instance_uid=series_uid, series_number=9001, sop_instance_uid=hd.UID(),
        instance_number=1, manufacturer="calcpipe", manufacturer_model_name="calcpipe",
        software_versions=__version__, device_serial_number="0",
        content_label="CALCIUM", content_description="calcpipe calcium label map")
    return seg


def from_seg(path: str | os.PathLike[str], series_uid: str,
             sop_instance_uids: Sequence[str]) -> npt.NDArray[np.uint8]:
    """The canonical label map (Z, Y, X) a SEG holds for the series ``series_uid`` whose
    instances are ``sop_instance_uids`` in slice order."""
    import highdicom as hd

    where = os.fspath(path)
    try:
        seg = hd.seg.segread(where)
    except Exception as e:
        raise AnnotationError(f"not a DICOM SEG: {e}", code="not_seg", path=where) from None
    referenced = {str(s.SeriesInstanceUID) for s in seg.ReferencedSeriesSequence}
    if series_uid not in referenced:
        raise AnnotationError(
            f"the SEG references series {sorted(referenced)}, not {series_uid}",
            code="seg_other_series", path=where, attribute="ReferencedSeriesSequence",
            fix="pass the series the SEG was made on")
    numbers = {int(d.SegmentNumber): str(d.SegmentLabel) for d in seg.SegmentSequence}
    unknown = sorted(n for n, label in numbers.items() if LABEL_NAMES.get(n) != label)
    if unknown:
        raise AnnotationError(f"segments {unknown} are not canonical calcium labels",
                              code="unknown_label", path=where, attribute="SegmentSequence")
    pixels = seg.get_pixels_by_source_instance(
        source_sop_instance_uids=list(sop_instance_uids), combine_segments=True,
        skip_overlap_checks=True)
    return np.asarray(pixels, dtype=np.uint8)


def export_masks(out: str, source: str, dest: str | os.PathLike[str], *,
                 secret: bytes | None = None, profile: str = "standard",
                 ) -> tuple[list[str], list[str]]:
    """Write one SEG per study with a stored mask (latest results under ``profile``) into
    ``dest``, named ``<study_key>.seg.dcm``; the source must be a local folder. Returns
    the files written and the study keys left out because their stored mask is not their
    result's (another model or other inputs have segmented the study since)."""
    from pathlib import Path

    from calcpipe.catalog import open_catalog
    from calcpipe.dicom import load_volume
    from calcpipe.ingest.study import chosen_series
    from calcpipe.pipeline.work import result_mask
    from calcpipe.scoring import get_profile

    get_profile(profile)  # KeyError naming the profiles: not an empty result
    wanted = {k: made for k, *made in open_catalog(out).connect().execute(
        "SELECT study_key, model_checksum, input_fingerprint FROM latest_study_scores "
        "WHERE profile = ?", [profile]).fetchall()}
    target = Path(dest)
    target.mkdir(parents=True, exist_ok=True)
    written, replaced = [], []
    for key, urls in chosen_series(source, secret=secret).items():
        if key not in wanted:
            continue
        labels = result_mask(out, None, key, *wanted[key])
        if labels is None:
            replaced.append(key)
            continue
        volume = load_volume(list(urls))
        path = target / f"{key}.seg.dcm"
        to_seg(volume.source_files, labels, secret=secret).save_as(path)
        written.append(str(path))
    return written, replaced
