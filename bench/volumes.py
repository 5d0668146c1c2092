"""Deterministic test volumes for the benchmarks (no files, no randomness across runs)."""

from __future__ import annotations

import numpy as np


def calcified_volume(
    shape: tuple[int, int, int] = (60, 512, 512), n_lesions: int = 100, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy soft-tissue volume with bone and ``n_lesions`` labelled calcified plaques.

    Returns (hu int16, labels uint8). Plaques are ellipsoids of 1-4 voxels radius at
    150-900 HU, each labelled with a coronary or aortic label over a loose box around it
    (a region of interest, as a network's output would be); bone is unlabelled.
    """
    rng = np.random.default_rng(seed)
    hu = rng.normal(40, 15, size=shape).astype(np.int16)
    _z, y, x = np.ogrid[: shape[0], : shape[1], : shape[2]]
    spine = (y - 0.75 * shape[1]) ** 2 + (x - shape[2] / 2) ** 2 <= (0.07 * shape[1]) ** 2
    hu[np.broadcast_to(spine, shape)] = 600
    labels = np.zeros(shape, dtype=np.uint8)
    for _ in range(n_lesions):
        cz = int(rng.integers(3, shape[0] - 3))
        cy = int(rng.integers(0.2 * shape[1], 0.55 * shape[1]))
        cx = int(rng.integers(0.25 * shape[2], 0.75 * shape[2]))
        rz, ry, rx = rng.uniform(0.6, 2.0), rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0)
        box = (slice(cz - 3, cz + 4), slice(cy - 6, cy + 7), slice(cx - 6, cx + 7))
        zz, yy, xx = np.ogrid[box]
        inside = ((zz - cz) / rz) ** 2 + ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        hu[box][inside] = int(rng.integers(150, 900))
        labels[box] = int(rng.integers(1, 7))
    return hu, labels
