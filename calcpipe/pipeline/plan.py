"""Plan stage: group headers into studies, choose a series, decide what to score.

A result is identified by (study_key, input fingerprint, pipeline version, model checksum,
profile) -> :func:`result_id`. A study is skipped when its result is already committed, or
when it failed before with the same inputs (unless failures are to be retried; a
:data:`NOT_BLOCKING` failure says nothing about the inputs and never blocks). A study with
no scorable series fails here, without reading pixels.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from calcpipe.ingest.grouping import StudyGroup, group_studies
from calcpipe.ingest.headers import InstanceHeader
from calcpipe.ingest.select import SelectionDecision, select_series
from calcpipe.tables.schemas import SCHEMA_VERSION

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass(frozen=True)
class Provenance:
    """What every result row records about how it was made."""

    pipeline_version: str
    model_id: str
    model_checksum: str
    profile: str
    device: str
    precision: str
    run_id: str

    def row(self) -> dict[str, Any]:
        return {"pipeline_version": self.pipeline_version, "model_id": self.model_id,
                "model_checksum": self.model_checksum, "profile": self.profile,
                "device": self.device, "precision": self.precision, "run_id": self.run_id,
                "schema_version": SCHEMA_VERSION}


@dataclass(frozen=True)
class StudyItem:
    """One study to score (picklable; ``urls`` are INTERNAL)."""

    study_key: str
    series_key: str
    input_fingerprint: str
    result_id: str
    urls: tuple[str, ...]
    attempt: int
    qc_flags: tuple[str, ...]
    device: str | None = None  # rescore: where the stored mask was made
    precision: str | None = None
    confidence: float | None = None


@dataclass
class Plan:
    items: list[StudyItem] = field(default_factory=list)
    failures: list[dict[str, Any]] = field(default_factory=list)
    series_rows: list[dict[str, Any]] = field(default_factory=list)
    studies_found: int = 0
    skipped: int = 0


#: Listed objects per plan partition: a partition's headers are held in one worker.
PLAN_PARTITION_OBJECTS = 100_000


def plan_partitions(objects_listed: int) -> int:
    """Partitions the plan stage cuts the studies into (by a hash of the study key)."""
    return max(1, -(-objects_listed // PLAN_PARTITION_OBJECTS))


@dataclass(frozen=True)
class PartitionPlan:
    """What planning one partition decided (counts only; the items are in scratch)."""

    part: int
    studies_found: int
    planned: int
    skipped: int
    failure_codes: Counter[str]
    shard_sizes: list[int]  # studies in each shard file of the partition


@dataclass(frozen=True)
class ShardSpec:
    """One shard: file ``group`` of partition ``part``'s planned items."""

    part: int
    group: int
    size: int


def _item_schema() -> pa.Schema:
    import pyarrow as pa

    text, texts = pa.string(), pa.list_(pa.string())
    return pa.schema([("study_key", text), ("series_key", text),
                      ("input_fingerprint", text), ("result_id", text), ("urls", texts),
                      ("attempt", pa.int64()), ("qc_flags", texts), ("device", text),
                      ("precision", text), ("confidence", pa.float64())])


def write_items(path: str, items: list[StudyItem], shard_size: int,
                storage_options: Mapping[str, Any] | None) -> list[int]:
    """Write planned items as Parquet, one file per shard; the shard sizes."""
    import pyarrow as pa

    from calcpipe.pipeline.scratch import write_groups

    table = pa.Table.from_pylist([dataclasses.asdict(i) for i in items], schema=_item_schema())
    return write_groups(path, table, shard_size, storage_options)


def read_items(path: str, group: int, storage_options: Mapping[str, Any] | None,
               ) -> list[StudyItem]:
    from calcpipe.pipeline.scratch import group_rows

    return [StudyItem(**{**r, "urls": tuple(r["urls"]), "qc_flags": tuple(r["qc_flags"])})
            for r in group_rows(path, group, storage_options)]


def input_fingerprint(study: StudyGroup) -> str:
    """SHA-256 of the study's sorted SOPInstanceUIDs with object sizes and ETags or
    mtimes (every series: a new series may change the choice)."""
    entries = sorted(
        f"{h.sop_instance_uid}\t{h.size_bytes}\t{h.etag or ''}\t{h.mtime or ''}"
        for g in study.series for h in g.instances)
    return hashlib.sha256("\n".join(entries).encode("utf-8")).hexdigest()


#: Failure codes that do not stop a later run from trying the result again: a re-score
#: before the study's mask exists fails for want of a full run, not for its inputs.
NOT_BLOCKING = frozenset({"no_stored_mask"})


