"""The cohort pipeline end to end: the Prefect flow on a Dask cluster, on disk and on S3.

One Prefect harness and one Dask cluster serve every test (session fixtures in
conftest.py); cohorts are tiny (64x64 synthetic studies).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calcpipe.dicom.writer import write_series
from calcpipe.pipeline import ScoreParams, run_single_process
from calcpipe.tables import TABLES, TableStore

#: Columns that differ between two runs of the same work by design.
VOLATILE = {"run_id", "scored_at", "failed_at", "indexed_at", "attempt"}
RESULT_TABLES = ("study_scores", "vessel_scores", "lesions", "failures", "series")


@pytest.fixture(scope="session")
def pool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Six synthetic studies to build test cohorts from."""
    from calcpipe.synthetic import write_cohort

    return write_cohort(tmp_path_factory.mktemp("pool"), studies=6, seed=31, matrix=64,
                        workers=2)


def cohort(pool: Path, dest: Path, studies: list[int]) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for i in studies:
        shutil.copytree(pool / f"study_{i:05d}", dest / f"study_{i:05d}")
    return dest


def flow(source: Any, out: Any, cluster: str, **params: Any) -> dict[str, Any]:
    from calcpipe.flows.score_cohort import score_cohort

    p = ScoreParams(source=str(source), out=str(out), cluster=cluster, shard_size=2,
                    in_flight=2, **params)
    return score_cohort(p, show_progress=False)  # type: ignore[no-any-return]


