"""Where coronary calcium cannot lie: beyond the lungs, seen from the mediastinum.

Coronary calcium lies on the heart, in the mediastinum, which the two lungs surround. Ribs,
costal cartilage and the scapulae lie outside the lungs. On real scans the synthetic-only
network labelled such bone fragments as coronary calcium (the chest CT of
``../shared/data``: ribs and costal cartilage of the front chest wall), fragments too small for
the region size gate (:data:`calcpipe.models.segment.MAX_CALCIUM_REGION_MM3`).

:func:`beyond_lungs` finds voxels with a lung between them and the body's centre; the
segmenter removes their coronary labels. Nothing is beyond the lungs where none are in view.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

#: Lung: air-like voxels inside the body (HU below this).
LUNG_HU = -400.0
#: Body: each slice's largest region above this HU.
BODY_HU = -300.0
#: Air regions of at least this fraction of the largest one's volume are lung.
LUNG_FRACTION = 0.2
#: Lung on the line from the body centre beyond which a voxel is chest wall, mm.
LUNG_CROSSED_MM = 5.0


def lung_mask(hu: npt.NDArray[np.integer], step: int = 1) -> npt.NDArray[np.bool_]:
    """The lungs, on every ``step``-th row and column (see :func:`_body_and_lungs`)."""
    return _body_and_lungs(hu, step)[1]


def _body_and_lungs(hu: npt.NDArray[np.integer], step: int,
                    ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The body and the lungs, on every ``step``-th row and column. The body is each
    slice's largest region above :data:`BODY_HU`. The lungs are the air inside it (held in
    non-body regions that do not reach the image border, so not the air around the patient
    or in the table's slots), in 3-D regions of at least :data:`LUNG_FRACTION` of the
    largest one's volume (so that bowel and stomach gas below the diaphragm are not lung)."""
    from scipy import ndimage

    image = hu[:, ::step, ::step]
    body = np.zeros(image.shape, dtype=bool)
    air = np.zeros(image.shape, dtype=bool)
    for z in range(image.shape[0]):
        regions, count = ndimage.label(image[z] > BODY_HU)
        if not count:
            continue
        body[z] = regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1
        holes, _ = ndimage.label(~body[z])
        border = np.unique(np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]]))
        air[z] = (image[z] < LUNG_HU) & ~np.isin(holes, border)
    regions, count = ndimage.label(air)
    if not count:
        return body, air
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return body, np.asarray((sizes >= LUNG_FRACTION * sizes.max())[regions])


def beyond_lungs(hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
                 points: tuple[npt.NDArray[np.intp], ...]) -> npt.NDArray[np.bool_]:
    """For voxels ``points`` (z, row, col arrays) of ``hu``: whether a lung lies between
    each and the mediastinum, that is, whether the straight line from its slice's body centre
    to it crosses at least :data:`LUNG_CROSSED_MM` of lung (ribs, costal cartilage, the
    chest wall). Where no lungs are in view nothing is beyond them."""
    z, r, c = (np.asarray(p) for p in points)
    out = np.zeros(z.shape, dtype=bool)
    if not z.size:
        return out
    step = 2 if min(hu.shape[1:]) >= 256 else 1  # the lungs' outline needs no finer grid
    body, lungs = _body_and_lungs(hu, step)
    pixel_mm = float(spacing_mm[1]) * step
    for index in np.unique(z):
        here = np.nonzero(z == index)[0]
        crossed = _lung_crossed(body[index], lungs[index], r[here] / step, c[here] / step)
        out[here] = crossed * pixel_mm >= LUNG_CROSSED_MM
    return out


def _lung_crossed(body: npt.NDArray[np.bool_], lungs: npt.NDArray[np.bool_],
                  rows: npt.NDArray[np.float64], cols: npt.NDArray[np.float64],
                  ) -> npt.NDArray[np.float64]:
    """Lung pixels on the straight line from the slice's centre (of body and lungs) to each
    point (pixels of length)."""
    from scipy import ndimage

    if not lungs.any():
        return np.zeros(rows.shape)
    cy, cx = ndimage.center_of_mass(body | lungs)
    length = np.hypot(rows - cy, cols - cx)
    samples = int(np.ceil(length.max())) + 2
    t = np.linspace(0.0, 1.0, samples)[None, :]
    yy = np.rint(cy + (rows[:, None] - cy) * t).astype(np.intp).clip(0, lungs.shape[0] - 1)
    xx = np.rint(cx + (cols[:, None] - cx) * t).astype(np.intp).clip(0, lungs.shape[1] - 1)
    return np.asarray(lungs[yy, xx].sum(axis=1) * length / (samples - 1))
