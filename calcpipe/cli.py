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
