"""Index stage: list the source, read the headers of new or changed objects only.

An object is unchanged when its ``object_id`` (hash of the path relative to the source),
size and ETag (object stores) or mtime (disks) equal those of its latest
``dicom_instances`` row; its header is then rebuilt from that row and nothing is read.
Header reads are cut into batches that the caller maps over workers (Dask futures in the
flow, a plain loop in a single process).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from calcpipe.ingest.discover import list_candidates, open_filesystem, read_headers
from calcpipe.ingest.headers import InstanceHeader
from calcpipe.keys import pseudonymise, table_key
from calcpipe.tables.schemas import SCHEMA_VERSION

#: Objects per header-reading batch (one unit of Dask work).
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
class IndexResult:
    headers: tuple[InstanceHeader, ...]  # every usable DICOM object now under the source
    new_rows: list[dict[str, Any]]  # dicom_instances rows for objects read this run
    objects_listed: int
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


def read_batch(source: str, storage_options: Mapping[str, Any] | None,
               objects: list[ListedObject], secret: bytes | None, run_id: str,
               ) -> list[dict[str, Any]]:
    """``dicom_instances`` rows for a batch of objects (runs on a worker)."""
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


def index(
    source: str, storage_options: Mapping[str, Any] | None, known: Iterable[dict[str, Any]],
    *, secret: bytes | None, run_id: str,
    map_batches: Callable[[list[list[ListedObject]]], list[list[dict[str, Any]]]],
) -> IndexResult:
    """List ``source``, read what is new or changed (through ``map_batches``), and return
    every usable header with the rows to append to ``dicom_instances``.

    ``known``: the existing ``dicom_instances`` rows (any order; the latest per object
    wins). ``map_batches`` turns batches of objects into row batches, calling
    :func:`read_batch` on each.
    """
    from calcpipe.ingest.discover import _url

    latest: dict[str, dict[str, Any]] = {}
    for row in known:
        previous = latest.get(row["object_id"])
        if previous is None or row["indexed_at"] >= previous["indexed_at"]:
            latest[row["object_id"]] = row
    listed = list_objects(source, storage_options, secret)
    to_read = [o for o in listed if not _unchanged(o, latest.get(o.object_id))]
    batches = [to_read[i:i + INDEX_BATCH] for i in range(0, len(to_read), INDEX_BATCH)]
    new_rows = [row for batch in map_batches(batches) for row in batch]
    current = dict(latest)
    current.update({row["object_id"]: row for row in new_rows})
    fs, _ = open_filesystem(source, storage_options)
    headers, skipped = [], Counter[str]()
    for o in listed:
        row = current[o.object_id]
        if row.get("skip_code"):
            skipped[row["skip_code"]] += 1
        else:
            headers.append(header_from_row(row, _url(fs, o.path)))
    return IndexResult(tuple(headers), new_rows, len(listed), len(to_read), skipped)


def _unchanged(o: ListedObject, row: Mapping[str, Any] | None) -> bool:
    if row is None or row["size_bytes"] != o.size:
        return False
    if o.etag is not None:
        return bool(row.get("etag") == o.etag)
    return o.mtime is not None and row.get("mtime_s") == o.mtime
