"""A digital replica of the QRM thorax phantom with its Cardiac Calcification Insert.

Geometry follows the real scan in ../shared/data/qrm_phantom_canon (Canon Aquilion ONE,
120 kVp, 47 slices x 3 mm, 512 x 512 x 0.488 mm): nine hydroxyapatite cylinders (length =
diameter = 1, 3, 5 mm at 200, 400, 800 mg HA/cm^3) in one slab around slice 22, a 200 mg
calibration rod near the insert centre about slices 31-33 and a water-equivalent rod
22.5 mm from it. The physics constants of :mod:`calcpipe.synthetic.physics` were fitted
to that scan, so the replica's scores can be compared with the real scan's, insert by
insert (``calcpipe synth --qrm-report``, and ``make bench``).
"""

from __future__ import annotations

import csv
import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from calcpipe.dicom.geometry import axial_affine
from calcpipe.dicom.volume import CTVolume, Gating, ScanMetadata
from calcpipe.dicom.writer import stable_uid
from calcpipe.synthetic import physics

SHAPE = (47, 512, 512)
SPACING_MM = (3.0, 0.488, 0.488)
ORIGIN_MM = (-128.5058, -106.00581, 534.875)
INSERT_SLICE = 22
#: name -> (row, column) of the insert centre in pixels, diameter mm, HA mg/cm^3
INSERTS = {
    "Large_HD": (220, 179, 5.0, 800.0), "Medium_HD": (220, 205, 3.0, 800.0),
    "Small_HD": (220, 230, 1.0, 800.0), "Large_MD": (150, 291, 5.0, 400.0),
    "Medium_MD": (173, 280, 3.0, 400.0), "Small_MD": (196, 269, 1.0, 400.0),
    "Large_LD": (281, 298, 5.0, 200.0), "Medium_LD": (260, 285, 3.0, 200.0),
    "Small_LD": (239, 272, 1.0, 200.0),
}
#: the cylinders' centre lies slightly below the centre of slice 22 in the real scan
INSERT_Z_OFFSET_MM = -0.3
INSERT_BACKGROUND_HU = 75.0
BODY_HU = 10.0
WATER_ROD_HU = 30.0
#: the 200 mg HA/cm^3 calibration rod: centre (row, column), radius mm, slices [first, end)
ROD_CENTRE = (217.7, 257.7)
ROD_RADIUS_MM = 10.0
ROD_SLICES = (31, 34)
ROD_DENSITY = 200.0
NOISE_SD_HU = 22.0


def insert_labels(inserts_csv: str | Path, shape: tuple[int, int, int],
                  spacing_mm: tuple[float, float, float]
                  ) -> tuple[npt.NDArray[np.uint8], dict[int, str]]:
    """The real scan's regions of interest from its ``inserts.csv``: one label per insert
    (a disc of ``roi_radius_mm`` around the centre, over ``slice_first``..``slice_last``),
    and the map from label value to insert name."""
    _, dy, dx = spacing_mm
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    labels = np.zeros(shape, dtype=np.uint8)
    names = {}
    with open(inserts_csv, encoding="utf-8") as fh:
        for value, row in enumerate(csv.DictReader(fh), start=1):
            disc = ((yy - int(row["centre_row"])) * dy) ** 2 + (
                (xx - int(row["centre_col"])) * dx) ** 2 <= float(row["roi_radius_mm"]) ** 2
            labels[int(row["slice_first"]) : int(row["slice_last"]) + 1, disc] = value
            names[value] = row["insert"]
    return labels, names


def lesion_voxels(calcium: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                  min_area_mm2: float = 1.0) -> npt.NDArray[np.bool_]:
    """Voxels of Agatston lesions: a slice's 8-connected regions of ``calcium`` of at
    least ``min_area_mm2``. Specks of noise above 130 HU in an insert's region of interest
    are calcium voxels but not lesions, so the inserts' calcium is counted by this."""
    from scipy import ndimage

    pixel_mm2 = spacing_mm[1] * spacing_mm[2]
    out = np.zeros_like(calcium)
    for z in np.flatnonzero(calcium.any(axis=(1, 2))):
        regions, _ = ndimage.label(calcium[z], np.ones((3, 3), dtype=bool))
        big = np.bincount(regions.ravel()) * pixel_mm2 >= min_area_mm2
        big[0] = False
        out[z] = big[regions]
    return out


