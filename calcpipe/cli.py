"""The ``calcpipe`` command line. Heavy imports happen inside commands so ``--help`` is fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from calcpipe.dicom import CTVolume

app = typer.Typer(
    name="calcpipe",
    help="Vessel-specific coronary and aortic calcium scoring for CT cohorts.",
    no_args_is_help=True,
    add_completion=False,
)


@app.command()
def version() -> None:
    """Print the calcpipe version."""
    from calcpipe import __version__

    typer.echo(__version__)


@app.command()
def inspect(
    path: Path = typer.Argument(..., help="A series folder, or one DICOM file."),
    series_uid: str | None = typer.Option(None, help="Series to load when several are present."),
) -> None:
    """Load a CT series and show its geometry, metadata and QC flags, or why it is refused."""
    from rich.console import Console
    from rich.markup import escape

    from calcpipe.dicom import DicomError, load_volume

    console = Console()
    try:
        volume = load_volume(path, series_uid=series_uid)
    except DicomError as e:
        console.print(f"[bold red]refused[/] {escape(f'[{e.code}] {e.message}')}")
        if e.fix:
            console.print(f"[yellow]fix:[/] {escape(e.fix)}")
        raise typer.Exit(code=2) from e
    console.print(volume_table(volume))


def volume_table(volume: CTVolume) -> object:
    """A rich table summarising a loaded volume (no identifiers beyond UIDs)."""
    from rich.table import Table

    meta = volume.metadata
    table = Table(title="CT volume", show_header=False)
    rows = [
        ("study UID", volume.study_uid),
        ("series UID", volume.series_uid),
        ("shape (Z, Y, X)", " x ".join(map(str, volume.shape))),
        ("spacing (z, y, x) mm", ", ".join(f"{s:.4g}" for s in volume.spacing_mm)),
        ("slice thickness mm", f"{volume.slice_thickness_mm}"),
        ("HU range", f"{int(volume.hu.min())} .. {int(volume.hu.max())}"),
        ("kVp / mAs", f"{meta.kvp} / {meta.exposure_mas}"),
        ("scanner", f"{meta.manufacturer} {meta.manufacturer_model}"),
        ("kernel", f"{meta.kernel}"),
        ("image type", "\\".join(meta.image_type)),
        ("body part", f"{meta.body_part}"),
        ("age / sex", f"{meta.age_years} / {meta.sex}"),
        ("ECG gated", f"{meta.gating.gated}"),
        ("QC flags", "\n".join(f"{f.code}: {f.detail}" for f in volume.qc_flags) or "none"),
    ]
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command()
def synth(
    out_dir: Path = typer.Argument(..., help="Folder for the cohort (DICOM + _truth/)."),
    studies: int = typer.Option(10, min=1, help="Number of studies."),
    seed: int = typer.Option(0, help="Cohort seed: the same seed gives the same bytes."),
    matrix: int = typer.Option(512, min=32, help="Image matrix (128 or 256 for fast tests)."),
    workers: int | None = typer.Option(None, min=1, help="Processes (default: all cores)."),
    randomise: bool = typer.Option(False, help="Domain randomisation for training data."),
    preview: Path | None = typer.Option(None, help="Also write a PNG montage of study 0."),
    localizer: bool = typer.Option(False, help="Add a localizer series."),
    contrast_series: bool = typer.Option(False, help="Add a contrast-enhanced series."),
    sharp_series: bool = typer.Option(False, help="Add a sharp-kernel reconstruction."),
    second_phase: bool = typer.Option(False, help="Add a 40 % R-R phase series."),
    missing_slice: bool = typer.Option(False, help="Drop one slice of the scoring series."),
    duplicate_slice: bool = typer.Option(False, help="Duplicate one slice file."),
    shuffle: bool = typer.Option(False, help="Shuffle file names."),
    jpeg2000: bool = typer.Option(False, help="Write JPEG 2000 lossless pixel data."),
    corrupt_file: bool = typer.Option(False, help="Truncate one file."),
) -> None:
    """Write a synthetic cohort: DICOM studies with exact calcium truth."""
    from rich.console import Console

    from calcpipe.synthetic import Randomisation, StudyOptions, sample_spec, write_cohort
    from calcpipe.synthetic import preview as write_preview

    options = StudyOptions(
        localizer=localizer, contrast_series=contrast_series, sharp_series=sharp_series,
        second_phase=second_phase, missing_slice=missing_slice,
        duplicate_slice=duplicate_slice, shuffled_names=shuffle,
        transfer_syntax="1.2.840.10008.1.2.4.90" if jpeg2000 else None,
        corrupt_file=corrupt_file)
    randomisation = Randomisation.training() if randomise else None
    console = Console()
    write_cohort(out_dir, studies=studies, seed=seed, matrix=matrix, workers=workers,
                 options=options, randomisation=randomisation)
    console.print(f"wrote {studies} studies and their truth to {out_dir}")
    if preview is not None:
        spec = sample_spec(seed, 0, matrix=matrix, randomisation=randomisation)
        console.print(f"preview: {write_preview(preview, spec)}")


@app.command("qrm-report")
def qrm_report_command(
    reference: Path = typer.Option(
        Path("../shared/data/qrm_phantom_canon/reference.csv"),
        help="reference.csv of the real QRM scan."),
    seed: int = typer.Option(0, help="Noise seed of the replica."),
) -> None:
    """Score the digital QRM replica and compare it with the real scan, insert by insert."""
    from calcpipe.synthetic.qrm import format_report, qrm_report

    if not reference.is_file():
        typer.echo(f"{reference} not found: the real scan's reference scores are needed")
        raise typer.Exit(code=2)
    typer.echo(format_report(qrm_report(reference, seed)))


@app.command()
def profiles() -> None:
    """List the scoring profiles, with one example volume scored under each."""
    from calcpipe.scoring.comparison import comparison_table

    typer.echo(comparison_table(), nl=False)


@app.command()
def demo(
    out: Path = typer.Argument(Path("demo_out"), help="Folder for the generated series."),
    shared_data: Path = typer.Option(
        Path("../shared/data"), help="Real test scans, shown when the folder exists."),
) -> None:
    """Run what is built end to end: write CT series, load them back, inspect real scans."""
    from rich.console import Console

    from calcpipe.demo import run_demo

    run_demo(out, shared_data, Console())


if __name__ == "__main__":
    app()
