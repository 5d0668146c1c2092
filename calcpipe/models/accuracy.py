"""Accuracy of a segmenter against truth label maps, per patient, as in the paper.

Per-patient vessel-aware Dice per class (median and IQR), Agatston agreement for CAC and
AC (Spearman rho, ICC(2,1)), and the linearly weighted kappa of the paper's risk
categories (0 / 1-99 / 100-399 / >= 400).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from calcpipe.metrics import dice_per_class, icc_2_1, median_iqr, spearman, weighted_kappa
from calcpipe.scoring import risk_category, score
from calcpipe.scoring.features import PAPER_CATEGORIES

#: the paper's per-patient Dice medians (Singh et al. 2021, Table 2)
PAPER_DICE = {"coronary": 0.952, "LAD": 0.971, "RCA": 0.963, "LCX": 0.955, "aorta": 0.832}
PAPER_SPEARMAN = {"CAC": 0.876, "AC": 0.947}
_CATEGORIES = PAPER_CATEGORIES


@dataclass
class AccuracyReport:
    dice: dict[str, list[float | None]] = field(default_factory=dict)
    agatston: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    confidence: list[float | None] = field(default_factory=list)

    def add(self, truth: npt.NDArray[np.integer], prediction: npt.NDArray[np.integer],
            hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float], kvp: float,
            confidence: float | None = None) -> None:
        for name, value in dice_per_class(truth, prediction).items():
            self.dice.setdefault(name, []).append(value)
        true_scores = score(hu, truth, spacing_mm, kvp=kvp, mass_calibration=0.7)
        predicted = score(hu, prediction, spacing_mm, kvp=kvp, mass_calibration=0.7)
        for group in ("CAC", "AC", "TOTAL"):
            self.agatston.setdefault(group, []).append(
                (true_scores.row(group).agatston, predicted.row(group).agatston))
        self.confidence.append(confidence)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"patients": len(self.confidence), "dice": {}, "agatston": {}}
        for name, values in self.dice.items():
            median, q1, q3, used, excluded = median_iqr(values)
            out["dice"][name] = {"median": median, "q1": q1, "q3": q3, "n": used,
                                 "both_empty": excluded}
        for group, pairs in self.agatston.items():
            truth = np.array([t for t, _ in pairs])
            pred = np.array([p for _, p in pairs])
            entry: dict[str, Any] = {"spearman": spearman(truth, pred)}
            if len(pairs) >= 2:
                entry["icc_2_1"] = icc_2_1(np.stack([truth, pred], axis=1))
            if group == "CAC":
                a = [_CATEGORIES.index(risk_category(v)) for v in truth]
                b = [_CATEGORIES.index(risk_category(v)) for v in pred]
                entry["kappa_risk_categories"] = weighted_kappa(a, b, 4)
            out["agatston"][group] = entry
        return out


def format_summary(summary: dict[str, Any]) -> str:
    lines = [f"patients: {summary['patients']}",
             f"{'class':<10} {'median':>7} {'Q1':>7} {'Q3':>7} {'n':>4} {'empty':>6} "
             f"{'paper':>7}"]
    for name, d in summary["dice"].items():
        paper = PAPER_DICE.get(name)
        lines.append(f"{name:<10} {d['median']:7.3f} {d['q1']:7.3f} {d['q3']:7.3f} "
                     f"{d['n']:4d} {d['both_empty']:6d} "
                     f"{'' if paper is None else f'{paper:7.3f}'}")
    for group, entry in summary["agatston"].items():
        parts = [f"{k} {v:.3f}" for k, v in entry.items()]
        paper = PAPER_SPEARMAN.get(group)
        lines.append(f"Agatston {group}: " + ", ".join(parts)
                     + (f" (paper Spearman {paper})" if paper else ""))
    return "\n".join(lines)


def evaluate(segmenter: Any, studies: Iterable[tuple[Any, Any, Any, float]]) -> AccuracyReport:
    """Segment each (hu, truth labels, spacing, kVp) study and collect the metrics."""
    report = AccuracyReport()
    for hu, truth, spacing, kvp in studies:
        result = segmenter.segment(hu, spacing, kvp=kvp)
        report.add(truth, result.labels, hu, spacing, kvp, result.confidence)
    return report
