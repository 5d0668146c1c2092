"""Housekeeping (compaction and vacuum) keeps every row; deployments are well formed."""

from __future__ import annotations

from pathlib import Path

import yaml

from calcpipe.catalog import VIEWS, open_catalog
from calcpipe.pipeline import ScoreParams, run_single_process
from calcpipe.tables import TABLES

ROOT = Path(__file__).resolve().parents[1]


def _everything(out: Path) -> dict[str, list[tuple[object, ...]]]:
    catalog = open_catalog(out)
    return {name: sorted(catalog.query(f"SELECT * FROM {name}").fetchall(), key=repr)
            for name in (*TABLES, *VIEWS)}


def test_compaction_and_vacuum_keep_every_query_result(prefect_api, tmp_path):
    from calcpipe.flows.housekeeping import housekeeping

    from calcpipe.synthetic import write_cohort

    source = write_cohort(tmp_path / "cohort", studies=3, seed=5, matrix=64, workers=1)
    out = tmp_path / "out"
    for profile in ("standard", "siemens"):  # two runs: several small files per table
        run_single_process(ScoreParams(source=str(source), out=str(out), profile=profile,
                                       shard_size=1))
    assert list((out / "_scratch").iterdir()) == []  # each run removed its scratch folder
    before = _everything(out)
    report = {t["table"]: t for t in housekeeping(out=str(out), retention_hours=0)}
    assert report["vessel_scores"]["files_before"] == 6
    assert report["vessel_scores"]["files_after"] == 1
    assert report["vessel_scores"]["files_vacuumed"] == 6
    assert _everything(out) == before
    parquet_files = list((out / "tables" / "vessel_scores").glob("*.parquet"))
    assert len(parquet_files) == 1  # the vacuum really deleted the compacted files


def test_housekeeping_deletes_only_the_scratch_of_runs_that_died(tmp_path):
    import os
    import time

    from calcpipe.tables.housekeeping import remove_abandoned_scratch

    dead, live = tmp_path / "_scratch" / "dead-run", tmp_path / "_scratch" / "live-run"
    for folder in (dead, live):
        (folder / "plan").mkdir(parents=True)
        (folder / "plan" / "group-000000.parquet").write_bytes(b"paths")
    week_ago = time.time() - 8 * 24 * 3600
    os.utime(dead / "plan" / "group-000000.parquet", (week_ago, week_ago))
    assert remove_abandoned_scratch(str(tmp_path), dry_run=True) == 1
    assert dead.exists()
    assert remove_abandoned_scratch(str(tmp_path)) == 1
    assert not dead.exists() and live.exists()
    assert remove_abandoned_scratch(str(tmp_path)) == 0
    # a run that has just made its folder, and a live run under a retention of 0 hours
    (tmp_path / "_scratch" / "new-run").mkdir()
    assert remove_abandoned_scratch(str(tmp_path), retention_hours=0) == 0
    assert live.exists() and (tmp_path / "_scratch" / "new-run").exists()


def test_serve_builds_a_nightly_and_a_weekly_deployment(tmp_path):
    from calcpipe.flows.deployments import deployments

    params = ScoreParams(source=str(tmp_path / "src"), out=str(tmp_path / "out"),
                         cohort="registry")
    nightly, weekly = deployments(params)
    assert nightly.name == "registry-nightly" and weekly.name == "registry-weekly-housekeeping"
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert weekly.schedules[0].schedule.cron == "0 4 * * 0"
    assert ScoreParams(**nightly.parameters["params"]) == params
    assert weekly.parameters["out"] == params.out


def test_prefect_yaml_points_at_real_flows_with_valid_parameters():
    import importlib

    document = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    names = {d["name"]: d for d in document["deployments"]}
    assert set(names) == {"cohort-nightly", "weekly-housekeeping"}
    for deployment in names.values():
        path, function = deployment["entrypoint"].split(":")
        module = importlib.import_module("calcpipe.flows." + Path(path).stem)
        assert hasattr(getattr(module, function), "to_deployment")
        assert deployment["schedules"][0]["cron"]
    ScoreParams(**names["cohort-nightly"]["parameters"]["params"])


def test_a_compaction_that_races_a_run_s_commit_is_tried_again_on_the_new_snapshot(
        tmp_path, monkeypatch):
    """A run's delete commits while housekeeping compacts: the compaction is retried on the
    table as it now is (on the old snapshot every attempt conflicted) and no row changes."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from calcpipe.tables import housekeeping
    from calcpipe.tables.store import TableStore

    uri = str(tmp_path / "tables" / "runs")
    for i in range(4):
        write_deltalake(uri, pa.table({"k": pa.array([10 * i, 10 * i + 1], pa.int64())}),
                        mode="append")
    opened = TableStore._delta
    raced: list[str] = []

    def open_then_race(self, name):  # a run's delete right after the first opening
        table = opened(self, name)
        if name == "runs" and not raced:
            raced.append(name)
            DeltaTable(uri).delete("k = 11")
        return table

    monkeypatch.setattr(TableStore, "_delta", open_then_race)
    (report,) = housekeeping.housekeep(str(tmp_path))
    assert raced and report.files_after == 1
    assert sorted(DeltaTable(uri).to_pyarrow_table()["k"].to_pylist()) == [
        0, 1, 10, 20, 21, 30, 31]
