"""Score rows: one per label (and group), one per lesion."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelScore:
    """Calcium of one label (a vessel) or one group (CAC, AC, TOTAL) in one study.

    ``label`` is the label value, None for a group row. ``peak_hu`` and ``mean_hu`` are
    None where there is no calcium. ``area_mm2`` is the calcified area that enters the
    Agatston sum (all slices, or the counted slices of a ``non_overlapping`` profile);
    ``density_score`` is sum(area x weight) / sum(area), 0 without calcium.
    """

    label: int | None
    name: str
    is_group: bool
    agatston: float
    volume_mm3: float
    mass_mg: float
    area_mm2: float
    density_score: float
    n_lesions: int
    n_voxels: int
    peak_hu: float | None
    mean_hu: float | None


@dataclass(frozen=True)
class LesionScore:
    """One 3-D calcified lesion (connected component of calcium voxels of one label).

    Centroids are in voxel indices (z, y, x); the ``_mm`` centroid is in patient LPS
    millimetres when an affine was given. Bounding box bounds are inclusive indices.
    """

    lesion_id: int
    label: int
    name: str
    agatston: float
    volume_mm3: float
    mass_mg: float
    n_voxels: int
    peak_hu: float
    mean_hu: float
    centroid_z: float
    centroid_y: float
    centroid_x: float
    centroid_lps_x_mm: float | None
    centroid_lps_y_mm: float | None
    centroid_lps_z_mm: float | None
    first_slice: int
    last_slice: int
    bbox_y_min: int
    bbox_y_max: int
    bbox_x_min: int
    bbox_x_max: int


@dataclass(frozen=True)
class ScoreFlag:
    """A condition a reader of the scores must know about (e.g. a fallback threshold)."""

    code: str
    detail: str