def qrm_phantom(seed: int = 0, *, noise: bool = True
                ) -> tuple[CTVolume, npt.NDArray[np.uint8], dict[int, str]]:
    """The replica as a CTVolume, a label map with one label per insert, and the names.

    Labels are the regions of interest the real scan's ``inserts.csv`` uses (a disc of
    5 mm radius, 2.5 mm for the small inserts, over slices 20-24), so scoring them with
    the standard profile is the same procedure as on the real scan.
    """
    rng = np.random.default_rng(seed)
    dz, dy, dx = SPACING_MM
    yy, xx = np.mgrid[: SHAPE[1], : SHAPE[2]]
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    body = ((yy - 256) / 205) ** 2 + ((xx - 256) / 300) ** 2 <= 1
    hu[:, body] = BODY_HU
    insert_region = ((yy - 218) * dy) ** 2 + ((xx - 245) * dx) ** 2 <= 55.0**2
    hu[14:40, insert_region] = INSERT_BACKGROUND_HU
    labels = np.zeros(SHAPE, dtype=np.uint8)
    names = {}
    z_insert = ORIGIN_MM[2] + INSERT_SLICE * dz + INSERT_Z_OFFSET_MM
    for value, (name, (row, col, diameter, density)) in enumerate(INSERTS.items(), start=1):
        box, fraction = physics.cylinder_occupancy(
            row, col, z_insert, diameter / 2, diameter, slice_z0_mm=ORIGIN_MM[2],
            spacing_mm=SPACING_MM, shape=SHAPE)
        hu[box] += fraction * float(physics.ha_to_hu(density, 120.0))
        roi = ((yy - row) * dy) ** 2 + ((xx - col) * dx) ** 2 <= (5.0 if diameter > 1 else 2.5) ** 2
        labels[INSERT_SLICE - 2 : INSERT_SLICE + 3, roi] = value
        names[value] = name
    k0, k1 = ROD_SLICES
    rod_row, rod_col = ROD_CENTRE
    rod_disc = ((yy - rod_row) * dy) ** 2 + ((xx - rod_col) * dx) ** 2 <= ROD_RADIUS_MM**2
    hu[k0:k1, rod_disc] = WATER_ROD_HU + float(physics.ha_to_hu(ROD_DENSITY, 120.0))
    # the water-equivalent rod: 22.5 mm from the rod centre, towards the upper left
    water_row = rod_row - 22.5 / dy * 0.96
    water_col = rod_col - 22.5 / dx * 0.28
    water = ((yy - water_row) * dy) ** 2 + ((xx - water_col) * dx) ** 2 <= 4.0**2
    hu[k0:k1, water] = WATER_ROD_HU
    hu = physics.blur_in_plane(hu, physics.PSF_SIGMA_MM, dy)
    if noise:
        hu += physics.correlated_noise(SHAPE, NOISE_SD_HU, grain_px=physics.NOISE_GRAIN_PX, rng=rng)
    hu_int = np.clip(np.rint(hu), -2048, 3071).astype(np.int16)
    affine = axial_affine(ORIGIN_MM, SPACING_MM, SHAPE[0])
    metadata = ScanMetadata(
        age_years=None, sex=None, study_date=dt.date(2024, 1, 1), kvp=120.0,
        exposure_mas=84.0, manufacturer="calcpipe", manufacturer_model="QRM replica",
        kernel="FC12", slice_thickness_mm=3.0, slice_increment_mm=3.0,
        pixel_spacing_mm=(dy, dx), reconstruction_diameter_mm=250.0, contrast_agent=None,
        gating=Gating(), image_type=("DERIVED", "PRIMARY", "MPR"), body_part="CHEST",
        modality="CT", sop_class_uid="1.2.840.10008.5.1.4.1.1.2")
    series = stable_uid("qrm-replica-series", seed)
    volume = CTVolume(
        hu=hu_int, spacing_mm=SPACING_MM, affine=affine, slice_thickness_mm=3.0,
        study_uid=stable_uid("qrm-replica-study", seed), series_uid=series,
        sop_instance_uids=tuple(stable_uid(series, k) for k in range(SHAPE[0])),
        metadata=metadata)
    return volume, labels, names


@dataclass(frozen=True)
class InsertComparison:
    """One insert: the replica's standard-profile scores beside the real scan's FQM ones."""

    insert: str
    replica_agatston: float
    real_agatston: float
    replica_volume_mm3: float
    real_volume_mm3: float

    @property
    def agatston_error(self) -> float | None:
        return self.replica_agatston / self.real_agatston - 1 if self.real_agatston else None

    @property
    def volume_error(self) -> float | None:
        return self.replica_volume_mm3 / self.real_volume_mm3 - 1 if self.real_volume_mm3 else None


def qrm_report(reference_csv: str | Path, seed: int = 0) -> list[InsertComparison]:
    """Score the replica like the real scan (its ROIs, c_HA 0.722048, standard profile) and
    pair each insert with the FQM reference of ``reference.csv``."""
    from calcpipe.scoring import score

    volume, labels, names = qrm_phantom(seed)
    result = score(volume.hu, labels, volume.spacing_mm, label_names=names,
                   mass_calibration=0.722048)
    with open(reference_csv, encoding="utf-8") as fh:
        reference = {row["insert"]: row for row in csv.DictReader(fh)}
    return [InsertComparison(name, result.row(name).agatston,
                             float(reference[name]["fqm_agatston"]),
                             result.row(name).volume_mm3,
                             float(reference[name]["fqm_volume_score_mm3"]))
            for name in INSERTS]


def format_report(rows: list[InsertComparison]) -> str:
    """A plain-text table of :func:`qrm_report` (15 % target on large and medium)."""
    lines = [f"{'insert':<10} {'Agatston replica':>16} {'real':>8} {'err':>7}   "
             f"{'volume replica':>14} {'real':>8} {'err':>7}"]
    for row in rows:
        def pct(value: float | None) -> str:
            return "   n/a" if value is None else f"{value * 100:+6.1f}%"
        lines.append(f"{row.insert:<10} {row.replica_agatston:16.2f} {row.real_agatston:8.2f} "
                     f"{pct(row.agatston_error)}   {row.replica_volume_mm3:14.2f} "
                     f"{row.real_volume_mm3:8.2f} {pct(row.volume_error)}")
    return "\n".join(lines)
