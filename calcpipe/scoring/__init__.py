"""Calcium scoring: Agatston, volume, mass and density per label, group and lesion."""

from calcpipe.scoring.calibration import (
    NOMINAL_C_HA,
    Calibration,
    load_registry,
    lookup_c_ha,
    measure_c_ha,
)
from calcpipe.scoring.engine import METAL_HU, ScoreResult, score
from calcpipe.scoring.errors import ScoringInputError
from calcpipe.scoring.features import StudyFeatures, cac_drs, risk_category, study_features
from calcpipe.scoring.profiles import PROFILES, Profile, get_profile
from calcpipe.scoring.records import LabelScore, LesionScore, ScoreFlag

__all__ = [
    "METAL_HU",
    "NOMINAL_C_HA",
    "PROFILES",
    "Calibration",
    "LabelScore",
    "LesionScore",
    "Profile",
    "ScoreFlag",
    "ScoreResult",
    "ScoringInputError",
    "StudyFeatures",
    "cac_drs",
    "get_profile",
    "load_registry",
    "lookup_c_ha",
    "measure_c_ha",
    "risk_category",
    "score",
    "study_features",
]
