"""A procedural chest: body, lungs, airways, heart, great vessels, coronary tree, bones,
costal cartilage, lymph nodes, diaphragm with liver and stomach below it, and table.

Everything lives in DICOM patient coordinates (LPS millimetres: x to the patient's left,
y posterior, z superior). :class:`Anatomy` holds one patient's randomised geometry;
:func:`tissue_slice` evaluates the tissue HU of one axial plane on a pixel grid. Shapes are
analytic (ellipses, ellipsoids, tubes around centre lines), so any slice at any resolution
can be rendered without a voxel model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

Vec = np.ndarray  # float64 arrays; numpy's dtype typing is too strict for mixing

#: A rib descends this far (mm) from the spine to the sternum; its bone spans this part
#: of that half turn (0 at the spine, 1 at the sternum), costal cartilage the rest.
RIB_DESCENT_MM = 45.0
RIB_BONE = (0.12, 0.88)


@dataclass(frozen=True)
class Tissues:
    """HU of each tissue (non-contrast). Defaults are literature mid-range values."""

    air: float = -1000.0
    lung: float = -850.0
    fat: float = -100.0
    muscle: float = 50.0
    soft: float = 30.0
    blood: float = 40.0
    myocardium: float = 45.0
    pericardium: float = 25.0
    cortical_bone: float = 1000.0
    cancellous_bone: float = 250.0
    disc: float = 80.0
    csf: float = 10.0
    table: float = 250.0
    liver: float = 58.0
    cartilage: float = 100.0


@dataclass(frozen=True)
class Diaphragm:
    """Two domes (right higher, over the liver) with the abdomen below them. A dome's
    height at a point falls with the squared distance from its top, normalised by the
    chest cavity's semi-axes; the costophrenic recesses fall further at the back."""

    right_top_z: float
    left_top_z: float
    drop_mm: float  # fall from a dome's top to the cavity's edge
    posterior_drop_mm: float
    liver_left_x: float  # the liver reaches this far to the patient's left
    gas_bubble: tuple[float, float, float, float] | None  # x, y, z, radius (mm): stomach


@dataclass(frozen=True)
class Node:
    """A mediastinal or hilar lymph node (centre mm, radius) with an optional calcified
    core (radius, HU): granulomatous disease leaves such calcium beside the airways."""

    centre: Vec
    radius_mm: float
    calcified: tuple[float, float] | None


@dataclass(frozen=True)
class Cartilage:
    """A costal cartilage: centre line from a rib's front end towards the sternum, its
    radius, and calcified stretches (centre line, radius, HU, rim only)."""

    points: Vec
    radius_mm: float
    calcified: tuple[tuple[Vec, float, float, bool], ...]


@dataclass(frozen=True)
class Vessel:
    """A centre line (points in mm) with a lumen radius and a canonical label."""

    name: str
    label: int
    points: Vec  # (N, 3), about 0.5 mm apart
    radius_mm: float


