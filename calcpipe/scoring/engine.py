"""The scoring kernel: HU + label map -> per-label, per-group and per-lesion rows.

Pure computation: no I/O, no logging, no randomness; the same input gives the same
output bit for bit. Work after one pass over the volume (finding candidate voxels) is
proportional to the number of calcium voxels: connected components come from a sparse
neighbour graph, and every statistic is a grouped reduction over the candidate voxels.
Components never cross labels: two voxels connect only when they carry the same label.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from calcpipe.labels import GROUPS, LABEL_NAMES
from calcpipe.scoring.calibration import NOMINAL_C_HA
from calcpipe.scoring.errors import ScoringInputError
from calcpipe.scoring.profiles import WEIGHT_STEPS_HU, Profile, get_profile
from calcpipe.scoring.records import LabelScore, LesionScore, ScoreFlag

#: voxels at or above this HU inside a labelled region suggest metal (stent, prosthesis),
#: where Agatston is not valid
METAL_HU = 2500
#: slices per block in the candidate pass (keeps temporaries in cache)
_SLAB = 4
#: relative slack on size minimums, so 4 pixels of 0.5 x 0.5 mm meet 1 mm^2 exactly
_SIZE_RTOL = 1e-9
#: the largest label value a row can hold (labels are int64 in the rows' schema)
_MAX_LABEL = int(np.iinfo(np.int64).max)


@dataclass(frozen=True)
class ScoreResult:
    """Scores of one study under one profile.

    Attributes
    ----------
    rows : tuple of LabelScore
        One row per label named or present at any HU (ascending label value; zero rows for
        labels without calcium), then the group rows CAC, AC, TOTAL when the canonical label
        map is used.
    lesions : tuple of LesionScore
    profile, threshold_hu, kvp, mass_calibration :
        The exact parameters that produced the rows (c_HA in mg HA / cm^3 / HU).
    flags : tuple of ScoreFlag
    """

    rows: tuple[LabelScore, ...]
    lesions: tuple[LesionScore, ...]
    profile: str
    threshold_hu: float
    kvp: float
    mass_calibration: float
    flags: tuple[ScoreFlag, ...]

    def row(self, name: str) -> LabelScore:
        """The row of a label or group by name."""
        for row in self.rows:
            if row.name == name:
                return row
        raise KeyError(f"no row named {name!r}; rows: {[r.name for r in self.rows]}")

    def has_flag(self, code: str) -> bool:
        return any(flag.code == code for flag in self.flags)


def score(
    hu: npt.ArrayLike,
    labels: npt.ArrayLike,
    spacing_mm: tuple[float, float, float] | npt.ArrayLike,
    *,
    profile: str | Profile = "standard",
    kvp: float = 120,
    label_names: Mapping[int, str] | None = None,
    mass_calibration: float | None = None,
    affine: npt.ArrayLike | None = None,
    slice_thickness_mm: float | None = None,
) -> ScoreResult:
    """Agatston, volume, mass and density per label, per group and per lesion.

    Parameters
    ----------
    hu : (Z, Y, X) ndarray of int or float, Hounsfield units
        Slices in order along z; no NaN; floats within the int16 range.
    labels : (Z, Y, X) ndarray of non-negative int
        0 = not calcium. A label may be a loose region of interest: a voxel is calcium only
        where its HU is at or above the profile's threshold for ``kvp``.
    spacing_mm : (z, y, x) floats > 0
        z is the distance between slice centres.
    profile : str or Profile
        A name from :data:`calcpipe.scoring.PROFILES`.
    kvp : float
        Tube voltage; selects the threshold (unknown kVp: the 120 kVp threshold, flagged).
    label_names : mapping int -> str, optional
        Default: the canonical map (LM, LAD, LCX, RCA, TAC, AVC, MAC) with group rows.
        Custom maps give no group rows; values present but unnamed become ``label_<v>``
        (a map that gives that name to another value is refused).
    mass_calibration : float, optional
        c_HA in mg HA per cm^3 per HU; default :data:`NOMINAL_C_HA`, flagged.
    affine : (4, 4) array, optional
        Voxel (z, y, x) to patient millimetres, for lesion centroids in mm.
    slice_thickness_mm : float, optional
        Needed by profiles that normalise by thickness or skip overlapping slices.

    Returns
    -------
    ScoreResult
    """
    prof = get_profile(profile)
    hu_arr, label_arr, spacing, matrix = _validate(hu, labels, spacing_mm, kvp, mass_calibration,
                                                   affine, slice_thickness_mm)
    canonical = label_names is None
    names = dict(LABEL_NAMES) if label_names is None else _check_names(label_names)
    threshold, fallback = prof.threshold_hu(float(kvp))
    c_ha = NOMINAL_C_HA if mass_calibration is None else float(mass_calibration)
    factor, stride = _slice_normalisation(prof, spacing[0], slice_thickness_mm)
    flags = []
    if fallback:
        flags.append(ScoreFlag("kvp_threshold_fallback",
                               f"no {prof.name} threshold for {kvp:g} kVp; scored at "
                               f"{threshold:g} HU (the 120 kVp threshold)"))
    if mass_calibration is None:
        flags.append(ScoreFlag("mass_calibration_nominal",
                               f"no c_HA given; nominal {NOMINAL_C_HA} mg/cm^3/HU used"))

    with np.errstate(all="raise"):
        per_label, lesions, metal = _score_labels(
            hu_arr, label_arr, threshold, prof, spacing, factor, stride, c_ha, matrix)
    if metal:
        flags.append(ScoreFlag("metal_suspected",
                               f"{metal} labelled voxel(s) >= {METAL_HU} HU: Agatston is "
                               "not valid over metal (stent, valve prosthesis)"))

    for value in per_label:
        if value not in names and f"label_{value}" in names.values():
            raise ScoringInputError("label_names", label_names,
                                    f"label {value} is present, and its default name "
                                    f"label_{value} is taken by another label",
                                    fix=f"name label {value} too, or rename the other")
        names.setdefault(value, f"label_{value}")
    rows = [per_label.get(value) or _zero_row(value, name)
            for value, name in sorted(names.items())]
    rows = [_named(row, names[row.label]) for row in rows if row.label is not None]
    if canonical:
        rows += [_group_row(group, members, rows) for group, members in GROUPS.items()]
    lesion_rows = tuple(_named_lesion(lesion, names[lesion.label]) for lesion in lesions)
    return ScoreResult(tuple(rows), lesion_rows, prof.name, threshold, float(kvp), c_ha,
                       tuple(flags))


def _validate(
    hu: npt.ArrayLike, labels: npt.ArrayLike, spacing_mm: Any, kvp: float,
    mass_calibration: float | None, affine: npt.ArrayLike | None,
    slice_thickness_mm: float | None,
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], np.ndarray | None]:
    hu_arr = np.asarray(hu)
    if hu_arr.ndim != 3:
        raise ScoringInputError("hu", f"shape {hu_arr.shape}", "must be a (Z, Y, X) volume")
    if hu_arr.dtype.kind not in "iuf":
        raise ScoringInputError("hu", f"dtype {hu_arr.dtype}", "must be integer or float HU")
    if hu_arr.dtype.kind == "f" and not np.isfinite(hu_arr).all():
        raise ScoringInputError("hu", f"{int((~np.isfinite(hu_arr)).sum())} non-finite voxels",
                                "NaN or infinite HU", fix="mask or fill them before scoring")
    if hu_arr.dtype.kind == "f" and hu_arr.size and (hu_arr.min() < -32768
                                                     or hu_arr.max() > 32767):
        # CT numbers are stored as int16; beyond that sums of HU can overflow
        raise ScoringInputError("hu", f"range {hu_arr.min():g}..{hu_arr.max():g}",
                                "HU outside -32768..32767", fix="check the rescale of the series")
    label_arr = np.asarray(labels)
    if label_arr.shape != hu_arr.shape:
        raise ScoringInputError("labels", f"shape {label_arr.shape}",
                                f"must match hu's shape {hu_arr.shape}")
    if label_arr.dtype.kind not in "iub":
        raise ScoringInputError("labels", f"dtype {label_arr.dtype}",
                                "must be integer label values", fix="cast to an integer dtype")
    if label_arr.dtype.kind == "i" and label_arr.size and int(label_arr.min()) < 0:
        raise ScoringInputError("labels", f"minimum {int(label_arr.min())}",
                                "must be non-negative (0 = not calcium)")
    if label_arr.dtype == np.uint64 and label_arr.size and int(label_arr.max()) > _MAX_LABEL:
        raise ScoringInputError("labels", f"maximum {int(label_arr.max())}",
                                f"label values above {_MAX_LABEL} do not fit the int64 rows",
                                fix="renumber the labels")
    try:
        spacing = tuple(float(s) for s in np.asarray(spacing_mm, dtype=float).ravel())
    except (TypeError, ValueError) as e:
        raise ScoringInputError("spacing_mm", spacing_mm, "must be three numbers") from e
    if len(spacing) != 3 or not all(np.isfinite(spacing)) or min(spacing) <= 0:
        raise ScoringInputError("spacing_mm", spacing_mm,
                                "must be three finite positive millimetre values (z, y, x)")
    pixel_area = spacing[1] * spacing[2]
    if not all(0 < v < np.inf for v in (pixel_area, pixel_area * spacing[0])):
        raise ScoringInputError("spacing_mm", spacing_mm,
                                "pixel area or voxel volume is not a finite positive number",
                                fix="give the spacing in millimetres")
    if not _positive(kvp):
        raise ScoringInputError("kvp", kvp, "must be a positive tube voltage (a number)")
    if mass_calibration is not None and not _positive(mass_calibration):
        raise ScoringInputError("mass_calibration", mass_calibration,
                                "c_HA must be a positive number (mg HA per cm^3 per HU)")
    if slice_thickness_mm is not None and not _positive(slice_thickness_mm):
        raise ScoringInputError("slice_thickness_mm", slice_thickness_mm,
                                "must be a positive number")
    matrix = None
    if affine is not None:
        matrix = np.asarray(affine, dtype=np.float64)
        if matrix.shape != (4, 4) or not np.isfinite(matrix).all():
            raise ScoringInputError("affine", f"shape {matrix.shape}",
                                    "must be a finite 4 x 4 matrix")
    return hu_arr, label_arr, (spacing[0], spacing[1], spacing[2]), matrix


def _positive(value: object) -> bool:
    """A finite positive real number (not a bool, not a string)."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool | np.bool_):
        return False
    number = float(value)
    return math.isfinite(number) and number > 0


