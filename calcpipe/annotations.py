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


# -- colour annotations (the paper's route) ------------------------------------------------

#: The paper's annotation colours (Singh et al. 2021): LAD green, LCX blue, RCA yellow,
#: aorta red. There is no colour for the left main: annotators draw it as part of the LAD,
#: so LM calcium imported this way lands in LAD; aortic valve calcium lands in TAC.
PAPER_COLOURS = {"LAD": (0, 255, 0), "LCX": (0, 0, 255), "RCA": (255, 255, 0),
                 "TAC": (255, 0, 0)}
#: Largest distance (RGB units) between a cluster centre and its reference colour.
COLOUR_TOLERANCE = 60.0
#: A pixel is "coloured" (drawn) when max(R,G,B) - min(R,G,B) exceeds this.
SATURATION = 60


def kmeans_colours(pixels: npt.NDArray[np.float64], initial: npt.NDArray[np.float64],
                   iterations: int = 20) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.intp]]:
    """Plain k-means on RGB values from the given initial centres; (centres, assignment).
    Clusters that end up empty are dropped."""
    centres = initial.astype(np.float64).copy()
    assign = np.zeros(len(pixels), dtype=np.intp)
    for _ in range(iterations):
        distance = ((pixels[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)
        assign = distance.argmin(axis=1)
        moved = np.array([pixels[assign == k].mean(axis=0) if (assign == k).any()
                          else centres[k] for k in range(len(centres))])
        if np.allclose(moved, centres):
            break
        centres = moved
    used = np.unique(assign)
    remap = np.full(len(centres), -1)
    remap[used] = np.arange(len(used))
    return centres[used], remap[assign]


def colour_labels(rgb: npt.NDArray[np.uint8], where: str = "") -> npt.NDArray[np.uint8]:
    """Canonical labels of the drawn pixels of one RGB image (Y, X, 3), by k-means
    clustering of their colours and the nearest paper colour of each cluster."""
    image = np.asarray(rgb, dtype=np.int16)
    drawn = (image.max(axis=2) - image.min(axis=2)) > SATURATION
    labels = np.zeros(image.shape[:2], dtype=np.uint8)
    if not drawn.any():
        return labels
    names = list(PAPER_COLOURS)
    references = np.array([PAPER_COLOURS[n] for n in names], dtype=np.float64)
    centres, assign = kmeans_colours(image[drawn].astype(np.float64), references)
    values = np.zeros(len(centres), dtype=np.uint8)
    for k, centre in enumerate(centres):
        distance = np.sqrt(((references - centre) ** 2).sum(axis=1))
        nearest = int(distance.argmin())
        if distance[nearest] > COLOUR_TOLERANCE:
            raise AnnotationError(
                f"drawn colour {tuple(int(v) for v in centre)} matches no class (nearest "
                f"{names[nearest]} at {distance[nearest]:.0f})", code="colour_matches_no_class",
                path=where or None, fix="draw with the paper's colours: " + ", ".join(
                    f"{n} {c}" for n, c in PAPER_COLOURS.items()))
        values[k] = _VALUE[names[nearest]]
    labels[drawn] = values[assign]
    return labels


def from_colour(files: list[str | Path], hu: npt.NDArray[np.integer],
                affine: npt.NDArray[np.float64], *, kvp: float = 120.0) -> npt.NDArray[np.uint8]:
    """Label map from RGB DICOM images drawn on the series' slices, each placed on the slice
    at its ImagePositionPatient (the images must share the series' in-plane grid)."""
    import pydicom

    labels = np.zeros(hu.shape, dtype=np.uint8)
    calcium = np.asarray(hu) >= _threshold(kvp)
    to_voxel = np.linalg.inv(affine)
    for file in files:
        where = str(file)
        ds = pydicom.dcmread(where)
        if ds.get("PhotometricInterpretation") != "RGB":
            raise AnnotationError("not an RGB image", code="not_colour_image", path=where,
                                  attribute="PhotometricInterpretation")
        position = [float(v) for v in ds.ImagePositionPatient]
        z, r, c = (to_voxel @ np.array([*position, 1.0]))[:3]
        k = round(z)
        if abs(z - k) > 0.25 or not 0 <= k < hu.shape[0] or abs(r) > 0.25 or abs(c) > 0.25:
            raise AnnotationError(
                f"the image at {position} is not on a slice of the series",
                code="position_outside_series", path=where, attribute="ImagePositionPatient")
        rgb = ds.pixel_array
        if rgb.shape[:2] != hu.shape[1:]:
            raise AnnotationError(f"image matrix {rgb.shape[:2]} differs from the series "
                                  f"{hu.shape[1:]}", code="grid_mismatch", path=where)
        drawn = colour_labels(rgb, where)
        labels[k] = np.where(calcium[k] & (drawn > 0), drawn, labels[k])
    return labels


def to_colour(folder: str | Path, hu: npt.NDArray[np.integer],
              labels: npt.NDArray[np.integer], affine: npt.NDArray[np.float64],
              spacing_mm: tuple[float, float, float]) -> list[Path]:
    """RGB DICOM images of the slices with calcium, drawn in the paper's colours over the
    windowed CT (the inverse of :func:`from_colour`, for tests and examples)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

    from calcpipe.viz import window

    colour_of = {1: "LAD", 2: "LAD", 3: "LCX", 4: "RCA", 5: "TAC", 6: "TAC"}  # LM -> LAD
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for k in range(hu.shape[0]):
        if not np.isin(labels[k], list(colour_of)).any():
            continue
        grey = window(hu[k])
        rgb = np.repeat(grey[:, :, None], 3, axis=2)
        for value, name in colour_of.items():
            rgb[labels[k] == value] = PAPER_COLOURS[name]
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = pydicom.Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = SecondaryCaptureImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "OT"
        ds.ImagePositionPatient = [float(v) for v in (affine @ np.array([k, 0, 0, 1.0]))[:3]]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing_mm[1]), float(spacing_mm[2])]
        ds.Rows, ds.Columns = rgb.shape[:2]
        ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
        ds.PixelData = np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()
        path = out / f"colour_{k:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        written.append(path)
    return written


# -- a cohort's annotations as training truth ---------------------------------------------

FORMATS = ("osirix", "colour", "seg", "nifti")


def import_cohort(cohort: str | Path, annotations: str | Path, fmt: str, *,
                  log: Any = print) -> int:
    """Convert the annotations of each study of ``cohort`` into its canonical truth label map
    ``cohort/_truth/labels/<study_key>.nii.gz`` (what ``calcpipe train`` reads).

    Annotations are found by study key: ``<key>.xml`` (osirix), ``<key>/`` holding RGB DICOM
    images (colour), ``<key>.dcm`` (seg), ``<key>.nii.gz`` (nifti). Returns the number of
    studies imported; studies without annotations are skipped (and logged).
    """
    from calcpipe.ingest import discover, load_study
    from calcpipe.synthetic.truth import nifti_bytes

    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: use one of {FORMATS}")
    root, source = Path(cohort), Path(annotations)
    target = root / "_truth" / "labels"
    target.mkdir(parents=True, exist_ok=True)
    done = 0
    for choice in discover(root).studies:
        key = choice.study.study_key
        found = {"osirix": source / f"{key}.xml", "colour": source / key,
                 "seg": source / f"{key}.dcm", "nifti": source / f"{key}.nii.gz"}[fmt]
        if not found.exists():
            log(f"skipping study {key}: no {fmt} annotation")
            continue
        volume = load_study(root, study_key=key)
        kvp = volume.scoring_kvp
        if fmt == "osirix":
            labels = from_osirix(found, volume.hu, volume.affine, kvp=kvp)
        elif fmt == "colour":
            labels = from_colour(sorted(found.glob("*.dcm")), volume.hu, volume.affine, kvp=kvp)
        elif fmt == "seg":
            from calcpipe.seg import from_seg

            labels = from_seg(found, volume.series_uid, volume.sop_instance_uids)
        else:
            labels = from_nifti(found, volume.affine, volume.hu.shape)
        (target / f"{key}.nii.gz").write_bytes(nifti_bytes(labels, volume.affine))
        done += 1
    return done
