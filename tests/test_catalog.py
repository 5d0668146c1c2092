"""Table schemas, the data catalog, `calcpipe query`, `calcpipe score` and the demo."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from calcpipe.catalog import VIEWS, catalog_yaml, open_catalog
from calcpipe.cli import app
from calcpipe.tables import SCHEMA_VERSION, TABLES, arrow_schema

PINS = Path(__file__).parent / "pins"
ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_schemas_are_pinned_for_this_schema_version():
    pin = json.loads((PINS / f"schema_v{SCHEMA_VERSION}.json").read_text())
    current = {n: [[c.name, c.type, c.unit, c.nullable] for c in t.columns]
               for n, t in TABLES.items()}
    assert pin["tables"] == current, (
        "a table schema changed: add nullable columns only, bump SCHEMA_VERSION and pin "
        "the new version (docs/tables.md)")


@pytest.mark.parametrize("older", sorted(PINS.glob("schema_v*.json")))
def test_every_pinned_version_is_a_prefix_of_the_current_schema(older):
    """Schema evolution: columns are only ever added, nullable, at the end."""
    pin = json.loads(older.read_text())["tables"]
    for name, columns in pin.items():
        current = [[c.name, c.type, c.unit, c.nullable] for c in TABLES[name].columns]
        assert current[:len(columns)] == columns
        assert all(c[3] for c in current[len(columns):])


def test_every_table_has_the_contract_columns_and_units_in_names():
    for name in ("study_scores", "vessel_scores", "lesions", "failures"):
        columns = {c.name for c in TABLES[name].columns}
        assert {"study_key", "pipeline_version", "model_id", "model_checksum", "profile",
                "device", "precision", "run_id", "schema_version"} <= columns, name
    suffix = {"mm": "_mm", "mm2": "_mm2", "mm3": "_mm3", "mg": "_mg", "HU": "_hu",
              "kV": "kvp", "ms": "_ms", "s": "_s", "years": "_years", "bytes": "_bytes",
              "deg": "_deg", "%": "_percent", "1/min": "_bpm", "mg/cm3/HU": "_mg_cm3_per_hu",
              "AU": "agatston"}
    for spec in TABLES.values():
        schema = arrow_schema(spec.name)
        assert schema.metadata[b"calcpipe.schema_version"] == str(SCHEMA_VERSION).encode()
        for column in spec.columns:
            if column.unit in suffix:
                assert column.name.endswith(suffix[column.unit]), (spec.name, column.name)


def test_the_shipped_catalog_template_is_generated_from_the_schemas():
    template = (ROOT / "calcpipe" / "data_catalog.yaml").read_text()
    assert template == catalog_yaml(), "run: python -m calcpipe.catalog"
    assert (ROOT / "data_catalog.yaml").read_text() == template
    document = yaml.safe_load(template)
    assert set(document["tables"]) == set(TABLES) and set(document["views"]) == set(VIEWS)
    lesions = document["tables"]["lesions"]
    assert lesions["path"] == "{root}/tables/lesions" and lesions["format"] == "delta"
    volume = next(c for c in lesions["columns"] if c["name"] == "volume_mm3")
    assert volume == {"name": "volume_mm3", "type": "float64", "unit": "mm3",
                      "nullable": False, "description": "calcified volume"}


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """A two-study output folder written by `calcpipe score --single-process`."""
    from calcpipe.synthetic import write_cohort

    base = tmp_path_factory.mktemp("catalog")
    source = write_cohort(base / "cohort", studies=2, seed=7, matrix=64, workers=1)
    out = base / "out"
    result = runner.invoke(app, ["score", str(source), "--out", str(out), "--single-process"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_score_prints_counts_vessels_and_locations(scored):
    out, output = scored
    for text in ("scored", "LAD", "with calcium", f"{out}/tables", "data_catalog.yaml"):
        assert text in output
    rendered = yaml.safe_load((out / "data_catalog.yaml").read_text())
    assert rendered["tables"]["study_scores"]["path"] == f"{out}/tables/study_scores"


def test_tables_open_in_duckdb_pandas_and_polars(scored):
    out, _ = scored
    catalog = open_catalog(out)
    frame = catalog.pandas("vessel_scores")
    assert len(frame) == 2 * 10 and set(frame["name"]) >= {"LM", "LAD", "CAC", "TOTAL"}
    polars_frame = catalog.polars("latest_study_scores")
    assert polars_frame.height == 2
    relation = catalog.relation("latest_vessel_scores")
    assert relation.count("*").fetchall() == [(20,)]
    summed = catalog.query(
        "SELECT s.result_id, s.cac_agatston, sum(v.agatston) AS vessels FROM study_scores s "
        "JOIN vessel_scores v USING (result_id) WHERE v.name IN ('LM','LAD','LCX','RCA') "
        "GROUP BY ALL").fetchall()
    assert len(summed) == 2
    assert all(cac == pytest.approx(vessels) for _, cac, vessels in summed)
    assert catalog.arrow("runs").schema.field("total_s").type == pa.float64()


def test_query_command_runs_sql_over_the_catalog(scored):
    out, _ = scored
    result = runner.invoke(app, ["query", "--out", str(out), "--csv",
                                 "SELECT name, count(*) AS n FROM latest_vessel_scores "
                                 "GROUP BY name ORDER BY name"])
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert lines[0] == "name,n" and "LAD,2" in lines and len(lines) == 11


def test_score_refuses_bad_parameters_and_secrets_in_options(tmp_path):
    result = runner.invoke(app, ["score", str(tmp_path), "--out", str(tmp_path / "o"),
                                 "--profile", "no-such-profile", "--single-process"])
    assert result.exit_code == 2 and "profile" in result.output
    from pydantic import ValidationError

    from calcpipe.pipeline import ScoreParams

    with pytest.raises(ValidationError, match="must not hold 'secret'"):
        ScoreParams(source="s3://b/c", out="s3://b/o", storage_options={"secret": "x"})
    with pytest.raises(ValidationError, match="cluster"):
        ScoreParams(source="a", out="b", cluster="mesos")


def test_demo_scores_a_synthetic_cohort_with_the_flow(prefect_api, tmp_path):
    result = runner.invoke(app, ["demo", str(tmp_path / "demo"), "--studies", "2",
                                 "--matrix", "64", "--workers", "1"])
    assert result.exit_code == 0, result.output
    for text in ("Per vessel", "latest_vessel_scores", "scored"):
        assert text in result.output, text
    assert (tmp_path / "demo" / "results" / "report" / "summary.md").is_file()


def test_string_filters_work_on_tables_that_merges_wrote(tmp_path):
    """Delta merges (study_scores, series, failures) write string columns as string_view;
    DuckDB's filters pushed down into a pyarrow dataset mixing both types failed."""
    import numpy as np

    from calcpipe.dicom.writer import write_series
    from calcpipe.pipeline import ScoreParams, run_single_process
    from calcpipe.synthetic import write_cohort

    src = write_cohort(tmp_path / "src", studies=1, seed=31, matrix=64, workers=1)
    hu = np.full((12, 48, 48), 40, np.int16)
    write_series(src / "mr" / "s1", hu, spacing_mm=(3.0, 0.7, 0.7), study_uid="1.2.3.100",
                 series_uid="1.2.3.100.1",
                 extra={"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"})
    # a second code in the same files: their statistics cannot answer a filter on code
    write_series(src / "contrast" / "s1", hu, spacing_mm=(3.0, 0.7, 0.7),
                 study_uid="1.2.3.200", series_uid="1.2.3.200.1",
                 extra={"ContrastBolusAgent": "IOPAMIDOL"})
    out = tmp_path / "out"
    for retry in (False, True, True):  # failures and series merged into several times
        run_single_process(ScoreParams(source=str(src), out=str(out), retry_failed=retry))
    catalog = open_catalog(out)
    assert catalog.query("SELECT attempt FROM failures WHERE code = 'not_ct' "
                         "ORDER BY 1").fetchall() == [(1,), (2,), (3,)]
    assert catalog.query("SELECT count(*) FROM series WHERE study_key = '1.2.3.100'"
                         ).fetchall() == [(1,)]
    key = catalog.query("SELECT study_key FROM study_scores").fetchall()[0][0]
    assert catalog.query("SELECT count(*) FROM latest_vessel_scores v JOIN failures f "
                         f"ON v.study_key <> f.study_key WHERE v.study_key = '{key}' AND "
                         "f.code IN ('not_ct')").fetchall() == [(3 * 10,)]
    assert catalog.query("SELECT count(*) FROM series WHERE study_key IN ('1.2.3.100', "
                         "'1.2.3.200')").fetchall() == [(2,)]


