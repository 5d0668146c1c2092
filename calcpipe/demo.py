"""The README demo: everything that is built so far, end to end, in a few seconds."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from calcpipe.dicom import DicomError, load_volume
from calcpipe.dicom.writer import write_series

REAL_SCANS = (
    "qrm_phantom_canon/dicom",
    "chest_ct_lung_pet_ct_dx/study_A0002/series_B40f",
    "totalseg_ct_jpeg2000/dicom",
    "head_ct_gantry_tilt",
)


def demo_volume(shape: tuple[int, int, int] = (12, 128, 128)) -> np.ndarray:
    """A small chest-like slab: air, a water body, a bone disc and two calcified spots."""
    _z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    cy, cx = shape[1] / 2, shape[2] / 2
    hu = np.full(shape, -1000, dtype=np.int16)
    body = ((y - cy) / (0.45 * shape[1])) ** 2 + ((x - cx) / (0.48 * shape[2])) ** 2 <= 1
    hu[np.broadcast_to(body, shape)] = 40
    spine = (y - 0.8 * shape[1]) ** 2 + (x - cx) ** 2 <= (0.06 * shape[1]) ** 2
    hu[np.broadcast_to(spine, shape)] = 700
    hu[5:7, 50:53, 60:63] = 420  # a dense plaque
    hu[6, 70:72, 40:42] = 180  # a faint one
    return hu


def synthetic_part(out: Path, console: Console) -> None:
    """Synthetic cohort -> discovery and selection -> load -> score, against the truth.

    The cohort's truth label maps stand in for the segmentation network (the shipped model
    is trained on synthetic data only), so the scores can be checked against the truth.
    """
    import pyarrow.parquet as pq

    from calcpipe.ingest import discover, load_study
    from calcpipe.scoring import score
    from calcpipe.synthetic import StudyOptions, write_cohort
    from calcpipe.synthetic.truth import read_labels

    cohort = write_cohort(out / "cohort", studies=2, seed=2026, matrix=256,
                          options=StudyOptions(contrast_series=True, sharp_series=True))
    truth = {(r["study_key"], r["name"]): r["agatston"]
             for r in pq.read_table(cohort / "_truth" / "scores.parquet").to_pylist()}
    table = Table(title="Synthetic cohort: selection and scores (truth labels as segmenter)")
    for column in ("study", "series found", "chosen", "CAC", "truth CAC", "AC", "truth AC"):
        table.add_column(column)
    for choice in discover(cohort).studies:
        key = choice.study.study_key
        volume = load_study(cohort, study_key=key)
        labels, _ = read_labels(cohort / "_truth" / "labels" / f"{key}.nii.gz")
        result = score(volume.hu, labels, volume.spacing_mm, kvp=volume.metadata.kvp or 120)
        chosen = choice.chosen
        table.add_row(key[-12:], str(len(choice.study.series)),
                      chosen.summary.series_description if chosen else "none",
                      f"{result.row('CAC').agatston:.1f}", f"{truth[key, 'CAC']:.1f}",
                      f"{result.row('AC').agatston:.1f}", f"{truth[key, 'AC']:.1f}")
    console.print(table)


def run_demo(out: Path, shared_data: Path, console: Console) -> None:
    from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

    truth = demo_volume()
    table = Table(title="Synthetic series written and read back")
    for column in ("transfer syntax", "shape", "spacing mm", "HU identical", "load s"):
        table.add_column(column)
    for syntax in (ExplicitVRLittleEndian, RLELossless, JPEG2000Lossless):
        folder = out / f"series_{syntax.name.split()[0].lower()}"
        write_series(folder, truth, spacing_mm=(3.0, 0.7, 0.7), origin_mm=(-45, -45, -200),
                     transfer_syntax=syntax)
        start = time.perf_counter()
        volume = load_volume(folder)
        elapsed = time.perf_counter() - start
        table.add_row(syntax.name, str(volume.shape), str(volume.spacing_mm),
                      str(bool(np.array_equal(volume.hu, truth))), f"{elapsed:.3f}")
    console.print(table)
    synthetic_part(out, console)

    real = Table(title=f"Real scans under {shared_data}")
    for column in ("scan", "result", "details"):
        real.add_column(column)
    if not shared_data.is_dir():
        console.print(f"[yellow]{shared_data} is absent: real-scan part skipped[/]")
        return
    for name in REAL_SCANS:
        try:
            volume = load_volume(shared_data / name)
        except DicomError as e:
            real.add_row(name, f"refused ({e.code})", escape(e.message[:200]))
            continue
        flags = ", ".join(f.code for f in volume.qc_flags) or "no flags"
        spacing = tuple(round(s, 3) for s in volume.spacing_mm)
        real.add_row(name, "loaded", f"{volume.shape} spacing {spacing} "
                     f"HU {volume.hu.min()}..{volume.hu.max()}; {flags}")
    console.print(real)
    console.print("Not built yet: the Prefect/Dask cohort pipeline (calcpipe score), "
                  "evaluation and deployment; the shipped U-Net is synthetic-only (see README).")