@dataclass(frozen=True)
class Anatomy:
    """One patient's chest geometry (all lengths in mm)."""

    body_semi_axes: tuple[float, float]  # lateral, antero-posterior
    body_centre_y: float
    fat_thickness: float
    heart_centre: Vec
    heart_axes: tuple[float, float, float]  # long (base-apex), then two short
    heart_frame: npt.NDArray[np.float64]  # rows: u (base->apex), v (anterior), w (left)
    myocardium_thickness: float
    epicardial_fat: float
    aorta_root: Vec
    aorta_radius: float
    arch_top_z: float
    descending_xy: tuple[float, float]
    pulmonary_root: Vec
    spine_xy: tuple[float, float]
    vertebral_radius: float
    sternum_xy: tuple[float, float]
    rib_z: tuple[float, ...]
    table_y: float
    vessels: tuple[Vessel, ...]
    mitral_centre: Vec
    mitral_radius: float
    tissues: Tissues = field(default_factory=Tissues)
    diaphragm: Diaphragm | None = None
    cartilages: tuple[Cartilage, ...] = ()
    airways: tuple[tuple[Vec, float], ...] = ()  # centre lines and lumen radii
    nodes: tuple[Node, ...] = ()

    @property
    def cavity_semi_axes(self) -> tuple[float, float]:
        """The chest cavity: inside fat and 12 mm of muscle."""
        lateral, ap = self.body_semi_axes
        return (lateral - self.fat_thickness - 12, ap - self.fat_thickness - 12)

    @property
    def rib_ring_semi_axes(self) -> tuple[float, float]:
        """The ellipse the ribs and costal cartilages follow, 8 mm inside the fat."""
        lateral, ap = self.body_semi_axes
        return (lateral - self.fat_thickness - 8, ap - self.fat_thickness - 8)

    def heart_local(self, p: Vec) -> Vec:
        """Patient mm -> heart frame (u, v, w) around the heart centre."""
        return np.asarray((np.asarray(p) - self.heart_centre) @ self.heart_frame.T)

    def heart_point(self, u: float, psi: float, radial: float) -> Vec:
        """Point at fraction ``u`` (-1 base .. +1 apex) of the long axis, angle ``psi``
        (0 anterior, +pi/2 left) and ``radial`` times the ellipsoid's radius there."""
        a, b, c = self.heart_axes
        scale = np.sqrt(max(1.0 - u * u, 0.0))
        local = np.array([u * a, radial * b * scale * np.cos(psi),
                          radial * c * scale * np.sin(psi)])
        return np.asarray(self.heart_centre + local @ self.heart_frame)


def _frame(long_axis: Vec) -> npt.NDArray[np.float64]:
    u = long_axis / np.linalg.norm(long_axis)
    anterior = np.array([0.0, -1.0, 0.0])
    v = anterior - (anterior @ u) * u
    v /= np.linalg.norm(v)
    w = np.cross(u, v)
    if w[0] < 0:  # make +w point to the patient's left
        w = -w
    return np.stack([u, v, w])


def _polyline(points: list[Vec], step_mm: float = 0.5) -> Vec:
    """Resample a polyline to about ``step_mm`` spacing."""
    pts = np.asarray(points, dtype=np.float64)
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    s = np.r_[0.0, np.cumsum(seg)]
    n = max(2, int(s[-1] / step_mm) + 1)
    t = np.linspace(0.0, s[-1], n)
    return np.stack([np.interp(t, s, pts[:, k]) for k in range(3)], axis=1)