def result_id(study_key: str, fingerprint: str, pipeline_version: str, model_checksum: str,
              profile: str) -> str:
    """The result's key. The model is known by its weights' checksum, not by its name:
    retrained weights saved under the same file name are another model."""
    text = "\x1f".join((study_key, fingerprint, pipeline_version, model_checksum, profile))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def plan(
    headers: tuple[InstanceHeader, ...], provenance: Provenance, *,
    committed: set[str], failed_attempts: Mapping[str, int], blocked: set[str],
    seen_fingerprints: set[tuple[str, str]], retry_failed: bool,
) -> Plan:
    """Decide what this run scores.

    Parameters
    ----------
    committed : set of str
        ``result_id`` values present in ``study_scores``.
    failed_attempts : mapping
        ``result_id`` -> failures rows already written for it (numbers the next attempt).
    blocked : set of str
        ``result_id`` values whose failures stop a retry (see :data:`NOT_BLOCKING`).
    seen_fingerprints : set of (study_key, input_fingerprint)
        Already in the ``series`` table (their series rows are not written again).
    retry_failed : bool
        Try again results that failed with unchanged inputs.
    """
    out = Plan()
    now = dt.datetime.now(dt.UTC)
    for study in group_studies(headers):
        out.studies_found += 1
        fp = input_fingerprint(study)
        rid = result_id(study.study_key, fp, provenance.pipeline_version,
                        provenance.model_checksum, provenance.profile)
        decision = select_series(study)
        if (study.study_key, fp) not in seen_fingerprints:
            out.series_rows.extend(series_rows(study, decision, fp, provenance.run_id))
        if rid in committed or (rid in blocked and not retry_failed):
            out.skipped += 1
            continue
        attempt = failed_attempts.get(rid, 0) + 1
        chosen = next((g for g in study.series
                       if g.summary.series_id == decision.chosen), None)
        if chosen is None:
            out.failures.append(failure_row(
                rid, study.study_key, fp, "plan", *_no_series(decision), attempt=attempt,
                provenance=provenance, when=now))
            continue
        out.items.append(StudyItem(study.study_key, chosen.summary.series_key, fp, rid,
                                   chosen.urls, attempt, chosen.summary.qc_flags))
    return out


def _no_series(decision: SelectionDecision) -> tuple[str, str, str | None, str | None]:
    """(code, message, attribute, fix) for a study none of whose series can be scored."""
    not_ct = all("modality_ct" in v.rules for v in decision.verdicts)
    listing = "; ".join(f"series {v.series_id}: " + ", ".join(v.reasons)
                        for v in decision.verdicts)
    if not_ct:
        return ("not_ct", f"no CT series in the study ({listing})", "Modality",
                "calcium scoring needs a CT series; remove the study from the cohort")
    return ("no_eligible_series", f"no series passes the selection rules ({listing})",
            "series selection", "add a non-contrast axial CT series of the chest/heart")


def failure_row(rid: str, study_key: str, fingerprint: str, stage: str, code: str,
                message: str, attribute: str | None, fix: str | None, *, attempt: int,
                provenance: Provenance, when: dt.datetime) -> dict[str, Any]:
    return {"result_id": rid, "study_key": study_key, "input_fingerprint": fingerprint,
            "stage": stage, "code": code, "message": message, "attribute": attribute,
            "fix": fix, "attempt": attempt, "failed_at": when, **provenance.row()}


def series_rows(study: StudyGroup, decision: SelectionDecision, fingerprint: str,
                run_id: str) -> list[dict[str, Any]]:
    rows = []
    for group in study.series:
        s = group.summary
        v = decision.verdict(s.series_id)
        rows.append({
            "study_key": study.study_key, "input_fingerprint": fingerprint,
            "series_id": s.series_id, "series_key": s.series_key, "status": v.status,
            "rank": v.rank, "rules": list(v.rules), "reasons": list(v.reasons),
            "flags": list(v.flags), "modality": s.modality, "kernel": s.kernel,
            "kvp": s.kvp, "contrast_agent_present": s.contrast_agent_present,
            "n_files": s.n_files, "n_slices": s.n_slices,
            "slice_thickness_mm": s.slice_thickness_mm,
            "slice_spacing_mm": s.slice_spacing_mm, "z_extent_mm": s.z_extent_mm,
            "gated": s.gated, "cardiac_phase_percent": s.cardiac_phase_percent,
            "qc_flags": list(s.qc_flags), "run_id": run_id,
            "schema_version": SCHEMA_VERSION,
        })
    return rows
