"""Calcified plaques: placement along vessels, and partial-volume rasterisation.

A plaque is an ellipsoid of hydroxyapatite (density in mg/cm^3) with a canonical label.
Coronary plaques sit in the vessel wall, elongated along the vessel; clustering ranges from
single spotty deposits to long diffuse segments. Aortic wall, aortic valve and mitral
annulus calcification use the same primitive.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from calcpipe.labels import LABEL_NAMES
from calcpipe.synthetic.anatomy import Anatomy, aorta_centreline
from calcpipe.synthetic.physics import ha_to_hu, slice_profile

LABEL_OF = {name: value for value, name in LABEL_NAMES.items()}


@dataclass(frozen=True)
class Plaque:
    label: int
    centre: npt.NDArray[np.float64]  # mm
    axes: npt.NDArray[np.float64]  # (3, 3): rows are the semi-axis vectors (mm)
    density_mg_cm3: float

    def bounds(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        extent = np.sqrt((self.axes**2).sum(axis=0))
        return self.centre - extent, self.centre + extent


def _perpendicular(direction: npt.NDArray[np.float64], angle: float) -> npt.NDArray[np.float64]:
    helper = np.array([0.0, 0.0, 1.0]) if abs(direction[2]) < 0.9 else np.array([1.0, 0, 0])
    a = np.cross(direction, helper)
    a /= np.linalg.norm(a)
    b = np.cross(direction, a)
    return np.cos(angle) * a + np.sin(angle) * b


def _plaque_on_line(points: npt.NDArray[np.float64], index: int, wall_radius: float,
                    label: int, length: float, thickness: float, width: float,
                    density: float, angle: float) -> Plaque:
    i0, i1 = max(index - 2, 0), min(index + 2, len(points) - 1)
    direction = points[i1] - points[i0]
    direction /= np.linalg.norm(direction)
    radial = _perpendicular(direction, angle)
    side = np.cross(direction, radial)
    centre = points[index] + radial * wall_radius
    axes = np.stack([direction * length / 2, radial * thickness / 2, side * width / 2])
    return Plaque(label, centre, axes, density)


def estimated_agatston(plaque: Plaque, kvp: float) -> float:
    """Rough Agatston of one plaque before rendering (used to reach a target burden)."""
    volume = 4.0 / 3.0 * np.pi * float(np.prod(np.linalg.norm(plaque.axes, axis=1)))
    peak = ha_to_hu(plaque.density_mg_cm3, kvp) * min(1.0, 2 * float(
        np.linalg.norm(plaque.axes, axis=1).min()) / 1.5) + 40
    weight = 0 if peak < 130 else 1 if peak < 200 else 2 if peak < 300 else 3 if peak < 400 else 4
    return volume / 3.0 * weight * 1.4  # blur spreads the area over the threshold


def coronary_plaques(anatomy: Anatomy, vessels: tuple[str, ...], target: float, kvp: float,
                     rng: np.random.Generator) -> list[Plaque]:
    """Plaques on the named vessels until the estimated Agatston reaches ``target``."""
    if not vessels or target <= 0:
        return []
    by_name = {v.name: v for v in anatomy.vessels}
    shares = rng.dirichlet(np.ones(len(vessels)) * 2.0)
    plaques: list[Plaque] = []
    for name, share in zip(vessels, shares, strict=True):
        vessel = by_name[name]
        budget = max(target * float(share), 1.0)
        reached, attempts = 0.0, 0
        while reached < budget and attempts < 200:
            attempts += 1
            diffuse = rng.random() < 0.35
            n = int(rng.integers(3, 8)) if diffuse else int(rng.integers(1, 3))
            start = int(rng.integers(0, max(1, len(vessel.points) - 12 * n)))
            angle = rng.uniform(0, 2 * np.pi)
            for k in range(n):
                density = float(np.clip(rng.lognormal(np.log(450), 0.45), 130, 1000))
                plaque = _plaque_on_line(
                    vessel.points, min(start + 6 * k, len(vessel.points) - 1),
                    vessel.radius_mm * 0.9, vessel.label,
                    length=rng.uniform(1.0, 5.0), thickness=rng.uniform(0.6, 1.8),
                    width=rng.uniform(1.0, 3.0), density=density,
                    angle=angle + rng.normal(0, 0.4))
                plaques.append(plaque)
                reached += estimated_agatston(plaque, kvp)
                if reached >= budget:
                    break
    return plaques


def aortic_plaques(anatomy: Anatomy, z_range: tuple[float, float],
                   rng: np.random.Generator) -> list[Plaque]:
    """Thoracic aortic wall (TAC) and aortic valve (AVC) calcification."""
    line = aorta_centreline(anatomy, z_range[0])
    inside = np.flatnonzero((line[:, 2] > z_range[0] + 5) & (line[:, 2] < z_range[1] - 5))
    plaques = []
    for _ in range(int(rng.integers(1, 8))):
        if not inside.size:
            break
        index = int(rng.choice(inside))
        plaques.append(_plaque_on_line(
            line, index, anatomy.aorta_radius * 0.95, LABEL_OF["TAC"],
            length=rng.uniform(2, 10), thickness=rng.uniform(0.8, 2.0),
            width=rng.uniform(2, 6), density=float(rng.uniform(200, 900)),
            angle=rng.uniform(0, 2 * np.pi)))
    if rng.random() < 0.5:  # the valve: nodules on the ring at the aortic root
        ring = anatomy.aorta_root + np.array([0.0, 0.0, -4.0])
        for _ in range(int(rng.integers(1, 4))):
            angle = rng.uniform(0, 2 * np.pi)
            offset = anatomy.aorta_radius * 0.7 * np.array([np.cos(angle), np.sin(angle), 0])
            size = rng.uniform(1.0, 3.0)
            plaques.append(Plaque(LABEL_OF["AVC"], ring + offset, np.diag([size, size, size]),
                                  float(rng.uniform(300, 900))))
    return plaques


def mitral_plaques(anatomy: Anatomy, rng: np.random.Generator) -> list[Plaque]:
    """Mitral annular calcification: an arc of nodules on the annulus."""
    _u, v, w = anatomy.heart_frame
    start = rng.uniform(0, 2 * np.pi)
    plaques = []
    for angle in start + np.linspace(0, rng.uniform(0.5, 2.0), int(rng.integers(2, 6))):
        position = anatomy.mitral_centre + anatomy.mitral_radius * (np.cos(angle) * v
                                                                     + np.sin(angle) * w)
        size = rng.uniform(1.0, 2.5)
        plaques.append(Plaque(LABEL_OF["MAC"], position, np.diag([size, size, size]),
                              float(rng.uniform(250, 900))))
    return plaques


def rasterise(plaques: list[Plaque], *, x0: float, y0: float, pixel_mm: float,
              slice_z: np.ndarray, thickness_mm: float,
              shape: tuple[int, int, int], subsamples: tuple[int, int] = (3, 9)
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """Partial-volume occupancy of plaques on the image grid.

    Each voxel's fraction inside a plaque is averaged over ``subsamples`` in-plane points
    per axis, and along z weighted by the slice sensitivity profile
    (:func:`calcpipe.synthetic.physics.slice_profile`), so thick and overlapping
    reconstructions integrate correctly.

    Returns (fraction of the voxel occupied, HA-weighted fraction in mg/cm^3, label of the
    plaque with the largest fraction in each voxel).
    """
    fraction = np.zeros(shape, dtype=np.float32)
    density = np.zeros(shape, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    best = np.zeros(shape, dtype=np.float32)
    s_xy, s_z = subsamples
    sub_xy = (np.arange(s_xy) + 0.5) / s_xy - 0.5
    z_offsets, z_weights = slice_profile(thickness_mm, samples=s_z)
    reach = float(np.abs(z_offsets).max())
    z_step = float(slice_z[1] - slice_z[0]) if len(slice_z) > 1 else thickness_mm
    for plaque in plaques:
        low, high = plaque.bounds()
        i0 = int(np.floor((low[0] - x0) / pixel_mm))
        i1 = int(np.ceil((high[0] - x0) / pixel_mm)) + 1
        j0 = int(np.floor((low[1] - y0) / pixel_mm))
        j1 = int(np.ceil((high[1] - y0) / pixel_mm)) + 1
        k0 = int(np.floor((low[2] - reach - slice_z[0]) / z_step))
        k1 = int(np.ceil((high[2] + reach - slice_z[0]) / z_step)) + 1
        i0, j0, k0 = max(i0, 0), max(j0, 0), max(k0, 0)
        i1, j1, k1 = min(i1, shape[2]), min(j1, shape[1]), min(k1, shape[0])
        if i0 >= i1 or j0 >= j1 or k0 >= k1:
            continue
        xs = x0 + (np.arange(i0, i1)[:, None] + sub_xy[None, :]) * pixel_mm  # (nx, s)
        ys = y0 + (np.arange(j0, j1)[:, None] + sub_xy[None, :]) * pixel_mm
        zs = slice_z[k0:k1, None] + z_offsets[None, :]
        gz, gy, gx = np.meshgrid(zs.ravel(), ys.ravel(), xs.ravel(), indexing="ij")
        offsets = np.stack([gx, gy, gz], axis=-1) - plaque.centre
        inverse = np.linalg.inv(plaque.axes.T)
        local = offsets @ inverse.T
        inside = (local**2).sum(axis=-1) <= 1.0
        nz, ny, nx = k1 - k0, j1 - j0, i1 - i0
        in_plane = inside.reshape(nz, s_z, ny, s_xy, nx, s_xy).mean(axis=(3, 5))
        occupancy = np.einsum("kzyx,z->kyx", in_plane, z_weights).astype(np.float32)
        box = (slice(k0, k1), slice(j0, j1), slice(i0, i1))
        room = np.minimum(occupancy, 1.0 - fraction[box])
        fraction[box] += room
        density[box] += room * np.float32(plaque.density_mg_cm3)
        wins = occupancy > best[box]
        labels[box][wins] = plaque.label
        best[box] = np.maximum(best[box], occupancy)
    return fraction, density, labels
