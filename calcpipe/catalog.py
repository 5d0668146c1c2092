"""The data catalog: every output table and view, as DuckDB, pandas or polars.

``data_catalog.yaml`` (shipped template at the project root, rendered into every output
folder by ``calcpipe score``) lists each table's location, format, partitioning, primary
key, schema version and columns (name, type, unit, description, nullable), and the views.
It is generated from :mod:`calcpipe.tables.schemas` (a test keeps the template in step).

Tables are Delta Lake tables, read through their transaction log. Views:

* ``latest_study_scores``: per (study_key, profile), the most recently scored result,
  whatever the model or pipeline version;
* ``latest_vessel_scores`` / ``latest_lesions``: the rows of those results;
* ``committed_vessel_scores`` / ``committed_lesions``: rows of every committed result (a
  commit interrupted half-way can leave rows without their ``study_scores`` marker until
  the next run removes them; these views never show them).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from calcpipe.tables.schemas import SCHEMA_VERSION, TABLES
from calcpipe.tables.store import TableStore, join

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

VIEWS: dict[str, tuple[str, str]] = {
    "latest_study_scores": (
        "Per (study_key, profile), the most recently scored result across model and "
        "pipeline versions.",
        "SELECT * EXCLUDE (_rank) FROM (SELECT *, row_number() OVER (PARTITION BY "
        "study_key, profile ORDER BY scored_at DESC, run_id DESC) AS _rank "
        "FROM study_scores) WHERE _rank = 1"),
    "latest_vessel_scores": (
        "vessel_scores rows of latest_study_scores.",
        "SELECT v.* FROM vessel_scores v SEMI JOIN latest_study_scores s "
        "ON v.result_id = s.result_id AND v.run_id = s.run_id"),
    "latest_lesions": (
        "lesions rows of latest_study_scores.",
        "SELECT l.* FROM lesions l SEMI JOIN latest_study_scores s "
        "ON l.result_id = s.result_id AND l.run_id = s.run_id"),
    "committed_vessel_scores": (
        "vessel_scores rows whose result is committed (has its study_scores row).",
        "SELECT v.* FROM vessel_scores v SEMI JOIN study_scores s "
        "ON v.result_id = s.result_id AND v.run_id = s.run_id"),
    "committed_lesions": (
        "lesions rows whose result is committed.",
        "SELECT l.* FROM lesions l SEMI JOIN study_scores s "
        "ON l.result_id = s.result_id AND l.run_id = s.run_id"),
}

_HEADER = """\
# calcpipe data catalog. Generated from calcpipe/tables/schemas.py by
# `python -m calcpipe.catalog` (a test keeps this template in step with the code).
# `calcpipe score` renders a copy into OUT/data_catalog.yaml with {root} replaced by the
# output location. Open it with calcpipe.catalog.open_catalog(OUT) or `calcpipe query`.
"""


def catalog_document(root: str = "{root}") -> dict[str, Any]:
    """The catalog as a plain mapping (tables with columns, then views)."""
    tables = {}
    for spec in TABLES.values():
        tables[spec.name] = {
            "path": join(root, "tables", spec.name),
            "format": "delta",
            "file_format": "parquet",
            "description": spec.description,
            "partitioning": list(spec.partitioning),
            "primary_key": list(spec.primary_key),
            "schema_version": SCHEMA_VERSION,
            "columns": [{"name": c.name, "type": c.type, "unit": c.unit,
                         "nullable": c.nullable, "description": c.description}
                        for c in spec.columns],
        }
    views = {name: {"description": d, "sql": sql} for name, (d, sql) in VIEWS.items()}
    return {"version": 1, "catalog": "calcpipe", "schema_version": SCHEMA_VERSION,
            "schema_evolution": "add nullable columns only; schema_version on every row",
            "masks": join(root, "masks", "{study_key}.nii.gz"),
            "report": join(root, "report"), "tables": tables, "views": views}


def catalog_yaml(root: str = "{root}") -> str:
    import yaml

    return _HEADER + yaml.safe_dump(catalog_document(root), sort_keys=False, width=100)


def render_catalog(out: str, storage_options: Mapping[str, Any] | None = None) -> str:
    """Write ``OUT/data_catalog.yaml``; its location."""
    from calcpipe.ingest.discover import open_filesystem

    target = join(out, "data_catalog.yaml")
    fs, path = open_filesystem(target, storage_options)
    fs.makedirs(os.path.dirname(path) if "://" not in target else path.rsplit("/", 1)[0],
                exist_ok=True)
    fs.pipe_file(path, catalog_yaml(out.rstrip("/")).encode("utf-8"))
    return target


class Catalog:
    """The tables and views of one output location."""

    def __init__(self, root: str | os.PathLike[str],
                 storage_options: Mapping[str, Any] | None = None) -> None:
        self.store = TableStore(root, storage_options)
        self._con: duckdb.DuckDBPyConnection | None = None

    def _connection(self) -> duckdb.DuckDBPyConnection:
        if self._con is None:
            self._con = self.connect()
        return self._con

    @property
    def names(self) -> list[str]:
        return [*TABLES, *VIEWS]

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with every table registered and every view created."""
        import duckdb

        con = duckdb.connect()
        for name in TABLES:
            self.store.register(con, name)
        for name, (_, sql) in VIEWS.items():
            con.execute(f"CREATE VIEW {name} AS {sql}")
        return con

    def relation(self, name: str, con: duckdb.DuckDBPyConnection | None = None,
                 ) -> duckdb.DuckDBPyRelation:
        if name not in self.names:
            raise KeyError(f"no table or view {name!r}; known: {self.names}")
        return (con or self._connection()).table(name)

    def arrow(self, name: str) -> pa.Table:
        if name in TABLES:
            return self.store.read(name)
        return self.relation(name).to_arrow_table()

    def pandas(self, name: str) -> Any:
        return self.arrow(name).to_pandas()

    def polars(self, name: str) -> Any:
        import polars as pl

        return pl.from_arrow(self.arrow(name))

    def query(self, sql: str) -> duckdb.DuckDBPyRelation:
        """Run DuckDB SQL over the tables and views."""
        return self._connection().sql(sql)


def open_catalog(root: str | os.PathLike[str],
                 storage_options: Mapping[str, Any] | None = None) -> Catalog:
    """The catalog of an output location (path or URL) written by ``calcpipe score``;
    FileNotFoundError where it holds no tables (a wrong path would read as no results)."""
    from calcpipe.ingest.discover import open_filesystem

    catalog = Catalog(root, storage_options)
    fs, tables = open_filesystem(join(catalog.store.root, "tables"), storage_options)
    if not fs.isdir(tables):
        raise FileNotFoundError(f"no calcpipe output at {os.fspath(root)} (no tables/ folder): "
                                "check --out, or run calcpipe score first")
    return catalog


if __name__ == "__main__":  # regenerate the template
    from pathlib import Path

    template = Path(__file__).resolve().parent / "data_catalog.yaml"
    template.write_text(catalog_yaml(), encoding="utf-8")
    print(f"wrote {template}")
