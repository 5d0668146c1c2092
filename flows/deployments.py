"""Schedules for one machine: ``calcpipe serve`` (Prefect's ``serve``, no work pool).

For a Prefect server with work pools, ``prefect.yaml`` at the repository root declares the
same two deployments (``prefect deploy --all``).
"""

from __future__ import annotations

from typing import Any

from calcpipe.pipeline.params import ScoreParams

NIGHTLY_CRON = "0 2 * * *"  # every night at 02:00
WEEKLY_CRON = "0 4 * * 0"  # Sundays at 04:00, after that night's run


def deployments(params: ScoreParams, *, nightly_cron: str = NIGHTLY_CRON,
                weekly_cron: str = WEEKLY_CRON, secret_block: str | None = None) -> list[Any]:
    """The nightly incremental scoring deployment and the weekly housekeeping one."""
    from calcpipe.flows.housekeeping import housekeeping
    from calcpipe.flows.score_cohort import score_cohort

    nightly = score_cohort.to_deployment(
        name=f"{params.cohort}-nightly", cron=nightly_cron,
        parameters={"params": params.public(), "secret_block": secret_block,
                    "show_progress": False},
        description="Incremental scoring: only new or changed studies are read and scored.")
    weekly = housekeeping.to_deployment(
        name=f"{params.cohort}-weekly-housekeeping", cron=weekly_cron,
        parameters={"out": params.out, "storage_options": params.storage_options or None},
        description="Compact the tables and vacuum unreferenced files.")
    return [nightly, weekly]
