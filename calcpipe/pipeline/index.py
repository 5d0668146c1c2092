"""Index stage: list the source, read the headers of new or changed objects only.

An object is unchanged when its ``object_id`` (hash of the path relative to the source),
size and ETag (object stores) or mtime (disks) equal those of its latest
``dicom_instances`` row; its header is then rebuilt from that row and nothing is read.

Nothing here holds the whole cohort in the caller's memory: :func:`list_source` (one task
on a worker) writes the run's listing and the objects to read to the run's scratch folder
(:mod:`calcpipe.pipeline.scratch`), the latter in files of :data:`INDEX_TASK_OBJECTS`; each
:func:`read_group` (one task per file) reads those headers and appends their rows to
``dicom_instances`` itself; and :func:`current_headers` gives one partition of the studies'
current header rows to the plan stage. The scratch folder holds object paths (INTERNAL: they
may hold names); the run deletes it when it finishes or fails, housekeeping deletes those of
killed runs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from calcpipe.ingest.discover import list_candidates, open_filesystem, read_headers
from calcpipe.ingest.headers import InstanceHeader
from calcpipe.keys import pseudonymise, table_key
from calcpipe.pipeline.scratch import group_rows, read_table, write_groups, write_table
from calcpipe.tables.schemas import SCHEMA_VERSION, to_table
from calcpipe.tables.store import join

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from calcpipe.tables.store import TableStore

#: Objects per header-reading task (one scratch file, one Delta commit).
INDEX_TASK_OBJECTS = 4096
#: Objects whose headers are requested together inside a task.
INDEX_BATCH = 256

_RENAMED = {"mtime": "mtime_s"}
_PSEUDONYMISED = ("study_key", "series_key", "sop_instance_uid")


@dataclass(frozen=True)
class ListedObject:
    """An object under the source. ``path`` is INTERNAL (may hold names)."""

    object_id: str
    path: str
    size: int
    etag: str | None
    mtime: float | None

    @property
    def info(self) -> dict[str, Any]:
        return {"size": self.size, "ETag": self.etag, "mtime": self.mtime, "type": "file"}


@dataclass(frozen=True)
class Listing:
    """What :func:`list_source` found (counts only)."""

    objects_listed: int
    to_read: int
    read_tasks: int  # files in scratch/to_read/
    skipped: Counter[str]  # skip codes of the unchanged objects


@dataclass(frozen=True)
class GroupRead:
    """What one :func:`read_group` task read (counts only)."""

    headers_read: int
    skipped: Counter[str]


def object_id(relative_path: str, secret: bytes | None) -> str:
    if secret:
        return pseudonymise(relative_path, secret)
    return hashlib.sha256(relative_path.encode("utf-8")).hexdigest()


def list_objects(source: str, storage_options: Mapping[str, Any] | None,
                 secret: bytes | None) -> list[ListedObject]:
    """Every candidate object under ``source`` (see :func:`list_candidates`)."""
    from calcpipe.ingest.discover import _etag, _mtime

    fs, root = open_filesystem(source, storage_options)
    prefix = root.rstrip("/") + "/"
    listed = []
    for path, info in list_candidates(fs, root):
        relative = path[len(prefix):] if path.startswith(prefix) else path.rsplit("/", 1)[-1]
        listed.append(ListedObject(object_id(relative, secret), path,
                                   int(info.get("size") or 0), _etag(info), _mtime(info)))
    return listed


_LISTING_FIELDS = (("object_id", "string"), ("path", "string"), ("url", "string"),
                   ("size", "int64"), ("etag", "string"), ("mtime", "float64"))


def _listing_schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema([(name, getattr(pa, kind)()) for name, kind in _LISTING_FIELDS])


def list_source(source: str, storage_options: Mapping[str, Any] | None, store: TableStore,
                scratch: str, secret: bytes | None) -> Listing:
    """List ``source`` into ``scratch/listing.parquet`` and write the new or changed
    objects to ``scratch/to_read/`` (runs on a worker; returns counts only)."""
    import pyarrow as pa

    from calcpipe.ingest.discover import _url

    fs, _ = open_filesystem(source, storage_options)
    listed = list_objects(source, storage_options, secret)
    listing = pa.Table.from_pydict({
        "object_id": [o.object_id for o in listed], "path": [o.path for o in listed],
        "url": [_url(fs, o.path) for o in listed], "size": [o.size for o in listed],
        "etag": [o.etag for o in listed], "mtime": [o.mtime for o in listed]},
        schema=_listing_schema())
    del listed
    options = store.storage_options
    write_table(join(scratch, "listing.parquet"), listing, options)
    with _connection(store, listing) as con:
        con.execute(f"""
            CREATE TEMP TABLE checked AS
            SELECT l.*, k.skip_code,
                   k.object_id IS NULL OR k.size_bytes <> l.size
                   OR (l.etag IS NOT NULL AND k.etag IS DISTINCT FROM l.etag)
                   OR (l.etag IS NULL AND (l.mtime IS NULL OR k.mtime_s IS DISTINCT FROM l.mtime))
                   AS changed
            FROM listing l LEFT JOIN ({_LATEST}) k USING (object_id)""")
        to_read = arrow(con, "SELECT object_id, path, url, size, etag, mtime FROM checked "
                        "WHERE changed ORDER BY path")
        skipped = Counter[str](dict(con.execute(
            "SELECT skip_code, count(*) FROM checked WHERE NOT changed "
            "AND skip_code IS NOT NULL GROUP BY skip_code").fetchall()))
    groups = write_groups(join(scratch, "to_read"), to_read.cast(_listing_schema()),
                          INDEX_TASK_OBJECTS, options)
    return Listing(listing.num_rows, to_read.num_rows, len(groups), skipped)


def read_group(source: str, storage_options: Mapping[str, Any] | None, store: TableStore,
               scratch: str, group: int, secret: bytes | None, run_id: str) -> GroupRead:
    """Read the headers of the objects of scratch file ``group`` and append their
    ``dicom_instances`` rows (one Delta commit; runs on a worker)."""
    rows = group_rows(join(scratch, "to_read"), group, store.storage_options)
    objects = [ListedObject(r["object_id"], r["path"], r["size"], r["etag"], r["mtime"])
               for r in rows]
    new_rows = [row for start in range(0, len(objects), INDEX_BATCH)
                for row in read_batch(source, storage_options,
                                      objects[start:start + INDEX_BATCH], secret, run_id)]
    store.append("dicom_instances", to_table("dicom_instances", new_rows))
    return GroupRead(len(new_rows), Counter(r["skip_code"] for r in new_rows
                                            if r.get("skip_code")))


def read_batch(source: str, storage_options: Mapping[str, Any] | None,
               objects: list[ListedObject], secret: bytes | None, run_id: str,
               ) -> list[dict[str, Any]]:
    """``dicom_instances`` rows for a batch of objects."""
    fs, _ = open_filesystem(source, storage_options)
    scan = read_headers(fs, [(o.path, o.info) for o in objects])
    now = dt.datetime.now(dt.UTC)
    by_url = {h.url: h for h in scan.headers}
    skipped = {s.url: s.code for s in scan.skipped}
    rows = []
    for o, url in zip(objects, _urls(fs, objects), strict=True):
        row: dict[str, Any] = {"object_id": o.object_id, "size_bytes": o.size,
                               "etag": o.etag, "mtime_s": o.mtime, "run_id": run_id,
                               "indexed_at": now, "schema_version": SCHEMA_VERSION}
        header = by_url.get(url)
        if header is None:
            row["skip_code"] = skipped.get(url, "unreadable")
        else:
            for f in fields(InstanceHeader):
                if f.name in ("url", "series_description", "size_bytes", "etag", "mtime"):
                    continue
                value = getattr(header, f.name)
                if f.name in _PSEUDONYMISED:
                    value = table_key(value, secret)
                row[f.name] = list(value) if isinstance(value, tuple) else value
            row["positions_mm"] = [list(p) for p in header.positions_mm]
        rows.append(row)
    return rows


def _urls(fs: Any, objects: list[ListedObject]) -> list[str]:
    from calcpipe.ingest.discover import _url

    return [_url(fs, o.path) for o in objects]


def header_from_row(row: Mapping[str, Any], url: str) -> InstanceHeader:
    """Rebuild a header from its ``dicom_instances`` row (keys as stored)."""
    values: dict[str, Any] = {}
    for f in fields(InstanceHeader):
        column = _RENAMED.get(f.name, f.name)
        value = row.get(column)
        if f.name == "url":
            value = url
        elif f.name == "positions_mm":
            value = tuple(tuple(p) for p in (value or ()))
        elif isinstance(value, list):
            value = tuple(value)
        values[f.name] = value
    return InstanceHeader(**values)


def current_headers(store: TableStore, scratch: str, part: int, parts: int,
                    ) -> Iterator[InstanceHeader]:
    """The usable headers of the objects listed this run whose study falls in partition
    ``part`` of ``parts`` (by a hash of the study key), from their latest rows."""
    listing = read_table(join(scratch, "listing.parquet"), store.storage_options,
                         ["object_id", "url"])
    with _connection(store, listing) as con:
        reader: Any = con.sql(f"""
            SELECT l.url AS _url, k.* FROM listing l JOIN ({_LATEST}) k USING (object_id)
            WHERE k.skip_code IS NULL AND {partition_filter('k.study_key', parts)} = ?""",
                              params=[part]).to_arrow_reader(INDEX_TASK_OBJECTS)
        for batch in reader:
            for row in batch.to_pylist():
                yield header_from_row(row, row["_url"])


# -- DuckDB over the tables and the scratch files ------------------------------------------

#: The latest ``dicom_instances`` row of each object.
_LATEST = """SELECT * FROM dicom_instances
             QUALIFY row_number() OVER (PARTITION BY object_id ORDER BY indexed_at DESC) = 1"""


def arrow(con: duckdb.DuckDBPyConnection, sql: str, parameters: list[Any] | None = None,
          ) -> pa.Table:
    """A query's result as an Arrow table."""
    table = con.sql(sql, params=parameters or None).to_arrow_table()
    assert table is not None
    return table


def partition_filter(column: str, parts: int) -> str:
    """SQL: the plan partition (0 .. parts-1) of a study key column."""
    return f"(hash({column}) % {int(parts)})"


class _connection:
    """A DuckDB connection with ``dicom_instances`` and ``listing`` registered."""

    def __init__(self, store: TableStore, listing: pa.Table) -> None:
        self.store, self.listing = store, listing

    def __enter__(self) -> duckdb.DuckDBPyConnection:
        import duckdb

        self.con = duckdb.connect()
        self.store.register(self.con, "dicom_instances")
        self.con.register("listing", self.listing)
        return self.con

    def __exit__(self, *exc: object) -> None:
        self.con.close()
