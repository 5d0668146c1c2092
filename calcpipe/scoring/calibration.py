"""Mass calibration: c_HA (mg hydroxyapatite per cm^3 per HU).

mass_mg = c_HA x volume_cm3 x mean HU of the calcium voxels. c_HA depends on the scanner,
tube voltage and kernel. The pipeline looks it up in a registry (a TOML file: the packaged
``mass_calibration.toml`` or one of the user's); :func:`measure_c_ha` derives it from a
phantom scan with a calibration rod of known HA density and a water-equivalent rod.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from importlib.resources import files

import numpy as np
import numpy.typing as npt

from calcpipe.scoring.errors import ScoringInputError

#: Used when no calibration is known (rows are then flagged ``mass_calibration_nominal``):
#: the factor the FQM analysis measured on the QRM phantom scanned on a Canon Aquilion ONE
#: at 120 kVp, FC12 (van Praagh et al., Med Phys 2021; shared/data/qrm_phantom_canon).
NOMINAL_C_HA = 0.722048


@dataclass(frozen=True)
class Calibration:
    """One registry entry; empty strings and kvp 0 match anything."""

    manufacturer: str
    model: str
    kvp: float
    kernel: str
    c_ha: float
    source: str


def load_registry(path: str | os.PathLike[str] | None = None) -> tuple[Calibration, ...]:
    """Entries of a calibration registry (default: the one shipped with calcpipe)."""
    if path is None:
        text = files("calcpipe.scoring").joinpath("mass_calibration.toml").read_text("utf-8")
    else:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    entries = tomllib.loads(text).get("scanner", [])
    registry = []
    for i, entry in enumerate(entries):
        try:
            registry.append(Calibration(
                manufacturer=str(entry.get("manufacturer", "")),
                model=str(entry.get("model", "")),
                kvp=float(entry.get("kvp", 0)),
                kernel=str(entry.get("kernel", "")),
                c_ha=float(entry["c_ha"]),
                source=str(entry.get("source", "")),
            ))
        except (KeyError, TypeError, ValueError) as e:
            raise ScoringInputError(f"scanner[{i}]", entry,
                                    "a calibration entry needs a numeric c_ha") from e
    return tuple(registry)


def lookup_c_ha(
    registry: tuple[Calibration, ...], *, manufacturer: str | None, model: str | None,
    kvp: float | None, kernel: str | None,
) -> Calibration | None:
    """The most specific matching entry (most fields matched), or None."""
    def norm(text: str | None) -> str:
        return (text or "").strip().casefold()

    best, best_score = None, -1
    for entry in registry:
        checks = [
            (norm(entry.manufacturer), norm(manufacturer)),
            (norm(entry.model), norm(model)),
            (norm(entry.kernel), norm(kernel)),
        ]
        if any(want and want != have for want, have in checks):
            continue
        if entry.kvp and (kvp is None or abs(entry.kvp - kvp) >= 0.5):
            continue
        specificity = sum(bool(want) for want, _ in checks) + bool(entry.kvp)
        if specificity > best_score:
            best, best_score = entry, specificity
    return best


def measure_c_ha(
    hu: npt.ArrayLike,
    rod_mask: npt.ArrayLike,
    water_mask: npt.ArrayLike,
    *,
    rod_density_mg_cm3: float = 200.0,
) -> float:
    """c_HA = rod HA density / (mean HU in the rod - mean HU in the water rod).

    Parameters
    ----------
    hu : (Z, Y, X) array, HU
    rod_mask, water_mask : boolean arrays of the same shape
        Regions well inside the calibration rod and the water-equivalent rod.
    rod_density_mg_cm3 : float
        HA concentration of the calibration rod.
    """
    hu_arr = np.asarray(hu, dtype=np.float64)
    rod, water = np.asarray(rod_mask, dtype=bool), np.asarray(water_mask, dtype=bool)
    for name, mask in (("rod_mask", rod), ("water_mask", water)):
        if mask.shape != hu_arr.shape:
            raise ScoringInputError(name, f"shape {mask.shape}", f"must match {hu_arr.shape}")
        if not mask.any():
            raise ScoringInputError(name, "empty", "selects no voxel")
    contrast = float(hu_arr[rod].mean() - hu_arr[water].mean())
    if contrast <= 0:
        raise ScoringInputError("rod_mask", f"{contrast:.1f} HU above water",
                                "the rod must be denser than the water rod")
    return rod_density_mg_cm3 / contrast
