"""Score stage, per study (runs on a worker): read the series, segment, score, keep the mask.

:func:`score_study` never raises for a bad study: it returns a :class:`StudyOutcome` with
either the rows of the result or one ``failures`` row whose message holds no object path.
It is idempotent: a re-run (a worker died, a retry) writes the same mask bytes to the same
place and returns the same rows but for timestamps.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from calcpipe.pipeline.plan import Provenance, StudyItem, failure_row
from calcpipe.tables.store import join

if TYPE_CHECKING:
    from calcpipe.dicom.volume import CTVolume
    from calcpipe.models.segment import Segmenter


@dataclass
class StudyOutcome:
    result_id: str
    study_row: dict[str, Any] | None = None
    vessel_rows: list[dict[str, Any]] = field(default_factory=list)
    lesion_rows: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    seconds: float = 0.0


def mask_path(out_root: str, study_key: str) -> str:
    return join(out_root, "masks", f"{study_key}.nii.gz")


def load_series(item: StudyItem, storage_options: Mapping[str, Any] | None,
                ) -> tuple[CTVolume, str | None]:
    """The chosen series as a volume, and the PatientID (None when absent)."""
    from calcpipe.dicom import load_volume
    from calcpipe.dicom.metadata import patient_id
    from calcpipe.ingest.study import local_copies

    with local_copies(list(item.urls), storage_options) as paths:
        return load_volume(paths), patient_id(paths[0])


def mask_origin(item: StudyItem, provenance: Provenance) -> dict[str, str]:
    """What a mask records of how it was made (its file's note): a study has one mask, the
    latest segmentation's, and a re-score may use it only for the same model and inputs."""
    return {"model_id": provenance.model_id, "model_checksum": provenance.model_checksum,
            "input_fingerprint": item.input_fingerprint, "series_key": item.series_key}


def write_mask(out_root: str, storage_options: Mapping[str, Any] | None, study_key: str,
               labels: np.ndarray, affine: np.ndarray,
               origin: Mapping[str, str] | None = None) -> None:
    """Write the label map as NIfTI, with ``origin`` (:func:`mask_origin`) as its note;
    atomically (temporary name, then rename) on disk."""
    from calcpipe.ingest.discover import open_filesystem
    from calcpipe.synthetic.truth import PREDICTION, nifti_bytes

    note = None if origin is None else json.dumps(dict(origin), sort_keys=True).encode()
    data = nifti_bytes(labels.astype(np.uint8, copy=False), affine, note,  # no uint8 copy
                       description=PREDICTION)
    target = mask_path(out_root, study_key)
    if "://" not in target:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        tmp = f"{target}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        return
    fs, path = open_filesystem(target, storage_options)
    fs.pipe_file(path, data)  # a single PUT: all or nothing


def read_mask(out_root: str, storage_options: Mapping[str, Any] | None,
              study_key: str) -> np.ndarray:
    return read_mask_and_origin(out_root, storage_options, study_key)[0]


def read_mask_and_origin(out_root: str, storage_options: Mapping[str, Any] | None,
                         study_key: str) -> tuple[np.ndarray, dict[str, str] | None]:
    """A study's stored mask and what it records of its making (None: a mask written
    before masks recorded it)."""
    from calcpipe.ingest.discover import open_filesystem
    from calcpipe.synthetic.truth import labels_and_note_from_bytes

    fs, path = open_filesystem(mask_path(out_root, study_key), storage_options)
    labels, _, note = labels_and_note_from_bytes(fs.cat_file(path))
    return labels, None if note is None else json.loads(note)


def made_by(origin: Mapping[str, str] | None, model_checksum: str,
            input_fingerprint: str) -> bool:
    """Whether a mask that records ``origin`` was made by that model from those inputs."""
    return origin is not None and origin.get("model_checksum") == model_checksum and (
        origin.get("input_fingerprint") == input_fingerprint)


def result_mask(out_root: str, storage_options: Mapping[str, Any] | None, study_key: str,
                model_checksum: str, input_fingerprint: str) -> np.ndarray | None:
    """The mask of a result (its ``study_key``, ``model_checksum`` and
    ``input_fingerprint``), or None where the study has no mask or its mask was made by
    another model or from other inputs: a study keeps one mask, its latest segmentation's,
    and another result's mask under this result's name would be wrong."""
    try:
        labels, origin = read_mask_and_origin(out_root, storage_options, study_key)
    except FileNotFoundError:
        return None
    return labels if made_by(origin, model_checksum, input_fingerprint) else None


def stored_mask_for(item: StudyItem, provenance: Provenance, out_root: str,
                    storage_options: Mapping[str, Any] | None) -> np.ndarray:
    """The stored mask of ``item``, refused (``no_stored_mask``) unless this model made it
    from these inputs: another model's or an older input's mask would give its scores
    under this model's name."""
    from calcpipe.errors import CalcpipeError

    labels, origin = read_mask_and_origin(out_root, storage_options, item.study_key)
    if not made_by(origin, provenance.model_checksum, item.input_fingerprint):
        made = "records no model" if origin is None else (
            f"was made by model {origin.get('model_id')!r} (checksum "
            f"{str(origin.get('model_checksum'))[:12]}) from "
            + ("these" if origin.get("input_fingerprint") == item.input_fingerprint
               else "other") + " inputs")
        raise CalcpipeError(
            f"the study's stored mask {made}, not by model {provenance.model_id!r} "
            f"(checksum {provenance.model_checksum[:12]}) from these inputs",
            code="no_stored_mask", attribute="mask",
            # a full run under a profile this model has scored is skipped: the target's
            fix="score under this profile without --rescore: the network runs again and "
                "writes this model's mask")
    return labels


def failed_outcome(item: StudyItem, provenance: Provenance, stage: str, code: str,
                   message: str, attribute: str | None = None, fix: str | None = None, *,
                   seconds: float = 0.0) -> StudyOutcome:
    """An outcome holding one ``failures`` row (object paths removed from the message)."""
    for url in item.urls:
        message = message.replace(url, "<object>")
    return StudyOutcome(item.result_id, failure=failure_row(
        item.result_id, item.study_key, item.input_fingerprint, stage, code, message,
        attribute, fix, attempt=item.attempt, provenance=provenance,
        when=dt.datetime.now(dt.UTC)), seconds=seconds)


def score_study(
    item: StudyItem, segmenter: Segmenter | None, provenance: Provenance, *,
    out_root: str, storage_options: Mapping[str, Any] | None, secret: bytes | None,
) -> StudyOutcome:
    """Score one study; ``segmenter=None`` re-scores from the stored mask (rescore)."""
    from calcpipe.errors import CalcpipeError
    from calcpipe.keys import table_key
    from calcpipe.scoring import score
    from calcpipe.scoring.calibration import load_registry, lookup_c_ha
    from calcpipe.scoring.features import study_features

    start = time.perf_counter()
    stage = "score"
    try:
        volume, patient_id = load_series(item, storage_options)
        kvp = volume.scoring_kvp
        if segmenter is None:
            labels = stored_mask_for(item, provenance, out_root, storage_options)
            if labels.shape != volume.hu.shape:
                raise ValueError(f"stored mask shape {labels.shape} differs from the "
                                 f"series {volume.hu.shape}: score the study again")
            confidence = item.confidence
            provenance = replace(provenance, device=item.device or provenance.device,
                                 precision=item.precision or provenance.precision)
        else:
            seg = segmenter.segment(volume.hu, volume.spacing_mm, kvp=kvp)
            labels, confidence = seg.labels, seg.confidence
            provenance = replace(provenance, device=seg.device, precision=seg.precision)
            write_mask(out_root, storage_options, item.study_key, labels, volume.affine,
                       mask_origin(item, provenance))
        meta = volume.metadata
        calibration = lookup_c_ha(load_registry(), manufacturer=meta.manufacturer,
                                  model=meta.manufacturer_model, kvp=kvp, kernel=meta.kernel)
        result = score(volume.hu, labels, volume.spacing_mm, profile=provenance.profile,
                       kvp=kvp, affine=volume.affine,
                       mass_calibration=None if calibration is None else calibration.c_ha,
                       slice_thickness_mm=volume.slice_thickness_mm)
    except Exception as e:  # every failure becomes a row; the shard goes on
        code, attribute, fix = "internal_error", None, None
        if isinstance(e, CalcpipeError):
            code, attribute, fix = e.code, e.attribute, e.fix
            message = e.message
        else:
            message = f"{type(e).__name__}: {e}"
        return failed_outcome(item, provenance, stage, code, message, attribute, fix,
                              seconds=time.perf_counter() - start)

    prov = provenance.row()
    keys = {"result_id": item.result_id, "study_key": item.study_key}
    features = study_features(result)
    cac = result.row("CAC")
    study_row = {
        **keys,
        "patient_key": None if patient_id is None else table_key(patient_id, secret),
        "series_key": item.series_key, "input_fingerprint": item.input_fingerprint,
        "age_years": meta.age_years, "sex": meta.sex, "study_date": meta.study_date,
        "kvp": kvp, "manufacturer": meta.manufacturer, "kernel": meta.kernel,
        "slice_thickness_mm": volume.slice_thickness_mm,
        "slice_spacing_mm": float(volume.spacing_mm[0]),
        "pixel_spacing_mm": float(volume.spacing_mm[1]), "n_slices": int(volume.hu.shape[0]),
        "gated": meta.gating.gated, "threshold_hu": result.threshold_hu,
        "mass_calibration_mg_cm3_per_hu": result.mass_calibration,
        "segmentation_confidence": confidence,
        "cac_agatston": cac.agatston, "cac_volume_mm3": cac.volume_mm3,
        "cac_mass_mg": cac.mass_mg, "ac_agatston": features.ac_agatston,
        "total_agatston": result.row("TOTAL").agatston,
        "cac_category": features.risk_category_paper, "cac_drs": features.cac_drs,
        "n_vessels_with_cac": features.n_calcified_vessels,
        "qc_flags": sorted({*item.qc_flags, *(f.code for f in volume.qc_flags)}),
        "score_flags": [f"{f.code}: {f.detail}" for f in result.flags],
        "attempt": item.attempt, "scored_at": dt.datetime.now(dt.UTC), **prov,
    }
    vessel_rows = [{**keys, **dataclasses.asdict(r), **prov} for r in result.rows]
    lesion_rows = [{**keys, **dataclasses.asdict(r), **prov} for r in result.lesions]
    return StudyOutcome(item.result_id, study_row, vessel_rows, lesion_rows,
                        seconds=time.perf_counter() - start)

