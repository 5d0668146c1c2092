"""Annotation import into the canonical label map on a CT series' grid.

* :func:`from_osirix` - OsiriX ROI files (XML property lists), the format of the Stanford
  COCA gated calcium-scoring dataset: a top-level ``Images`` array of dicts with
  ``ImageIndex``, ``NumberOfROIs`` and ``ROIs``; each ROI has ``Name`` (the vessel) and
  ``Point_mm`` (polygon vertices "(x, y, z)" in patient millimetres). ROIs are placed by
  ``Point_mm``, never by ``ImageIndex`` (whose order can run opposite to the files'); ROIs
  with no points are skipped. A voxel gets the vessel's label when its centre lies inside
  the polygon (even-odd rule) and its HU reaches the calcium threshold for the scan's kVp.
* :func:`from_nifti` - a NIfTI label map (canonical values) on the series' grid.

:func:`to_osirix` writes a label map as an OsiriX ROI file (one rectangle per run of
calcium pixels along a row), so that the importer can be tested on exact examples.
Every malformed input raises :class:`AnnotationError` with a specific ``code``.
"""

from __future__ import annotations

import plistlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from calcpipe.errors import CalcpipeError
from calcpipe.labels import LABEL_NAMES

#: OsiriX ROI names (as in COCA) -> canonical label names. "Left Coronary Artery" is the
#: left main.
OSIRIX_VESSELS = {
    "left anterior descending artery": "LAD",
    "left circumflex artery": "LCX",
    "right coronary artery": "RCA",
    "left coronary artery": "LM",
}
_VALUE = {name: value for value, name in LABEL_NAMES.items()}
_POINT = re.compile(r"^\s*\(?\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*,\s*([-+0-9.eE]+)\s*\)?\s*$")


class AnnotationError(CalcpipeError):
    """An annotation that cannot be placed on the CT series."""


def _threshold(kvp: float) -> float:
    from calcpipe.models.segment import threshold_for

    return threshold_for(kvp)


def _parse_point(text: str, where: str) -> tuple[float, float, float]:
    match = _POINT.match(str(text))
    if match is None:
        raise AnnotationError(f"cannot read the point {text!r}", code="bad_point",
                              path=where, attribute="Point_mm",
                              fix='points are strings "(x, y, z)" in millimetres')
    x, y, z = (float(v) for v in match.groups())
    return x, y, z