def sample_anatomy(rng: np.random.Generator, *, scale: float = 1.0,
                   tissues: Tissues | None = None) -> Anatomy:
    """Draw one patient's anatomy; ``scale`` multiplies body and heart size."""
    lateral = rng.uniform(140, 185) * scale
    ap = lateral * rng.uniform(0.62, 0.78)
    body_cy = rng.uniform(-5, 10)
    heart_axes = (rng.uniform(58, 68) * scale, rng.uniform(48, 56) * scale,
                  rng.uniform(45, 54) * scale)
    heart_centre = np.array([rng.uniform(10, 25), body_cy - ap * rng.uniform(0.2, 0.3),
                             rng.uniform(-15, 5)])
    long_axis = np.array([rng.uniform(0.4, 0.7), rng.uniform(-0.7, -0.4),
                          rng.uniform(-0.8, -0.5)])
    frame = _frame(long_axis)
    spine = (rng.uniform(-4, 4), body_cy + ap - rng.uniform(40, 50))
    anatomy = Anatomy(
        body_semi_axes=(lateral, ap), body_centre_y=body_cy,
        fat_thickness=rng.uniform(8, 35), heart_centre=heart_centre, heart_axes=heart_axes,
        heart_frame=frame, myocardium_thickness=rng.uniform(8, 13),
        epicardial_fat=rng.uniform(4, 9), aorta_root=np.zeros(3),
        aorta_radius=rng.uniform(13, 18), arch_top_z=0.0, descending_xy=(0.0, 0.0),
        pulmonary_root=np.zeros(3), spine_xy=spine, vertebral_radius=rng.uniform(15, 20),
        sternum_xy=(rng.uniform(-5, 5), body_cy - ap + rng.uniform(22, 32)),
        rib_z=tuple(np.arange(-160.0, 160.0, rng.uniform(22, 28)) + rng.uniform(0, 20)),
        table_y=body_cy + ap + rng.uniform(5, 25), vessels=(), mitral_centre=np.zeros(3),
        mitral_radius=rng.uniform(13, 17), tissues=tissues or Tissues(),
    )
    # Great vessels from the heart's base: the aortic root sits at the base, right of
    # centre; the ascending aorta rises, arches backwards and descends left of the spine.
    root = anatomy.heart_point(-0.88, -0.3, 0.8)
    top = root[2] + rng.uniform(55, 80)
    descending = (spine[0] + rng.uniform(18, 28), spine[1] - rng.uniform(25, 35))
    pulmonary = anatomy.heart_point(-0.8, 0.35, 0.75)
    mitral = anatomy.heart_point(-0.42, 1.9, 0.45)
    anatomy = _replace(anatomy, aorta_root=root, arch_top_z=top, descending_xy=descending,
                       pulmonary_root=pulmonary, mitral_centre=mitral)
    return _replace(anatomy, vessels=_coronary_tree(anatomy, rng))


def _replace(anatomy: Anatomy, **changes: object) -> Anatomy:
    values = {k: getattr(anatomy, k) for k in anatomy.__dataclass_fields__}
    values.update(changes)
    return Anatomy(**values)


def _coronary_tree(anatomy: Anatomy, rng: np.random.Generator) -> tuple[Vessel, ...]:
    """LM from the left sinus dividing into LAD and LCX; RCA from the right sinus."""
    surface = 1.0 + anatomy.epicardial_fat * 0.5 / anatomy.heart_axes[1]  # inside the fat
    ring_u = rng.uniform(-0.55, -0.4)  # atrioventricular groove
    groove_psi = rng.uniform(0.1, 0.3)  # anterior interventricular groove, left of anterior
    root = anatomy.aorta_root
    left_sinus = root + anatomy.aorta_radius * 0.8 * anatomy.heart_frame[2]
    right_sinus = root - anatomy.aorta_radius * 0.8 * anatomy.heart_frame[2] \
        + anatomy.aorta_radius * 0.4 * anatomy.heart_frame[1]
    bifurcation = anatomy.heart_point(ring_u, groove_psi + 0.35, surface)
    # the left main runs over the surface from the root to the bifurcation
    lm = _polyline([left_sinus] + [anatomy.heart_point(u, psi, surface) for u, psi in zip(
        np.linspace(-0.85, ring_u, 8), np.linspace(0.0, groove_psi + 0.35, 8), strict=True)])
    lad = _polyline([bifurcation] + [anatomy.heart_point(u, groove_psi, surface)
                                     for u in np.linspace(ring_u + 0.05, 0.92, 24)])
    lcx = _polyline([bifurcation] + [anatomy.heart_point(ring_u, psi, surface)
                                     for psi in np.linspace(groove_psi + 0.5, 2.9, 24)])
    rca_ring = [anatomy.heart_point(ring_u, psi, surface)
                for psi in np.linspace(-0.15, -np.pi + 0.05, 28)]
    pda = [anatomy.heart_point(u, -np.pi + 0.05, surface) for u in np.linspace(ring_u, 0.6, 12)]
    rca = _polyline([right_sinus, *rca_ring, *pda])
    return (
        Vessel("LM", 1, lm, rng.uniform(2.0, 2.5)),
        Vessel("LAD", 2, lad, rng.uniform(1.5, 2.0)),
        Vessel("LCX", 3, lcx, rng.uniform(1.4, 1.9)),
        Vessel("RCA", 4, rca, rng.uniform(1.6, 2.1)),
    )


