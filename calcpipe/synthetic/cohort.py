"""Write synthetic studies as DICOM with their truth: ``calcpipe synth``.

Layout (DESIGN.md): ``OUT/<study folder>/<series folder>/IM*.dcm``;
``OUT/_truth/labels/<study_key>.nii.gz``; ``OUT/_truth/scores.parquet`` (vessel_scores
columns plus ``series_uid``); ``OUT/_truth/studies.parquet`` (age, sex, planned category).
Deterministic by seed: no wall-clock values, fixed UIDs, gzip without timestamps.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calcpipe.dicom.geometry import axial_affine
from calcpipe.dicom.writer import stable_uid, write_series
from calcpipe.scoring import score
from calcpipe.synthetic.render import RenderedStudy, render_study
from calcpipe.synthetic.spec import Randomisation, StudySpec, sample_spec
from calcpipe.synthetic.truth import nifti_bytes


@dataclass(frozen=True)
class StudyOptions:
    """Extra content for pipeline tests (all off by default)."""

    localizer: bool = False  # a one-slice scout series
    contrast_series: bool = False  # a contrast-enhanced series of the same anatomy
    sharp_series: bool = False  # a sharp-kernel reconstruction
    second_phase: bool = False  # the same anatomy at 40 % of the R-R interval
    missing_slice: bool = False
    duplicate_slice: bool = False
    shuffled_names: bool = False
    transfer_syntax: str | None = None  # e.g. JPEG 2000 lossless
    corrupt_file: bool = False


def _dicom_attributes(spec: StudySpec, kernel: str, phase: float) -> dict[str, Any]:
    scanner = spec.scanner
    return {
        "PatientAge": f"{spec.age_years:03d}Y", "PatientSex": spec.sex,
        "Manufacturer": scanner.manufacturer, "ManufacturerModelName": scanner.model,
        "ConvolutionKernel": kernel, "Exposure": str(round(scanner.exposure_mas)),
        "ReconstructionDiameter": f"{scanner.pixel_mm * scanner.matrix:.1f}",
        "CardiacSynchronizationTechnique": "PROSPECTIVE",
        "NominalPercentageOfCardiacPhase": float(phase),
        "SeriesDescription": f"CaSc {scanner.slice_thickness_mm:g}mm {kernel}",
        "AccessionNumber": f"SYN{spec.index:07d}",
    }


def write_study(spec: StudySpec, out_dir: str | Path,
                options: StudyOptions = StudyOptions()) -> list[dict[str, Any]]:
    """Render one study, write its DICOM series and truth label map; return truth rows."""
    out = Path(out_dir)
    rendered = render_study(spec)
    study_uid = stable_uid("study", spec.seed)
    series_uid = stable_uid("series", spec.seed, "casc")
    folder = out / f"study_{spec.index:05d}"
    scanner = spec.scanner
    common: dict[str, Any] = {
        "study_uid": study_uid, "patient_id": f"SYN-{spec.index:05d}", "kvp": scanner.kvp,
        "slice_thickness_mm": scanner.slice_thickness_mm}
    main: dict[str, Any] = dict(common)
    if options.transfer_syntax:
        main["transfer_syntax"] = options.transfer_syntax
    files = write_series(
        folder / "series_casc", rendered.hu, spacing_mm=rendered.spacing_mm,
        origin_mm=rendered.origin_mm, series_uid=series_uid,
        extra=_dicom_attributes(spec, scanner.kernel, scanner.cardiac_phase_percent), **main)
    _apply_file_options(files, options, spec)
    _write_extra_series(rendered, spec, folder, common, options)

    labels_dir = out / "_truth" / "labels"
    labels_dir.mkdir(parents=True, exist_ok=True)
    (labels_dir / f"{study_uid}.nii.gz").write_bytes(nifti_bytes(rendered.labels,
                                                                 axial_affine(
        rendered.origin_mm, rendered.spacing_mm, rendered.hu.shape[0])))
    result = score(rendered.hu, rendered.labels, rendered.spacing_mm, kvp=scanner.kvp,
                   mass_calibration=rendered.c_ha)
    rows = []
    for row in result.rows:
        rows.append({"study_key": study_uid, "series_uid": series_uid, **row.__dict__,
                     "profile": result.profile, "kvp": scanner.kvp,
                     "age_years": spec.age_years, "sex": spec.sex,
                     "planned_category": spec.cac_category})
    return rows


def _apply_file_options(files: list[Path], options: StudyOptions, spec: StudySpec) -> None:
    middle = len(files) // 2
    if options.duplicate_slice:
        shutil.copy(files[middle], files[middle].with_name("IM_duplicate.dcm"))
    if options.missing_slice:
        files[middle + 1].unlink()
    if options.corrupt_file:
        data = files[middle - 1].read_bytes()
        files[middle - 1].write_bytes(data[: len(data) // 3])
    if options.shuffled_names:
        order = np.random.default_rng(spec.seed).permutation(len(files))
        survivors = [f for f in files if f.exists()]
        temporary = [f.rename(f.with_name(f"tmp_{i}.dcm")) for i, f in enumerate(survivors)]
        for i, f in enumerate(temporary):
            f.rename(f.with_name(f"X{order[i]:04d}.dcm"))


def _write_extra_series(rendered: RenderedStudy, spec: StudySpec, folder: Path,
                        common: dict[str, Any], options: StudyOptions) -> None:
    scanner = spec.scanner
    rng = np.random.default_rng(spec.seed + 1)
    if options.localizer:
        scout = rendered.hu[:, rendered.hu.shape[1] // 2, :][None, ::-1, :]
        write_series(folder / "series_localizer", np.ascontiguousarray(scout),
                     spacing_mm=(1.0, rendered.spacing_mm[0], rendered.spacing_mm[2]),
                     orientation=(1, 0, 0, 0, 0, -1), origin_mm=rendered.origin_mm,
                     series_uid=stable_uid("series", spec.seed, "scout"),
                     extra={"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"],
                            "SeriesDescription": "Topogram"}, **common)
    if options.contrast_series:
        enhanced = rendered.hu.astype(np.int32)
        blood = (enhanced > 20) & (enhanced < 70)
        enhanced[blood] += 300
        write_series(folder / "series_cta", np.clip(enhanced, -1024, 3071),
                     spacing_mm=rendered.spacing_mm, origin_mm=rendered.origin_mm,
                     series_uid=stable_uid("series", spec.seed, "cta"),
                     extra={**_dicom_attributes(spec, scanner.kernel, 75.0),
                            "ContrastBolusAgent": "Iopromide", "SeriesDescription": "CTA"},
                     **common)
    if options.sharp_series:
        noise = rng.normal(0, 25, rendered.hu.shape)
        sharp = np.clip(rendered.hu + noise, -1024, 3071).astype(np.int16)
        write_series(folder / "series_sharp", sharp, spacing_mm=rendered.spacing_mm,
                     origin_mm=rendered.origin_mm,
                     series_uid=stable_uid("series", spec.seed, "sharp"),
                     extra=_dicom_attributes(spec, "B70f", scanner.cardiac_phase_percent),
                     **common)
    if options.second_phase:
        shifted = np.roll(rendered.hu, 1, axis=2)
        write_series(folder / "series_phase40", shifted, spacing_mm=rendered.spacing_mm,
                     origin_mm=rendered.origin_mm,
                     series_uid=stable_uid("series", spec.seed, "phase40"),
                     extra=_dicom_attributes(spec, scanner.kernel, 40.0), **common)


def _write_one(args: tuple[StudySpec, str, StudyOptions]) -> list[dict[str, Any]]:
    spec, out, options = args
    return write_study(spec, out, options)


def write_cohort(out_dir: str | Path, *, studies: int, seed: int, matrix: int = 512,
                 workers: int | None = None, options: StudyOptions = StudyOptions(),
                 randomisation: Randomisation | None = None) -> Path:
    """Write ``studies`` studies and the cohort's truth tables into an empty or new folder
    (another cohort's files there would mix with this one's); return the folder."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} is not an empty folder: a cohort written into it "
                              "would mix with what is there; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)
    specs = [sample_spec(seed, i, matrix=matrix, randomisation=randomisation)
             for i in range(studies)]
    jobs = [(spec, str(out), options) for spec in specs]
    n_workers = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    rows: list[dict[str, Any]] = []
    if n_workers == 1:
        for job in jobs:
            rows += _write_one(job)
    else:
        with ProcessPoolExecutor(max_workers=n_workers) as pool:
            for study_rows in pool.map(_write_one, jobs):
                rows += study_rows
    truth = out / "_truth"
    truth.mkdir(exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), truth / "scores.parquet")
    studies_rows = [{"study_key": r["study_key"], "age_years": r["age_years"], "sex": r["sex"],
                     "planned_category": r["planned_category"]}
                    for r in rows if r["name"] == "TOTAL"]
    pq.write_table(pa.Table.from_pylist(studies_rows), truth / "studies.parquet")
    return out


def preview(out_png: str | Path, spec: StudySpec, slices: Sequence[int] | None = None) -> Path:
    """A PNG montage of a study's slices with its truth overlaid (DESIGN.md colours)."""
    from calcpipe.viz import montage, write_png

    rendered = render_study(spec)
    if slices is None:
        calcified = np.flatnonzero(rendered.labels.any(axis=(1, 2)))
        pool = calcified if calcified.size else np.arange(rendered.hu.shape[0])
        slices = [int(k) for k in pool[np.linspace(0, len(pool) - 1, 8).astype(int)]]
    return write_png(out_png, montage(rendered.hu, rendered.labels, list(slices)))