def _check_names(label_names: Mapping[int, str]) -> dict[int, str]:
    names = {}
    for value, name in label_names.items():
        if (not isinstance(value, int | np.integer) or not 0 < value <= _MAX_LABEL
                or not isinstance(name, str)):
            raise ScoringInputError("label_names", {value: name},
                                    "keys must be positive label values, values names")
        names[int(value)] = name
    if len(set(names.values())) != len(names):
        raise ScoringInputError("label_names", label_names, "names must be unique")
    return names


def _slice_normalisation(
    prof: Profile, spacing_z: float, thickness: float | None
) -> tuple[float, int]:
    """(multiplier of sum(area x weight), slice stride) for a profile."""
    needs_thickness = prof.slice_factor == "thickness" or prof.slice_stride != "all"
    if needs_thickness and thickness is None:
        raise ScoringInputError("slice_thickness_mm", None,
                                f"profile {prof.name!r} needs the slice thickness")
    stride = 1
    if prof.slice_stride == "non_overlapping" and thickness is not None:
        stride = max(1, round(thickness / spacing_z))
    base = thickness if prof.slice_factor == "thickness" and thickness else spacing_z
    return base * stride / 3.0, stride


def _weights(peaks: np.ndarray) -> np.ndarray:
    return np.searchsorted(np.asarray(WEIGHT_STEPS_HU), peaks, side="right") + 1