def inside_polygon(rows: npt.NDArray[np.float64], cols: npt.NDArray[np.float64],
                   polygon: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Even-odd test of points (rows, cols) against a polygon of (row, col) vertices."""
    inside = np.zeros(rows.shape, dtype=bool)
    n = len(polygon)
    for i in range(n):
        r1, c1 = polygon[i]
        r2, c2 = polygon[(i + 1) % n]
        crosses = (r1 > rows) != (r2 > rows)
        with np.errstate(divide="ignore", invalid="ignore"):
            at = (c2 - c1) * (rows - r1) / (r2 - r1) + c1
        inside ^= crosses & (cols < at)
    return inside


def from_osirix(path: str | Path, hu: npt.NDArray[np.integer],
                affine: npt.NDArray[np.float64], *, kvp: float = 120.0) -> npt.NDArray[np.uint8]:
    """Label map (Z, Y, X) of an OsiriX ROI file on the grid of ``hu`` / ``affine``."""
    where = str(path)
    try:
        document = plistlib.loads(Path(path).read_bytes())
    except (plistlib.InvalidFileException, ValueError) as e:
        raise AnnotationError(f"not an OsiriX ROI property list: {e}", code="not_osirix",
                              path=where) from None
    images = document.get("Images") if isinstance(document, dict) else None
    if not isinstance(images, list):
        raise AnnotationError("no top-level Images array", code="not_osirix", path=where,
                              attribute="Images")
    labels = np.zeros(hu.shape, dtype=np.uint8)
    calcium = np.asarray(hu) >= _threshold(kvp)
    to_voxel = np.linalg.inv(affine)
    for image in images:
        for roi in image.get("ROIs", []):
            points = roi.get("Point_mm") or []
            if not points:
                continue  # empty ROIs occur in COCA
            name = str(roi.get("Name", ""))
            vessel = OSIRIX_VESSELS.get(name.strip().lower())
            if vessel is None:
                raise AnnotationError(
                    f"unknown vessel name {name!r}", code="unknown_vessel", path=where,
                    attribute="Name", fix="use one of: " + ", ".join(
                        v.title() for v in OSIRIX_VESSELS))
            mm = np.array([(*_parse_point(p, where), 1.0) for p in points])
            zyx = (to_voxel @ mm.T).T[:, :3]
            _place(labels, calcium, zyx, _VALUE[vessel], name, where)
    return labels


def _place(labels: npt.NDArray[np.uint8], calcium: npt.NDArray[np.bool_],
           zyx: npt.NDArray[np.float64], value: int, name: str, where: str) -> None:
    z = np.round(zyx[:, 0])
    if np.ptp(zyx[:, 0]) > 0.5 or not 0 <= z[0] < labels.shape[0]:
        raise AnnotationError(
            f"ROI {name!r} does not lie on one slice of the series (slice positions "
            f"{zyx[:, 0].min():.2f}..{zyx[:, 0].max():.2f})", code="polygon_outside_image",
            path=where, attribute="Point_mm", fix="check that the ROI file belongs to this "
            "series")
    polygon = zyx[:, 1:]
    if (polygon.min() < -0.5 or polygon[:, 0].max() > labels.shape[1] - 0.5
            or polygon[:, 1].max() > labels.shape[2] - 0.5):
        raise AnnotationError(f"ROI {name!r} reaches outside the image",
                              code="polygon_outside_image", path=where, attribute="Point_mm")
    height, width = labels.shape[1:]
    r0, c0 = (max(int(np.floor(v)), 0) for v in polygon.min(axis=0))
    r1 = min(int(np.ceil(polygon[:, 0].max())), height - 1)
    c1 = min(int(np.ceil(polygon[:, 1].max())), width - 1)
    rows, cols = np.mgrid[r0:r1 + 1, c0:c1 + 1].astype(np.float64)
    mask = inside_polygon(rows, cols, polygon)
    k = int(z[0])
    target = labels[k, r0:r1 + 1, c0:c1 + 1]  # a view: written in place
    target[mask & calcium[k, r0:r1 + 1, c0:c1 + 1] & (target == 0)] = value


def to_osirix(labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64],
              *, reverse_image_index: bool = True) -> bytes:
    """An OsiriX ROI file for the coronary labels of a label map: one rectangle ROI per
    run of equal labels along a row (pixel edges at +/- 0.5)."""
    names = {v: k.title() for k, v in OSIRIX_VESSELS.items()}
    images = []
    for k in range(labels.shape[0]):
        rois: list[dict[str, Any]] = []
        for value in np.unique(labels[k]):
            name = LABEL_NAMES.get(int(value))
            if name not in names:
                continue
            for r in range(labels.shape[1]):
                cols = np.flatnonzero(labels[k, r] == value)
                if not cols.size:
                    continue
                breaks = np.flatnonzero(np.diff(cols) > 1)
                for start, stop in zip(np.r_[0, breaks + 1], np.r_[breaks, cols.size - 1],
                                       strict=True):
                    corners = [(r - 0.5, cols[start] - 0.5), (r - 0.5, cols[stop] + 0.5),
                               (r + 0.5, cols[stop] + 0.5), (r + 0.5, cols[start] - 0.5)]
                    mm = [affine @ np.array([k, a, b, 1.0]) for a, b in corners]
                    rois.append({"Name": names[name], "Point_mm": [
                        f"({p[0]:.6f}, {p[1]:.6f}, {p[2]:.6f})" for p in mm],
                        "Point_px": [f"({b:.1f}, {a:.1f})" for a, b in corners]})
        images.append({"ImageIndex": k, "NumberOfROIs": len(rois), "ROIs": rois})
    if reverse_image_index:  # as in COCA: ImageIndex runs opposite to the slice order
        for image in images:
            image["ImageIndex"] = labels.shape[0] - 1 - image["ImageIndex"]
    return plistlib.dumps({"Images": images}, fmt=plistlib.FMT_XML)


def from_nifti(path: str | Path, affine: npt.NDArray[np.float64],
               shape: tuple[int, int, int]) -> npt.NDArray[np.uint8]:
    """A canonical label map stored as NIfTI, checked against the series' grid."""
    from calcpipe.synthetic.truth import read_labels

    labels, label_affine = read_labels(path)
    if labels.shape != tuple(shape) or not np.allclose(label_affine, affine, atol=1e-3):
        raise AnnotationError(
            f"the label map's grid {labels.shape} does not match the series {tuple(shape)}",
            code="grid_mismatch", path=str(path), fix="resample the labels onto the series")
    unknown = sorted(set(np.unique(labels).tolist()) - {0, *LABEL_NAMES})
    if unknown:
        raise AnnotationError(f"label values {unknown} are not canonical", code="unknown_label",
                              path=str(path), fix=f"use {dict(LABEL_NAMES)}")
    return labels
