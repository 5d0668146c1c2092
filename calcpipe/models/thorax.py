"""Where coronary calcium cannot lie, found from the lungs.

Coronary calcium lies on the heart, in the mediastinum, which the two lungs surround. On
real scans the synthetic-only network labelled calcified structures elsewhere as coronary
calcium (the chest CT of ``../shared/data``), fragments too small for the region size gate
(:data:`calcpipe.models.segment.MAX_CALCIUM_REGION_MM3`). :class:`Thorax` finds the body
and the lungs once per study and answers, for candidate voxels, three questions:

- :meth:`Thorax.beyond_lungs`: a lung lies between the voxel and the mediastinum (ribs,
  costal cartilage, the scapulae: the chest wall);
- :meth:`Thorax.in_lung`: lung surrounds the voxel in the plane (hilar and pulmonary
  calcifications: lymph nodes, granulomas, bronchial cartilage). A coronary artery lies on
  the heart, which fills at least the half of its surroundings facing the heart;
- :meth:`Thorax.outside_lung_range`: the voxel's slice lies below or above the slices where
  the lungs are large (the upper abdomen: bowel, costal cartilage of the costal arch; the
  lung apices). The heart lies where the lungs are large.

Nothing is excluded where no lungs are in view (a phantom). Fields of view that cut the
chest, as cardiac reconstructions do, leave the lungs touching the image border: a hole of
the body that lies almost wholly inside the body's outline is lung, the air around the
patient is not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Lung: air-like voxels inside the body (HU below this).
LUNG_HU = -400.0
#: Body: each slice's largest region above this HU.
BODY_HU = -300.0
#: Air regions of at least this fraction of the largest one's volume are lung.
LUNG_FRACTION = 0.2
#: A hole of the body that touches the image border is inside the body (lung cut by the
#: field of view) when at least this fraction of it lies inside the body's outline.
ENCLOSED_FRACTION = 0.9
#: The lungs are found on a grid of about this pixel size, mm (their outline needs no finer).
LUNG_GRID_MM = 3.0
#: Lung on the line from the body centre beyond which a voxel is chest wall, mm.
LUNG_CROSSED_MM = 5.0
#: In lung: lung within this distance, mm ...
SURROUND_MM = 15.0
#: ... in at least this many of :data:`DIRECTIONS` in-plane directions.
SURROUNDED_DIRECTIONS = 14
DIRECTIONS = 16
#: The lungs' range: the slices from the lowest to the highest whose lung area is at least
#: this fraction of the largest slice's.
LUNG_RANGE_FRACTION = 0.25
#: Aortic labels beyond the lungs and within this distance of the body's outline (in the
#: slice) are chest wall, mm.
CHEST_WALL_DEPTH_MM = 30.0
#: Lungs whose largest slice is under this area, mm^2, are not a chest in view (foam or gas
#: pockets of a phantom): no voxel is outside their range.
MIN_LUNG_SLICE_MM2 = 5000.0

Points = tuple[npt.NDArray[np.intp], ...]


@dataclass(frozen=True)
class Thorax:
    """The body and lungs of a study on every ``step``-th row and column."""

    body: npt.NDArray[np.bool_]
    lungs: npt.NDArray[np.bool_]
    step: int
    spacing_mm: tuple[float, float, float]

    @classmethod
    def find(cls, hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
             ) -> Thorax:
        step = max(1, int(LUNG_GRID_MM / float(spacing_mm[1])))
        body, lungs = body_and_lungs(hu, step)
        return cls(body, lungs, step, spacing_mm)

    @property
    def pixel_mm(self) -> float:
        return float(self.spacing_mm[1]) * self.step

    def beyond_lungs(self, points: Points) -> npt.NDArray[np.bool_]:
        """Whether the straight line from each point's slice centre (of body and lungs) to it
        crosses at least :data:`LUNG_CROSSED_MM` of lung."""
        z, r, c = (np.asarray(p) for p in points)
        out = np.zeros(z.shape, dtype=bool)
        for index in np.unique(z):
            here = np.nonzero(z == index)[0]
            crossed = _lung_crossed(self.body[index], self.lungs[index],
                                    r[here] / self.step, c[here] / self.step)
            out[here] = crossed * self.pixel_mm >= LUNG_CROSSED_MM
        return out

    def in_lung(self, points: Points) -> npt.NDArray[np.bool_]:
        """Whether lung lies within :data:`SURROUND_MM` of each point in at least
        :data:`SURROUNDED_DIRECTIONS` of :data:`DIRECTIONS` in-plane directions."""
        z, r, c = (np.asarray(p) for p in points)
        if not z.size:
            return np.zeros(0, dtype=bool)
        angles = np.arange(DIRECTIONS) * (2 * np.pi / DIRECTIONS)
        reach = SURROUND_MM / self.pixel_mm
        t = np.linspace(0.0, reach, int(np.ceil(reach)) + 1)
        _, rows, cols = self.lungs.shape
        rr = r[:, None, None] / self.step + np.sin(angles)[None, :, None] * t
        cc = c[:, None, None] / self.step + np.cos(angles)[None, :, None] * t
        rr = np.rint(rr).astype(np.intp).clip(0, rows - 1)
        cc = np.rint(cc).astype(np.intp).clip(0, cols - 1)
        hits = self.lungs[z[:, None, None], rr, cc].any(axis=2).sum(axis=1)
        return np.asarray(hits >= SURROUNDED_DIRECTIONS)

    def lung_range(self) -> tuple[int, int] | None:
        """First and last slice of the lungs' range (see :data:`LUNG_RANGE_FRACTION`), or
        None where no lungs are in view."""
        area = self.lungs.sum(axis=(1, 2)) * self.pixel_mm**2
        if not area.size or area.max() < MIN_LUNG_SLICE_MM2:
            return None
        large = np.flatnonzero(area >= LUNG_RANGE_FRACTION * area.max())
        return int(large[0]), int(large[-1])

    def outside_lung_range(self, points: Points) -> npt.NDArray[np.bool_]:
        """Whether each point's slice lies below or above the lungs' range."""
        z = np.asarray(points[0])
        extent = self.lung_range()
        if extent is None:
            return np.zeros(z.shape, dtype=bool)
        return np.asarray((z < extent[0]) | (z > extent[1]))

    def depth_mm(self, points: Points) -> npt.NDArray[np.float64]:
        """In-plane distance of each point from the outside of the body's outline (body and
        lungs with their holes filled), mm. Where the body reaches the image border the
        border is not outside: the depth there is at least the distance to other outside,
        and infinite in a slice with no outside in view."""
        from scipy import ndimage

        z, r, c = (np.asarray(p) for p in points)
        out = np.zeros(z.shape)
        _, rows, cols = self.body.shape
        for index in np.unique(z):
            here = np.nonzero(z == index)[0]
            outline = ndimage.binary_fill_holes(self.body[index] | self.lungs[index])
            if outline.all():  # (scipy would measure from a point beside the first row)
                out[here] = np.inf
                continue
            depth = ndimage.distance_transform_edt(outline)
            rr = np.rint(r[here] / self.step).astype(np.intp).clip(0, rows - 1)
            cc = np.rint(c[here] / self.step).astype(np.intp).clip(0, cols - 1)
            out[here] = depth[rr, cc] * self.pixel_mm
        return out

    def chest_wall(self, points: Points) -> npt.NDArray[np.bool_]:
        """Whether each point lies beyond the lungs and within :data:`CHEST_WALL_DEPTH_MM`
        of the body's outline: the rule for aortic labels."""
        out = self.beyond_lungs(points)
        if out.any():  # depth only where it can matter
            beyond = tuple(np.asarray(p)[out] for p in points)
            out[out] = self.depth_mm(beyond) <= CHEST_WALL_DEPTH_MM
        return out

    def not_coronary(self, points: Points) -> npt.NDArray[np.bool_]:
        """Whether each point lies where coronary calcium cannot: beyond the lungs, in
        lung, or outside the lungs' range."""
        return self.outside_lung_range(points) | self.beyond_lungs(points) | self.in_lung(points)


