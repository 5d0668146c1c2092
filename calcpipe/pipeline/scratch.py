"""A run's scratch files: Parquet under ``OUT/_scratch/<run_id>/`` (disk or object store).

They carry what the stages hand each other at cohort scale (the listing, the objects to
read, the planned studies) so that the flow process holds counts only. They hold object
paths (INTERNAL: paths may hold names): the run deletes its folder when it finishes or
fails, and housekeeping deletes folders of runs that were killed (older than the retention).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from calcpipe.ingest.discover import open_filesystem
from calcpipe.tables.store import join

if TYPE_CHECKING:
    import pyarrow as pa

#: Folder under the output root holding each run's scratch files.
SCRATCH = "_scratch"


def scratch_root(out_root: str, run_id: str) -> str:
    return join(out_root, SCRATCH, run_id)


def write_table(path: str, table: pa.Table,
                storage_options: Mapping[str, Any] | None) -> None:
    """One Parquet file, written in one request (retried by the object store client)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, target = open_filesystem(path, storage_options)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    fs.pipe_file(target, sink.getvalue().to_pybytes())


def read_table(path: str, storage_options: Mapping[str, Any] | None,
               columns: list[str] | None = None) -> pa.Table:
    import pyarrow as pa
    import pyarrow.parquet as pq

    fs, target = open_filesystem(path, storage_options)
    return pq.read_table(pa.BufferReader(fs.cat_file(target)), columns=columns)


def write_groups(folder: str, table: pa.Table, rows_per_group: int,
                 storage_options: Mapping[str, Any] | None) -> list[int]:
    """Cut ``table`` into files of ``rows_per_group`` rows (the last one shorter), one per
    unit of downstream work; the rows of each."""
    sizes = []
    for number, start in enumerate(range(0, table.num_rows, rows_per_group)):
        chunk = table.slice(start, rows_per_group)
        write_table(group_path(folder, number), chunk, storage_options)
        sizes.append(chunk.num_rows)
    return sizes


def group_path(folder: str, group: int) -> str:
    return join(folder, f"group-{group:06d}.parquet")


def group_rows(folder: str, group: int,
               storage_options: Mapping[str, Any] | None) -> list[dict[str, Any]]:
    return list(read_table(group_path(folder, group), storage_options).to_pylist())


def remove(path: str, storage_options: Mapping[str, Any] | None) -> None:
    fs, target = open_filesystem(path, storage_options)
    if fs.exists(target):
        fs.rm(target, recursive=True)


#: A run's scratch folder is removed only after at least this many hours without a write:
#: a running run writes its heartbeat at every shard commit (:func:`heartbeat`), and a
#: retention of 0 hours (for the tables' vacuum) must not take a live run's folder.
MIN_ABANDONED_HOURS = 1.0


def heartbeat(folder: str, storage_options: Mapping[str, Any] | None) -> None:
    """Marks a run's scratch folder as in use (see :func:`remove_abandoned`)."""
    fs, target = open_filesystem(join(folder, "heartbeat"), storage_options)
    fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(target, b"")


def remove_abandoned(out_root: str, storage_options: Mapping[str, Any] | None, *,
                     older_than_hours: float, dry_run: bool = False) -> int:
    """Delete the scratch folders of runs that died (no file written for
    ``older_than_hours``, at least :data:`MIN_ABANDONED_HOURS`); how many there were. A
    finished run has deleted its own. A folder with no file yet is as old as the folder
    (on disk; an object store has no empty folders)."""
    import time

    fs, root = open_filesystem(join(out_root, SCRATCH), storage_options)
    if not fs.exists(root):
        return 0
    now = time.time()
    cutoff = now - max(older_than_hours, MIN_ABANDONED_HOURS) * 3600
    removed = 0
    for folder in fs.ls(root, detail=False):
        files = fs.find(folder, detail=True).values()
        newest = max((_modified(info) for info in files),
                     default=_modified(fs.info(folder)) or now)
        if newest < cutoff:
            removed += 1
            if not dry_run:
                fs.rm(folder, recursive=True)
    return removed


def _modified(info: Mapping[str, Any]) -> float:
    from calcpipe.ingest.discover import _mtime

    return _mtime(dict(info)) or 0.0
