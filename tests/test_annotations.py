"""Annotation importers read back exactly what was written; malformed files fail clearly."""

from __future__ import annotations

import plistlib

import numpy as np
import pytest

from calcpipe.annotations import AnnotationError, from_nifti, from_osirix, to_osirix
from calcpipe.models.segment import threshold_for


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A synthetic study's HU volume, affine and truth label map."""
    from calcpipe.dicom import load_volume
    from calcpipe.synthetic import write_cohort
    from calcpipe.synthetic.truth import read_labels

    cohort = write_cohort(tmp_path_factory.mktemp("ann"), studies=1, seed=12, matrix=128,
                          workers=1)
    volume = load_volume(next(p for p in (cohort / "study_00000").iterdir() if p.is_dir()))
    labels, _ = read_labels(cohort / "_truth" / "labels" / f"{volume.study_uid}.nii.gz")
    return volume, labels, cohort


def test_osirix_rois_read_back_exactly_with_reversed_image_index(study, tmp_path):
    volume, truth, _ = study
    coronary = np.where(np.isin(truth, [1, 2, 3, 4]), truth, 0).astype(np.uint8)
    assert (coronary > 0).sum() > 20  # the example has coronary calcium to place
    data = to_osirix(coronary, volume.affine)
    document = plistlib.loads(data)
    document["Images"][0]["ROIs"].append({"Name": "Right Coronary Artery", "Point_mm": []})
    path = tmp_path / "rois.xml"
    path.write_bytes(plistlib.dumps(document))
    assert document["Images"][0]["ImageIndex"] == volume.hu.shape[0] - 1
    labels = from_osirix(path, volume.hu, volume.affine, kvp=120)
    expected = np.where(volume.hu >= threshold_for(120), coronary, 0)
    np.testing.assert_array_equal(labels, expected)


def _roi_file(tmp_path, name, points):
    path = tmp_path / "bad.xml"
    path.write_bytes(plistlib.dumps({"Images": [
        {"ImageIndex": 0, "NumberOfROIs": 1, "ROIs": [{"Name": name, "Point_mm": points}]}]}))
    return path


def test_osirix_errors_name_the_problem(study, tmp_path):
    volume, _, _ = study
    corner = volume.affine @ np.array([2, 10, 10, 1.0])
    square = [f"({corner[0] + dx}, {corner[1] + dy}, {corner[2]})"
              for dx, dy in ((0, 0), (3, 0), (3, 3), (0, 3))]
    with pytest.raises(AnnotationError) as e:
        from_osirix(_roi_file(tmp_path, "Obtuse Marginal", square), volume.hu, volume.affine)
    assert e.value.code == "unknown_vessel" and "Left Anterior" in (e.value.fix or "")
    far = [f"({corner[0] + 5000}, {corner[1]}, {corner[2]})", *square[1:]]
    with pytest.raises(AnnotationError) as e:
        from_osirix(_roi_file(tmp_path, "Right Coronary Artery", far), volume.hu,
                    volume.affine)
    assert e.value.code == "polygon_outside_image"
    below = [p.replace(f"{corner[2]})", f"{corner[2] - 500})") for p in square]
    with pytest.raises(AnnotationError) as e:
        from_osirix(_roi_file(tmp_path, "Right Coronary Artery", below), volume.hu,
                    volume.affine)
    assert e.value.code == "polygon_outside_image"
    with pytest.raises(AnnotationError) as e:
        from_osirix(_roi_file(tmp_path, "Right Coronary Artery", ["(1, 2)"] * 3), volume.hu,
                    volume.affine)
    assert e.value.code == "bad_point"
    (tmp_path / "junk.xml").write_text("not a plist")
    with pytest.raises(AnnotationError) as e:
        from_osirix(tmp_path / "junk.xml", volume.hu, volume.affine)
    assert e.value.code == "not_osirix"


def test_nifti_labels_import_on_the_matching_grid_only(study, tmp_path):
    from calcpipe.synthetic.truth import nifti_bytes

    volume, truth, cohort = study
    path = cohort / "_truth" / "labels" / f"{volume.study_uid}.nii.gz"
    np.testing.assert_array_equal(from_nifti(path, volume.affine, volume.hu.shape), truth)
    shifted = volume.affine.copy()
    shifted[0, 3] += 3.0
    with pytest.raises(AnnotationError) as e:
        from_nifti(path, shifted, volume.hu.shape)
    assert e.value.code == "grid_mismatch"
    odd = truth.copy()
    odd[0, 0, 0] = 42
    (tmp_path / "odd.nii.gz").write_bytes(nifti_bytes(odd, volume.affine))
    with pytest.raises(AnnotationError) as e:
        from_nifti(tmp_path / "odd.nii.gz", volume.affine, volume.hu.shape)
    assert e.value.code == "unknown_label"


def test_dicom_seg_round_trips_masks_and_references(study, tmp_path):
    from calcpipe.seg import from_seg, to_seg

    volume, truth, _ = study
    seg = to_seg(volume.source_files, truth)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    labels = from_seg(path, volume.series_uid, volume.sop_instance_uids)
    np.testing.assert_array_equal(labels, truth)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == volume.series_uid
    assert seg.StudyInstanceUID == volume.study_uid
    with pytest.raises(AnnotationError) as e:
        from_seg(path, "1.2.3.4", volume.sop_instance_uids)
    assert e.value.code == "seg_other_series"
    (tmp_path / "junk.dcm").write_bytes(b"no")
    with pytest.raises(AnnotationError) as e:
        from_seg(tmp_path / "junk.dcm", volume.series_uid, volume.sop_instance_uids)
    assert e.value.code == "not_seg"