def aorta_centreline(anatomy: Anatomy, z_min: float) -> Vec:
    """Ascending aorta, arch and descending aorta as one centre line."""
    root = anatomy.aorta_root
    top = anatomy.arch_top_z
    dx, dy = anatomy.descending_xy
    ascending = [root + np.array([0.0, 0.0, t]) for t in np.linspace(0, top - root[2] - 20, 10)]
    arch = []
    for t in np.linspace(0, np.pi, 16):
        x = root[0] + (dx - root[0]) * (1 - np.cos(t)) / 2
        y = root[1] + (dy - root[1]) * (1 - np.cos(t)) / 2
        arch.append(np.array([x, y, top - 20 + 20 * np.sin(t)]))
    descending = [np.array([dx, dy, z]) for z in np.linspace(top - 20, z_min - 20, 12)]
    return _polyline(ascending + arch + descending, step_mm=1.0)


def _ellipse(x: Vec, y: Vec, cx: float, cy: float, ax: float, ay: float) -> npt.NDArray[np.bool_]:
    return ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0


def paint_tube(out: npt.NDArray[np.float32], x: Vec, y: Vec, z: float, points: Vec,
               radius: float, value: float) -> None:
    """Set pixels of the plane z within ``radius`` of a centre line's points to ``value``.

    Works in a small window around each intersecting point (the grid is regular)."""
    near = points[np.abs(points[:, 2] - z) < radius]
    if not len(near):
        return
    x0, pixel = float(x.flat[0]), float(x.flat[1] - x.flat[0])
    y0 = float(y.flat[0])
    ny, nx = out.shape
    for px, py, pz in near:
        r = np.sqrt(max(radius * radius - (pz - z) ** 2, 0.0))
        i0, i1 = max(int((px - r - x0) / pixel), 0), min(int((px + r - x0) / pixel) + 2, nx)
        j0, j1 = max(int((py - r - y0) / pixel), 0), min(int((py + r - y0) / pixel) + 2, ny)
        if i0 >= i1 or j0 >= j1:
            continue
        window = (x[:, i0:i1] - px) ** 2 + (y[j0:j1, :] - py) ** 2 <= r * r
        out[j0:j1, i0:i1][window] = value


def tissue_slice(anatomy: Anatomy, x: Vec, y: Vec, z: float, *,
                 aorta: Vec | None = None) -> npt.NDArray[np.float32]:
    """Tissue HU of the axial plane at ``z`` on the grid ``x`` (1, X) and ``y`` (Y, 1)."""
    t = anatomy.tissues
    out = np.full(np.broadcast_shapes(x.shape, y.shape), t.air, dtype=np.float32)
    lateral, ap = anatomy.body_semi_axes
    cy = anatomy.body_centre_y
    out[(y >= anatomy.table_y) & (y <= anatomy.table_y + 8) & (np.abs(x) < lateral * 1.3)] = t.table
    out[_ellipse(x, y, 0, cy, lateral, ap)] = t.fat
    inner = (lateral - anatomy.fat_thickness, ap - anatomy.fat_thickness)
    out[_ellipse(x, y, 0, cy, *inner)] = t.muscle
    cavity = anatomy.cavity_semi_axes
    out[_ellipse(x, y, 0, cy, *cavity)] = t.soft
    # lungs: two ellipsoids beside the mediastinum, tapering towards the apices
    for side in (-1, 1):
        lx = side * cavity[0] * 0.52
        taper = np.sqrt(max(0.0, 1 - ((z - 10) / 190) ** 2))
        out[_ellipse(x, y, lx, cy + 5, cavity[0] * 0.45 * taper, cavity[1] * 0.85 * taper)] = t.lung
    if anatomy.diaphragm is not None:
        _abdomen(out, anatomy, anatomy.diaphragm, x, y, z)
    for points, radius in anatomy.airways:
        paint_tube(out, x, y, z, points, radius + 1.5, t.soft)
    for points, radius in anatomy.airways:
        paint_tube(out, x, y, z, points, radius, t.air)
    for node in anatomy.nodes:
        paint_tube(out, x, y, z, node.centre[None], node.radius_mm, t.soft)
        if node.calcified is not None:
            paint_tube(out, x, y, z, node.centre[None], *node.calcified)
    _bones(out, anatomy, x, y, z)
    for cartilage in anatomy.cartilages:
        paint_tube(out, x, y, z, cartilage.points, cartilage.radius_mm, t.cartilage)
        for points, radius, hu, rim in cartilage.calcified:
            paint_tube(out, x, y, z, points, radius, hu)
            if rim:
                paint_tube(out, x, y, z, points, radius - 1.2, t.cartilage)
    _heart(out, anatomy, x, y, z)
    if aorta is not None:
        paint_tube(out, x, y, z, aorta, anatomy.aorta_radius, t.blood)
    pulmonary = _polyline([anatomy.pulmonary_root,
                           anatomy.pulmonary_root + np.array([-5.0, 15.0, 45.0])], step_mm=1.0)
    paint_tube(out, x, y, z, pulmonary, anatomy.aorta_radius * 0.9, t.blood)
    for vessel in anatomy.vessels:
        paint_tube(out, x, y, z, vessel.points[::2], vessel.radius_mm, t.blood)
    return out