def test_tables_read_under_any_folder_name(tmp_path):
    """The Delta log's file URIs are percent-encoded, and DuckDB takes key=value folders
    for partitions: an output under 'a space ü/site=a' reads as anywhere else."""
    from calcpipe.pipeline import ScoreParams, run_single_process
    from calcpipe.synthetic import write_cohort

    src = write_cohort(tmp_path / "src", studies=1, seed=31, matrix=64, workers=1)
    out = tmp_path / "a space ü" / "profile=other" / "out"
    for profile in ("standard", "deepcac"):
        run_single_process(ScoreParams(source=str(src), out=str(out), profile=profile))
    catalog = open_catalog(out)
    assert catalog.query("SELECT profile, count(*) FROM latest_study_scores GROUP BY 1 "
                         "ORDER BY 1").fetchall() == [("deepcac", 1), ("standard", 1)]
    assert catalog.query("SELECT * FROM runs").columns == arrow_schema("runs").names


def test_an_output_folder_the_table_writer_cannot_use_is_refused_before_anything_runs(
        tmp_path):
    """delta-rs panics on a local path with '[' (an uncatchable-looking PanicException from
    a worker) and decodes '%20' to a space, losing the table: each ASCII punctuation
    character either keeps tables or is refused when the parameters are made."""
    import string

    import pyarrow as pa
    from pydantic import ValidationError

    from calcpipe.pipeline import ScoreParams
    from calcpipe.tables.store import TableStore

    table = pa.table({"a": [1]})
    refused = []
    for mark in [*sorted(set(string.punctuation) - {"/"}), "%41", "%2b", "\t"]:
        out = str(tmp_path / f"o{mark}ut")
        try:
            ScoreParams(source=str(tmp_path), out=out)
        except ValidationError as e:
            assert "choose another folder" in str(e)
            with pytest.raises(ValueError, match="choose another folder"):
                TableStore(out)
            refused.append(mark)
            continue
        from deltalake import DeltaTable, write_deltalake

        uri = TableStore(out).uri("runs")  # the path the store writes to
        for _ in range(2):
            write_deltalake(uri, table, mode="append")
        assert DeltaTable(uri).to_pyarrow_dataset().to_table().num_rows == 2, mark
    assert refused == ["[", "\\", "]", "^", "|", "%41", "%2b", "\t"]


