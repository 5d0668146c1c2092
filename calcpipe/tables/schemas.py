"""The output tables: explicit, versioned Arrow schemas with units and descriptions.

These schemas are the contract data scientists query against; ``data_catalog.yaml`` is
rendered from them (a test keeps the two identical) and a test pins every column.

Schema-evolution policy (docs/tables.md):

* :data:`SCHEMA_VERSION` is written into every row (``schema_version``) and into each
  table's Arrow metadata.
* A new version may only **add nullable columns** at the end of a table. Columns are never
  renamed, retyped, re-united or removed; a changed meaning gets a new column name.
* Readers select columns by name, so rows written under an older version read with the
  added columns null.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pyarrow as pa

#: Bumped whenever a column is added (never for anything else: see the policy above).
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # pyarrow type spelled as in the catalog: int64, float64, string, ...
    unit: str | None
    nullable: bool
    description: str


@dataclass(frozen=True)
class TableSpec:
    name: str
    description: str
    primary_key: tuple[str, ...]
    partitioning: tuple[str, ...]
    columns: tuple[Column, ...]

    def column(self, name: str) -> Column:
        return next(c for c in self.columns if c.name == name)


def _c(name: str, type_: str, unit: str | None, description: str, *,
       nullable: bool = False) -> Column:
    return Column(name, type_, unit, nullable, description)


def _n(name: str, type_: str, unit: str | None, description: str) -> Column:
    return Column(name, type_, unit, True, description)


# Provenance carried by every result row (the DESIGN contract).
_PROVENANCE = (
    _c("pipeline_version", "string", None, "calcpipe version that produced the row"),
    _c("model_id", "string", None, "segmentation model id (file stem or 'default')"),
    _c("model_checksum", "string", None, "SHA-256 of the model checkpoint ('' for none)"),
    _c("profile", "string", None, "scoring profile (calcpipe profiles)"),
    _c("device", "string", None, "where the network ran: cpu, cuda, ..."),
    _c("precision", "string", None, "numeric precision of the network: fp32, bf16, exact"),
    _c("run_id", "string", None, "the run that wrote the row (see runs)"),
    _c("schema_version", "int32", None, "SCHEMA_VERSION of the writer"),
)
_RESULT = (
    _c("result_id", "string", None,
       "hash of (study_key, input_fingerprint, pipeline_version, model_checksum, profile)"),
    _c("study_key", "string", None,
       "StudyInstanceUID, derived 2.25. key, or its HMAC-SHA256 when a key is set"),
)
_SCORES = (
    _c("agatston", "float64", "AU", "Agatston score"),
    _c("volume_mm3", "float64", "mm3", "calcified volume"),
    _c("mass_mg", "float64", "mg", "calcium hydroxyapatite mass"),
)

TABLES: dict[str, TableSpec] = {t.name: t for t in (
    TableSpec(
        "dicom_instances",
        "One row per object scanned (latest row per object_id wins); headers only, no "
        "pixel data, no names or paths. Skipped objects are kept with their skip_code so "
        "that they are not re-read.",
        ("object_id", "run_id"), (),
        (
            _c("object_id", "string", None,
               "SHA-256 of the object's path relative to the source (not the path)"),
            _c("size_bytes", "int64", "bytes", "object size"),
            _n("etag", "string", None, "object store ETag (null on disk)"),
            _n("mtime_s", "float64", "s", "modification time, seconds since the epoch"),
            _n("skip_code", "string", None,
               "why the object is not a usable DICOM file (null when it is)"),
            _n("study_key", "string", None, "study key (pseudonymised when a key is set)"),
            _n("series_key", "string", None, "series key (pseudonymised when a key is set)"),
            _n("sop_instance_uid", "string", None, "SOPInstanceUID or its pseudonym"),
            _n("study_uid_derived", "bool", None, "StudyInstanceUID was missing"),
            _n("series_uid_derived", "bool", None, "SeriesInstanceUID was missing"),
            _n("instance_uid_derived", "bool", None, "SOPInstanceUID was missing"),
            _n("modality", "string", None, "Modality"),
            _n("sop_class_uid", "string", None, "SOPClassUID"),
            _n("image_type", "list<string>", None, "ImageType values"),
            _n("body_part", "string", None, "BodyPartExamined"),
            _n("kernel", "string", None, "ConvolutionKernel"),
            _n("manufacturer", "string", None, "Manufacturer"),
            _n("kvp", "float64", "kV", "tube voltage"),
            _n("contrast_agent_present", "bool", None, "a contrast agent is recorded"),
            _n("has_pixel_data", "bool", None, "the object holds an image"),
            _n("n_frames", "int64", None, "2-D images in the object"),
            _n("rows", "int64", "pixels", "image rows"),
            _n("columns", "int64", "pixels", "image columns"),
            _n("pixel_spacing_mm", "list<float64>", "mm", "row and column spacing"),
            _n("orientation", "list<float64>", None, "ImageOrientationPatient cosines"),
            _n("positions_mm", "list<list<float64>>", "mm",
               "ImagePositionPatient of every frame (LPS)"),
            _n("geometry_problem", "string", None, "why the plane geometry is unreadable"),
            _n("slice_thickness_mm", "float64", "mm", "SliceThickness"),
            _n("gantry_tilt_deg", "float64", "deg", "GantryDetectorTilt"),
            _n("synchronization_technique", "string", None,
               "CardiacSynchronizationTechnique"),
            _n("trigger_time_ms", "float64", "ms", "TriggerTime"),
            _n("nominal_cardiac_phase_percent", "float64", "%",
               "NominalPercentageOfCardiacPhase"),
            _n("rr_interval_ms", "float64", "ms", "RR interval"),
            _n("heart_rate_bpm", "float64", "1/min", "heart rate"),
            _c("run_id", "string", None, "the run that read the header"),
            _c("indexed_at", "timestamp[us, UTC]", None, "when the header was read"),
            _c("schema_version", "int32", None, "SCHEMA_VERSION of the writer"),
        ),
    ),
    TableSpec(
        "series",
        "One row per series of each study input seen, with the selection decision and its "
        "reasons (written once per study_key and input_fingerprint).",
        ("study_key", "input_fingerprint", "series_id"), (),
        (
            _c("study_key", "string", None, "study key"),
            _c("input_fingerprint", "string", None,
               "SHA-256 of the study's sorted SOPInstanceUIDs with sizes and ETags/mtimes"),
            _c("series_id", "string", None, "series key, with /k when the series was split"),
            _c("series_key", "string", None, "series key"),
            _c("status", "string", None, "chosen, outranked or rejected"),
            _n("rank", "int32", None, "1 for the chosen series, 2, 3... for out-ranked"),
            _c("rules", "list<string>", None, "hard rules failed, or the soft rule lost on"),
            _c("reasons", "list<string>", None, "rule: detail for each entry of rules"),
            _c("flags", "list<string>", None, "soft rules not met (rule: detail)"),
            _c("modality", "string", None, "Modality"),
            _n("kernel", "string", None, "ConvolutionKernel"),
            _n("kvp", "float64", "kV", "tube voltage"),
            _c("contrast_agent_present", "bool", None, "a contrast agent is recorded"),
            _c("n_files", "int64", None, "objects in the series"),
            _c("n_slices", "int64", None, "2-D images in the series"),
            _n("slice_thickness_mm", "float64", "mm", "most common SliceThickness"),
            _n("slice_spacing_mm", "float64", "mm", "median distance between slices"),
            _c("z_extent_mm", "float64", "mm", "first to last slice centre"),
            _c("gated", "bool", None, "any ECG-gating evidence"),
            _n("cardiac_phase_percent", "float64", "%", "cardiac phase"),
            _c("qc_flags", "list<string>", None, "derived_*_uid, series_split"),
            _c("run_id", "string", None, "the run that wrote the row"),
            _c("schema_version", "int32", None, "SCHEMA_VERSION of the writer"),
        ),
    ),
    TableSpec(
        "study_scores",
        "One row per committed result (study, inputs, pipeline version, model, profile): "
        "the commit marker for that result's vessel_scores and lesions rows.",
        ("result_id",), (),
        (
            *_RESULT,
            _n("patient_key", "string", None,
               "PatientID, or its HMAC-SHA256 when a key is set (null when absent)"),
            _c("series_key", "string", None, "the series scored"),
            _c("input_fingerprint", "string", None, "see series.input_fingerprint"),
            _n("age_years", "float64", "years", "age at the study"),
            _n("sex", "string", None, "M, F or O"),
            _n("study_date", "date32", None, "StudyDate"),
            _c("kvp", "float64", "kV", "tube voltage used for the threshold (120 when absent)"),
            _n("manufacturer", "string", None, "Manufacturer"),
            _n("kernel", "string", None, "ConvolutionKernel"),
            _n("slice_thickness_mm", "float64", "mm", "SliceThickness"),
            _c("slice_spacing_mm", "float64", "mm", "distance between slice centres"),
            _c("pixel_spacing_mm", "float64", "mm", "in-plane pixel spacing (row)"),
            _c("n_slices", "int64", None, "slices scored"),
            _c("gated", "bool", None, "ECG-gating evidence"),
            _c("threshold_hu", "float64", "HU", "calcium threshold applied"),
            _c("mass_calibration_mg_cm3_per_hu", "float64", "mg/cm3/HU",
               "c_HA used for mass"),
            _n("segmentation_confidence", "float64", None,
               "mean top-class probability over calcium voxels"),
            _c("cac_agatston", "float64", "AU", "coronary (LM+LAD+LCX+RCA) Agatston"),
            _c("cac_volume_mm3", "float64", "mm3", "coronary calcified volume"),
            _c("cac_mass_mg", "float64", "mg", "coronary calcium mass"),
            _c("ac_agatston", "float64", "AU", "aortic (TAC+AVC) Agatston"),
            _c("total_agatston", "float64", "AU", "all labels"),
            _c("cac_category", "string", None, "0, 1-99, 100-399 or >=400 (paper Table 1)"),
            _c("cac_drs", "string", None, "CAC-DRS A/N class"),
            _c("n_vessels_with_cac", "int32", None, "coronary vessels with calcium"),
            _c("qc_flags", "list<string>", None, "geometry and header QC flags"),
            _c("score_flags", "list<string>", None, "scoring flags (code: detail)"),
            _c("attempt", "int32", None, "1 + earlier failed attempts of this result"),
            _c("scored_at", "timestamp[us, UTC]", None, "when the study was scored"),
            *_PROVENANCE,
        ),
    ),
    TableSpec(
        "vessel_scores",
        "One row per result and canonical label (zero rows included), plus the CAC, AC "
        "and TOTAL group rows (sums of their members).",
        ("result_id", "name"), (),
        (
            *_RESULT,
            _n("label", "int32", None, "label value (null for a group row)"),
            _c("name", "string", None, "LM, LAD, LCX, RCA, TAC, AVC, MAC, CAC, AC, TOTAL"),
            _c("is_group", "bool", None, "a group row"),
            *_SCORES,
            _c("area_mm2", "float64", "mm2", "calcified area entering the Agatston sum"),
            _c("density_score", "float64", None, "area-weighted mean density weight"),
            _c("n_lesions", "int64", None, "3-D lesions"),
            _c("n_voxels", "int64", None, "calcium voxels"),
            _n("peak_hu", "float64", "HU", "highest HU (null without calcium)"),
            _n("mean_hu", "float64", "HU", "mean HU of calcium voxels"),
            *_PROVENANCE,
        ),
    ),
    TableSpec(
        "lesions",
        "One row per 3-D calcified lesion of a result.",
        ("result_id", "lesion_id"), (),
        (
            *_RESULT,
            _c("lesion_id", "int32", None, "lesion number within the result"),
            _c("label", "int32", None, "label value"),
            _c("name", "string", None, "label name"),
            *_SCORES,
            _c("n_voxels", "int64", None, "voxels"),
            _c("peak_hu", "float64", "HU", "highest HU"),
            _c("mean_hu", "float64", "HU", "mean HU"),
            _c("centroid_z", "float64", "voxels", "centroid slice index"),
            _c("centroid_y", "float64", "voxels", "centroid row index"),
            _c("centroid_x", "float64", "voxels", "centroid column index"),
            _n("centroid_lps_x_mm", "float64", "mm", "centroid, patient LPS x"),
            _n("centroid_lps_y_mm", "float64", "mm", "centroid, patient LPS y"),
            _n("centroid_lps_z_mm", "float64", "mm", "centroid, patient LPS z"),
            _c("first_slice", "int32", None, "first slice index"),
            _c("last_slice", "int32", None, "last slice index"),
            _c("bbox_y_min", "int32", None, "bounding box, first row (inclusive)"),
            _c("bbox_y_max", "int32", None, "bounding box, last row (inclusive)"),
            _c("bbox_x_min", "int32", None, "bounding box, first column (inclusive)"),
            _c("bbox_x_max", "int32", None, "bounding box, last column (inclusive)"),
            *_PROVENANCE,
        ),
    ),
    TableSpec(
        "failures",
        "One row per failed attempt at a result, with a code and a message free of paths.",
        ("result_id", "attempt"), (),
        (
            *_RESULT,
            _c("input_fingerprint", "string", None, "see series.input_fingerprint"),
            _c("stage", "string", None, "plan or score"),
            _c("code", "string", None, "machine-readable reason (e.g. no_eligible_series)"),
            _c("message", "string", None, "what went wrong (object paths removed)"),
            _n("attribute", "string", None, "the DICOM attribute at fault, if any"),
            _n("fix", "string", None, "what to do about it"),
            _c("attempt", "int32", None, "1 for the first failure of this result"),
            _c("failed_at", "timestamp[us, UTC]", None, "when it failed"),
            *_PROVENANCE,
        ),
    ),
    TableSpec(
        "runs",
        "One row per run: parameters (no secrets), versions, counts and timings.",
        ("run_id",), (),
        (
            _c("run_id", "string", None, "run id"),
            _c("cohort", "string", None, "cohort name"),
            _c("mode", "string", None, "score, rescore or plan (plan only, nothing scored)"),
            _c("started_at", "timestamp[us, UTC]", None, "start"),
            _c("finished_at", "timestamp[us, UTC]", None, "end"),
            _c("parameters_json", "string", None, "parameters, without secrets; source "
               "and out as sha256:<hex> of their text (paths may hold names)"),
            _c("versions_json", "string", None, "package versions"),
            _c("pseudonymised", "bool", None, "keys are HMACs under a secret"),
            _c("objects_listed", "int64", None, "objects found under the source"),
            _c("headers_read", "int64", None, "headers read (new or changed objects)"),
            _c("studies_found", "int64", None, "studies in the source"),
            _c("studies_planned", "int64", None, "studies sent to scoring"),
            _c("studies_skipped", "int64", None, "already committed (or failed, unchanged)"),
            _c("studies_scored", "int64", None, "results committed"),
            _c("studies_failed", "int64", None, "failures written"),
            _c("index_s", "float64", "s", "index stage time"),
            _c("plan_s", "float64", "s", "plan stage time"),
            _c("score_s", "float64", "s", "score and commit time"),
            _c("total_s", "float64", "s", "run time"),
            _c("schema_version", "int32", None, "SCHEMA_VERSION of the writer"),
        ),
    ),
)}

#: Tables whose rows belong to one result and are visible only once study_scores has it.
RESULT_TABLES = ("lesions", "vessel_scores")


def arrow_type(spelled: str) -> pa.DataType:
    import pyarrow as pa

    if spelled.startswith("list<") and spelled.endswith(">"):
        return pa.list_(arrow_type(spelled[5:-1]))
    if spelled.startswith("timestamp["):
        return pa.timestamp("us", tz="UTC")
    return {"int32": pa.int32(), "int64": pa.int64(), "float64": pa.float64(),
            "string": pa.string(), "bool": pa.bool_(), "date32": pa.date32()}[spelled]


def arrow_schema(name: str) -> pa.Schema:
    """The Arrow schema of a table, with units and descriptions as field metadata."""
    import pyarrow as pa

    spec = TABLES[name]
    fields = [pa.field(c.name, arrow_type(c.type), nullable=c.nullable,
                       metadata={"unit": c.unit or "", "description": c.description})
              for c in spec.columns]
    return pa.schema(fields, metadata={"calcpipe.table": name,
                                       "calcpipe.schema_version": str(SCHEMA_VERSION)})


def to_table(name: str, rows: list[dict[str, Any]]) -> pa.Table:
    """Rows (dicts keyed by column name) as a typed table; missing nullable keys are null."""
    import pyarrow as pa

    schema = arrow_schema(name)
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.table(columns, schema=schema)