def _heart(out: npt.NDArray[np.float32], anatomy: Anatomy, x: Vec, y: Vec, z: float) -> None:
    t = anatomy.tissues
    grid = np.stack(np.broadcast_arrays(x, y, np.full_like(x, z)), axis=-1)
    local = (grid - anatomy.heart_centre) @ anatomy.heart_frame.T
    a, b, c = anatomy.heart_axes

    def inside(pad: float, shift: float = 0.0) -> npt.NDArray[np.bool_]:
        return (((local[..., 0] - shift) / (a + pad)) ** 2 + (local[..., 1] / (b + pad)) ** 2
                + (local[..., 2] / (c + pad)) ** 2) <= 1.0

    fat = anatomy.epicardial_fat
    out[inside(fat + 1.5)] = t.pericardium
    out[inside(fat)] = t.fat
    out[inside(0.0)] = t.myocardium
    out[inside(-anatomy.myocardium_thickness, shift=-4.0)] = t.blood


def _bones(out: npt.NDArray[np.float32], anatomy: Anatomy, x: Vec, y: Vec, z: float) -> None:
    t = anatomy.tissues
    sx, sy = anatomy.spine_xy
    r = anatomy.vertebral_radius
    in_disc = (z % 26.0) < 5.0
    if in_disc:
        out[_ellipse(x, y, sx, sy, r, r * 0.85)] = t.disc
    else:
        out[_ellipse(x, y, sx, sy, r, r * 0.85)] = t.cortical_bone
        out[_ellipse(x, y, sx, sy, r - 2.0, r * 0.85 - 2.0)] = t.cancellous_bone
    # posterior arch and spinal canal
    out[_ellipse(x, y, sx, sy + r + 12, 14, 11)] = t.cortical_bone
    out[_ellipse(x, y, sx, sy + r + 12, 11, 8)] = t.cancellous_bone
    out[_ellipse(x, y, sx, sy + r + 8, 8, 7)] = t.csf
    stx, sty = anatomy.sternum_xy
    out[_ellipse(x, y, stx, sty, 14, 6)] = t.cortical_bone
    out[_ellipse(x, y, stx, sty, 12, 4)] = t.cancellous_bone
    # ribs descend from the spine towards the front: each crosses the plane where its
    # height matches, once on each side
    ring = anatomy.rib_ring_semi_axes
    for rib_z in anatomy.rib_z:
        theta = (rib_z - z) / RIB_DESCENT_MM * np.pi  # 0 at the spine, pi at the sternum
        if RIB_BONE[0] * np.pi < theta < RIB_BONE[1] * np.pi:
            for side in (-1, 1):
                px = side * ring[0] * np.sin(theta)
                py = anatomy.body_centre_y + ring[1] * np.cos(theta)
                out[_ellipse(x, y, px, py, 6, 6)] = t.cortical_bone
                out[_ellipse(x, y, px, py, 4, 4)] = t.cancellous_bone


