"""Series selection rules, as data.

Each :class:`Rule` has a name, a kind (``hard`` rejects a series that fails it; ``soft``
ranks and flags), a predicate over a :class:`~calcpipe.ingest.grouping.SeriesSummary` and
the documented reason the rule exists. Soft rules rank in table order: the first soft rule
on which two eligible series differ decides between them (lower ``score`` wins), so the
table order is the priority. Pass another tuple of rules to
:func:`calcpipe.ingest.select.select_series` to change the policy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from calcpipe.dicom.geometry import AGATSTON_THICKNESS_MM
from calcpipe.ingest.grouping import SeriesSummary
from calcpipe.ingest.kernels import kernel_class

#: A slice normal more than this many degrees off patient z is not axial.
AXIAL_TOLERANCE_DEG = 10.0
#: BodyPartExamined values accepted (when the attribute is present).
CHEST_OR_HEART = frozenset({"CHEST", "THORAX", "HEART", "CARDIAC", "CORONARY", "CHEST_HEART"})
#: Cardiac phase window (percent of the R-R interval) preferred for calcium scoring.
PHASE_WINDOW_PERCENT = (70.0, 75.0)
#: Cranio-caudal extent (mm) below which a series probably does not cover the whole heart.
HEART_EXTENT_MM = 100.0
#: Tolerance on the 2.5-3.0 mm thickness and spacing range (mm).
THICKNESS_TOLERANCE_MM = 0.01

_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
_STRUCTURED_REPORT = "1.2.840.10008.5.1.4.1.1.88."
_REFORMAT_WORDS = frozenset({"MPR", "REFORMATTED", "CURVED", "CPR"})
_PROJECTION_WORDS = frozenset({"MIP", "MINIP", "MINIMUM", "MAXIMUM", "VRT", "VOLUME",
                               "PROJECTION IMAGE"})
#: Series description words of localizers (Siemens, GE, Philips, Canon)
_LOCALIZER_WORDS = frozenset({"TOPOGRAM", "SCOUT", "SURVIEW", "SCANOGRAM", "LOCALIZER"})
#: Series description phrases of dose reports ("LOW DOSE" is a scan, not a report)
_DOSE_PHRASES = ("DOSE REPORT", "DOSE INFO", "DOSE SUMMARY", "RADIATION DOSE",
                 "PATIENT PROTOCOL", "EXPOSURE REPORT")


@dataclass(frozen=True)
class Finding:
    """A rule's verdict on one series: ``passed`` (a failed hard rule rejects; a failed soft
    rule flags), the ``detail`` in words, and the soft ranking ``score`` (lower is better)."""

    passed: bool
    detail: str
    score: float = 0.0


@dataclass(frozen=True)
class Rule:
    """One selection rule (see the module docstring)."""

    name: str
    kind: Literal["hard", "soft"]
    predicate: Callable[[SeriesSummary], Finding]
    reason: str


def _modality(s: SeriesSummary) -> Finding:
    return Finding(s.modality == "CT", f"Modality is {s.modality or 'missing'!r}")


def _image_kind(s: SeriesSummary) -> Finding:
    kinds = set(s.image_type)
    description = (s.series_description or "").upper()
    words = set(description.replace("_", " ").split())
    # a description names a localizer only for a series of a few images: "Topogram-based
    # CaSc" or "CaSc (see scout)" describes a stack
    if "LOCALIZER" in kinds or "SCOUT" in kinds or (
            words & _LOCALIZER_WORDS and s.n_slices <= 3):
        return Finding(False, "a localizer (ImageType LOCALIZER)")
    if s.sop_class_uid.startswith(_STRUCTURED_REPORT) or any(
            phrase in description for phrase in _DOSE_PHRASES):
        return Finding(False, "a dose report")
    # a DERIVED\SECONDARY CT image is a stack of HU images all the same (ranked below
    # originals); the Secondary Capture object is a picture
    if s.sop_class_uid.startswith(_SECONDARY_CAPTURE) or "SCREEN SAVE" in kinds:
        return Finding(False, "a secondary capture")
    if not s.has_pixel_data:
        return Finding(False, "no pixel data (a report or presentation object)")
    projection = kinds & _PROJECTION_WORDS
    if projection:  # a slab's maximum or a rendering is not the HU of the slice
        return Finding(False, f"a projection ({', '.join(sorted(projection))}), not slices")
    reformat = kinds & _REFORMAT_WORDS
    not_axial = s.axial_angle_deg is None or s.axial_angle_deg > AXIAL_TOLERANCE_DEG
    if "DERIVED" in kinds and reformat and not_axial:
        return Finding(False, f"a derived reformat ({', '.join(sorted(reformat))}) that is "
                              "not axial")
    return Finding(True, "\\".join(s.image_type) or "ImageType absent")


def _axial(s: SeriesSummary) -> Finding:
    if s.axial_angle_deg is None:
        return Finding(False, "no ImageOrientationPatient")
    return Finding(s.axial_angle_deg <= AXIAL_TOLERANCE_DEG,
                   f"slice normal {s.axial_angle_deg:.1f} deg from patient z")


def _body_part(s: SeriesSummary) -> Finding:
    if s.body_part is None:
        return Finding(True, "BodyPartExamined absent")
    return Finding(s.body_part.upper() in CHEST_OR_HEART, f"BodyPartExamined is {s.body_part}")


def _no_contrast(s: SeriesSummary) -> Finding:
    return Finding(not s.contrast_agent_present,
                   "ContrastBolusAgent names an agent" if s.contrast_agent_present
                   else "no contrast agent recorded")


def _geometry(s: SeriesSummary) -> Finding:
    if s.geometry_problems:
        return Finding(False, "; ".join(s.geometry_problems))
    return Finding(True, "one regular, untilted, gap-free stack")


def _thickness(s: SeriesSummary) -> Finding:
    low, high = AGATSTON_THICKNESS_MM
    values = {"SliceThickness": s.slice_thickness_mm, "spacing": s.slice_spacing_mm}
    bad = {k: v for k, v in values.items()
           if v is None or not low - THICKNESS_TOLERANCE_MM <= v <= high + THICKNESS_TOLERANCE_MM}
    text = ", ".join(f"{k} {'missing' if v is None else f'{v:g} mm'}" for k, v in values.items())
    if bad:
        return Finding(False, f"{text}: outside {low:g}-{high:g} mm", 1.0)
    return Finding(True, text)


_KERNEL_SCORE = {"soft": 0.0, "medium": 1.0, "unknown": 1.0, "sharp": 2.0}


def _kernel(s: SeriesSummary) -> Finding:
    kind = kernel_class(s.kernel, s.manufacturer)
    return Finding(kind == "soft", f"kernel {s.kernel or 'absent'} ({kind})", _KERNEL_SCORE[kind])


def _gated(s: SeriesSummary) -> Finding:
    return Finding(s.gated, "ECG-gated" if s.gated else "no ECG-gating evidence",
                   0.0 if s.gated else 1.0)


def _phase(s: SeriesSummary) -> Finding:
    low, high = PHASE_WINDOW_PERCENT
    if s.cardiac_phase_percent is None:
        # Ungated series are flagged by ecg_gated already; a gated one without a phase is.
        return Finding(not s.gated, "no cardiac phase recorded", 100.0)
    phase = s.cardiac_phase_percent
    distance = max(low - phase, 0.0, phase - high)
    return Finding(distance == 0.0, f"cardiac phase {phase:g} % of R-R", distance)


def _kvp(s: SeriesSummary) -> Finding:
    ok = s.kvp is not None and abs(s.kvp - 120.0) < 0.5
    return Finding(ok, f"{'KVP absent' if s.kvp is None else f'{s.kvp:g} kVp'}",
                   0.0 if ok else 1.0)


def _original(s: SeriesSummary) -> Finding:
    derived = bool(s.image_type) and s.image_type[0] == "DERIVED"
    return Finding(not derived, "DERIVED image" if derived else "ORIGINAL image",
                   1.0 if derived else 0.0)


def _coverage(s: SeriesSummary) -> Finding:
    return Finding(s.z_extent_mm >= HEART_EXTENT_MM,
                   f"{s.n_slices} slices over {s.z_extent_mm:.0f} mm", -float(s.n_slices))


DEFAULT_RULES: tuple[Rule, ...] = (
    Rule("modality_ct", "hard", _modality, "Agatston scoring is defined on CT images only."),
    Rule("image_kind", "hard", _image_kind,
         "Localizers, secondary captures, dose reports and non-axial reformats are not "
         "the reconstructed axial images the score is defined on."),
    Rule("axial", "hard", _axial,
         f"The score is defined on axial slices (normal within {AXIAL_TOLERANCE_DEG:g} deg "
         "of patient z)."),
    Rule("body_part", "hard", _body_part,
         "When BodyPartExamined is present it must be the chest or the heart."),
    Rule("no_contrast", "hard", _no_contrast,
         "Contrast makes blood exceed 130 HU: the calcium threshold no longer separates "
         "calcium."),
    Rule("geometry", "hard", _geometry,
         "The hard geometry checks of calcpipe.dicom.geometry (one regular, untilted, "
         "gap-free stack of one matrix and spacing)."),
    Rule("slice_thickness_2.5_3.0_mm", "soft", _thickness,
         "Agatston weights and the 1 mm^2 minimum lesion area assume 2.5-3.0 mm slices."),
    Rule("soft_kernel", "soft", _kernel,
         "Sharp kernels raise noise and peak HU, inflating scores (vendor lists in "
         "calcpipe.ingest.kernels, a heuristic)."),
    Rule("ecg_gated", "soft", _gated, "Calcium scoring CT is ECG-gated; ungated chest CT "
         "blurs the coronaries."),
    Rule("cardiac_phase_70_75", "soft", _phase,
         "Among several phases, the one nearest 70-75 % of R-R (mid-diastole) moves least."),
    Rule("kvp_120", "soft", _kvp, "The 130 HU threshold is defined at 120 kVp."),
    Rule("original_image", "soft", _original,
         "ORIGINAL images over DERIVED ones (a DERIVED axial series stays eligible)."),
    Rule("heart_coverage", "soft", _coverage,
         f"More slices cover more of the heart (flagged below {HEART_EXTENT_MM:g} mm extent)."),
)
