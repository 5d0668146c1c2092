"""Study-level features derived from score rows: CAC-DRS, risk categories, distribution.

Categories treat scores as real numbers: a boundary written "1-99" means 0 < score < 100,
"100-399" means 100 <= score < 400, and so on (Agatston scores are not integers).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from calcpipe.labels import CORONARY
from calcpipe.scoring.engine import ScoreResult

#: (upper bound exclusive, name); the paper's Table 1 (Singh et al. 2021)
_PAPER = ((100.0, "1-99"), (400.0, "100-399"), (float("inf"), ">=400"))
#: the paper's categories in order, as :func:`risk_category` names them
PAPER_CATEGORIES = ("0", *(name for _, name in _PAPER))
#: upper bounds inclusive; the five-class scheme (Rumberger et al.)
_FIVE = ((10.0, "1-10"), (100.0, "11-100"), (400.0, "101-400"), (float("inf"), ">400"))


def risk_category(agatston: float, scheme: Literal["paper", "five"] = "paper") -> str:
    """Risk category of a CAC Agatston score.

    ``"paper"``: 0 / 1-99 / 100-399 / >=400; ``"five"``: 0 / 1-10 / 11-100 / 101-400 / >400.
    """
    if not agatston >= 0:  # negative, or NaN (which no category holds)
        raise ValueError(f"agatston={agatston}: scores are non-negative numbers")
    if agatston == 0:
        return "0"
    if scheme == "paper":
        return next(name for bound, name in _PAPER if agatston < bound)
    if scheme == "five":
        return next(name for bound, name in _FIVE if agatston <= bound)
    raise ValueError(f"scheme={scheme!r}: use 'paper' or 'five'")


def cac_drs(vessel_agatston: dict[str, float]) -> str:
    """CAC-DRS (Hecht et al., JCCT 2018): A0, or A1-A3 with N1-N4 vessels.

    A1: 0 < CAC < 100, A2: 100-299, A3: >= 300; N counts the coronary vessels with calcium
    (LM, LAD, LCX, RCA: the left main counts as a vessel).
    """
    total = sum(vessel_agatston.get(v, 0.0) for v in CORONARY)
    if total == 0:
        return "A0"
    grade = 1 if total < 100 else 2 if total < 300 else 3
    vessels = sum(vessel_agatston.get(v, 0.0) > 0 for v in CORONARY)
    return f"A{grade}/N{vessels}"


@dataclass(frozen=True)
class StudyFeatures:
    """Study-level features for epidemiology (canonical label map only)."""

    cac_agatston: float
    ac_agatston: float
    cac_drs: str
    risk_category_paper: str
    risk_category_five: str
    n_calcified_vessels: int
    lm_lesions: int
    lad_lesions: int
    lcx_lesions: int
    rca_lesions: int
    lm_share_of_cac: float | None
    metal_suspected: bool


def study_features(result: ScoreResult) -> StudyFeatures:
    """Derived features of a result scored with the canonical label map."""
    vessels = {name: result.row(name).agatston for name in CORONARY}
    cac = result.row("CAC").agatston
    return StudyFeatures(
        cac_agatston=cac,
        ac_agatston=result.row("AC").agatston,
        cac_drs=cac_drs(vessels),
        risk_category_paper=risk_category(cac, "paper"),
        risk_category_five=risk_category(cac, "five"),
        n_calcified_vessels=sum(v > 0 for v in vessels.values()),
        lm_lesions=result.row("LM").n_lesions,
        lad_lesions=result.row("LAD").n_lesions,
        lcx_lesions=result.row("LCX").n_lesions,
        rca_lesions=result.row("RCA").n_lesions,
        lm_share_of_cac=vessels["LM"] / cac if cac else None,
        metal_suspected=result.has_flag("metal_suspected"),
    )
