"""Imaging physics of the simulator: HA to HU, slice integration, blur and CT-like noise.

Constants are calibrated on the real QRM phantom scan (Canon Aquilion ONE, 120 kVp, FC12,
3 mm slices, 0.488 mm pixels; ../shared/data/qrm_phantom_canon): the fully covered slice of
the 5 mm inserts peaks at 383, 649 and 1275 HU for 200, 400 and 800 mg HA/cm^3 over an
~80 HU insert background; the edge width across an insert fits an in-plane Gaussian
point-spread function of sigma about 0.6 mm; background noise has an SD of about 22 HU.
The HA-to-HU points, PSF, slice profile and noise grain were then tuned so the replica's
per-insert Agatston and volume scores match the real scan's FQM reference
(``calcpipe synth --qrm-report``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
from scipy import ndimage

#: HU contrast of HA over its surroundings at 120 kVp, piecewise linear through points
#: fitted to the QRM inserts' scores (mg HA/cm^3, HU); extrapolated with the last slope
HA_CONTRAST_120KVP = ((0.0, 0.0), (100.0, 105.0), (200.0, 255.0), (400.0, 500.0), (800.0, 1120.0))
#: slice sensitivity profile: the nominal thickness convolved with a Gaussian of this
#: sigma (mm), which puts signal of a 3 mm object into the neighbouring 3 mm slices as
#: the real scan shows
SLICE_PROFILE_SIGMA_MM = 0.7
#: calcium attenuates relatively more at lower tube voltage: factor on the 120 kVp slope
#: (the CT number of hydroxyapatite rises by roughly 15-20 % from 120 to 100 kVp)
KVP_CALCIUM_GAIN = {100: 1.18, 120: 1.0}
#: in-plane PSF sigma (mm) of a soft kernel; sharp kernels use less blur and more noise
PSF_SIGMA_MM = 0.6
#: noise grain: sigma (pixels) of the low-pass filter applied to white noise
NOISE_GRAIN_PX = 0.6


def ha_to_hu(density_mg_cm3: npt.ArrayLike, kvp: float) -> npt.NDArray[np.float64]:
    """HU contrast of hydroxyapatite over its surroundings at a tube voltage."""
    gain = KVP_CALCIUM_GAIN.get(round(kvp), 1.0)
    density = np.asarray(density_mg_cm3, dtype=np.float64)
    points = np.asarray(HA_CONTRAST_120KVP)
    slope = (points[-1, 1] - points[-2, 1]) / (points[-1, 0] - points[-2, 0])
    contrast = np.interp(density, points[:, 0], points[:, 1])
    beyond = density > points[-1, 0]
    contrast = np.where(beyond, points[-1, 1] + (density - points[-1, 0]) * slope, contrast)
    return contrast * gain


def blur_in_plane(volume: npt.NDArray[np.float32], sigma_mm: float,
                  pixel_mm: float) -> npt.NDArray[np.float32]:
    """Gaussian point-spread function in each slice (the kernel's resolution)."""
    sigma_px = sigma_mm / pixel_mm
    if sigma_px <= 0:
        return volume
    return ndimage.gaussian_filter(volume, sigma=(0, sigma_px, sigma_px), mode="nearest")


def correlated_noise(shape: tuple[int, ...], sd_hu: float, grain_px: float,
                     rng: np.random.Generator) -> npt.NDArray[np.float32]:
    """Gaussian noise with a CT-like grain: white noise low-passed in plane, rescaled to
    the requested standard deviation."""
    white = rng.standard_normal(shape, dtype=np.float32)
    if grain_px > 0:
        white = ndimage.gaussian_filter(white, sigma=(0, grain_px, grain_px), mode="wrap")
        white /= max(float(white.std()), 1e-6)
    return white * np.float32(sd_hu)


def slice_profile(thickness_mm: float, samples: int = 9, sigma_mm: float | None = None
                  ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Sub-slice offsets (mm from the slice centre) and weights summing to 1: a
    rectangle of the nominal thickness convolved with a Gaussian."""
    from scipy.special import erf

    sigma_mm = SLICE_PROFILE_SIGMA_MM if sigma_mm is None else sigma_mm
    half = thickness_mm / 2 + 2.5 * sigma_mm
    offsets = (np.arange(samples) + 0.5) / samples * 2 * half - half
    if sigma_mm <= 0:
        weights = (np.abs(offsets) <= thickness_mm / 2).astype(np.float64)
    else:
        scale = sigma_mm * np.sqrt(2)
        weights = 0.5 * (erf((offsets + thickness_mm / 2) / scale)
                         - erf((offsets - thickness_mm / 2) / scale))
    return offsets, weights / weights.sum()


def cylinder_occupancy(row: float, col: float, z_mm: float, radius_mm: float,
                       length_mm: float, *, slice_z0_mm: float,
                       spacing_mm: tuple[float, float, float], shape: tuple[int, int, int],
                       samples: int = 5) -> tuple[tuple[slice, ...], npt.NDArray[np.float32]]:
    """Fraction of each voxel inside a z-aligned cylinder centred at pixel (``row``,
    ``col``) and ``z_mm``: supersampled in plane, weighted along z by the slice
    sensitivity profile. Returns the box it touches and the fractions in it."""
    dz, dy, dx = spacing_mm
    r_px = radius_mm / dy + 1
    j0, j1 = max(int(row - r_px), 0), min(int(row + r_px) + 2, shape[1])
    i0, i1 = max(int(col - r_px), 0), min(int(col + r_px) + 2, shape[2])
    zc = (z_mm - slice_z0_mm) / dz
    k0 = max(int(zc - length_mm / dz / 2 - 2), 0)
    k1 = min(int(zc + length_mm / dz / 2 + 3), shape[0])
    sub = (np.arange(samples) + 0.5) / samples - 0.5
    ys = (np.arange(j0, j1)[:, None] + sub[None, :]).ravel()
    xs = (np.arange(i0, i1)[:, None] + sub[None, :]).ravel()
    radial = ((ys[:, None] - row) * dy) ** 2 + ((xs[None, :] - col) * dx) ** 2 <= radius_mm**2
    disc = radial.reshape(j1 - j0, samples, i1 - i0, samples).mean(axis=(1, 3))
    offsets, weights = slice_profile(dz, samples=15)
    centres_mm = (np.arange(k0, k1) - zc) * dz
    along = (np.abs(centres_mm[:, None] + offsets[None, :]) <= length_mm / 2) @ weights
    occupancy = along[:, None, None] * disc[None, :, :]
    return (slice(k0, k1), slice(j0, j1), slice(i0, i1)), occupancy.astype(np.float32)
