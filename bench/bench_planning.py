"""Benchmark: index and plan a 100,000-study cohort through the Prefect flow.

The flow process must stay under 1 GB and create at most about 1,000 Prefect task runs.
Set-up (not timed, in this process): a source of STUDIES x INSTANCES one-byte files, and
``dicom_instances`` rows for all of them, cloned from the real header rows of one
synthetic study (so every object is unchanged: nothing is read, as on a nightly re-run of a
registry whose new studies have all been indexed, and every study passes series selection).
The flow then runs in a child process with ``plan_only`` on a LocalCluster of 2 workers:
it lists the source, diffs it against ``dicom_instances`` and plans every study in
partitions on the workers. Reported from the child: its peak resident memory (the flow
process, with the Dask scheduler in it), the stage times, the task runs Prefect recorded,
and the task runs a scoring run of the same plan adds (one per shard).

Usage: ``python bench/bench_planning.py [STUDIES] [INSTANCES]`` (defaults 100000 and 4).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

STUDIES = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1] != "--child" else 100_000
INSTANCES = int(sys.argv[2]) if len(sys.argv) > 2 and sys.argv[1] != "--child" else 4
MTIME = 1_700_000_000.0


def make_source(root: Path) -> list[str]:
    """STUDIES x INSTANCES one-byte files with one mtime; their relative paths."""
    relative = []
    for i in range(STUDIES):
        folder = root / f"{i // 1000:03d}" / f"study_{i:06d}"
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(INSTANCES):
            path = folder / f"{k:04d}.dcm"
            path.write_bytes(b"\0")
            os.utime(path, (MTIME, MTIME))
            relative.append(f"{i // 1000:03d}/study_{i:06d}/{k:04d}.dcm")
    return relative


def make_instances(out: Path, relative: list[str], template_dir: Path) -> None:
    """``dicom_instances`` rows for every file, cloned from one real study's rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from calcpipe.pipeline import ScoreParams
    from calcpipe.pipeline.run import Run, in_process
    from calcpipe.synthetic import write_cohort
    from calcpipe.tables import TableStore

    cohort = write_cohort(template_dir / "cohort", studies=1, seed=3, matrix=64, workers=1)
    run = Run(ScoreParams(source=str(cohort), out=str(template_dir / "out")), None)
    run.index(in_process)
    template = run.store.read("dicom_instances")
    z = pc.list_element(pc.list_element(template.column("positions_mm"), 0), 2)
    template = template.take(pc.sort_indices(z)).slice(0, INSTANCES)
    store = TableStore(str(out))
    chunk = 25_000  # studies per Delta commit
    for first in range(0, STUDIES, chunk):
        studies = range(first, min(first + chunk, STUDIES))
        table = pa.concat_tables([template] * len(studies))
        ids = [hashlib.sha256(relative[i * INSTANCES + k].encode()).hexdigest()
               for i in studies for k in range(INSTANCES)]
        replace = {
            "object_id": pa.array(ids),
            "study_key": pa.array([f"2.25.{i}" for i in studies for _ in range(INSTANCES)]),
            "series_key": pa.array([f"2.25.{i}.1" for i in studies for _ in range(INSTANCES)]),
            "sop_instance_uid": pa.array([f"2.25.{i}.1.{k}" for i in studies
                                          for k in range(INSTANCES)]),
            "size_bytes": pa.array([1] * len(ids), pa.int64()),
            "mtime_s": pa.array([MTIME] * len(ids)),
            "etag": pa.nulls(len(ids), pa.string()),
        }
        for name, values in replace.items():
            table = table.set_column(table.schema.get_field_index(name), name, values)
        store.append("dicom_instances", table)


def peak_rss_mb() -> float:
    """This process's peak resident memory since it started (VmHWM: unlike ru_maxrss, it
    does not carry over the parent's memory from before the exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(source: str, out: str) -> None:
    """Run the flow (plan only) and print what it cost, as JSON."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    from calcpipe.flows.score_cohort import score_cohort
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from calcpipe.pipeline import ScoreParams
    from calcpipe.pipeline.plan import PLAN_PARTITION_OBJECTS

    before = peak_rss_mb()
    start = time.perf_counter()
    params = ScoreParams(source=source, out=out, plan_only=True, workers=2)
    row = score_cohort(params, show_progress=False)
    wall = time.perf_counter() - start
    peak = peak_rss_mb()
    runs: list[Any] = []
    with get_client(sync_client=True) as client:
        while page := client.read_task_runs(flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[row["run_id"]])), limit=200, offset=len(runs)):
            runs.extend(page)
    shards = -(-row["studies_planned"] // params.shard_size)
    print(json.dumps({"peak_mb": peak, "before_flow_mb": before, "wall_s": wall,
                      "task_runs": sorted(r.name for r in runs), "row": row,
                      "shards": shards, "partition_objects": PLAN_PARTITION_OBJECTS},
                     default=str))


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        relative = make_source(root / "source")
        make_instances(root / "out", relative, root / "template")
        setup = time.perf_counter() - start
        env = {**os.environ, "PREFECT_HOME": str(root / "prefect")}
        done = subprocess.run([sys.executable, __file__, "--child", str(root / "source"),
                               str(root / "out")], env=env, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr[-4000:])
            raise SystemExit(done.returncode)
        result = json.loads(done.stdout.strip().splitlines()[-1])
    row = result["row"]
    names = result["task_runs"]
    print(f"planning: {STUDIES} studies x {INSTANCES} objects (set-up {setup:.0f} s, untimed),"
          f" flow with plan_only on 2 workers")
    print(f"  flow process peak RSS: {result['peak_mb']:.0f} MB (target < 1024 MB; "
          f"{result['before_flow_mb']:.0f} MB after imports, before the flow)")
    print(f"  listed {row['objects_listed']} objects, read {row['headers_read']} headers; "
          f"found {row['studies_found']} studies, planned {row['studies_planned']}")
    print(f"  index {row['index_s']:.1f} s, plan {row['plan_s']:.1f} s "
          f"(partitions of {result['partition_objects']} objects), "
          f"whole flow call {result['wall_s']:.1f} s")
    print(f"  Prefect task runs of this plan-only run: {len(names)} ({', '.join(names)}); "
          f"a scoring run adds one per shard: {result['shards']} shards of 200 -> "
          f"{len(names) + result['shards']} task runs (target about 1,000)")
    assert row["studies_found"] == STUDIES and row["headers_read"] == 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        main()
