"""The ``calcpipe`` command line. Heavy imports happen inside commands so ``--help`` is fast."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from calcpipe.dicom import CTVolume

app = typer.Typer(
    name="calcpipe",
    help="Vessel-specific coronary and aortic calcium scoring for CT cohorts.",
    no_args_is_help=True,
    add_completion=False,
)


def main() -> None:
    """The ``calcpipe`` console script: the commands, with any error they end in printed as
    one line and exit status 1 (``CALCPIPE_DEBUG=1`` shows the traceback instead)."""
    import os
    import sys

    try:
        app()
    except Exception as e:
        if os.environ.get("CALCPIPE_DEBUG"):
            raise
        sys.stderr.write(f"calcpipe: error: {one_line(e)}\n"
                         "(CALCPIPE_DEBUG=1 shows the traceback)\n")
        sys.exit(1)


def one_line(e: BaseException) -> str:
    """An exception as one line a user can act on."""
    from pydantic import ValidationError

    from calcpipe.errors import CalcpipeError

    if isinstance(e, ValidationError):
        return "; ".join(f"{'.'.join(str(x) for x in err['loc']) or 'value'}: "
                         f"{err['msg'].removeprefix('Value error, ')}" for err in e.errors())
    if isinstance(e, CalcpipeError):
        return f"[{e.code}] {e.message}" + (f" (fix: {e.fix})" if e.fix else "")
    text = " ".join(str(e).split()) or "(no message)"
    return f"{type(e).__name__}: {text}"


@app.command()
def version() -> None:
    """Print the calcpipe version."""
    from calcpipe import __version__

    typer.echo(__version__)


@app.command()
def inspect(
    path: str = typer.Argument(..., help="A study or series folder, a DICOM file, or an "
                               "fsspec URL (s3://bucket/prefix)."),
    series_uid: str | None = typer.Option(None, help="Load this series regardless of the "
                                          "selection rules (local paths)."),
    json_output: bool = typer.Option(False, "--json", help="Print the series found and the "
                                     "decisions as JSON."),
    load: bool = typer.Option(True, "--load/--no-load", help="Also load the chosen series "
                              "(one study) and show its volume."),
) -> None:
    """Show the series found under PATH, the one chosen per study, and every reason."""
    import json

    from rich.console import Console
    from rich.markup import escape

    from calcpipe.dicom import DicomError, load_volume
    from calcpipe.ingest.report import discovery_report
    from calcpipe.ingest.study import discover, load_study

    console = Console()
    if series_uid is not None:
        try:
            volume = load_volume(path, series_uid=series_uid)
        except DicomError as e:
            _refused(console, e)
            raise typer.Exit(code=2) from e
        console.print(volume_table(volume))
        return
    report = discovery_report(discover(path))
    if json_output:
        typer.echo(json.dumps(report, indent=2, default=str))
    else:
        for study in report["studies"]:
            console.print(selection_table(study))
            for entry in study["series"]:
                for line in entry["reasons"] + entry["flags"]:
                    console.print(f"  {escape(entry['series_id'])} {entry['decision']}: "
                                  f"{escape(line)}", soft_wrap=True)
        if report["skipped"]:
            console.print(f"skipped files: {report['skipped']}")
    chosen = [s for s in report["studies"] if s["chosen"] is not None]
    if not chosen:
        if not json_output:
            console.print("[bold red]refused[/] no series can be scored" if report["studies"]
                          else "[bold red]refused[/] no DICOM files found")
        raise typer.Exit(code=2)
    if load and not json_output and len(report["studies"]) == 1:
        try:
            volume = load_study(path)
        except DicomError as e:
            _refused(console, e)
            raise typer.Exit(code=2) from e
        console.print(volume_table(volume))


def _refused(console: Any, e: Any) -> None:
    from rich.markup import escape

    console.print(f"[bold red]refused[/] {escape(f'[{e.code}] {e.message}')}")
    if e.fix:
        console.print(f"[yellow]fix:[/] {escape(e.fix)}")


def selection_table(study: dict[str, Any]) -> object:
    """A rich table of one study's series and decisions (from ``discovery_report``)."""
    from rich.table import Table

    table = Table(title=f"study {study['study_key']}")
    for column in ("series UID", "description", "files", "kernel", "thickness mm",
                   "spacing mm", "image type", "decision", "rules (reasons below)"):
        table.add_column(column, overflow="fold")
    for e in study["series"]:
        decision = e["decision"] + (f" (rank {e['rank']})" if e["rank"] else "")
        # rule names here; the full reasons are printed below the table
        reasons = e["rules"] if e["decision"] != "chosen" else [
            f.split(":")[0] for f in e["flags"]]
        table.add_row(
            e["series_id"], e["series_description"] or "", str(e["n_files"]),
            e["kernel"] or "", _mm(e["slice_thickness_mm"]), _mm(e["slice_spacing_mm"]),
            "\\".join(e["image_type"]), decision, "\n".join(reasons) or "-")
    return table