def rows(out: Any, name: str, drop: set[str] = frozenset(),  # type: ignore[assignment]
         storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    table = TableStore(str(out), storage_options).read(name).to_pylist()
    return sorted(({k: v for k, v in r.items() if k not in VOLATILE | drop} for r in table),
                  key=repr)


def problem_studies(root: Path) -> None:
    """An MR study, a contrast-only study, and a CT study with a truncated file."""
    hu = np.full((12, 48, 48), 40, np.int16)
    hu[5:7, 20:23, 20:23] = 400
    common = {"spacing_mm": (3.0, 0.7, 0.7)}
    write_series(root / "mr" / "s1", hu, study_uid="1.2.826.0.1.9.100",
                 series_uid="1.2.826.0.1.9.100.1", patient_id="PAT-MR",
                 extra={"Modality": "MR", "SOPClassUID": "1.2.840.10008.5.1.4.1.1.4"},
                 **common)
    write_series(root / "contrast" / "s1", hu, study_uid="1.2.826.0.1.9.200",
                 series_uid="1.2.826.0.1.9.200.1", patient_id="PAT-C",
                 extra={"ContrastBolusAgent": "IOPAMIDOL"}, **common)
    files = write_series(root / "corrupt" / "s1", hu, study_uid="1.2.826.0.1.9.300",
                         series_uid="1.2.826.0.1.9.300.1", patient_id="PAT-X", **common)
    data = files[4].read_bytes()
    files[4].write_bytes(data[:-2000])


# -- end to end, incremental, single-process equivalence ---------------------------------

def test_flow_scores_incrementally_and_matches_a_single_process_run(
        prefect_api, dask_address, pool, tmp_path):
    src, out = cohort(pool, tmp_path / "src", [0, 1, 2]), tmp_path / "out"
    first = flow(src, out, dask_address)
    assert (first["studies_found"], first["studies_scored"], first["studies_failed"]) == (3, 3, 0)
    store = TableStore(str(out))
    keys = set(store.read("study_scores").column("study_key").to_pylist())
    assert len(keys) == 3
    assert all((out / "masks" / f"{k}.nii.gz").is_file() for k in keys)
    assert store.read("vessel_scores").num_rows == 3 * 10  # 7 labels + CAC, AC, TOTAL
    assert (out / "report" / "summary.md").read_text().count("| LAD |") == 1
    assert str(out) in (out / "data_catalog.yaml").read_text()
    from prefect.artifacts import Artifact

    artifact = Artifact.get("calcpipe-run-summary", _sync=True)  # type: ignore[call-arg]
    assert artifact is not None and first["run_id"] in artifact.data
    assert "| CAC category | studies |" in artifact.data

    versions = {name: store.version(name) for name in TABLES}
    second = flow(src, out, dask_address)
    assert (second["headers_read"], second["studies_planned"], second["studies_scored"],
            second["studies_skipped"]) == (0, 0, 0, 3)
    # no table but runs got a commit: nothing added, nothing read
    assert {n: store.version(n) for n in TABLES if n != "runs"} == {
        n: v for n, v in versions.items() if n != "runs"}

    cohort(pool, src, [3, 4, 5])
    added_files = sum(1 for i in (3, 4, 5) for f in (src / f"study_{i:05d}").rglob("*.dcm"))
    third = flow(src, out, dask_address)
    assert (third["headers_read"], third["studies_scored"]) == (added_files, 3)
    new_keys = set(store.read("study_scores").column("study_key").to_pylist()) - keys
    truth = pool / "_truth" / "scores.parquet"
    import pyarrow.parquet as pq

    by_folder = {r["study_key"] for r in pq.read_table(truth).to_pylist()}
    assert len(new_keys) == 3 and new_keys <= by_folder

    reference = tmp_path / "single"
    run_single_process(ScoreParams(source=str(src), out=str(reference)))
    for name in (*RESULT_TABLES, "dicom_instances"):
        assert rows(out, name) == rows(reference, name), name


def test_flow_on_local_s3_gives_the_rows_of_a_disk_run(prefect_api, dask_address, pool,
                                                        tmp_path, local_s3):
    src = cohort(pool, tmp_path / "src", [0, 1])
    flow(src, tmp_path / "out", dask_address)
    url = local_s3.upload(src, "s3://calcpipe-test/cohort")
    options = {"client_kwargs": {"endpoint_url": local_s3.endpoint_url},
               "skip_instance_cache": True}
    row = flow(url, "s3://calcpipe-test/out", dask_address, storage_options=options)
    assert row["studies_scored"] == 2
    # ETags replace mtimes, so the input fingerprints (and result ids) differ by design
    store_specific = {"input_fingerprint", "result_id", "etag", "mtime_s"}
    for name in (*RESULT_TABLES, "dicom_instances"):
        assert rows(tmp_path / "out", name, store_specific) == rows(
            "s3://calcpipe-test/out", name, store_specific, options), name
    fs = local_s3.filesystem()
    keys = TableStore("s3://calcpipe-test/out", options).read("study_scores").column(
        "study_key").to_pylist()
    assert all(fs.exists(f"calcpipe-test/out/masks/{k}.nii.gz") for k in keys)
    assert fs.exists("calcpipe-test/out/data_catalog.yaml")


# -- failures and retries -----------------------------------------------------------------

def test_bad_studies_become_failure_rows_and_are_retried_only_when_asked_or_changed(
        prefect_api, dask_address, pool, tmp_path):
    src, out = cohort(pool, tmp_path / "src", [0]), tmp_path / "out"
    problem_studies(src)
    first = flow(src, out, dask_address)
    assert (first["studies_found"], first["studies_scored"], first["studies_failed"]) == (4, 1, 3)
    failures = {r["study_key"]: r for r in rows(out, "failures")}
    assert {k: (r["stage"], r["code"]) for k, r in failures.items()} == {
        "1.2.826.0.1.9.100": ("plan", "not_ct"),
        "1.2.826.0.1.9.200": ("plan", "no_eligible_series"),
        "1.2.826.0.1.9.300": ("score", "truncated"),
    }
    assert "Modality is 'MR'" in failures["1.2.826.0.1.9.100"]["message"]
    assert "ContrastBolusAgent" in failures["1.2.826.0.1.9.200"]["message"]
    assert all(str(tmp_path) not in r["message"] for r in failures.values())

    again = flow(src, out, dask_address)
    assert (again["studies_failed"], again["studies_skipped"]) == (0, 4)
    retried = flow(src, out, dask_address, retry_failed=True)
    assert retried["studies_failed"] == 3
    attempts = TableStore(str(out)).read("failures").column("attempt").to_pylist()
    assert sorted(attempts) == [1, 1, 1, 2, 2, 2]

    # the corrupt file is replaced: only that study is tried again, and now it scores
    hu = np.full((12, 48, 48), 40, np.int16)
    hu[5:7, 20:23, 20:23] = 400
    shutil.rmtree(src / "corrupt")
    write_series(src / "corrupt" / "s1", hu, spacing_mm=(3.0, 0.7, 0.7),
                 study_uid="1.2.826.0.1.9.300", series_uid="1.2.826.0.1.9.300.1",
                 patient_id="PAT-X")
    fixed = flow(src, out, dask_address)
    assert (fixed["studies_planned"], fixed["studies_scored"], fixed["studies_failed"]) == (1, 1, 0)
    assert "1.2.826.0.1.9.300" in TableStore(str(out)).read("study_scores").column(
        "study_key").to_pylist()


# -- re-scoring from stored masks ---------------------------------------------------------

def test_rescore_from_masks_reproduces_a_full_run_under_that_profile(
        prefect_api, dask_address, pool, tmp_path):
    src = cohort(pool, tmp_path / "src", [1, 2])
    out, full = tmp_path / "out", tmp_path / "full"
    flow(src, out, dask_address)
    rescored = flow(src, out, dask_address, profile="deepcac", rescore=True)
    assert rescored["mode"] == "rescore" and rescored["studies_scored"] == 2
    flow(src, full, dask_address, profile="deepcac")

    def under(folder: Path, name: str, profile: str) -> list[dict[str, Any]]:
        return [r for r in rows(folder, name) if r["profile"] == profile]

    for name in ("study_scores", "vessel_scores", "lesions"):
        assert under(out, name, "deepcac") == under(full, name, "deepcac"), name
    standard = {(r["study_key"], r["name"]): r["agatston"]
                for r in under(out, "vessel_scores", "standard")}
    lessmann = {(r["study_key"], r["name"]): r["agatston"]
                for r in under(out, "vessel_scores", "deepcac")}
    assert standard.keys() == lessmann.keys() and standard != lessmann  # a real re-score


def test_rescore_without_masks_fails_each_study_clearly(pool, tmp_path):
    src, out = cohort(pool, tmp_path / "src", [0]), str(tmp_path / "out")
    row = run_single_process(ScoreParams(source=str(src), out=out, rescore=True,
                                         profile="deepcac"))
    assert row["studies_failed"] == 1
    assert rows(out, "failures")[0]["code"] == "no_stored_mask"
    # its fix: a full run first; the failure then does not block the re-score
    assert run_single_process(ScoreParams(source=str(src), out=out))["studies_scored"] == 1
    again = run_single_process(ScoreParams(source=str(src), out=out, rescore=True,
                                           profile="deepcac"))
    assert (again["studies_scored"], again["studies_skipped"]) == (1, 0)


def _checkpoints(folder: Path) -> tuple[str, str]:
    """The shipped weights and the same network with other weights, both saved as
    ``model.pt`` (as ``calcpipe train`` names them) in two folders."""
    import torch

    from calcpipe.models.checkpoint import load_checkpoint, save_checkpoint

    payload = dict(load_checkpoint("default").payload)
    key = next(k for k, v in payload.items() if isinstance(v, dict)
               and any(torch.is_tensor(t) for t in v.values()))
    other = {k: t * 1.3 if torch.is_tensor(t) and t.is_floating_point() and "weight" in k
             else t for k, t in payload[key].items()}
    paths = str(folder / "first" / "model.pt"), str(folder / "second" / "model.pt")
    save_checkpoint(paths[0], payload)
    save_checkpoint(paths[1], {**payload, key: other})
    return paths


def test_a_model_is_known_by_its_weights_and_rescore_uses_only_its_own_masks(pool, tmp_path):
    first, second = _checkpoints(tmp_path)
    src, out = cohort(pool, tmp_path / "src", [0, 1]), str(tmp_path / "out")

    def run(model: str, **more: Any) -> dict[str, Any]:
        return run_single_process(ScoreParams(source=str(src), out=out, model=model, **more))

    assert run(first)["studies_scored"] == 2
    assert run(second)["studies_scored"] == 2  # the same file name, other weights
    assert len({r["model_checksum"] for r in rows(out, "study_scores")}) == 2
    # each study's mask is now the second model's: re-scoring the first's is refused
    refused = run(first, rescore=True, profile="deepcac")
    assert (refused["studies_scored"], refused["studies_failed"]) == (0, 2)
    assert {(r["stage"], r["code"]) for r in rows(out, "failures")} == {
        ("score", "no_stored_mask")}
    assert run(second, rescore=True, profile="deepcac")["studies_scored"] == 2


def test_evaluation_report_and_seg_export_use_only_a_result_s_own_mask(pool, tmp_path):
    """A study keeps one mask, its latest segmentation's: after another model scored it
    under another profile, the first model's results have no mask of their own, and
    Dice, the QC gallery and the SEG export leave them out instead of showing the other
    model's labels under their name."""
    from calcpipe.evaluation import run_evaluation
    from calcpipe.htmlreport import write_html_report
    from calcpipe.seg import export_masks

    first, second = _checkpoints(tmp_path)
    src, out = cohort(pool, tmp_path / "src", [0, 1]), str(tmp_path / "out")
    shutil.copytree(pool / "_truth", src / "_truth")
    run_single_process(ScoreParams(source=str(src), out=out, model=first))
    import nibabel as nib

    masks = sorted((tmp_path / "out" / "masks").glob("*.nii.gz"))
    assert nib.load(masks[0]).header["descrip"].tobytes().startswith(b"calcpipe prediction")
    ok = run_evaluation(out, src / "_truth", tmp_path / "ev0")
    assert len({r["study_key"] for r in ok.dice}) == 2 and not ok.masks_not_of_result
    assert len(export_masks(out, str(src), tmp_path / "seg0")[0]) == 2
    run_single_process(ScoreParams(source=str(src), out=out, model=second, profile="deepcac"))
    result = run_evaluation(out, src / "_truth", tmp_path / "ev")
    keys = sorted(r["study_key"] for r in rows(out, "study_scores") if r["profile"] == "deepcac")
    assert result.masks_not_of_result == keys and not result.dice
    assert "whose mask another model" in (tmp_path / "ev" / "evaluation.md").read_text()
    assert export_masks(out, str(src), tmp_path / "seg") == ([], keys)
    page = write_html_report(out, str(src), tmp_path / "html").read_text()
    assert "<img" not in page and "2 studies whose mask another model" in page
    # the second model's own results (deepcac) still have theirs
    own = run_evaluation(out, src / "_truth", tmp_path / "ev2", profile="deepcac")
    assert {r["study_key"] for r in own.dice} == set(keys)


def test_many_plan_partitions_and_read_tasks_give_the_rows_of_one(pool, tmp_path,
                                                                 monkeypatch):
    """Index in tasks of 7 objects and plan in one partition per 20 objects (4 studies,
    more than 40 objects: 7 or more read tasks, 3 or more partitions) write what one task
    and one partition write."""
    import calcpipe.pipeline.index as index_module
    import calcpipe.pipeline.plan as plan_module

    src = cohort(pool, tmp_path / "src", [0, 1, 2, 3])
    whole = run_single_process(ScoreParams(source=str(src), out=str(tmp_path / "whole")))
    monkeypatch.setattr(index_module, "INDEX_TASK_OBJECTS", 7)
    monkeypatch.setattr(plan_module, "PLAN_PARTITION_OBJECTS", 20)
    cut = run_single_process(ScoreParams(source=str(src), out=str(tmp_path / "cut"),
                                         shard_size=1))
    assert whole["objects_listed"] == cut["objects_listed"] > 40
    assert (cut["studies_found"], cut["studies_scored"]) == (4, 4)
    cut_store = TableStore(str(tmp_path / "cut"))
    assert cut_store.version("dicom_instances") == -(-cut["objects_listed"] // 7) - 1
    for name in ("dicom_instances", *RESULT_TABLES):
        assert rows(tmp_path / "cut", name) == rows(tmp_path / "whole", name), name


# -- commit protocol, privacy ---------------------------------------------------------------

def planned_items(run: Any) -> list[Any]:
    """Index and plan in this process; every planned study."""
    from calcpipe.pipeline.run import in_process

    run.index(in_process)
    return [item for shard in run.plan(in_process) for item in run.shard_items(shard)]


def test_a_commit_interrupted_half_way_is_invisible_and_repaired(pool, tmp_path):
    from calcpipe.catalog import open_catalog
    from calcpipe.pipeline import Run
    from calcpipe.pipeline.run import load_segmenter
    from calcpipe.pipeline.work import score_study
    from calcpipe.tables import to_table

    src, out = cohort(pool, tmp_path / "src", [0]), tmp_path / "out"
    params = ScoreParams(source=str(src), out=str(out))
    run = Run(params, None)
    items = planned_items(run)
    outcome = score_study(items[0], load_segmenter("default", "cpu", "fp32", None),
                          run.provenance, out_root=str(out), storage_options=None, secret=None)
    # the process dies after the vessel rows are committed, before the marker
    run.store.append("vessel_scores", to_table("vessel_scores", outcome.vessel_rows))
    catalog = open_catalog(out)
    assert catalog.query("SELECT count(*) FROM committed_vessel_scores").fetchall() == [(0,)]
    assert catalog.query("SELECT count(*) FROM latest_vessel_scores").fetchall() == [(0,)]
    assert catalog.query("SELECT count(*) FROM vessel_scores").fetchall() == [(10,)]

    row = run_single_process(params)  # the next run scores it again and repairs
    assert row["studies_scored"] == 1
    store = TableStore(str(out))
    assert store.read("vessel_scores").num_rows == 10
    assert store.read("study_scores").num_rows == 1


def test_a_shard_commit_tried_again_in_the_process_counts_each_result_once(pool, tmp_path,
                                                                          monkeypatch):
    """A commit that died before its marker, tried again: its rows once. A commit tried
    again after its marker: the committed result is left alone (not deleted, not added)."""
    from calcpipe.catalog import open_catalog
    from calcpipe.pipeline import Run
    from calcpipe.pipeline.run import load_segmenter
    from calcpipe.pipeline.work import score_study
    from calcpipe.tables.store import TableStore as Store

    src, out = cohort(pool, tmp_path / "src", [0]), tmp_path / "out"
    run = Run(ScoreParams(source=str(src), out=str(out)), None)
    segmenter = load_segmenter("default", "cpu", "fp32", None)
    outcomes = [score_study(item, segmenter, run.provenance, out_root=str(out),
                            storage_options=None, secret=None)
                for item in planned_items(run)]

    def counts() -> tuple[int, ...]:
        return open_catalog(out).query(
            "SELECT (SELECT count(*) FROM study_scores), (SELECT count(*) FROM "
            "committed_vessel_scores), (SELECT count(*) FROM vessel_scores)").fetchall()[0]

    original = Store.insert_absent

    def dies_at_marker(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "study_scores":
            raise _Killed("the commit dies before its marker")
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(Store, "insert_absent", dies_at_marker)
    with pytest.raises(_Killed):
        run.commit(outcomes)
    monkeypatch.setattr(Store, "insert_absent", original)
    assert counts() == (0, 0, 10)
    run.commit(outcomes)
    assert counts() == (1, 10, 10)

    def store_down(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        raise OSError("the object store is down")

    monkeypatch.setattr(Store, "append", store_down)
    run.commit(outcomes)  # the result is committed: nothing to write, nothing deleted
    assert counts() == (1, 10, 10)
    assert run.counts.studies_scored == 1  # counted once over three attempts


def _strings(out: Path) -> list[str]:
    """Every string in every table but the run parameters (which name the cohort's root
    folder or bucket, given by the operator)."""
    store = TableStore(str(out))
    values: list[str] = []
    for name in TABLES:
        for row in store.read(name).to_pylist():
            values.extend(v for k, v in row.items()
                          if isinstance(v, str) and k != "parameters_json")
    return values


def test_tables_hold_no_paths_and_keys_are_pseudonymised_when_a_key_is_set(
        pool, tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    src = cohort(pool, tmp_path / "src", [0, 1])
    raw_keys = {r["study_key"] for r in pq.read_table(pool / "_truth" / "scores.parquet")
                .to_pylist()}
    plain = tmp_path / "plain"
    run_single_process(ScoreParams(source=str(src), out=str(plain)))
    assert not any(str(tmp_path) in s or "study_0000" in s for s in _strings(plain))

    monkeypatch.setenv("CALCPIPE_PSEUDONYM_KEY", "a registry secret")
    from calcpipe.pipeline.params import secret_from_env

    hidden = tmp_path / "hidden"
    row = run_single_process(ScoreParams(source=str(src), out=str(hidden)), secret_from_env())
    assert row["pseudonymised"] and row["studies_scored"] == 2
    scores = TableStore(str(hidden)).read("study_scores").to_pylist()
    assert all(len(r["study_key"]) == 64 and len(r["patient_key"]) == 64 for r in scores)
    strings = _strings(hidden)
    assert not any(k in s for k in raw_keys for s in strings)
    assert not any("SYN-" in s or str(tmp_path) in s for s in strings)
    assert "a registry secret" not in " ".join(strings)
    assert all((hidden / "masks" / f"{r['study_key']}.nii.gz").is_file() for r in scores)
    # the run's scratch files (object paths) are gone once it finished
    assert list((hidden / "_scratch").iterdir()) == []


def _single(source: str, out: str, barrier: Any) -> None:
    """A single-process run that waits, after planning, until the other run has planned
    too: both then score the same studies and race to commit them."""
    from calcpipe.pipeline import Run
    from calcpipe.pipeline.run import load_segmenter
    from calcpipe.pipeline.work import score_study

    run = Run(ScoreParams(source=source, out=out), None)
    items = planned_items(run)
    assert len(items) == 2
    barrier.wait(timeout=120)
    segmenter = load_segmenter("default", "cpu", "fp32", 1)
    run.commit([score_study(item, segmenter, run.provenance, out_root=out,
                            storage_options=None, secret=None) for item in items])
    run.finish()


def test_two_runs_on_one_cohort_at_once_commit_each_result_once(pool, tmp_path):
    import multiprocessing

    src, out = cohort(pool, tmp_path / "src", [0, 1]), tmp_path / "out"
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(2)
    runs = [context.Process(target=_single, args=(str(src), str(out), barrier))
            for _ in range(2)]
    for process in runs:
        process.start()
    for process in runs:
        process.join(timeout=300)
        assert process.exitcode == 0
    store = TableStore(str(out))
    results = store.read("study_scores").column("result_id").to_pylist()
    assert len(results) == len(set(results)) == 2
    runs_table = store.read("runs").to_pylist()
    assert len(runs_table) == 2 and sum(r["studies_scored"] for r in runs_table) == 2
    assert store.read("vessel_scores").num_rows == 2 * 10
    lesion_runs = set(store.read("lesions").column("run_id").to_pylist())
    assert lesion_runs <= set(store.read("study_scores").column("run_id").to_pylist())


def test_two_runs_planning_at_once_write_series_and_failures_rows_once(pool, tmp_path):
    """Both runs decide what to write before either writes (a race the barrier test above
    leaves to chance): series, plan failures and score failures are each written once."""
    from calcpipe.pipeline import Run
    from calcpipe.pipeline.run import in_process
    from calcpipe.pipeline.work import score_study

    src, out = cohort(pool, tmp_path / "src", [0]), str(tmp_path / "out")
    problem_studies(src)
    runs = [Run(ScoreParams(source=str(src), out=out), None) for _ in range(2)]
    for run in runs:
        run.index(in_process)
    decided = runs[1]._decided(0, 1)  # before the first run writes anything
    runs[1]._decided = lambda part, parts: decided  # type: ignore[method-assign]
    for run in runs:
        items = [i for shard in run.plan(in_process) for i in run.shard_items(shard)]
        bad = [i for i in items if i.study_key == "1.2.826.0.1.9.300"]  # truncated
        run.commit([score_study(item, None, run.provenance, out_root=out,
                                storage_options=None, secret=None) for item in bad])
    series = [(r["study_key"], r["series_id"]) for r in rows(out, "series")]
    failures = [(r["study_key"], r["code"], r["attempt"])
                for r in TableStore(out).read("failures").to_pylist()]
    assert len(series) == len(set(series)) == 4
    assert sorted(failures) == [("1.2.826.0.1.9.100", "not_ct", 1),
                                ("1.2.826.0.1.9.200", "no_eligible_series", 1),
                                ("1.2.826.0.1.9.300", "truncated", 1)]


class _PoisonPlugin:
    """Makes one study kill its worker process when it is scored: every time, or only the
    first time when ``once`` names a marker file (shared by the worker processes)."""

    name = "calcpipe-test-poison"

    def __init__(self, study_key: str, once: str | None = None) -> None:
        self.study_key, self.once = study_key, once
        self.original: Any = None

    def setup(self, worker: Any) -> None:
        import os

        import calcpipe.flows.cluster as cluster

        self.original = original = cluster.score_study
        key, once = self.study_key, self.once

        def poisoned(item: Any, *args: Any, **kwargs: Any) -> Any:
            if item.study_key == key:
                if once is None:
                    os._exit(1)
                try:
                    with open(once, "x"):
                        pass
                except FileExistsError:
                    return original(item, *args, **kwargs)
                os._exit(1)
            return original(item, *args, **kwargs)

        cluster.score_study = poisoned

    def teardown(self, worker: Any) -> None:
        import calcpipe.flows.cluster as cluster

        if self.original is not None:
            cluster.score_study = self.original


def _poisoned_flow(dask_address: str, src: Path, out: Path, study: str,
                   once: str | None = None) -> tuple[str, dict[str, Any]]:
    import sys

    import cloudpickle
    import pydicom
    from distributed import Client, WorkerPlugin

    poison = str(pydicom.dcmread(next((src / study).rglob("*.dcm")),
                                 stop_before_pixels=True).StudyInstanceUID)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests
    plugin = type("PoisonPlugin", (_PoisonPlugin, WorkerPlugin), {})(poison, once)
    with Client(dask_address, set_as_default=False) as client:
        client.register_plugin(plugin)
        try:
            return poison, flow(src, out, dask_address)
        finally:
            client.unregister_worker_plugin(plugin.name)


def test_a_study_that_kills_its_workers_becomes_one_failure_row(
        prefect_api, dask_address, pool, tmp_path):
    src, out = cohort(pool, tmp_path / "src", [3, 4, 5]), tmp_path / "out"
    poison, row = _poisoned_flow(dask_address, src, out, "study_00004")
    assert [(f["study_key"], f["stage"], f["code"]) for f in rows(out, "failures")] == [
        (poison, "score", "worker_lost")]
    assert (row["studies_scored"], row["studies_failed"]) == (2, 1)


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(
        prefect_api, dask_address, pool, tmp_path):
    src, out = cohort(pool, tmp_path / "src", [0, 3, 4]), tmp_path / "out"
    _, row = _poisoned_flow(dask_address, src, out, "study_00003",
                            once=str(tmp_path / "killed-once"))
    assert (tmp_path / "killed-once").exists()  # the worker did die
    assert (row["studies_scored"], row["studies_failed"]) == (3, 0)
    results = TableStore(str(out)).read("study_scores").column("result_id").to_pylist()
    assert len(results) == len(set(results)) == 3
    assert TableStore(str(out)).read("vessel_scores").num_rows == 30


class _Killed(Exception):
    pass


def test_a_flow_killed_between_commits_resumes_with_one_result_per_study(
        prefect_api, dask_address, pool, tmp_path, monkeypatch):
    from calcpipe.tables.store import TableStore as Store

    src, out = cohort(pool, tmp_path / "src", [0, 1, 2, 5]), tmp_path / "out"
    original, calls = Store.insert_absent, []

    def dies_on_second_marker(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "study_scores":
            calls.append(1)
            if len(calls) == 2:  # shard 2's rows are appended, its marker never is
                raise _Killed("the flow process is killed")
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(Store, "insert_absent", dies_on_second_marker)
    with pytest.raises(_Killed, match="killed"):
        flow(src, out, dask_address)  # shards of 2 studies
    monkeypatch.setattr(Store, "insert_absent", original)
    store = TableStore(str(out))
    assert store.read("study_scores").num_rows == 2
    assert store.read("vessel_scores").num_rows == 40  # shard 2's rows, without marker
    assert list((out / "_scratch").iterdir()) == []  # a failed run leaves no object paths
    resumed = flow(src, out, dask_address)
    assert (resumed["studies_skipped"], resumed["studies_scored"]) == (2, 2)
    results = store.read("study_scores").column("result_id").to_pylist()
    assert len(results) == len(set(results)) == 4
    assert store.read("vessel_scores").num_rows == 40


def test_a_retried_flow_run_counts_each_result_once(
        prefect_api, dask_address, pool, tmp_path, monkeypatch):
    """A flow retry keeps the flow run's id: the rows its first attempt appended before
    dying, under that id, must not count a second time beside the retry's."""
    from calcpipe.flows.score_cohort import score_cohort

    from calcpipe.tables.store import TableStore as Store

    src, out = cohort(pool, tmp_path / "src", [0, 1]), tmp_path / "out"
    original, calls = Store.insert_absent, []

    def dies_at_first_marker(self: Any, name: str, *args: Any, **kwargs: Any) -> None:
        if name == "study_scores":
            calls.append(1)
            if len(calls) == 1:
                raise _Killed("the first attempt dies before its marker")
        original(self, name, *args, **kwargs)

    monkeypatch.setattr(Store, "insert_absent", dies_at_first_marker)
    params = ScoreParams(source=str(src), out=str(out), cluster=dask_address, shard_size=2,
                         in_flight=2)
    retried = score_cohort.with_options(retries=1, retry_delay_seconds=0)
    row = retried(params, show_progress=False)
    assert len(calls) == 2 and row["studies_scored"] == 2
    from calcpipe.catalog import open_catalog

    names = open_catalog(out).query(
        "SELECT study_key, name, count(*) FROM latest_vessel_scores GROUP BY 1, 2").fetchall()
    assert len(names) == 2 * 10 and {n for _, _, n in names} == {1}
    assert TableStore(str(out)).read("vessel_scores").num_rows == 2 * 10


def test_transient_s3_faults_are_retried_and_lose_nothing(pool, tmp_path, local_s3):
    from calcpipe.ingest.local_s3 import FlakyProxy

    src = cohort(pool, tmp_path / "src", [0, 1])
    url = local_s3.upload(src, "s3://calcpipe-flaky/cohort")
    clean = {"client_kwargs": {"endpoint_url": local_s3.endpoint_url},
             "skip_instance_cache": True}
    run_single_process(ScoreParams(source=url, out="s3://calcpipe-flaky/clean",
                                   storage_options=clean))
    with FlakyProxy(local_s3.endpoint_url, every=7) as proxy:
        flaky = {"client_kwargs": {"endpoint_url": proxy.endpoint_url},
                 "skip_instance_cache": True}
        row = run_single_process(ScoreParams(source=url, out="s3://calcpipe-flaky/flaky",
                                             storage_options=flaky))
    assert proxy.injected >= 10, proxy.injected  # faults were really injected
    assert (row["studies_scored"], row["studies_failed"]) == (2, 0)
    for name in (*RESULT_TABLES, "dicom_instances"):
        assert rows("s3://calcpipe-flaky/flaky", name, storage_options=clean) == rows(
            "s3://calcpipe-flaky/clean", name, storage_options=clean), name
