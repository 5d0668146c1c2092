"""The HTML report: self-contained, no identifiers in images, clean in headless Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    from typer.testing import CliRunner

    from calcpipe.cli import app
    from calcpipe.pipeline import ScoreParams, run_single_process
    from calcpipe.synthetic import write_cohort

    base = tmp_path_factory.mktemp("html")
    cohort = write_cohort(base / "cohort", studies=3, seed=21, matrix=64, workers=1)
    run_single_process(ScoreParams(source=str(cohort), out=str(base / "out")))
    result = CliRunner().invoke(app, ["report", str(base / "out"), "--source", str(cohort),
                                      "--truth", str(cohort), "--dest", str(base / "html")])
    assert result.exit_code == 0, result.output
    return base / "html" / "index.html", cohort


def test_report_is_self_contained_with_table1_agreement_and_gallery(report):
    path, cohort = report
    text = path.read_text()
    assert "<script" not in text and "http://" not in text.replace(
        "http://www.w3.org/2000/svg", "")
    assert "Cohort (Table 1)" in text and "Agreement with the truth" in text
    assert "Bland-Altman" in text and "largest CAC disagreement" in text
    assert "Dice per patient (Table 2)" in text and "weighted kappa" in text
    assert len(re.findall(r"<img alt='slices with calcium' src='data:image/png;base64,",
                          text)) == 3
    assert "SYN-" not in text and str(cohort) not in text  # no PatientID, no paths


def test_report_loads_in_headless_chromium_without_console_errors(report, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (.ci/run installs Debian's chromium)")
    path, _ = report
    shot = tmp_path / "report.png"
    run = subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr",
         "--v=0", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1200,1600",
         f"--screenshot={shot}", path.as_uri()],
        capture_output=True, text=True, timeout=120)
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console
    assert shot.is_file() and shot.stat().st_size > 10_000, run.stderr[-2000:]