def test_dicom_seg_is_pseudonymised_like_the_tables(study, tmp_path):
    from calcpipe.seg import from_seg, pseudo_uid, to_seg

    volume, truth, _ = study
    secret = b"registry key"
    seg = to_seg(volume.source_files, truth, secret=secret)
    path = tmp_path / "seg.dcm"
    seg.save_as(path)
    text = path.read_bytes()
    assert b"SYN-" not in text and volume.study_uid.encode() not in text
    assert volume.series_uid.encode() not in text
    assert seg.StudyInstanceUID == pseudo_uid(volume.study_uid, secret)
    labels = from_seg(path, pseudo_uid(volume.series_uid, secret),
                      [pseudo_uid(u, secret) for u in volume.sop_instance_uids])
    np.testing.assert_array_equal(labels, truth)


def test_export_seg_writes_one_seg_per_scored_study(study, tmp_path):
    from typer.testing import CliRunner

    from calcpipe.cli import app
    from calcpipe.pipeline import ScoreParams, run_single_process
    from calcpipe.pipeline.work import read_mask
    from calcpipe.seg import from_seg

    volume, _, cohort = study
    out = tmp_path / "out"
    run_single_process(ScoreParams(source=str(cohort), out=str(out)))
    result = CliRunner().invoke(app, ["export-seg", str(out), "--source", str(cohort),
                                      "--dest", str(tmp_path / "seg")])
    assert result.exit_code == 0 and "1 DICOM SEG files" in result.output, result.output
    path = tmp_path / "seg" / f"{volume.study_uid}.seg.dcm"
    np.testing.assert_array_equal(
        from_seg(path, volume.series_uid, volume.sop_instance_uids),
        read_mask(str(out), None, volume.study_uid))


def test_colour_annotations_read_back_through_kmeans(study, tmp_path):
    from calcpipe.annotations import from_colour, to_colour

    volume, truth, _ = study
    files = to_colour(tmp_path / "colour", volume.hu, truth, volume.affine, volume.spacing_mm)
    assert files
    labels = from_colour(files[::-1], volume.hu, volume.affine, kvp=120)  # any file order
    # the paper's colours: LM is drawn as LAD, the valve as aorta, MAC not at all
    mapped = np.select([truth == 1, truth == 6, truth == 7], [2, 5, 0], truth.astype(int))
    expected = np.where(volume.hu >= threshold_for(120), mapped, 0)
    assert (expected > 0).sum() > 20
    np.testing.assert_array_equal(labels, expected)


def test_colour_annotations_fail_on_unknown_colours_and_misplaced_images(study, tmp_path):
    import pydicom

    from calcpipe.annotations import from_colour, to_colour

    volume, truth, _ = study
    files = to_colour(tmp_path / "colour", volume.hu, truth, volume.affine, volume.spacing_mm)
    ds = pydicom.dcmread(files[0])
    rgb = ds.pixel_array.copy()
    rgb[:3, :3] = (150, 0, 150)  # purple: no class
    ds.PixelData = rgb.tobytes()
    ds.save_as(tmp_path / "purple.dcm")
    with pytest.raises(AnnotationError) as e:
        from_colour([tmp_path / "purple.dcm"], volume.hu, volume.affine)
    assert e.value.code == "colour_matches_no_class" and "LAD" in (e.value.fix or "")
    ds = pydicom.dcmread(files[0])
    ds.ImagePositionPatient = [float(v) + 1000 for v in ds.ImagePositionPatient]
    ds.save_as(tmp_path / "far.dcm")
    with pytest.raises(AnnotationError) as e:
        from_colour([tmp_path / "far.dcm"], volume.hu, volume.affine)
    assert e.value.code == "position_outside_series"


@pytest.mark.parametrize("fmt", ["osirix", "colour", "seg", "nifti"])
def test_a_cohort_with_any_annotation_format_becomes_training_truth(study, tmp_path, fmt):
    import shutil

    from typer.testing import CliRunner

    from calcpipe.annotations import to_colour
    from calcpipe.cli import app
    from calcpipe.models.train import TrainConfig, load_cohort
    from calcpipe.seg import to_seg
    from calcpipe.synthetic.truth import nifti_bytes

    volume, truth, cohort = study
    work = tmp_path / "cohort"
    shutil.copytree(cohort, work, ignore=shutil.ignore_patterns("_truth"))
    notes = tmp_path / "notes"
    notes.mkdir()
    key = volume.study_uid
    coronary = np.where(np.isin(truth, [2, 3, 4]), truth, 0).astype(np.uint8)
    if fmt == "osirix":
        (notes / f"{key}.xml").write_bytes(to_osirix(coronary, volume.affine))
    elif fmt == "colour":
        to_colour(notes / key, volume.hu, coronary, volume.affine, volume.spacing_mm)
    elif fmt == "seg":
        to_seg(volume.source_files, coronary).save_as(notes / f"{key}.dcm")
    else:
        (notes / f"{key}.nii.gz").write_bytes(nifti_bytes(coronary, volume.affine))
    result = CliRunner().invoke(app, ["import-annotations", str(work), "--annotations",
                                      str(notes), "--format", fmt])
    assert result.exit_code == 0 and "of 1 studies" in result.output, result.output
    loaded, _ = load_cohort(work, TrainConfig(), log=lambda _: None)
    expected = coronary if fmt in ("seg", "nifti") else np.where(
        volume.hu >= threshold_for(120), coronary, 0)
    assert len(loaded) == 1
    np.testing.assert_array_equal(loaded[0][2], expected)
