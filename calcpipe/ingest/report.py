"""A JSON-ready account of a discovery: studies, series, the choice and every reason."""

from __future__ import annotations

import dataclasses
from typing import Any

from calcpipe.ingest.study import Discovery


def discovery_report(found: Discovery) -> dict[str, Any]:
    """Plain dicts and lists (JSON-serialisable) describing ``found``.

    Each study gives its key, the chosen series id (or None) and one entry per series: the
    :class:`~calcpipe.ingest.grouping.SeriesSummary` fields (the free-text description
    included, for people; never for tables) and the verdict (``decision``, ``rank``,
    ``rules``, ``reasons``, ``flags``). ``skipped`` counts the files that are not DICOM
    (or unreadable) by code.
    """
    studies = []
    for choice in found.studies:
        series = []
        for group in choice.study.series:
            verdict = choice.decision.verdict(group.summary.series_id)
            entry = dataclasses.asdict(group.summary)
            entry.update(decision=verdict.status, rank=verdict.rank, rules=list(verdict.rules),
                         reasons=list(verdict.reasons), flags=list(verdict.flags))
            series.append(entry)
        order = {v.series_id: i for i, v in enumerate(choice.decision.verdicts)}
        series.sort(key=lambda e: order[e["series_id"]])
        studies.append({"study_key": choice.study.study_key, "chosen": choice.decision.chosen,
                        "rules": list(choice.decision.rule_names), "series": series})
    skipped: dict[str, int] = {}
    for s in found.skipped:
        skipped[s.code] = skipped.get(s.code, 0) + 1
    return {"studies": studies, "skipped": dict(sorted(skipped.items()))}