@dataclass(frozen=True)
class _Groups:
    """Voxels grouped by an integer key: per-voxel group index and per-group reductions."""

    index: np.ndarray  # group of each voxel
    keys: np.ndarray
    counts: np.ndarray
    peaks: np.ndarray
    first: np.ndarray  # position (in the voxel arrays) of each group's first voxel


def _group(keys: np.ndarray, values: np.ndarray) -> _Groups:
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    starts = np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])
    counts = np.diff(np.r_[starts, len(keys)])
    index = np.empty(len(keys), dtype=np.intp)
    index[order] = np.repeat(np.arange(len(starts)), counts)
    return _Groups(index, sorted_keys[starts], counts,
                   np.maximum.reduceat(values[order], starts), order[starts])


#: half-neighbourhoods (each neighbour pair once) as (dz, dy, dx)
_PLANAR_OFFSETS = {
    4: ((0, 0, 1), (0, 1, 0)),
    8: ((0, 0, 1), (0, 1, -1), (0, 1, 0), (0, 1, 1)),
}
_VOLUME_OFFSETS = {
    n: tuple((dz, dy, dx) for dz in (0, 1) for dy in (-1, 0, 1) for dx in (-1, 0, 1)
             if (dz, dy, dx) > (0, 0, 0) and abs(dz) + abs(dy) + abs(dx) <= {6: 1, 18: 2, 26: 3}[n])
    for n in (6, 18, 26)
}