def _abdomen(out: npt.NDArray[np.float32], anatomy: Anatomy, d: Diaphragm, x: Vec, y: Vec,
             z: float) -> None:
    """Liver and stomach fill the chest cavity below the diaphragm's domes."""
    t = anatomy.tissues
    cavity = anatomy.cavity_semi_axes
    cy = anatomy.body_centre_y
    if z >= max(d.right_top_z, d.left_top_z):
        return
    dy = (y - cy) / cavity[1]
    behind = np.maximum(dy, 0.0) * d.posterior_drop_mm
    heights = []
    for side, top in ((-1, d.right_top_z), (1, d.left_top_z)):
        dx = (x - side * cavity[0] * 0.5) / cavity[0]
        heights.append(top - d.drop_mm * (dx * dx + dy * dy) - behind)
    below = (z < np.maximum(*heights)) & _ellipse(x, y, 0, cy, *cavity)
    liver = below & (x < d.liver_left_x)
    out[below] = t.soft
    out[liver] = t.liver
    if d.gas_bubble is not None:
        gx, gy, gz, radius = d.gas_bubble
        r2 = radius * radius - (z - gz) ** 2
        if r2 > 0:
            out[below & ~liver & (((x - gx) ** 2 + (y - gy) ** 2) <= r2)] = t.air


def heart_bottom_z(anatomy: Anatomy) -> float:
    """Lowest z of the heart's ellipsoid."""
    extent = np.sqrt(sum((axis * anatomy.heart_frame[k, 2]) ** 2
                         for k, axis in enumerate(anatomy.heart_axes)))
    return float(anatomy.heart_centre[2] - extent)


def add_lower_chest(anatomy: Anatomy, rng: np.random.Generator, age_years: float) -> Anatomy:
    """Add the diaphragm (liver and stomach below it), the costal cartilages, the airways
    and lymph nodes beside them, cartilage and nodes calcified more often with age. Real
    cardiac scans reach the upper abdomen and the carina, and calcified cartilage of the
    costal margin or a calcified node beside a bronchus is dense, small and near the heart:
    the look of coronary calcium without its context. That calcium stays out of the truth
    labels."""
    cavity = anatomy.cavity_semi_axes
    centre = heart_bottom_z(anatomy) + rng.uniform(5, 20)
    bubble = None
    if rng.random() < 0.6:
        radius = rng.uniform(10, 25)
        bubble = (cavity[0] * rng.uniform(0.35, 0.6), anatomy.body_centre_y - cavity[1]
                  * rng.uniform(0.0, 0.4), centre - rng.uniform(15, 35), radius)
    diaphragm = Diaphragm(
        right_top_z=centre + rng.uniform(10, 25), left_top_z=centre + rng.uniform(0, 15),
        drop_mm=rng.uniform(40, 70), posterior_drop_mm=rng.uniform(20, 50),
        liver_left_x=rng.uniform(-10, 40), gas_bubble=bubble)
    # The ribs' bone ends at RIB_BONE[1] of their half turn (see _bones); their cartilages
    # go on towards the sternum, the lower ones (the costal margin) rising as they go.
    ring = anatomy.rib_ring_semi_axes
    p_calcified = float(np.clip((age_years - 30) / 60, 0.05, 0.85))
    cartilages = []
    for rib_z in anatomy.rib_z:
        margin = rib_z - RIB_BONE[1] * RIB_DESCENT_MM < centre  # below the diaphragm
        # the lower ribs' bone ends further out; their cartilage covers the rest
        front = rng.uniform(0.72, 0.82) if margin else RIB_BONE[1]
        rise = rng.uniform(10, 40) if margin else rng.uniform(-3, 3)
        end_z = rib_z - front * RIB_DESCENT_MM
        for side in (-1, 1):
            theta = np.linspace(front, rng.uniform(0.94, 0.97), 16) * np.pi
            frac = (theta - theta[0]) / (theta[-1] - theta[0])
            points = _polyline(list(np.stack([
                side * ring[0] * np.sin(theta), anatomy.body_centre_y + ring[1] * np.cos(theta),
                end_z + rise * frac], axis=1)))
            radius = rng.uniform(3.5, 6.0)
            calcified = []
            if rng.random() < p_calcified:
                for _ in range(int(rng.integers(1, 4))):
                    length = int(rng.integers(6, 30))  # points, 0.5 mm apart
                    first = int(rng.integers(0, max(1, len(points) - length)))
                    rim = bool(rng.random() < 0.4)
                    core = radius if rim else rng.uniform(1.0, min(3.0, radius - 0.5))
                    calcified.append((points[first : first + length], float(core),
                                      float(rng.uniform(250, 900)), rim))
            cartilages.append(Cartilage(points, float(radius), tuple(calcified)))
    airways, nodes = _airways_and_nodes(anatomy, rng, age_years)
    return _replace(anatomy, diaphragm=diaphragm, cartilages=tuple(cartilages),
                    airways=airways, nodes=nodes)


