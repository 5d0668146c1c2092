"""Choose the one series per study that Agatston scoring is defined for, and say why."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from calcpipe.ingest.grouping import StudyGroup
from calcpipe.ingest.rules import DEFAULT_RULES, Finding, Rule


@dataclass(frozen=True)
class SeriesVerdict:
    """What selection decided for one series.

    Attributes
    ----------
    series_id : str
    status : {"chosen", "outranked", "rejected"}
    rank : int or None
        1 for the chosen series, 2, 3... for the eligible series it out-ranked; None when
        rejected.
    rules : tuple of str
        Rejected: every hard rule failed. Out-ranked: the first soft rule on which it lost
        to the chosen series (``"series_id_order"`` for an exact tie). Chosen: empty.
    reasons : tuple of str
        ``rule: detail`` for each entry of ``rules`` (with the chosen series' value for an
        out-ranking rule).
    flags : tuple of str
        ``rule: detail`` for every soft rule the series does not meet.
    """

    series_id: str
    status: Literal["chosen", "outranked", "rejected"]
    rank: int | None
    rules: tuple[str, ...]
    reasons: tuple[str, ...]
    flags: tuple[str, ...]


@dataclass(frozen=True)
class SelectionDecision:
    """The choice for one study: the chosen series (None when no series passes the hard
    rules), one verdict per series (chosen first, then by rank, then rejected by id), and
    the names of the rules applied, in order."""

    study_key: str
    chosen: str | None
    verdicts: tuple[SeriesVerdict, ...]
    rule_names: tuple[str, ...]

    def verdict(self, series_id: str) -> SeriesVerdict:
        """The verdict of one series (KeyError when the study has no such series)."""
        for v in self.verdicts:
            if v.series_id == series_id:
                return v
        raise KeyError(series_id)


def select_series(study: StudyGroup, rules: tuple[Rule, ...] = DEFAULT_RULES) -> SelectionDecision:
    """Apply ``rules`` to every series of ``study`` and choose one.

    Hard rules reject; the eligible series are ranked by their soft-rule scores in table
    order (lexicographically), then by ``series_id`` for determinism.
    """
    hard = [r for r in rules if r.kind == "hard"]
    soft = [r for r in rules if r.kind == "soft"]
    rejected: list[SeriesVerdict] = []
    eligible: list[tuple[tuple[float, ...], str, list[Finding]]] = []
    for group in study.series:
        s = group.summary
        failed = [(r, f) for r in hard if not (f := r.predicate(s)).passed]
        findings = [r.predicate(s) for r in soft]
        flags = tuple(f"{r.name}: {f.detail}" for r, f in zip(soft, findings, strict=True)
                      if not f.passed)
        if failed:
            rejected.append(SeriesVerdict(
                s.series_id, "rejected", None, tuple(r.name for r, _ in failed),
                tuple(f"{r.name}: {f.detail}" for r, f in failed), flags))
        else:
            eligible.append((tuple(f.score for f in findings), s.series_id, findings))
    eligible.sort(key=lambda item: (item[0], item[1]))
    verdicts: list[SeriesVerdict] = []
    for rank, (scores, series_id, findings) in enumerate(eligible, start=1):
        flags = tuple(f"{r.name}: {f.detail}" for r, f in zip(soft, findings, strict=True)
                      if not f.passed)
        if rank == 1:
            verdicts.append(SeriesVerdict(series_id, "chosen", 1, (), (), flags))
            continue
        best_scores, best_id, best = eligible[0]
        lost = next((i for i, (a, b) in enumerate(zip(scores, best_scores, strict=True))
                     if a != b), None)
        if lost is None:
            rule, reason = "series_id_order", f"series_id_order: ties with {best_id} on every rule"
        else:
            rule = soft[lost].name
            reason = (f"{rule}: {findings[lost].detail}, chosen series: "
                      f"{best[lost].detail}")
        verdicts.append(SeriesVerdict(series_id, "outranked", rank, (rule,), (reason,), flags))
    verdicts += sorted(rejected, key=lambda v: v.series_id)
    return SelectionDecision(
        study_key=study.study_key,
        chosen=eligible[0][1] if eligible else None,
        verdicts=tuple(verdicts),
        rule_names=tuple(r.name for r in rules),
    )
