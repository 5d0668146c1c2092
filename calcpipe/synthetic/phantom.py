"""Randomised calcium-scoring phantoms: training data for calcium without anatomy.

Scanner QA in a registry runs calcium phantoms (the QRM thorax with its Cardiac
Calcification Insert, and its kind) through the same pipeline as patients. A network
trained on patients alone learns that calcium belongs to a vessel it can see, and on a
phantom it leaves inserts unlabelled or calls them aortic. These phantoms teach it the
phantom's case: small hydroxyapatite cylinders in a uniform "heart" are calcium, while
the large calibration rods and the spine are not.

Each phantom is drawn at random: a thorax-shaped body (fat layer, chest wall,
lung-equivalent lungs), a cylindrical heart joined to the front wall and to a spine
with cortical bone, 3-12 inserts of 0.8-6 mm at 100-900 mg HA/cm^3 anywhere in the
heart, and sometimes calibration rods of 12-25 mm. The real QRM scan in
``../shared/data`` was looked at to choose these ranges (its HU levels and kind of
layout, not its insert positions), so it is not an independent test of phantom
training.

Phantom calcium has no vessel, and the label map has no "calcium of no vessel" class:
by convention it is labelled :data:`PHANTOM_LABEL` (LAD), so that a phantom's calcium
lands in CAC, the score a calcium phantom validates. Per-vessel rows of a phantom mean
nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from calcpipe.labels import LABEL_NAMES
from calcpipe.scoring import get_profile
from calcpipe.synthetic import physics

#: the label of phantom calcium (see the module's docstring)
PHANTOM_LABEL = next(v for v, name in LABEL_NAMES.items() if name == "LAD")
MATRIX = 512
SLICE_THICKNESSES_MM = (1.5, 2.0, 2.5, 3.0)


@dataclass(frozen=True, eq=False)
class Phantom:
    """Pixels and truth of one phantom scan; ``inserts`` and ``rods`` are (row, col,
    z_mm, diameter_mm, length_mm, mg HA/cm^3), ``rods`` never labelled."""

    hu: npt.NDArray[np.int16]  # (Z, Y, X), ascending z
    labels: npt.NDArray[np.uint8]  # PHANTOM_LABEL on insert calcium at or above threshold
    spacing_mm: tuple[float, float, float]
    kvp: float
    inserts: tuple[tuple[float, ...], ...]
    rods: tuple[tuple[float, ...], ...]


def _place(rng: np.random.Generator, placed: list[tuple[float, float, float, float]],
           centre: tuple[float, float], room_mm: float, z_range: tuple[float, float],
           radius_mm: float, half_length_mm: float) -> tuple[float, float, float] | None:
    """A position (x, y, z mm) for a cylinder inside the heart, clear of those placed
    (x, y, z, bounding radius), or None after 50 tries or where it is longer than the
    heart."""
    if z_range[1] - z_range[0] < 2 * half_length_mm:
        return None
    for _ in range(50):
        r = (room_mm - radius_mm) * np.sqrt(rng.random())
        angle = rng.uniform(0, 2 * np.pi)
        x, y = centre[0] + r * np.cos(angle), centre[1] + r * np.sin(angle)
        z = rng.uniform(z_range[0] + half_length_mm, z_range[1] - half_length_mm)
        bound = float(np.hypot(radius_mm, half_length_mm))
        if all(np.hypot(np.hypot(x - px, y - py), z - pz) > bound + pb + 2.0
               for px, py, pz, pb in placed):
            placed.append((x, y, z, bound))
            return x, y, z
    return None


def render_phantom(seed: int, index: int) -> Phantom:
    """Phantom ``index`` of the family drawn from ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index, 7])
    pixel = float(rng.uniform(0.45, 0.75))  # the body may overfill the field, as in QRM scans
    thickness = float(rng.choice(SLICE_THICKNESSES_MM))
    kvp = 100.0 if rng.random() < 0.2 else 120.0
    length = float(rng.uniform(60, 120))  # z coverage, mm
    n_slices = int(length / thickness) + 1
    shape = (n_slices, MATRIX, MATRIX)
    coords = (np.arange(MATRIX) - MATRIX / 2 + 0.5) * pixel
    x, y = coords[None, :], coords[:, None]  # mm from the image centre; +y posterior

    half_w, half_h = rng.uniform(125, 165), rng.uniform(95, 120)  # body semi-axes
    body_y = rng.uniform(-10, 10)
    fat, wall = rng.uniform(0, 8), rng.uniform(12, 25)
    plane = np.full((MATRIX, MATRIX), -1000.0, dtype=np.float32)

    def ellipse(a: float, b: float) -> npt.NDArray[np.bool_]:
        return (x / a) ** 2 + ((y - body_y) / b) ** 2 <= 1

    plane[ellipse(half_w, half_h)] = rng.uniform(-110, -40)
    plane[ellipse(half_w - fat, half_h - fat)] = rng.uniform(20, 90)
    inner_w, inner_h = half_w - fat - wall, half_h - fat - wall
    plane[ellipse(inner_w, inner_h)] = rng.uniform(-900, -700)  # lungs
    # the heart behind the front wall, the spine against the back wall, apart
    spine_r = rng.uniform(12, 18)
    heart_r = rng.uniform(30, min(60, inner_h - spine_r - 2))
    slack = 2 * (inner_h - heart_r - spine_r) - 4
    heart = (rng.uniform(-15, 15), body_y - inner_h + heart_r + rng.uniform(0, slack / 2))
    heart_hu = rng.uniform(30, 90)
    spine = (heart[0] * 0.3, body_y + inner_h - spine_r + rng.uniform(0, 6))
    band = (np.abs(x - heart[0]) <= heart_r * rng.uniform(0.4, 0.8)) & (y <= heart[1])
    stem = (np.abs(x - spine[0]) <= spine_r * 0.8) & (y >= heart[1]) & (y <= spine[1])
    in_heart = np.hypot(x - heart[0], y - heart[1]) <= heart_r
    plane[(band | stem | in_heart) & ellipse(inner_w, inner_h)] = heart_hu
    spine_d = np.hypot(x - spine[0], y - spine[1])
    plane[spine_d <= spine_r] = rng.uniform(300, 700)  # cortex
    plane[spine_d <= spine_r * rng.uniform(0.7, 0.85)] = rng.uniform(100, 250)  # marrow
    process = (np.abs(x - spine[0]) <= 3) & (y > spine[1]) & ellipse(half_w - fat, half_h - fat)
    plane[process] = rng.uniform(300, 700)

    slice_z = np.arange(n_slices) * thickness
    top, bottom = rng.uniform(0, 15), rng.uniform(0, 15)  # air beyond the phantom's ends
    inside_z = (slice_z >= top) & (slice_z <= length - bottom)
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[inside_z] = plane
    heart_z = (top + 5.0, length - bottom - 5.0)

    def to_px(x_mm: float, y_mm: float) -> tuple[float, float]:  # (row, col)
        return y_mm / pixel + MATRIX / 2 - 0.5, x_mm / pixel + MATRIX / 2 - 0.5

    spacing = (thickness, pixel, pixel)
    placed: list[tuple[float, float, float, float]] = []
    insert_mask = np.zeros(shape, dtype=bool)
    inserts, rods = [], []
    room = heart_r - 3.0
    for _ in range(int(rng.integers(0, 3)) if rng.random() < 0.6 else 0):
        d, h, rho = rng.uniform(12, 25), rng.uniform(6, 25), rng.uniform(100, 400)
        at = _place(rng, placed, heart, room, heart_z, d / 2, h / 2)
        if at is not None:
            rods.append((*to_px(at[0], at[1]), at[2], d, h, rho))
    for _ in range(int(rng.integers(3, 13))):
        d = rng.uniform(0.8, 6.0)
        h, rho = d * rng.uniform(0.8, 3.0), rng.uniform(100, 900)
        at = _place(rng, placed, heart, room, heart_z, d / 2, h / 2)
        if at is not None:
            inserts.append((*to_px(at[0], at[1]), at[2], d, h, rho))
    for i, (row, col, z, d, h, rho) in enumerate(rods + inserts):
        box, fraction = physics.cylinder_occupancy(row, col, z, d / 2, h, slice_z0_mm=0.0,
                                                   spacing_mm=spacing, shape=shape)
        hu[box] += fraction * float(physics.ha_to_hu(rho, kvp))
        if i >= len(rods):
            insert_mask[box] |= fraction > 0

    hu = physics.blur_in_plane(hu, float(rng.uniform(0.4, 0.9)), pixel)
    hu += physics.correlated_noise(shape, float(rng.uniform(8, 40)),
                                   grain_px=physics.NOISE_GRAIN_PX, rng=rng)
    if rng.random() < 0.3:  # some scanners pad outside the reconstruction circle
        hu[:, np.hypot(x, y) > MATRIX / 2 * pixel] = -2048
    hu_int = np.clip(np.rint(hu), -2048, 3071).astype(np.int16)
    threshold, _ = get_profile("standard").threshold_hu(kvp)
    # truth as in patients: the insert or its blur, one pixel around, at or above threshold
    around = ndimage.binary_dilation(insert_mask, structure=np.ones((1, 3, 3), dtype=bool))
    labels = np.where(around & (hu_int >= threshold), PHANTOM_LABEL, 0).astype(np.uint8)
    return Phantom(hu_int, labels, spacing, kvp, tuple(inserts), tuple(rods))
