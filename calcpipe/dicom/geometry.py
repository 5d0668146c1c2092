"""Slice ordering, geometry checks and the voxel-to-patient affine (pure numpy).

Hard problems (:class:`~calcpipe.dicom.errors.GeometryProblem`) refuse the stack; soft
findings become QC flags. Tolerances are module constants so they are documented once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calcpipe.dicom.errors import GeometryProblem

#: Two slices closer than this along the normal (mm) share a position.
DUPLICATE_TOLERANCE_MM = 0.01
#: A step differing from the median step by more than max(this, 1 % of it) is non-uniform.
SPACING_TOLERANCE_MM = 0.02
#: A step above this multiple of the median step means a missing slice.
GAP_FACTOR = 1.5
#: Slice steps deviating from the normal by more than this (degrees) mean a sheared stack.
TILT_TOLERANCE_DEG = 0.5
#: Direction cosines differing by more than this are different orientations.
ORIENTATION_TOLERANCE = 1e-4
#: Relative tolerance on pixel spacings.
PIXEL_SPACING_RTOL = 1e-4
#: Slice thickness range of the Agatston method (mm).
AGATSTON_THICKNESS_MM = (2.5, 3.0)


@dataclass(frozen=True)
class StackGeometry:
    """Result of :func:`stack_geometry` for a stack with no hard problems."""

    order: npt.NDArray[np.intp]
    spacing_mm: tuple[float, float, float]
    affine: npt.NDArray[np.float64]


def slice_normal(orientation: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """Unit normal of an ImageOrientationPatient (row cosines x column cosines)."""
    iop = np.asarray(orientation, dtype=np.float64)
    normal = np.cross(iop[:3], iop[3:])
    return normal / np.linalg.norm(normal)


def consistency_problems(
    orientations: npt.NDArray[np.float64],
    matrices: npt.NDArray[np.int64],
    pixel_spacings: npt.NDArray[np.float64],
) -> list[GeometryProblem]:
    """Problems from slices that disagree on orientation, matrix or pixel spacing."""
    problems = []
    if np.abs(orientations - orientations[0]).max() > ORIENTATION_TOLERANCE:
        n = len(np.unique(np.round(orientations, 4), axis=0))
        problems.append(GeometryProblem(
            "mismatched_orientation", f"{n} different ImageOrientationPatient values"))
    shapes = {tuple(int(v) for v in m) for m in matrices}
    if len(shapes) > 1:
        problems.append(GeometryProblem(
            "mismatched_matrix", f"Rows x Columns differ between slices: {sorted(shapes)}"))
    if not np.allclose(pixel_spacings, pixel_spacings[0], rtol=PIXEL_SPACING_RTOL, atol=0):
        values = sorted({(round(a, 5), round(b, 5)) for a, b in pixel_spacings.tolist()})
        problems.append(GeometryProblem(
            "mismatched_pixel_spacing", f"PixelSpacing differs between slices: {values}"))
    return problems


def sort_key(positions: npt.NDArray[np.float64], normal: npt.NDArray[np.float64]) -> npt.NDArray[
    np.float64
]:
    """Signed distance of each slice along the direction the stack ascends.

    The projection of ImagePositionPatient on the slice normal. For an axial stack (z the
    largest component of the normal) it is negated when the normal points towards -z, so
    that ascending keys mean ascending patient z; any other stack ascends along its normal.
    """
    # Only for axial stacks: the sign of a near-zero z (cosine noise in a sagittal or
    # coronal stack) must not reverse the order.
    axial = int(np.argmax(np.abs(normal))) == 2
    sign = -1.0 if axial and normal[2] < 0 else 1.0
    return np.asarray(positions @ normal * sign, dtype=np.float64)


def stack_problems(
    keys: npt.NDArray[np.float64],
    positions: npt.NDArray[np.float64],
    normal: npt.NDArray[np.float64],
    gantry_tilt_deg: float | None,
) -> list[GeometryProblem]:
    """Problems of a sorted, de-duplicated stack: size, gaps, spacing and tilt.

    ``keys`` and ``positions`` must already be in ascending order of ``keys``.
    """
    if len(keys) < 2:
        return [GeometryProblem(
            "single_slice", "a volume needs at least two slices to define the slice spacing")]
    problems = []
    vectors = np.diff(positions, axis=0)
    lengths = np.linalg.norm(vectors, axis=1)
    cosines = np.abs(vectors @ normal) / np.where(lengths > 0, lengths, 1.0)
    shear_deg = float(np.degrees(np.arccos(np.clip(cosines.min(), -1.0, 1.0))))
    tilt_reasons = []
    if shear_deg > TILT_TOLERANCE_DEG:
        tilt_reasons.append(f"slice positions step {shear_deg:.2f} deg off the slice normal")
    if gantry_tilt_deg is not None and abs(gantry_tilt_deg) > 0.01:
        tilt_reasons.append(f"GantryDetectorTilt is {gantry_tilt_deg:g} deg")
    if tilt_reasons:
        problems.append(GeometryProblem("gantry_tilt", "; ".join(tilt_reasons)))
    steps = np.diff(keys)
    median = float(np.median(steps))
    gaps = np.flatnonzero(steps > GAP_FACTOR * median)
    if gaps.size:
        where = ", ".join(f"after slice {i} ({steps[i]:.3f} mm)" for i in gaps[:5])
        problems.append(GeometryProblem(
            "missing_slice",
            f"{gaps.size} gap(s) above {GAP_FACTOR} x the median spacing {median:.3f} mm: {where}",
        ))
    tolerance = max(SPACING_TOLERANCE_MM, 0.01 * median)
    irregular = np.flatnonzero((np.abs(steps - median) > tolerance)
                               & (steps <= GAP_FACTOR * median))
    if irregular.size:
        problems.append(GeometryProblem(
            "nonuniform_spacing",
            f"slice spacing varies from {steps.min():.3f} to {steps.max():.3f} mm "
            f"(median {median:.3f} mm, tolerance {tolerance:.3f} mm)",
        ))
    return problems


def affine_from(
    first_position: npt.NDArray[np.float64],
    last_position: npt.NDArray[np.float64],
    n_slices: int,
    orientation: npt.NDArray[np.float64],
    pixel_spacing: tuple[float, float],
) -> npt.NDArray[np.float64]:
    """Affine from voxel indices in array order (z, y, x) to patient LPS millimetres.

    Columns: the step between slice centres, the column cosines times the row spacing
    (PixelSpacing[0], moving down a column), the row cosines times the column spacing
    (PixelSpacing[1]); translation: the first slice's ImagePositionPatient.
    """
    affine = np.eye(4)
    affine[:3, 0] = (last_position - first_position) / (n_slices - 1)
    affine[:3, 1] = orientation[3:] * pixel_spacing[0]
    affine[:3, 2] = orientation[:3] * pixel_spacing[1]
    affine[:3, 3] = first_position
    return affine


def axial_affine(origin_mm: npt.ArrayLike, spacing_mm: tuple[float, float, float],
                 n_slices: int) -> npt.NDArray[np.float64]:
    """:func:`affine_from` for a standard axial stack (orientation 1,0,0,0,1,0) starting at
    ``origin_mm`` and stepping +z by ``spacing_mm[0]``."""
    if n_slices < 2:
        raise ValueError(f"n_slices={n_slices}: a stack needs at least two slices")
    first = np.asarray(origin_mm, dtype=np.float64)
    last = first + np.array([0.0, 0.0, spacing_mm[0] * (n_slices - 1)])
    orientation = np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    return affine_from(first, last, n_slices, orientation, (spacing_mm[1], spacing_mm[2]))
