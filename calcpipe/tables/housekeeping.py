"""Housekeeping: compact the small files many shard commits leave, vacuum unreferenced ones.

Every shard commit adds one small Parquet file per table; ``compact`` rewrites them into
files of about 256 MB (a new Delta version: same rows, fewer files). ``vacuum`` then deletes
data files no longer referenced by any version younger than the retention period, and
:func:`remove_abandoned_scratch` the scratch folders of runs that died (older than it).

Retention (docs/tables.md): 168 hours by default. Readers holding an older snapshot, and
time travel to versions older than the retention, fail after a vacuum; a run in progress
is never affected (it reads the latest snapshot at each step). Housekeeping may run while a
scoring run commits: Delta retries a conflicting compaction on the new snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from calcpipe.tables.schemas import TABLES
from calcpipe.tables.store import TableStore, _retrying

DEFAULT_RETENTION_HOURS = 168


@dataclass(frozen=True)
class TableHousekeeping:
    table: str
    version_before: int
    version_after: int
    files_before: int
    files_after: int
    files_vacuumed: int


def housekeep(out: str, storage_options: Mapping[str, Any] | None = None, *,
              retention_hours: int = DEFAULT_RETENTION_HOURS,
              dry_run: bool = False) -> list[TableHousekeeping]:
    """Compact every table, then vacuum files older than ``retention_hours`` that no
    version references (``dry_run``: only count them)."""
    store = TableStore(out, storage_options)
    report = []
    for name in TABLES:
        table = store._delta(name)
        if table is None:
            continue
        version, files = table.version(), len(table.file_uris())
        if not dry_run:
            # each attempt on the table's latest snapshot: a commit that raced the last one
            # (a run's delete) must be read again, not retried against
            _retrying(lambda n=name: store._delta(n).optimize.compact())
            table = store._delta(name)
        removed = table.vacuum(retention_hours=retention_hours, dry_run=dry_run,
                               enforce_retention_duration=False)
        table = store._delta(name)
        report.append(TableHousekeeping(name, version, table.version(), files,
                                        len(table.file_uris()), len(removed)))
    return report


def remove_abandoned_scratch(out: str, storage_options: Mapping[str, Any] | None = None, *,
                             retention_hours: int = DEFAULT_RETENTION_HOURS,
                             dry_run: bool = False) -> int:
    """Delete the scratch folders (object paths) of runs that died more than
    ``retention_hours`` ago; how many."""
    from calcpipe.pipeline.scratch import remove_abandoned

    return remove_abandoned(out, storage_options, older_than_hours=retention_hours,
                            dry_run=dry_run)