def _airways_and_nodes(anatomy: Anatomy, rng: np.random.Generator, age_years: float,
                       ) -> tuple[tuple[tuple[Vec, float], ...], tuple[Node, ...]]:
    """Trachea and main bronchi in front of the spine, dividing above the heart, and lymph
    nodes beside them (paratracheal, subcarinal, hilar), some calcified."""
    sx, sy = anatomy.spine_xy
    front = sy - anatomy.vertebral_radius * 0.85 - rng.uniform(12, 20)
    heart_top = 2 * anatomy.heart_centre[2] - heart_bottom_z(anatomy)
    carina = np.array([sx + rng.uniform(-4, 4), front, heart_top + rng.uniform(5, 25)])
    lateral = anatomy.cavity_semi_axes[0]
    trachea = _polyline([carina + np.array([0.0, 0.0, 200.0]), carina])
    right_end = carina + np.array([-lateral * rng.uniform(0.25, 0.32), rng.uniform(0, 10),
                                   -rng.uniform(20, 30)])
    left_end = carina + np.array([lateral * rng.uniform(0.3, 0.4), rng.uniform(0, 12),
                                  -rng.uniform(25, 40)])
    radius = rng.uniform(7, 10)
    airways = ((trachea, radius), (_polyline([carina, right_end]), radius * 0.75),
               (_polyline([carina, left_end]), radius * 0.65))
    sites = [carina + np.array([rng.uniform(-8, 8), rng.uniform(5, 15), -rng.uniform(12, 20)]),
             right_end + np.array([rng.uniform(-5, 5), rng.uniform(-10, 0), rng.uniform(-8, 8)]),
             left_end + np.array([rng.uniform(-5, 5), rng.uniform(-10, 0), rng.uniform(-8, 8)]),
             carina + np.array([-radius - rng.uniform(6, 10), rng.uniform(-5, 5),
                                rng.uniform(10, 30)])]
    p_calcified = float(np.clip((age_years - 30) / 150, 0.05, 0.35))
    nodes = []
    for site in sites:
        size = rng.uniform(3.0, 7.0)
        core = None
        if rng.random() < p_calcified:
            core = (float(rng.uniform(1.0, size - 0.5)), float(rng.uniform(250, 1100)))
        nodes.append(Node(site, float(size), core))
    return airways, tuple(nodes)