def lung_mask(hu: npt.NDArray[np.integer], step: int = 1) -> npt.NDArray[np.bool_]:
    """The lungs, on every ``step``-th row and column (see :func:`body_and_lungs`)."""
    return body_and_lungs(hu, step)[1]


def body_and_lungs(hu: npt.NDArray[np.integer], step: int,
                   ) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """The body and the lungs, on every ``step``-th row and column. The body is each
    slice's largest region above :data:`BODY_HU`. The lungs are the air inside it: in holes
    of the body that do not reach the image border or lie almost wholly inside the body's
    outline (so not the air around the patient or in the table's slots), in 3-D
    regions of at least :data:`LUNG_FRACTION` of the largest one's volume (so that bowel and
    stomach gas are not lung)."""
    from scipy import ndimage

    image = hu[:, ::step, ::step]
    dense = image > BODY_HU  # one pass over the strided grid, not one per slice
    body = np.zeros(image.shape, dtype=bool)
    air = np.zeros(image.shape, dtype=bool)
    for z in range(image.shape[0]):
        regions, count = ndimage.label(dense[z])
        if not count:
            continue
        body[z] = regions == np.argmax(np.bincount(regions.ravel())[1:]) + 1
        holes, number = ndimage.label(~body[z])
        inside = np.ones(number + 1, dtype=bool)
        inside[0] = False
        edge = np.concatenate([holes[0], holes[-1], holes[:, 0], holes[:, -1]])
        border = np.unique(edge[edge > 0])
        inside[border] = False
        if border.size and (edge == 0).any():  # body at the border: a lung may reach it too
            inside[border] = _inside_outline(body[z], holes, border) >= ENCLOSED_FRACTION
        air[z] = (image[z] < LUNG_HU) & inside[holes]
    regions, count = ndimage.label(air)
    if not count:
        return body, air
    sizes = np.bincount(regions.ravel())
    sizes[0] = 0
    return body, np.asarray((sizes >= LUNG_FRACTION * sizes.max())[regions])


def _inside_outline(body: npt.NDArray[np.bool_], holes: npt.NDArray[np.int32],
                    numbers: npt.NDArray[np.int32]) -> npt.NDArray[np.float64]:
    """For each hole ``numbers`` of ``holes``: the fraction of its pixels inside the body's
    outline, that is, with body on both sides of them in their row or in their column (a
    lung cut by the image's side still has the chest wall in front of and behind it; the air
    around the patient has body on one side only)."""
    def between(axis: int) -> npt.NDArray[np.bool_]:
        # from the first to the last body pixel of each row (column): two comparisons
        # with their indices, where running ORs from both ends took three times as long
        length = body.shape[axis]
        first = np.argmax(body, axis=axis, keepdims=True)
        last = length - 1 - np.argmax(np.flip(body, axis), axis=axis, keepdims=True)
        index = np.arange(length).reshape([-1 if a == axis else 1 for a in range(body.ndim)])
        return np.asarray((index >= first) & (index <= last) & body.any(axis=axis,
                                                                        keepdims=True))

    inside = between(0) | between(1)
    flat = holes.ravel()
    total = np.bincount(flat, minlength=holes.max() + 1)
    enclosed = np.bincount(flat[inside.ravel()], minlength=total.size)
    return np.asarray(enclosed[numbers] / np.maximum(total[numbers], 1))


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