def _mm(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


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
def train(
    cohort: Path = typer.Argument(..., help="Cohort folder with _truth/labels/*.nii.gz."),
    out: Path = typer.Option(Path("model.pt"), help="Checkpoint to write."),
    steps: int = typer.Option(4000, min=1, help="Maximum optimisation steps."),
    minutes: float = typer.Option(60.0, help="Wall-clock limit."),
    base: int = typer.Option(8, help="Filters in the first block (the paper: 16)."),
    depth: int = typer.Option(4, help="Down-sampling blocks."),
    context: int = typer.Option(1, help="Neighbouring slices on each side as input."),
    spacing: float = typer.Option(1.0, help="Model pixel spacing (mm)."),
    patch: int = typer.Option(160, help="Training patch size (pixels)."),
    batch: int = typer.Option(32, help="Patches per step."),
    device: str = typer.Option("cpu", help="cpu or cuda."),
    seed: int = typer.Option(0, help="Split and training seed."),
    resume: bool = typer.Option(False, help="Resume from OUT's .resume.pt."),
    annotations: Path = typer.Option(
        None, help="Annotations to import first as the cohort's truth (see "
        "calcpipe.annotations.import_cohort)."),
    annotation_format: str = typer.Option(
        "osirix", help="Format of --annotations: osirix, colour, seg or nifti."),
    flow: bool = typer.Option(
        False, "--flow", help="Run as the Prefect flow calcpipe.flows.train_model."),
) -> None:
    """Train the U-Net on a labelled cohort (patient split 60/20/20) and report test accuracy."""
    import json

    if annotations is not None:
        from calcpipe.annotations import import_cohort

        n = import_cohort(cohort, annotations, annotation_format, log=typer.echo)
        typer.echo(f"imported {annotation_format} annotations of {n} studies")

    from calcpipe.models.accuracy import format_summary
    from calcpipe.models.train import train_config, train_from_cohort

    if flow:
        import os

        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        from calcpipe.flows.train_model import train_model

        result = train_model(str(cohort), str(out), steps=steps, minutes=minutes, base=base,
                             depth=depth, context=context, spacing=spacing, patch=patch,
                             batch=batch, device=device, seed=seed, resume=resume)
    else:
        config = train_config(steps=steps, minutes=minutes, base=base, depth=depth,
                              context=context, spacing=spacing, patch=patch, batch=batch,
                              seed=seed)
        result = train_from_cohort(cohort, out, config, device=device, resume=resume,
                                   log=typer.echo)
    typer.echo(format_summary(result["test"]))
    out.with_suffix(".json").write_text(json.dumps(result, indent=1, default=str))


@app.command()
def score(
    source: str = typer.Argument(..., help="Cohort folder or fsspec URL (s3://bucket/prefix)."),
    out: str = typer.Option(..., "--out", help="Output folder or URL (tables, masks, report)."),
    model: str = typer.Option("default", help="Model: 'default' (shipped) or a checkpoint."),
    profile: str = typer.Option("standard", help="Scoring profile (calcpipe profiles)."),
    workers: int = typer.Option(2, min=1, help="Dask workers of the local cluster."),
    cluster: str = typer.Option(
        "local", help="'local' (processes), 'local-threads' or a scheduler address."),
    cohort: str = typer.Option("cohort", help="Cohort name recorded in the runs table."),
    shard_size: int = typer.Option(200, min=1, help="Studies per shard (one Prefect task)."),
    in_flight: int | None = typer.Option(
        None, min=1, help="Studies outstanding on the cluster (default: twice its worker "
        "threads, at least 8)."),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    precision: str = typer.Option(
        "auto", help="auto (bf16 where the GPU or CPU computes it natively, else fp32), fp32 "
        "or bf16."),
    rescore: bool = typer.Option(
        False, help="Re-score from the stored masks under --profile (no network run)."),
    retry_failed: bool = typer.Option(
        False, help="Try again the studies that failed with unchanged inputs."),
    endpoint_url: str = typer.Option(
        None, help="S3-compatible endpoint (credentials from the environment)."),
    secret_block: str = typer.Option(
        None, help="Prefect Secret block holding the pseudonymisation key "
        "(default: the CALCPIPE_PSEUDONYM_KEY environment variable)."),
    single_process: bool = typer.Option(
        False, help="Run the stages in this process, without Prefect or Dask."),
    plan_only: bool = typer.Option(
        False, help="Index and plan only: report what would be scored, score nothing."),
) -> None:
    """Score every study of a cohort: discover, select, segment, score, commit tables."""
    import os

    from pydantic import ValidationError
    from rich.console import Console

    from calcpipe.pipeline.params import ScoreParams

    console = Console()
    options = _s3_options(endpoint_url) or {}
    try:
        params = ScoreParams(
            source=source, out=out, cohort=cohort, model=model, profile=profile,
            shard_size=shard_size, in_flight=in_flight, cluster=cluster, workers=workers,
            device=device, precision=precision, rescore=rescore, retry_failed=retry_failed,
            plan_only=plan_only, storage_options=options)
    except ValidationError as e:
        from rich.markup import escape

        console.print(f"[red]invalid parameters:[/red] {escape(one_line(e))}",
                      highlight=False)
        raise typer.Exit(2) from None
    if single_process:
        from calcpipe.pipeline import run_single_process
        from calcpipe.pipeline.params import secret_from_env

        row = run_single_process(params, secret_from_env())
    else:
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
        from calcpipe.flows.score_cohort import score_cohort

        row = score_cohort(params, secret_block=secret_block)
    from calcpipe.pipeline.report import print_summary

    print_summary(console, params, row)
    if row["studies_failed"]:
        raise typer.Exit(1)


@app.command()
def query(
    sql: str = typer.Argument(..., help="DuckDB SQL over the tables and views."),
    out: str = typer.Option("demo_out/results", "--out", help="Output folder of a run."),
    endpoint_url: str = typer.Option(None, help="S3-compatible endpoint."),
    csv: bool = typer.Option(False, help="Print CSV instead of a table."),
) -> None:
    """Run SQL over a run's tables and views (study_scores, latest_vessel_scores, ...)."""
    import sys

    from rich.console import Console
    from rich.table import Table

    from calcpipe.catalog import open_catalog

    options = _s3_options(endpoint_url)
    relation = open_catalog(out, options).query(sql)
    if relation is None:
        return
    if csv:
        sys.stdout.write(_csv(relation.columns, relation.fetchall()))
        return
    table = Table(*relation.columns)
    for row in relation.fetchall():
        table.add_row(*(_cell(v) for v in row))
    Console().print(table)


def _s3_options(endpoint_url: str | None) -> dict[str, Any] | None:
    """fsspec options for an S3-compatible endpoint (credentials from the environment)."""
    return {"client_kwargs": {"endpoint_url": endpoint_url}} if endpoint_url else None


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def _csv(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    import csv as csv_module
    import io

    buffer = io.StringIO()
    writer = csv_module.writer(buffer)
    writer.writerow(columns)
    writer.writerows(rows)
    return buffer.getvalue()


@app.command()
def evaluate(
    pred: str = typer.Option(..., "--pred", help="Output folder of calcpipe score."),
    truth: Path = typer.Option(..., "--truth", help="Truth: a folder with labels/ and/or "
                               "scores.parquet (or _truth/), or a scores CSV."),
    report: Path = typer.Option(Path("evaluation"), "--report", help="Folder for results."),
    profile: str = typer.Option("standard", help="Scoring profile of the results."),
) -> None:
    """Accuracy against ground truth: Dice (Table 2), Agatston agreement, risk categories."""
    from rich.console import Console
    from rich.markdown import Markdown

    from calcpipe.evaluation import run_evaluation

    run_evaluation(pred, truth, report, profile=profile)
    Console().print(Markdown((report / "evaluation.md").read_text()))


@app.command()
def report(
    out: str = typer.Argument(..., help="Output folder of calcpipe score."),
    source: str = typer.Option(..., "--source", help="The cohort folder that was scored."),
    dest: Path = typer.Option(Path("report_html"), "--dest", help="Folder for index.html."),
    truth: Path = typer.Option(None, "--truth", help="Ground truth (as for evaluate)."),
    profile: str = typer.Option("standard", help="Profile of the results."),
    gallery: int = typer.Option(12, min=0, help="Studies in the QC gallery."),
) -> None:
    """A static, self-contained HTML report: cohort, agreement, QC gallery."""
    from calcpipe.htmlreport import write_html_report
    from calcpipe.pipeline.params import secret_from_env

    path = write_html_report(out, source, dest, truth=truth, profile=profile,
                             gallery=gallery, secret=secret_from_env())
    typer.echo(f"report: {path}")


@app.command("export-seg")
def export_seg(
    out: str = typer.Argument(..., help="Output folder of calcpipe score."),
    source: str = typer.Option(..., "--source", help="The cohort folder that was scored."),
    dest: Path = typer.Option(Path("seg"), "--dest", help="Folder for the SEG files."),
    profile: str = typer.Option("standard", help="Profile of the results to export."),
) -> None:
    """Write the predicted masks as DICOM SEG referencing their CT series (pseudonymised
    when CALCPIPE_PSEUDONYM_KEY is set)."""
    from calcpipe.pipeline.params import secret_from_env
    from calcpipe.seg import export_masks

    written, replaced = export_masks(out, source, dest, secret=secret_from_env(),
                                     profile=profile)
    typer.echo(f"{len(written)} DICOM SEG files in {dest}")
    if replaced:
        typer.echo(f"{len(replaced)} studies left out: their mask was replaced by another "
                   "model's or other inputs' segmentation since their result (score them "
                   "again): " + ", ".join(replaced[:10]) + (" ..." if len(replaced) > 10 else ""))


@app.command()
def housekeeping(
    out: str = typer.Argument(..., help="Output folder or URL of calcpipe score."),
    retention_hours: int = typer.Option(
        168, min=0, help="Keep unreferenced files younger than this (readers of old "
        "snapshots and time travel need them)."),
    dry_run: bool = typer.Option(False, help="Only count what vacuum would delete."),
    endpoint_url: str = typer.Option(None, help="S3-compatible endpoint."),
) -> None:
    """Compact the tables' small files, vacuum unreferenced ones, and delete the scratch
    folders of runs that died."""
    from rich.console import Console
    from rich.table import Table

    from calcpipe.tables.housekeeping import housekeep, remove_abandoned_scratch

    options = _s3_options(endpoint_url)
    table = Table("table", "files before", "files after", "vacuumed", "version")
    for t in housekeep(out, options, retention_hours=retention_hours, dry_run=dry_run):
        table.add_row(t.table, str(t.files_before), str(t.files_after),
                      str(t.files_vacuumed), f"{t.version_before} -> {t.version_after}")
    Console().print(table)
    scratch = remove_abandoned_scratch(out, options, retention_hours=retention_hours,
                                       dry_run=dry_run)
    Console().print(f"scratch folders of abandoned runs {'to remove' if dry_run else 'removed'}"
                    f": {scratch}")


@app.command()
def serve(
    source: str = typer.Argument(..., help="Cohort folder or URL."),
    out: str = typer.Option(..., "--out", help="Output folder or URL."),
    cohort: str = typer.Option("cohort", help="Cohort name (names the deployments)."),
    workers: int = typer.Option(2, min=1, help="Dask workers of the local cluster."),
    cluster: str = typer.Option("local", help="'local' or a scheduler address."),
    nightly: str = typer.Option("0 2 * * *", help="Cron of the incremental scoring run."),
    weekly: str = typer.Option("0 4 * * 0", help="Cron of the housekeeping run."),
    secret_block: str = typer.Option(None, help="Prefect Secret block of the key."),
) -> None:
    """Serve the nightly scoring and weekly housekeeping schedules from this machine."""
    import os

    from calcpipe.pipeline.params import ScoreParams

    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect import serve as prefect_serve

    from calcpipe.flows.deployments import deployments

    params = ScoreParams(source=source, out=out, cohort=cohort, workers=workers,
                         cluster=cluster)
    prefect_serve(*deployments(params, nightly_cron=nightly, weekly_cron=weekly,
                               secret_block=secret_block))


@app.command("import-annotations")
def import_annotations(
    cohort: Path = typer.Argument(..., help="Cohort folder (DICOM studies)."),
    annotations: Path = typer.Option(..., "--annotations", help="Annotation folder."),
    annotation_format: str = typer.Option(
        "osirix", "--format", help="osirix, colour, seg or nifti."),
) -> None:
    """Turn annotations into the cohort's truth label maps (_truth/labels/) for training."""
    from calcpipe.annotations import import_cohort

    n = import_cohort(cohort, annotations, annotation_format, log=typer.echo)
    typer.echo(f"imported {annotation_format} annotations of {n} studies")


@app.command()
def profiles() -> None:
    """List the scoring profiles, with one example volume scored under each."""
    from calcpipe.scoring.comparison import comparison_table

    typer.echo(comparison_table(), nl=False)


@app.command()
def demo(
    out: Path = typer.Argument(Path("demo_out"), help="Working folder (cohort, results)."),
    studies: int = typer.Option(20, min=1, help="Synthetic studies."),
    matrix: int = typer.Option(256, min=64, help="Image matrix of the synthetic studies."),
    workers: int = typer.Option(2, min=1, help="Dask workers."),
) -> None:
    """Synthesise a small cohort and run the cohort scoring flow on it, end to end."""
    from rich.console import Console

    from calcpipe.demo import run_demo

    run_demo(out, Console(), studies=studies, matrix=matrix, workers=workers)


if __name__ == "__main__":
    app()
