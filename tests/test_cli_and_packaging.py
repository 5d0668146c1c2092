"""The console script, its start-up cost, the demo, and what the wheel ships."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from calcpipe.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_help_imports_nothing_heavy():
    code = ("import sys, calcpipe.cli; heavy = {'torch', 'pydicom', 'numpy', 'gdcm', "
            "'prefect', 'distributed', 'deltalake', 'duckdb'} & set(sys.modules); "
            "print(sorted(heavy)); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    help_run = subprocess.run([sys.executable, "-m", "calcpipe.cli", "--help"],
                              capture_output=True, text=True)
    assert help_run.returncode == 0 and "inspect" in help_run.stdout


def test_inspect_a_series_and_a_refusal(make_series):
    folder, _, files = make_series()
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 0, result.output
    assert "5 x 24 x 32" in result.output
    files[2].unlink()
    result = runner.invoke(app, ["inspect", str(folder)])
    assert result.exit_code == 2 and "missing_slice" in result.output


def test_catalog_template_ships_with_the_package():
    from calcpipe.flows import catalog_template

    text = catalog_template()
    for table in ("dicom_instances", "series", "study_scores", "vessel_scores", "lesions",
                  "failures", "runs"):
        assert f"  {table}:" in text


@pytest.mark.slow
def test_wheel_contains_flows_and_catalog(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    wheel = next(tmp_path.glob("calcpipe-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    for required in ("calcpipe/flows/__init__.py", "calcpipe/flows/score_cohort.py",
                     "calcpipe/flows/cluster.py", "calcpipe/tables/schemas.py",
                     "calcpipe/pipeline/run.py", "calcpipe/catalog.py",
                     "calcpipe/data_catalog.yaml",
                     "calcpipe/dicom/load.py", "calcpipe/ingest/rules.py", "calcpipe/cli.py",
                     "calcpipe/py.typed"):
        assert required in names, required
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "calcpipe = calcpipe.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
