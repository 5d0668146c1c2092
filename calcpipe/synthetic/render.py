"""Render a :class:`StudySpec` into HU volume and exact calcium truth on the DICOM grid."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from calcpipe.scoring import get_profile
from calcpipe.synthetic import physics
from calcpipe.synthetic.anatomy import (
    Anatomy,
    Tissues,
    add_lower_chest,
    aorta_centreline,
    sample_anatomy,
    tissue_slice,
)
from calcpipe.synthetic.calcium import (
    Plaque,
    aortic_plaques,
    coronary_plaques,
    mitral_plaques,
    rasterise,
)
from calcpipe.synthetic.spec import StudySpec

#: soft-tissue HU of a plaque's matrix (the HA adds to it)
PLAQUE_MATRIX_HU = 40.0
#: field of view along z around the heart centre (mm)
Z_COVERAGE = (-75.0, 70.0)


@dataclass(frozen=True, eq=False)
class RenderedStudy:
    """Pixels and truth of one synthetic study."""

    hu: npt.NDArray[np.int16]  # (Z, Y, X), ascending z
    labels: npt.NDArray[np.uint8]  # canonical label map, only where hu >= threshold
    spacing_mm: tuple[float, float, float]
    origin_mm: tuple[float, float, float]  # ImagePositionPatient of slice 0
    threshold_hu: float
    c_ha: float  # the simulator's true mg HA / cm^3 per HU
    plaques: tuple[Plaque, ...]
    anatomy: Anatomy


def _tissues(rng: np.random.Generator, jitter: float) -> Tissues:
    base = Tissues()
    if jitter <= 0:
        return base
    values = {name: getattr(base, name) + rng.normal(0, jitter)
              for name in base.__dataclass_fields__ if name != "air"}
    return replace(base, **values)


def render_study(spec: StudySpec) -> RenderedStudy:
    """HU volume and truth labels of a study (deterministic for a given spec)."""
    rng = np.random.default_rng(spec.seed)
    rand = spec.randomisation
    scanner = spec.scanner
    anatomy = sample_anatomy(rng, scale=float(rng.uniform(*rand.anatomy_scale)),
                             tissues=_tissues(rng, rand.tissue_hu_jitter))
    # drawn from a stream of their own: a calibrated study keeps its geometry and calcium
    anatomy = add_lower_chest(anatomy, np.random.default_rng([spec.seed, 1]), spec.age_years)
    n, pixel = scanner.matrix, scanner.pixel_mm
    x0 = -n / 2 * pixel + pixel / 2
    y0 = anatomy.body_centre_y - n / 2 * pixel + pixel / 2
    x = (x0 + np.arange(n) * pixel)[None, :]
    y = (y0 + np.arange(n) * pixel)[:, None]
    z_start = round(float(anatomy.heart_centre[2]) + Z_COVERAGE[0], 1)
    n_slices = int((Z_COVERAGE[1] - Z_COVERAGE[0]) / scanner.slice_spacing_mm) + 1
    slice_z = z_start + np.arange(n_slices) * scanner.slice_spacing_mm
    aorta = aorta_centreline(anatomy, float(slice_z[0]))
    tissue = np.stack([tissue_slice(anatomy, x, y, float(z), aorta=aorta) for z in slice_z])

    plaques = coronary_plaques(anatomy, spec.vessels, spec.cac_target, scanner.kvp, rng)
    if spec.aortic:
        plaques += aortic_plaques(anatomy, (float(slice_z[0]), float(slice_z[-1])), rng)
    if spec.mitral:
        plaques += mitral_plaques(anatomy, rng)
    fraction, density, plaque_labels = rasterise(
        plaques, x0=x0, y0=y0, pixel_mm=pixel, slice_z=slice_z,
        thickness_mm=scanner.slice_thickness_mm, shape=tissue.shape)
    hu: np.ndarray = tissue + fraction * (PLAQUE_MATRIX_HU - tissue)
    hu += physics.ha_to_hu(density, scanner.kvp).astype(np.float32)

    blur = scanner.psf_sigma_mm * float(rng.uniform(*rand.blur_factor))
    hu = physics.blur_in_plane(hu.astype(np.float32), blur, pixel)
    if rng.random() < rand.motion_probability:
        hu = ndimage.gaussian_filter1d(hu, sigma=rng.uniform(0.5, 1.5) / pixel,
                                       axis=int(rng.integers(1, 3)))
    if rng.random() < rand.streak_probability and plaques:
        hu += _streaks(hu.shape, plaques, x0, y0, pixel, slice_z, rng)
    noise_sd = scanner.noise_sd_hu * float(rng.uniform(*rand.noise_factor))
    hu += physics.correlated_noise(hu.shape, noise_sd, grain_px=physics.NOISE_GRAIN_PX, rng=rng)
    hu_int = np.clip(np.rint(hu), -1024, 3071).astype(np.int16)

    threshold, _ = get_profile("standard").threshold_hu(scanner.kvp)
    # calcium truth: where a plaque (or its blur, one pixel around) reaches the threshold
    footprint = np.zeros((1, 3, 3), dtype=bool)
    footprint[0] = True
    region = ndimage.grey_dilation(plaque_labels, footprint=footprint)
    truth = np.where(hu_int >= threshold, region, 0).astype(np.uint8)
    c_ha = 1.0 / float(physics.ha_to_hu(1.0, scanner.kvp))
    return RenderedStudy(hu_int, truth, (scanner.slice_spacing_mm, pixel, pixel),
                         (x0, y0, float(slice_z[0])), threshold, c_ha, tuple(plaques), anatomy)


def _streaks(shape: tuple[int, ...], plaques: list[Plaque], x0: float, y0: float,
             pixel: float, slice_z: np.ndarray,
             rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Dark/bright streaks radiating from the densest plaque in the slices it crosses."""
    densest = max(plaques, key=lambda p: p.density_mg_cm3)
    out = np.zeros(shape, dtype=np.float32)
    cx, cy = (densest.centre[0] - x0) / pixel, (densest.centre[1] - y0) / pixel
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    angle = np.arctan2(yy - cy, xx - cx)
    radius = np.hypot(yy - cy, xx - cx) + 1.0
    pattern = (np.cos(angle * int(rng.integers(4, 9))) * 40.0 / np.sqrt(radius)).astype(np.float32)
    near = np.abs(slice_z - densest.centre[2]) < 3.0
    out[near] = pattern
    return out