def _components(
    coords: tuple[np.ndarray, ...], keys: np.ndarray,
    offsets: tuple[tuple[int, int, int], ...],
) -> np.ndarray:
    """Connected components of sparse voxels; voxels connect only when their keys match.

    ``coords`` must be in raster (z, y, x) order. Neighbours are found by binary search on
    flat indices in a padded grid, so the cost grows with the number of calcium voxels,
    not with the volume. Components are numbered in raster order of their first voxel.
    """
    n = len(keys)
    if n == 0:
        return np.zeros(0, dtype=np.intp)
    dims = [int(c.max()) + 3 for c in coords]
    flat = ((coords[0] + 1) * dims[1] + (coords[1] + 1)) * dims[2] + (coords[2] + 1)
    rows, cols = [], []
    for dz, dy, dx in offsets:
        target = flat + (dz * dims[1] + dy) * dims[2] + dx
        j = np.minimum(np.searchsorted(flat, target), n - 1)
        hit = (flat[j] == target) & (keys[j] == keys)
        rows.append(np.flatnonzero(hit))
        cols.append(j[hit])
    edges = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(edges[0]), dtype=np.int8), edges), shape=(n, n))
    _, component = connected_components(graph.tocsr(), directed=False)
    _, first = np.unique(component, return_index=True)
    rank = np.empty(len(first), dtype=np.intp)
    rank[np.argsort(first, kind="stable")] = np.arange(len(first))
    return rank[component]


