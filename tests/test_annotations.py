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