def _has_cuda() -> bool:
    import torch

    return bool(torch.cuda.is_available())


def _main(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The console script's exit status and output."""
    from calcpipe.cli import main

    monkeypatch.setattr("sys.argv", ["calcpipe", *args])
    monkeypatch.delenv("CALCPIPE_DEBUG", raising=False)
    with pytest.raises(SystemExit) as ended:
        main()
    out = capsys.readouterr()
    return ended.value.code, out.out + out.err


def test_bad_input_ends_in_one_line_and_a_non_zero_status(scored, tmp_path, monkeypatch,
                                                          capsys):
    """A missing or empty source, a file that is no checkpoint, a wrong output folder, bad
    SQL, an unknown device or profile: one line each, nothing written."""
    out, _ = scored
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    cohort = out.parent / "cohort"
    cases = [
        (["score", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o1"),
          "--single-process"], 1, "does not exist"),
        (["score", str(tmp_path / "empty"), "--out", str(tmp_path / "o2"),
          "--single-process"], 1, "[no_files] no files under"),
        (["score", str(cohort), "--out", str(tmp_path / "o3"), "--model",
          str(tmp_path / "junk.pt"), "--single-process"], 1, "is not a calcpipe"),
        (["score", str(cohort), "--out", str(tmp_path / "o4"), "--device", "gpu0"], 2,
         "device is auto, cpu"),
        *([(["score", str(cohort), "--out", str(tmp_path / "o5"), "--device", "cuda",
             "--single-process"], 1, "no CUDA device")] if not _has_cuda() else []),
        (["query", "SELECT 1", "--out", str(tmp_path / "nowhere")], 1, "no calcpipe output"),
        (["query", "SELEC * FROM runs", "--out", str(out)], 1, "ParserException"),
        (["evaluate", "--pred", str(out), "--truth", str(cohort / "_truth"), "--report",
          str(tmp_path / "ev"), "--profile", "nope"], 1, "unknown scoring profile"),
        (["synth", str(tmp_path / "full"), "--studies", "1", "--matrix", "32"], 1,
         "not an empty folder"),
    ]
    for args, status, text in cases:
        code, output = _main(monkeypatch, capsys, *args)
        assert code == status and "Traceback" not in output, (args, output)
        assert text.lower() in output.lower() and len(output.strip().splitlines()) <= 2, (
            args, output)
    for name in ("o1", "o2", "o4", "o5"):
        assert not (tmp_path / name / "tables").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]


def test_runs_record_no_paths_and_options_hold_no_credentials(scored):
    from pydantic import ValidationError

    from calcpipe.pipeline import ScoreParams

    out, _ = scored
    ((parameters,),) = open_catalog(out).query("SELECT parameters_json FROM runs").fetchall()
    assert str(out.parent) not in parameters and '"out": "sha256:' in parameters
    for options in ({"client_kwargs": {"aws_secret_access_key": "x"}}, {"account_key": "x"},
                    {"sas_token": "x"}, {"connection_string": "x"}, {"KEY": "x"}):
        with pytest.raises(ValidationError, match="must not hold"):
            ScoreParams(source="s3://b/c", out="s3://b/o", storage_options=options)
    ScoreParams(source="s3://b/c", out="s3://b/o",  # not secrets
                storage_options={"client_kwargs": {"endpoint_url": "http://h:9000",
                                                   "region_name": "eu"}})
