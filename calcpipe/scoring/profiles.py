"""Scoring profiles: every convention that published tools disagree on, as data.

A profile is a frozen record; :data:`PROFILES` is the registry. Nothing in the engine
branches on a profile's *name*, only on these fields, so a new convention is a new entry.

Conventions (fields):

* ``threshold_by_kvp_hu``: calcium threshold per tube voltage. 130 HU at 120 kVp (Agatston
  et al., JACC 1990); 146 HU at 100 kVp as used by the FQM analysis of the QRM phantom
  (van Praagh et al., Med Phys 2021). A kVp without an entry is scored at the 120 kVp
  threshold and the result is flagged ``kvp_threshold_fallback``.
* ``unit``: what carries a density weight.
  ``"slice_component"``: each 2-D connected component of a slice (Agatston's definition),
  weighted by its own peak HU; ``"lesion_slice"``: each 3-D lesion's cross-section in a
  slice, weighted by the lesion's peak HU within that slice.
* ``slice_connectivity`` (4 or 8) for 2-D components; ``lesion_connectivity`` (6, 18 or 26)
  for 3-D lesions (counted in every profile, and the weighting unit of ``lesion_slice``).
  ``"slice_component"`` needs every 2-D component inside one lesion, so 8-connected
  components with 6-connected lesions are refused.
* minimum sizes: ``min_area_mm2`` and ``min_pixels`` per 2-D component,
  ``min_lesion_volume_mm3`` per 3-D lesion, in either unit. A component or lesion below the
  minimum is not calcium at all (it counts for no score): components are sized first,
  lesions are then formed from the components kept.
* ``slice_factor``: Agatston is multiplied by (distance between slice centres / 3 mm), or by
  (SliceThickness / 3 mm) for ``"thickness"``.
* ``slice_stride``: ``"all"`` slices, or ``"non_overlapping"``: of an overlapping
  reconstruction only every n-th slice (n = round(thickness / spacing), starting at slice 0)
  is counted for Agatston, normalised by n x spacing / 3. Volume and mass always use every
  slice (they are physical quantities).
* weights: peak HU 130-199 (or threshold-199): 1, 200-299: 2, 300-399: 3, >= 400: 4.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from calcpipe.scoring.errors import ScoringInputError

#: 120 kVp: Agatston 1990; 100 kVp: FQM analysis (van Praagh et al., Med Phys 2021)
STANDARD_THRESHOLDS: tuple[tuple[float, float], ...] = ((100.0, 146.0), (120.0, 130.0))
#: peak HU at which the density weight steps to 2, 3 and 4
WEIGHT_STEPS_HU: tuple[float, float, float] = (200.0, 300.0, 400.0)


@dataclass(frozen=True)
class Profile:
    """One scoring convention (see the module docstring for each field's meaning)."""

    name: str
    description: str
    source: str
    threshold_by_kvp_hu: tuple[tuple[float, float], ...] = STANDARD_THRESHOLDS
    unit: Literal["slice_component", "lesion_slice"] = "slice_component"
    slice_connectivity: Literal[4, 8] = 8
    lesion_connectivity: Literal[6, 18, 26] = 26
    min_area_mm2: float = 0.0
    min_pixels: int = 1
    min_lesion_volume_mm3: float = 0.0
    slice_factor: Literal["spacing", "thickness"] = "spacing"
    slice_stride: Literal["all", "non_overlapping"] = "all"

    def __post_init__(self) -> None:
        table: dict[object, object]
        try:
            table = {kvp: hu for kvp, hu in self.threshold_by_kvp_hu}
        except (TypeError, ValueError):  # not pairs (a mapping's keys do not unpack)
            table = {None: None}
        if not all(_real(kvp) and _real(hu) for kvp, hu in table.items()):
            raise ScoringInputError("threshold_by_kvp_hu", self.threshold_by_kvp_hu,
                                    "must be (kVp, HU) pairs of numbers")
        choices = {"unit": ("slice_component", "lesion_slice"), "slice_connectivity": (4, 8),
                   "lesion_connectivity": (6, 18, 26), "slice_factor": ("spacing", "thickness"),
                   "slice_stride": ("all", "non_overlapping")}
        for name, allowed in choices.items():
            value = getattr(self, name)
            if isinstance(value, bool) or value not in allowed:
                raise ScoringInputError(name, value, f"must be one of {allowed}")
        for name in ("min_area_mm2", "min_lesion_volume_mm3"):
            if not _real(getattr(self, name)) or not getattr(self, name) >= 0:
                raise ScoringInputError(name, getattr(self, name), "must be a number >= 0")
        if not isinstance(self.min_pixels, int) or isinstance(self.min_pixels, bool) or (
                self.min_pixels < 1):
            raise ScoringInputError("min_pixels", self.min_pixels, "must be an integer >= 1")
        if 120.0 not in table:
            raise ScoringInputError(
                "threshold_by_kvp_hu", self.threshold_by_kvp_hu,
                "needs a 120 kVp entry (the threshold of every kVp without one)",
                fix="add (120.0, 130.0), Agatston's threshold")
        if (self.unit == "slice_component" and self.slice_connectivity == 8
                and self.lesion_connectivity == 6):
            # a diagonal pair would be one component in two lesions: its score has no lesion
            raise ScoringInputError(
                "lesion_connectivity", 6,
                "6-connected lesions split 8-connected slice components",
                fix="use slice_connectivity=4, or lesion_connectivity=18 or 26")

    def threshold_hu(self, kvp: float) -> tuple[float, bool]:
        """Threshold for ``kvp`` and whether it fell back to the 120 kVp entry."""
        for table_kvp, threshold in self.threshold_by_kvp_hu:
            if abs(table_kvp - kvp) < 0.5:
                return threshold, False
        return dict(self.threshold_by_kvp_hu)[120.0], True


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(
        float(value))


PROFILES = MappingProxyType({p.name: p for p in (
    Profile(
        "standard",
        "Agatston: 2-D 8-connected components >= 1 mm^2 per slice, weight by the "
        "component's peak, x spacing/3; lesions are 3-D 26-connected",
        "Agatston et al., JACC 1990;15:827; FQM/QRM phantom analysis (van Praagh et al., "
        "Med Phys 2021) reproduced to 0.01 %",
        min_area_mm2=1.0,
    ),
    Profile(
        "orcascore",
        "orCaScore-style: 3-D 6-connected lesions, weight per lesion and slice, no minimum "
        "size, x spacing/3",
        "orCaScore challenge evaluation (Wolterink et al., Med Phys 2016)",
        unit="lesion_slice", lesion_connectivity=6,
    ),
    Profile(
        "lessmann",
        "3-D 26-connected lesions >= 1.5 mm^3, weight per lesion and slice, x spacing/3",
        "Lessmann et al., IEEE TMI 2018; van Velzen et al., Radiology 2020 (calcium "
        "scoring code of the Amsterdam/Utrecht group)",
        unit="lesion_slice", lesion_connectivity=26, min_lesion_volume_mm3=1.5,
    ),
    Profile(
        "deepcac",
        "2-D 8-connected components of more than 3 pixels, x spacing/3",
        "DeepCAC (Zeleznik et al., Nat Commun 2021)",
        min_pixels=4,
    ),
    Profile(
        "ai_cac",
        "as standard, but x SliceThickness/3 instead of the slice spacing",
        "AI-CAC (Hagopian et al., NEJM AI 2024 convention)",
        min_area_mm2=1.0, slice_factor="thickness",
    ),
    Profile(
        "cacslabeler",
        "as standard, but only every n-th slice of an overlapping reconstruction "
        "(n = round(thickness/spacing)), x n*spacing/3",
        "CACSLabeler (3D Slicer) and Horos behaviour on overlapping series",
        min_area_mm2=1.0, slice_stride="non_overlapping",
    ),
    Profile(
        "ge", "vendor: minimum 1 mm^2 per 2-D component (GE SmartScore)",
        "GE SmartScore; the literature's 1 mm^2", min_area_mm2=1.0,
    ),
    Profile(
        "philips", "vendor: minimum 0.5 mm^2 per 2-D component",
        "Philips HeartBeat-CS", min_area_mm2=0.5,
    ),
    Profile(
        "canon", "vendor: minimum 3 pixels per 2-D component",
        "Canon/Toshiba calcium scoring", min_pixels=3,
    ),
    Profile(
        "siemens", "vendor: no minimum component size",
        "Siemens syngo CaScoring",
    ),
)})


def get_profile(profile: str | Profile) -> Profile:
    """A registered profile by name (or the profile itself)."""
    if isinstance(profile, Profile):
        return profile
    try:
        return PROFILES[profile]
    except (KeyError, TypeError):
        raise ScoringInputError(
            "profile", profile, "unknown scoring profile",
            fix="use one of: " + ", ".join(PROFILES),
        ) from None