def _find(hu: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices (raster order) of labelled voxels at or above the threshold, and the
    label values present at any HU (each gets its row, so that the rows do not depend on
    HU).

    Labels are sparse: the labelled voxels are found first, the threshold checked only
    there. A one-byte label map is read eight labels at a time (as 64-bit words; a word
    with any label is looked at voxel by voxel): 0.8 against 8 ms per 512 x 512 study for
    the slab-by-slab comparison of both volumes, :func:`_find_by_slab`, which other
    label types still take (tests compare the two).
    """
    if labels.dtype.itemsize != 1 or not labels.flags.c_contiguous or labels.size % 8:
        return _find_by_slab(hu, labels, threshold)
    # (!= 0 first: numpy's nonzero of a boolean array is several times faster than of words)
    words = np.flatnonzero(labels.reshape(-1).view(np.uint64) != 0)
    flat = (words[:, None] * 8 + np.arange(8)).ravel()
    found = labels.reshape(-1)[flat]
    present = _present(found)
    flat = flat[found != 0]
    values = hu.reshape(-1)[flat] if hu.flags.c_contiguous else hu[np.unravel_index(flat,
                                                                                     hu.shape)]
    return flat[values >= threshold], present


def _find_by_slab(
    hu: np.ndarray, labels: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_find` for any label type, a few slices at a time so that the
    temporaries stay in cache (2.4x faster than whole-volume boolean arrays), with
    flatnonzero (np.nonzero on a 3-D mask is an order of magnitude slower)."""
    plane = hu.shape[1] * hu.shape[2]
    above = np.empty((_SLAB, *hu.shape[1:]), dtype=bool)
    labelled = np.empty_like(above)
    found, values = [], []
    for z in range(0, hu.shape[0], _SLAB):
        n = min(_SLAB, hu.shape[0] - z)
        np.greater_equal(hu[z : z + n], threshold, out=above[:n])
        np.not_equal(labels[z : z + n], 0, out=labelled[:n])
        values.append(labels[z : z + n][labelled[:n]])
        above[:n] &= labelled[:n]
        hits = np.flatnonzero(above[:n])
        if hits.size:
            found.append(hits + z * plane)
    present = _present(np.concatenate(values)) if values else np.zeros(0, dtype=np.int64)
    return np.concatenate(found) if found else np.zeros(0, dtype=np.intp), present


def _present(values: np.ndarray) -> np.ndarray:
    """The distinct non-zero values, from the last value of each run: labels come in long
    runs (0.1 ms per 512 x 512 x 60 study against 0.6 ms for np.unique of every value)."""
    ends = np.flatnonzero(values[1:] != values[:-1])
    present = np.unique(np.r_[values[ends], values[-1:]])
    return present[present != 0]


def _score_labels(
    hu: np.ndarray, labels: np.ndarray, threshold: float, prof: Profile,
    spacing: tuple[float, float, float], factor: float, stride: int, c_ha: float,
    affine: np.ndarray | None,
) -> tuple[dict[int, LabelScore], list[LesionScore], int]:
    flat, present = _find(hu, labels, threshold)
    rows = {int(value): _zero_row(int(value), "") for value in present}
    if not flat.size:
        return rows, [], 0
    coords = np.unravel_index(flat, hu.shape)
    voxel_label = labels.ravel()[flat].astype(np.int64)
    voxel_hu = hu.ravel()[flat].astype(np.float64)
    metal = int((voxel_hu >= METAL_HU).sum())
    pixel_area = spacing[1] * spacing[2]
    voxel_volume = pixel_area * spacing[0]
    lesion_offsets = _VOLUME_OFFSETS[prof.lesion_connectivity]

    # in either unit, a component or lesion below its minimum is not calcium: components
    # are sized first, lesions formed from the components kept, then sized
    kept = np.ones(len(flat), dtype=bool)
    planar = None
    if prof.unit == "slice_component" or prof.min_area_mm2 > 0 or prof.min_pixels > 1:
        component = _components(coords, voxel_label, _PLANAR_OFFSETS[prof.slice_connectivity])
        planar = _group(component, voxel_hu)
        area_ok = planar.counts * pixel_area >= prof.min_area_mm2 * (1 - _SIZE_RTOL)
        kept = (area_ok & (planar.counts >= prof.min_pixels))[planar.index]
    lesion = np.full(len(flat), -1, dtype=np.intp)
    kept_coords = (coords[0][kept], coords[1][kept], coords[2][kept])
    lesion[kept] = _components(kept_coords, voxel_label[kept], lesion_offsets)
    if prof.min_lesion_volume_mm3 > 0:
        volume_ok = np.bincount(lesion[kept]) * voxel_volume >= (
            prof.min_lesion_volume_mm3 * (1 - _SIZE_RTOL))
        was_kept = np.flatnonzero(kept)
        kept[was_kept] = volume_ok[lesion[was_kept]]
        lesion[~kept] = -1
    if prof.unit == "slice_component" and planar is not None:
        units = planar  # each lies inside one lesion (Profile refuses 8- with 6-connected)
    else:
        # lesion x slice; dropped voxels (lesion -1) get negative keys, never counted
        units = _group(lesion.astype(np.int64) * hu.shape[0] + coords[0], voxel_hu)
    keep_unit = kept[units.first]

    unit_label = voxel_label[units.first]
    counted = keep_unit & (coords[0][units.first] % stride == 0)
    unit_area = units.counts * pixel_area
    unit_score = np.where(counted, unit_area * _weights(units.peaks), 0.0)
    unit_area = np.where(counted, unit_area, 0.0)

    lesions: list[LesionScore] = []
    for value in np.unique(voxel_label):
        in_label = kept & (voxel_label == value)
        n_kept = int(in_label.sum())
        if not n_kept:
            continue
        kept_hu = voxel_hu[in_label]
        hu_sum = float(kept_hu.sum())
        label_units = unit_label == value
        area = float(unit_area[label_units].sum())
        weighted = float(unit_score[label_units].sum())
        lesion_groups = _group(lesion[in_label], kept_hu)
        rows[int(value)] = LabelScore(
            label=int(value), name="", is_group=False,
            agatston=weighted * factor,
            volume_mm3=n_kept * voxel_volume,
            mass_mg=c_ha * hu_sum * voxel_volume / 1000.0,
            area_mm2=area,
            density_score=weighted / area if area else 0.0,
            n_lesions=len(lesion_groups.keys),
            n_voxels=n_kept,
            peak_hu=float(kept_hu.max()),
            mean_hu=hu_sum / n_kept,
        )
        # every counted unit lies inside exactly one lesion: attribute its score there
        unit_lesion = lesion[units.first[label_units & counted]]
        lesion_agatston = np.bincount(
            np.searchsorted(lesion_groups.keys, unit_lesion),
            weights=unit_score[label_units & counted], minlength=len(lesion_groups.keys),
        ) * factor
        in_coords = tuple(c[in_label] for c in coords)
        lesions += _lesion_rows(int(value), lesion_groups, in_coords, kept_hu,
                                lesion_agatston, voxel_volume, c_ha, affine, len(lesions))
    return rows, lesions, metal


def _lesion_rows(
    value: int, groups: _Groups, coords: tuple[np.ndarray, ...], vhu: np.ndarray,
    agatston: np.ndarray, voxel_volume: float, c_ha: float,
    affine: np.ndarray | None, first_id: int,
) -> list[LesionScore]:
    n = len(groups.keys)
    sums = np.bincount(groups.index, weights=vhu, minlength=n)
    centroids = [np.bincount(groups.index, weights=c, minlength=n) / groups.counts
                 for c in coords]
    lows = [np.full(n, np.iinfo(np.int64).max) for _ in coords]
    highs = [np.full(n, -1) for _ in coords]
    for axis, c in enumerate(coords):
        np.minimum.at(lows[axis], groups.index, c)
        np.maximum.at(highs[axis], groups.index, c)
    rows = []
    for i in range(n):
        centroid = (float(centroids[0][i]), float(centroids[1][i]), float(centroids[2][i]))
        mm: tuple[float | None, ...] = (None, None, None)
        if affine is not None:
            mm = tuple(float(v) for v in (affine @ [*centroid, 1.0])[:3])
        rows.append(LesionScore(
            lesion_id=first_id + i, label=value, name="",
            agatston=float(agatston[i]),
            volume_mm3=float(groups.counts[i] * voxel_volume),
            mass_mg=float(c_ha * sums[i] * voxel_volume / 1000.0),
            n_voxels=int(groups.counts[i]),
            peak_hu=float(groups.peaks[i]),
            mean_hu=float(sums[i] / groups.counts[i]),
            centroid_z=centroid[0], centroid_y=centroid[1], centroid_x=centroid[2],
            centroid_lps_x_mm=mm[0], centroid_lps_y_mm=mm[1], centroid_lps_z_mm=mm[2],
            first_slice=int(lows[0][i]), last_slice=int(highs[0][i]),
            bbox_y_min=int(lows[1][i]), bbox_y_max=int(highs[1][i]),
            bbox_x_min=int(lows[2][i]), bbox_x_max=int(highs[2][i]),
        ))
    return rows


def _zero_row(value: int | None, name: str, *, is_group: bool = False) -> LabelScore:
    return LabelScore(value, name, is_group, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0, None, None)


def _named(row: LabelScore, name: str) -> LabelScore:
    return row if row.name == name else LabelScore(**{**row.__dict__, "name": name})


def _named_lesion(lesion: LesionScore, name: str) -> LesionScore:
    return LesionScore(**{**lesion.__dict__, "name": name})


def _group_row(group: str, members: tuple[str, ...], rows: list[LabelScore]) -> LabelScore:
    """A group row from its member rows only (never from a merged mask)."""
    parts = [r for r in rows if r.name in members]
    area = sum(r.area_mm2 for r in parts)
    voxels = sum(r.n_voxels for r in parts)
    if not voxels:
        return _zero_row(None, group, is_group=True)
    weighted_area = sum(r.density_score * r.area_mm2 for r in parts)
    return LabelScore(
        label=None, name=group, is_group=True,
        agatston=sum(r.agatston for r in parts),
        volume_mm3=sum(r.volume_mm3 for r in parts),
        mass_mg=sum(r.mass_mg for r in parts),
        area_mm2=area,
        density_score=weighted_area / area if area else 0.0,
        n_lesions=sum(r.n_lesions for r in parts),
        n_voxels=voxels,
        peak_hu=max(r.peak_hu for r in parts if r.peak_hu is not None),
        mean_hu=sum((r.mean_hu or 0.0) * r.n_voxels for r in parts) / voxels,
    )
