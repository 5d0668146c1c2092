"""Transactional, append-only tables: Delta Lake (Parquet files plus a transaction log).

Each table lives at ``OUT/tables/<name>/``. An append is one Delta commit: its rows become
visible all together or not at all, on local disk and on S3 alike (delta-rs commits with a
conditional put; no lock service). Readers go through the transaction log
(:meth:`TableStore.dataset`), never by globbing Parquet files, because a delete leaves
unreferenced files behind until they are vacuumed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from calcpipe.tables.schemas import TABLES, arrow_schema

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads


def delta_storage_options(storage_options: Mapping[str, Any] | None) -> dict[str, str] | None:
    """fsspec/s3fs options (``key``, ``secret``, ``endpoint_url`` or ``client_kwargs``)
    as delta-rs object-store options. Credentials absent here come from the environment."""
    if not storage_options:
        return None
    opts = dict(storage_options)
    client = dict(opts.get("client_kwargs") or {})
    endpoint = opts.get("endpoint_url") or client.get("endpoint_url")
    region = client.get("region_name") or opts.get("region") or os.environ.get("AWS_REGION")
    out: dict[str, str] = {}
    if opts.get("key"):
        out["AWS_ACCESS_KEY_ID"] = str(opts["key"])
    if opts.get("secret"):
        out["AWS_SECRET_ACCESS_KEY"] = str(opts["secret"])
    if opts.get("token"):
        out["AWS_SESSION_TOKEN"] = str(opts["token"])
    if endpoint:
        out["AWS_ENDPOINT_URL"] = str(endpoint)
        if str(endpoint).startswith("http://"):
            out["AWS_ALLOW_HTTP"] = "true"
    out["AWS_REGION"] = str(region or "us-east-1")
    return out


#: Characters of a local folder's path that delta-rs (deltalake 1.x) cannot write under: it
#: parses the path as a URL, panicking on these and decoding ``%XX`` (measured with each
#: ASCII punctuation character; ``tests/test_catalog.py``).
_UNWRITABLE = re.compile(r"[\[\]^|\\]|%[0-9A-Fa-f]{2}|[\x00-\x1f]")


def check_local_root(path: str) -> None:
    """Raises ValueError where the tables cannot be kept under local folder ``path``."""
    found = _UNWRITABLE.search(path)
    if found:
        raise ValueError(f"the output folder {path!r} contains {found.group()!r}: Delta Lake's "
                         "writer cannot keep tables under a path with [ ] ^ | \\, a control "
                         "character or %XX; choose another folder")


def join(root: str, *parts: str) -> str:
    """``root/part/...`` for a path or URL."""
    return "/".join([root.rstrip("/"), *parts])


class TableStore:
    """The calcpipe tables under ``root`` (a local path or an fsspec URL)."""

    def __init__(self, root: str | os.PathLike[str],
                 storage_options: Mapping[str, Any] | None = None) -> None:
        root = os.fspath(root)
        if "://" not in root:
            root = os.path.abspath(root)
        elif root.startswith("file://"):
            root = root[len("file://"):]
        if "://" not in root:
            check_local_root(root)
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {})
        self._delta_options = delta_storage_options(storage_options)

    def uri(self, name: str) -> str:
        if name not in TABLES:
            raise KeyError(f"no table {name!r}; tables: {sorted(TABLES)}")
        return join(self.root, "tables", name)

    def _delta(self, name: str) -> Any:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(name), storage_options=self._delta_options)
        except TableNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self._delta(name) is not None

    def version(self, name: str) -> int | None:
        table = self._delta(name)
        return None if table is None else int(table.version())

    def dataset(self, name: str) -> pads.Dataset:
        """The table's current snapshot as a pyarrow dataset (empty and typed when the
        table does not exist yet)."""
        import pyarrow.dataset as pads

        table = self._delta(name)
        if table is None:
            return pads.dataset(arrow_schema(name).empty_table())
        return table.to_pyarrow_dataset()

    def register(self, con: Any, name: str) -> None:
        """Make table ``name``'s current snapshot queryable as ``name`` in a DuckDB
        connection.

        Delta merges write string columns as string_view, and pyarrow cannot evaluate a
        string filter that DuckDB pushes down into a dataset whose files mix both types
        ("no kernel matching input types (string, string_view)"). So a local table is read
        by DuckDB's own Parquet reader from the files the Delta log lists (columns in the
        schema's order and type, NULL where older files lack one); an object-store table
        through its pyarrow dataset (DuckDB's httpfs needs a download, and its fsspec path
        does not retry transient faults), with the connection's filter pushdown into scans
        turned off."""
        table = self._delta(name)
        empty = arrow_schema(name).empty_table()
        files = [] if table is None else table.file_uris()
        if not files:
            con.register(name, empty)
        elif "://" in self.root or "deletionVectors" in (
                table.protocol().reader_features or []):
            con.execute("SET disabled_optimizers = 'filter_pushdown,join_filter_pushdown'")
            con.register(name, table.to_pyarrow_dataset())
        else:
            from urllib.parse import unquote

            # the schema's columns as DuckDB types, NULL where no file has a column yet
            con.register("_calcpipe_schema", empty)
            columns = con.execute("DESCRIBE _calcpipe_schema").fetchall()
            con.unregister("_calcpipe_schema")
            typed = ", ".join(f'CAST(NULL AS {kind}) AS "{column}"'
                              for column, kind, *_ in columns)
            # the log's URIs are percent-encoded; folders named key=value are no partitions
            paths = quoted([unquote(uri) for uri in files])
            con.execute(f"CREATE OR REPLACE VIEW {name} AS SELECT * FROM (SELECT {typed} "
                        f"WHERE false) UNION ALL BY NAME SELECT * FROM read_parquet([{paths}], "
                        "union_by_name = true, hive_partitioning = false)")

    def read(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return self.dataset(name).to_table(columns=columns)

    def append(self, name: str, table: pa.Table) -> None:
        """One Delta commit adding ``table``'s rows (cast to the table's schema)."""
        from deltalake import write_deltalake

        if table.num_rows == 0:
            return
        table = table.select(arrow_schema(name).names).cast(arrow_schema(name))
        _retrying(lambda: write_deltalake(self.uri(name), table, mode="append",
                                          storage_options=self._delta_options))

    def insert_absent(self, name: str, table: pa.Table, key: str | tuple[str, ...]) -> None:
        """Insert the rows whose ``key`` (a column, or columns) is not in the table yet (one
        atomic merge; safe against concurrent writers: a conflicting commit is retried on
        the new snapshot)."""
        from deltalake import write_deltalake
        from deltalake.exceptions import DeltaError

        if table.num_rows == 0:
            return
        table = table.select(arrow_schema(name).names).cast(arrow_schema(name))

        def once() -> None:
            current = self._delta(name)
            if current is None:
                try:
                    write_deltalake(self.uri(name), table, mode="error",
                                    storage_options=self._delta_options)
                    return
                except DeltaError:  # created meanwhile by another writer: merge into it
                    current = self._delta(name)
            columns = (key,) if isinstance(key, str) else key
            predicate = " AND ".join(f"t.{c} = s.{c}" for c in columns)
            current.merge(table, predicate=predicate, source_alias="s",
                          target_alias="t").when_not_matched_insert_all().execute()

        _retrying(once)

    def delete(self, name: str, predicate: str) -> None:
        """Delete the rows matching a SQL predicate (one commit)."""
        table = self._delta(name)
        if table is not None:
            _retrying(lambda: self._delta(name).delete(predicate))


def quoted(values: list[str]) -> str:
    """SQL string literals, comma-separated."""
    return ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(set(values)))


#: Attempts and first back-off (doubling) for Delta commits that conflict or hit a
#: transient object-store error.
COMMIT_ATTEMPTS, COMMIT_BACKOFF_S = 8, 0.05


def _retrying(operation: Any) -> Any:
    import random
    import time

    from deltalake.exceptions import CommitFailedError, DeltaError

    for attempt in range(COMMIT_ATTEMPTS):
        try:
            return operation()
        except (CommitFailedError, DeltaError, OSError) as e:
            if attempt == COMMIT_ATTEMPTS - 1 or not _transient(e):
                raise
            time.sleep(COMMIT_BACKOFF_S * 2**attempt * (1 + random.random()))
    return None


def _transient(error: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError

    if isinstance(error, CommitFailedError | OSError):
        return True
    text = str(error).lower()
    return any(word in text for word in ("conflict", "timeout", "timed out", "connection",
                                         "503", "500", "slow down", "throttl", "transaction"))
