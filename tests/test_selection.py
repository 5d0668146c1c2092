"""Series selection on studies written with pydicom: every hard and soft rule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from calcpipe.dicom import DicomInputError, load_volume
from calcpipe.dicom.writer import write_series
from calcpipe.ingest import DEFAULT_RULES, discover, kernel_class, select_series
from calcpipe.ingest.discover import scan_headers
from calcpipe.ingest.grouping import group_studies

STUDY = "1.2.826.0.1.3680043.8.498.7"
GOOD = {"Manufacturer": "SIEMENS", "ConvolutionKernel": "B35f"}


def _series(root: Path, n: int, *, slices: int = 4, spacing: float = 3.0,
            **kwargs) -> list[Path]:
    extra = {**GOOD, **kwargs.pop("extra", {})}
    hu = np.zeros((slices, 8, 8), dtype=np.int16)
    return write_series(root / f"s{n}", hu, spacing_mm=(spacing, 0.5, 0.5), study_uid=STUDY,
                        series_uid=f"{STUDY}.{n}", extra=extra, **kwargs)


def _decide(root: Path):
    found = discover(root)
    assert len(found.studies) == 1
    return found.studies[0].decision


@pytest.mark.parametrize(("bad", "rule"), [
    ({"extra": {"Modality": "MR"}}, "modality_ct"),
    ({"extra": {"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]}}, "image_kind"),
    ({"extra": {"SOPClassUID": "1.2.840.10008.5.1.4.1.1.7"}}, "image_kind"),
    ({"extra": {"SeriesDescription": "Dose Report"}}, "image_kind"),
    ({"extra": {"ImageType": ["DERIVED", "SECONDARY", "MPR"]},
      "orientation": (0, 1, 0, 0, 0, -1)}, "image_kind"),
    ({"orientation": (1, 0, 0, 0, 0, -1)}, "axial"),
    ({"extra": {"BodyPartExamined": "HEAD"}}, "body_part"),
    ({"extra": {"ContrastBolusAgent": "IOPAMIDOL"}}, "no_contrast"),
    ({"slices": 1}, "geometry"),
    ({"extra": {"SeriesDescription": "Topogram 0.6 T20f"}, "slices": 2}, "image_kind"),
    ({"extra": {"ImageType": ["DERIVED", "SECONDARY", "AXIAL", "MIP"]}}, "image_kind"),
    ({"extra": {"SeriesDescription": "Patient Protocol"}}, "image_kind"),
])
def test_hard_rules_reject(tmp_path, bad, rule):
    _series(tmp_path, 1)
    _series(tmp_path, 2, **bad)
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.1"
    verdict = decision.verdict(f"{STUDY}.2")
    assert verdict.status == "rejected" and verdict.rank is None
    assert rule in verdict.rules
    assert any(r.startswith(f"{rule}: ") for r in verdict.reasons)


def test_geometry_rule_names_the_missing_slice(tmp_path):
    _series(tmp_path, 1)
    files = _series(tmp_path, 2, slices=5)
    files[2].unlink()
    verdict = _decide(tmp_path).verdict(f"{STUDY}.2")
    assert verdict.rules == ("geometry",) and "missing_slice" in verdict.reasons[0]


@pytest.mark.parametrize("extra", [
    {"BodyPartExamined": ""}, {"BodyPartExamined": "CARDIAC"},
    *({"ContrastBolusAgent": text} for text in ("NONE", "NO CONTRAST", "Non-contrast",
                                                "NONE GIVEN", "N/A", "0", "-", "NIL")),
    # a low-dose scan is no dose report; a stack named after its topogram no localizer
    {"SeriesDescription": "CaSc LOW DOSE 3.0 B35f"}, {"SeriesDescription": "Topogram-based Ca"},
    {"SeriesDescription": "CaSc (see topogram)"},
    # a derived axial CT image stack (a workstation's reconstruction) is slices in HU
    {"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]}])
def test_hard_rules_accept(tmp_path, extra):
    _series(tmp_path, 1, extra=extra)
    assert _decide(tmp_path).chosen == f"{STUDY}.1"


@pytest.mark.parametrize(("better", "worse", "rule"), [
    ({}, {"spacing": 5.0}, "slice_thickness_2.5_3.0_mm"),
    ({"extra": {"ConvolutionKernel": "B35f"}}, {"extra": {"ConvolutionKernel": "B70f"}},
     "soft_kernel"),
    ({"extra": {"CardiacSynchronizationTechnique": "PROSPECTIVE"}}, {}, "ecg_gated"),
    ({}, {"kvp": 100.0}, "kvp_120"),
    ({}, {"extra": {"ImageType": ["DERIVED", "PRIMARY", "AXIAL"]}}, "original_image"),
    ({"slices": 6}, {"slices": 4}, "heart_coverage"),
])
def test_soft_rules_rank(tmp_path, better, worse, rule):
    # the worse series gets the lower id so that a tie would choose it
    _series(tmp_path, 1, **worse)
    _series(tmp_path, 2, **better)
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.2"
    verdict = decision.verdict(f"{STUDY}.1")
    assert verdict.status == "outranked" and verdict.rank == 2 and verdict.rules == (rule,)
    assert any(f.startswith(f"{rule}: ") for f in verdict.flags) or rule == "heart_coverage"


def test_soft_rule_priority_is_table_order(tmp_path):
    # 3 mm sharp beats 5 mm soft: slice thickness comes before the kernel in the table
    _series(tmp_path, 1, spacing=5.0)
    _series(tmp_path, 2, extra={"ConvolutionKernel": "B70f"})
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.2"
    assert decision.verdict(f"{STUDY}.1").rules == ("slice_thickness_2.5_3.0_mm",)
    assert decision.verdict(f"{STUDY}.2").flags == ("soft_kernel: kernel B70f (sharp)",
                                                    "ecg_gated: no ECG-gating evidence",
                                                    "heart_coverage: 4 slices over 9 mm")


def test_phase_nearest_70_75_percent(tmp_path):
    for n, phase in ((1, 40), (2, 90), (3, 75), (4, 68)):
        _series(tmp_path, n, extra={"NominalPercentageOfCardiacPhase": phase})
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.3"
    ranks = {v.series_id[-1]: (v.rank, v.rules) for v in decision.verdicts}
    assert ranks == {"3": (1, ()), "4": (2, ("cardiac_phase_70_75",)),
                     "2": (3, ("cardiac_phase_70_75",)), "1": (4, ("cardiac_phase_70_75",))}


def test_phase_from_trigger_time_and_rr_interval(tmp_path):
    _series(tmp_path, 1, extra={"TriggerTime": 300, "CardiacRRIntervalSpecified": 800})
    _series(tmp_path, 2, extra={"TriggerTime": 580, "CardiacRRIntervalSpecified": 800})
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.2"  # 72.5 % against 37.5 %
    assert "cardiac phase 37.5 %" in decision.verdict(f"{STUDY}.1").reasons[0]


def test_qrm_like_derived_axial_series_stays_eligible(tmp_path):
    _series(tmp_path, 1, extra={"ImageType": ["DERIVED", "PRIMARY", "MPR"]})
    decision = _decide(tmp_path)
    assert decision.chosen == f"{STUDY}.1"
    assert "original_image: DERIVED image" in decision.verdict(f"{STUDY}.1").flags


def test_series_split_by_matrix_and_image_type(tmp_path):
    _series(tmp_path, 1)
    hu = np.zeros((4, 6, 6), dtype=np.int16)
    write_series(tmp_path / "other", hu, spacing_mm=(3, 0.5, 0.5), study_uid=STUDY,
                 series_uid=f"{STUDY}.1", origin_mm=(0, 0, 50), extra=GOOD)
    (study,) = group_studies(scan_headers(tmp_path).headers)
    ids = [g.summary.series_id for g in study.series]
    assert ids == [f"{STUDY}.1/1", f"{STUDY}.1/2"]
    assert all("series_split" in g.summary.qc_flags for g in study.series)
    assert {g.summary.n_files for g in study.series} == {4}


def test_missing_uids_get_the_same_derived_keys_as_load_volume(tmp_path):
    files = _series(tmp_path, 1, extra={"StudyInstanceUID": "", "PatientID": ""})
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.SeriesInstanceUID
        ds.SOPInstanceUID = ""
        ds.save_as(path)
    (study,) = group_studies(scan_headers(tmp_path).headers)
    (group,) = study.series
    volume = load_volume(tmp_path / "s1")
    assert (study.study_key, group.summary.series_id) == (volume.study_uid, volume.series_uid)
    assert group.summary.qc_flags == ("derived_study_uid", "derived_series_uid")
    assert sorted(h.sop_instance_uid for h in group.instances) == sorted(
        volume.sop_instance_uids)


def test_load_volume_on_a_study_folder_without_eligible_series(tmp_path):
    _series(tmp_path, 1, extra={"ContrastBolusAgent": "IOPAMIDOL"})
    _series(tmp_path, 2, extra={"BodyPartExamined": "HEAD"})
    with pytest.raises(DicomInputError) as info:
        load_volume(tmp_path)
    assert info.value.code == "no_eligible_series"
    assert f"{STUDY}.1: no_contrast" in str(info.value)
    assert f"{STUDY}.2: body_part" in str(info.value)


def test_load_volume_on_a_study_folder_loads_the_choice(tmp_path):
    _series(tmp_path, 1, extra={"ConvolutionKernel": "B70f"})
    _series(tmp_path, 2)
    volume = load_volume(tmp_path)
    assert volume.series_uid == f"{STUDY}.2" and volume.metadata.kernel == "B35f"
    assert volume.selection is not None
    assert volume.selection.verdict(f"{STUDY}.1").rules == ("soft_kernel",)
    assert volume.has_flag("series_selected")


def test_rules_are_data():
    names = [r.name for r in DEFAULT_RULES]
    assert len(names) == len(set(names))
    assert {r.kind for r in DEFAULT_RULES} == {"hard", "soft"}
    assert all(r.reason for r in DEFAULT_RULES)


def test_custom_rule_table(tmp_path):
    _series(tmp_path, 1, extra={"ConvolutionKernel": "B70f"})
    _series(tmp_path, 2)
    (study,) = group_studies(scan_headers(tmp_path).headers)
    without_kernel = tuple(r for r in DEFAULT_RULES if r.name != "soft_kernel")
    decision = select_series(study, without_kernel)
    assert decision.chosen == f"{STUDY}.1"  # a tie now: the first id wins
    assert decision.verdict(f"{STUDY}.2").rules == ("series_id_order",)


@pytest.mark.parametrize(("kernel", "vendor", "expected"), [
    ("B40f", "SIEMENS", "soft"), ("Br38f\\3", "SIEMENS", "soft"), ("B45f", "SIEMENS", "medium"),
    ("B70f", "SIEMENS", "sharp"), ("Qr36d", "Siemens Healthineers", "soft"),
    ("STANDARD", "GE MEDICAL SYSTEMS", "soft"), ("BONE", "GE MEDICAL SYSTEMS", "sharp"),
    ("LUNG", None, "sharp"), ("B", "Philips", "soft"), ("XCA", "Philips", "soft"),
    ("YC", "Philips", "sharp"), ("FC12", "TOSHIBA", "soft"), ("FC52", "CANON MEDICAL", "sharp"),
    ("FC24", "TOSHIBA", "medium"), ("B35f", "calcpipe", "soft"), ("XYZ", "SIEMENS", "unknown"),
    (None, "SIEMENS", "unknown"),
])
def test_kernel_classes(kernel, vendor, expected):
    assert kernel_class(kernel, vendor) == expected


def test_the_choice_depends_on_the_files_not_their_names(tmp_path):
    """Retrospective gating writes each image's own trigger delay: the series' phase is
    their median, not the first file's by name, so renaming the files changes nothing."""
    rr = {"CardiacSynchronizationTechnique": "RETROSPECTIVE",
          "CardiacRRIntervalSpecified": 1000.0}
    choices = []
    for naming in ("instance", "reversed"):
        root = tmp_path / naming
        varying = _series(root, 1, slices=9, extra={**rr, "TriggerTime": 700.0})
        _series(root, 2, slices=9, extra={**rr, "TriggerTime": 660.0})  # 66 %
        for i, path in enumerate(varying):  # 600-800 ms: median 70 %, first file 60 %
            ds = pydicom.dcmread(path)
            ds.TriggerTime = 600.0 + 25 * i
            ds.save_as(path)
        if naming == "reversed":
            for i, path in enumerate(varying):
                path.rename(path.with_name(f"x{len(varying) - i:03d}.dcm"))
        decision = _decide(root)
        phases = {v.series_id: v for v in decision.verdicts}
        choices.append((decision.chosen, sorted(phases)))
    assert choices[0] == choices[1] and choices[0][0] == f"{STUDY}.1"
