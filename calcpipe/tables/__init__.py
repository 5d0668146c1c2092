"""Output tables: versioned schemas (:mod:`.schemas`) and transactional storage (:mod:`.store`)."""

from calcpipe.tables.schemas import SCHEMA_VERSION, TABLES, arrow_schema, to_table
from calcpipe.tables.store import TableStore

__all__ = ["SCHEMA_VERSION", "TABLES", "TableStore", "arrow_schema", "to_table"]
