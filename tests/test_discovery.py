"""Discovery: files by content, skipped paths, ranged header reads, and the real scans."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from calcpipe.cli import app
from calcpipe.dicom import load_volume
from calcpipe.dicom.frames import parse_header_bytes
from calcpipe.dicom.writer import write_series
from calcpipe.ingest import HEADER_BYTES, TABLE_FIELDS, discover, scan_headers

runner = CliRunner()


def _write(folder: Path, **kwargs) -> list[Path]:
    return write_series(folder, np.zeros((3, 8, 8), dtype=np.int16), spacing_mm=(3, 1, 1),
                        **kwargs)


def test_files_found_by_content_and_skipped_paths(tmp_path):
    files = _write(tmp_path / "study" / "series")
    files[0].rename(files[0].with_suffix(""))  # no extension: still found
    for hidden in ("_truth", ".cache"):
        _write(tmp_path / "study" / hidden)
    shutil.copy(files[1], tmp_path / "study" / "DICOMDIR")
    shutil.copy(files[1], tmp_path / "study" / "series" / ".hidden.dcm")
    (tmp_path / "study" / "notes.txt").write_text("not DICOM")
    scan = scan_headers(tmp_path / "study")
    assert [Path(h.url).name for h in scan.headers] == ["IM0000", "IM0001.dcm", "IM0002.dcm"]
    assert [(Path(s.url).name, s.code) for s in scan.skipped] == [("notes.txt", "not_dicom")]


def _corrupt(path: Path, tag: int, raw: str) -> None:
    """Writes the text ``raw`` as the value of ``tag`` in implicit VR, so that it is read
    back with the tag's dictionary VR, as a corrupt file's would be."""
    from pydicom import config
    from pydicom.dataelem import DataElement

    ds = pydicom.dcmread(path)
    ds[tag] = DataElement(tag, "LO", raw)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.ImplicitVRLittleEndian
    mode = config.settings.writing_validation_mode
    config.settings.writing_validation_mode = config.IGNORE
    try:
        ds.save_as(path, implicit_vr=True, little_endian=True)
    finally:
        config.settings.writing_validation_mode = mode


@pytest.mark.parametrize("tag, raw", [
    (0x00280008, "abc"),  # NumberOfFrames not a number
    (0x00280008, "-3"),  # negative
    (0x00280008, "300000"),  # more frames than the file has bytes of pixels
    (0x00189070, "0"),  # CardiacRRIntervalSpecified (FD): two bytes, not eight
])
def test_a_corrupt_header_is_skipped_and_the_other_studies_found(tmp_path, tag, raw):
    _write(tmp_path / "good", study_uid="1.2.3.1", series_uid="1.2.3.1.1")
    bad = _write(tmp_path / "bad", study_uid="1.2.3.2", series_uid="1.2.3.2.1")
    _corrupt(bad[1], tag, raw)
    found = discover(tmp_path)
    assert [c.study.study_key for c in found.studies] == ["1.2.3.1", "1.2.3.2"]
    assert [(Path(s.url).name, s.code) for s in found.skipped] == [
        (bad[1].name, "invalid_attribute")]


def test_header_rows_carry_version_facts_and_no_identifiers(tmp_path):
    files = _write(tmp_path / "s")
    (header, *_) = scan_headers(tmp_path).headers
    assert header.size_bytes == os.path.getsize(files[0])
    assert header.mtime == pytest.approx(os.path.getmtime(files[0]))
    assert header.etag is None and header.has_pixel_data
    assert "url" not in TABLE_FIELDS and "series_description" not in TABLE_FIELDS
    assert not {"patient_id", "patient_name", "birth_date"} & set(TABLE_FIELDS)
    assert header.positions_mm == ((0.0, 0.0, 0.0),) and header.pixel_spacing_mm == (1.0, 1.0)


def test_a_header_longer_than_the_first_read(tmp_path):
    files = _write(tmp_path / "s")
    ds = pydicom.dcmread(files[0])
    ds.add_new(0x00111010, "OB", b"\x00" * (HEADER_BYTES + 1000))  # a large private element
    ds.save_as(files[0])
    data = files[0].read_bytes()
    assert parse_header_bytes(data[:HEADER_BYTES], "f", size=len(data)) is None
    full = parse_header_bytes(data, "f", size=len(data))
    assert full is not None and data[full.pixel_offset:full.pixel_offset + 4] == (
        b"\xe0\x7f\x10\x00")
    headers = scan_headers(tmp_path).headers
    assert len(headers) == 3 and headers[0].sop_instance_uid == ds.SOPInstanceUID


def test_inspect_json_and_table(tmp_path):
    _write(tmp_path / "a", series_uid="1.2.3.1", extra={"ConvolutionKernel": "B70f",
                                                       "Manufacturer": "SIEMENS"})
    _write(tmp_path / "b", series_uid="1.2.3.2", extra={"SeriesDescription": "CaSc 3.0"})
    result = runner.invoke(app, ["inspect", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (study,) = report["studies"]
    assert study["chosen"] == "1.2.3.2"
    assert [(s["series_id"], s["decision"], s["rules"]) for s in study["series"]] == [
        ("1.2.3.2", "chosen", []), ("1.2.3.1", "outranked", ["soft_kernel"])]
    result = runner.invoke(app, ["inspect", str(tmp_path)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    assert "CaSc 3.0" in result.output and "kernel B70f (sharp)" in result.output
    assert "3 x 8 x 8" in result.output  # the chosen series, loaded


def test_inspect_refuses_a_study_without_eligible_series(tmp_path):
    _write(tmp_path / "a", extra={"BodyPartExamined": "HEAD"})
    result = runner.invoke(app, ["inspect", str(tmp_path)])
    assert result.exit_code == 2 and "body_part: BodyPartExamined is HEAD" in result.output


# --- the real scans (skipped when ../shared/data is absent) ---------------------------------

def _study(shared_data: Path, folder: str):
    found = discover(shared_data / folder)
    assert len(found.studies) == 1
    return found.studies[0]


def test_real_chest_ct_chooses_the_soft_kernel(shared_data):
    choice = _study(shared_data, "chest_ct_lung_pet_ct_dx/study_A0002")
    assert len(choice.study.series) == 2
    chosen = choice.chosen
    assert chosen is not None and chosen.summary.kernel == "B40f"
    verdict = choice.decision.verdict(choice.decision.chosen)
    assert verdict.rank == 1
    assert any(f.startswith("slice_thickness_2.5_3.0_mm: SliceThickness 8 mm")
               for f in verdict.flags)
    (other,) = [v for v in choice.decision.verdicts if v.status != "chosen"]
    assert other.status == "outranked" and other.rules == ("soft_kernel",)
    assert "B70f (sharp)" in other.reasons[0]
    assert load_volume(shared_data / "chest_ct_lung_pet_ct_dx/study_A0002").series_uid == (
        choice.decision.chosen)


def test_real_head_ct_rejected_for_body_part_and_tilt(shared_data):
    choice = _study(shared_data, "head_ct_gantry_tilt")
    assert choice.decision.chosen is None
    for verdict in choice.decision.verdicts:
        assert verdict.status == "rejected"
        assert {"body_part", "geometry"} <= set(verdict.rules)
        assert any("gantry_tilt" in r for r in verdict.reasons)


def test_real_totalseg_rejected_for_contrast_with_derived_keys(shared_data):
    choice = _study(shared_data, "totalseg_ct_jpeg2000")
    (group,) = choice.study.series
    assert choice.study.study_key.startswith("2.25.")
    assert group.summary.series_id.startswith("2.25.")
    assert group.summary.qc_flags == ("derived_study_uid", "derived_series_uid")
    (verdict,) = choice.decision.verdicts
    assert verdict.status == "rejected" and "no_contrast" in verdict.rules
    volume = load_volume(shared_data / "totalseg_ct_jpeg2000" / "dicom")
    assert (volume.study_uid, volume.series_uid) == (choice.study.study_key,
                                                     group.summary.series_id)


def test_real_qrm_phantom_chosen_despite_derived(shared_data):
    choice = _study(shared_data, "qrm_phantom_canon/dicom")
    assert choice.chosen is not None and choice.chosen.summary.image_type[0] == "DERIVED"
    assert "original_image: DERIVED image" in choice.decision.verdict(
        choice.decision.chosen).flags


def test_a_multi_frame_file_without_identifiers_has_one_key_in_discovery_and_loading(
        tmp_path):
    """keys.py: the same files give the same key; a multi-frame file's frames are
    uid#0, uid#1, ... in both."""
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("eCT_Supplemental.dcm", download=False))
    for name in ("StudyInstanceUID", "SeriesInstanceUID", "PatientID", "StudyDate",
                 "StudyTime", "AccessionNumber", "StudyID", "FrameOfReferenceUID"):
        if name in ds:
            delattr(ds, name)
    ds.save_as(tmp_path / "enhanced.dcm")
    (choice,) = discover(tmp_path).studies
    volume = load_volume([tmp_path / "enhanced.dcm"])
    assert (volume.study_uid, volume.series_uid) == (choice.study.study_key,
                                                     choice.study.series[0].summary.series_key)
