"""Weekly housekeeping flow: compact and vacuum the output tables (calcpipe.tables)."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger

from calcpipe.tables.housekeeping import (
    DEFAULT_RETENTION_HOURS,
    housekeep,
    remove_abandoned_scratch,
)


@flow(name="housekeeping", validate_parameters=True)
def housekeeping(out: str, retention_hours: int = DEFAULT_RETENTION_HOURS,
                 storage_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Compact every table of ``out``, vacuum unreferenced files older than the retention
    period, and delete the scratch folders of runs that died before it."""
    logger = get_run_logger()
    report = housekeep(out, storage_options, retention_hours=retention_hours)
    for t in report:
        logger.info("%s: %d -> %d files, %d vacuumed (version %d -> %d)", t.table,
                    t.files_before, t.files_after, t.files_vacuumed, t.version_before,
                    t.version_after)
    scratch = remove_abandoned_scratch(out, storage_options, retention_hours=retention_hours)
    logger.info("scratch folders of abandoned runs removed: %d", scratch)
    return [t.__dict__ for t in report]
