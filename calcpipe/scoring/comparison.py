"""One example volume scored under every profile: the table in docs/scoring.md.

``calcpipe profiles`` prints it; a test checks the documentation matches this code, so
the documented numbers are always the ones the engine produces.
"""

from __future__ import annotations

import numpy as np

from calcpipe.scoring.engine import score
from calcpipe.scoring.profiles import PROFILES

#: spacing of the example: 0.5 mm pixels, 1.5 mm spacing of 3 mm slices (overlapping)
EXAMPLE_SPACING_MM = (1.5, 0.5, 0.5)
EXAMPLE_THICKNESS_MM = 3.0


def example_volume() -> tuple[np.ndarray, np.ndarray]:
    """A hand-built (6, 16, 16) study whose lesions separate the conventions.

    LAD: a 3-slice plaque (2 x 2 px, 180-420 HU) and a 3-pixel speck (350 HU, 0.75 mm^2);
    RCA: two diagonal voxels on neighbouring slices (6- versus 26-connectivity) and a
    single 0.25 mm^2 pixel at 600 HU; TAC: a 3 x 3 px plaque at 260 HU on one slice.
    """
    hu = np.full((6, 16, 16), 35, dtype=np.int16)
    labels = np.zeros(hu.shape, dtype=np.uint8)
    hu[1:4, 2:4, 2:4] = np.array([180, 420, 250])[:, None, None]
    labels[0:5, 1:5, 1:5] = 2
    hu[4, 10, 2:5] = 350
    labels[4, 10, 2:5] = 2
    hu[2, 12, 12] = hu[3, 13, 13] = 300
    hu[0, 8, 8] = 600
    labels[0:4, 8:14, 8:14] = 4
    hu[5, 1:4, 10:13] = 260
    labels[5, 1:4, 10:13] = 5
    return hu, labels


def comparison_table() -> str:
    """Markdown table: Agatston (LAD, RCA, TAC), CAC volume and lesions per profile."""
    hu, labels = example_volume()
    lines = [
        "| profile | LAD | RCA | TAC | CAC volume mm^3 | CAC lesions | convention |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, profile in PROFILES.items():
        result = score(hu, labels, EXAMPLE_SPACING_MM, profile=profile,
                       slice_thickness_mm=EXAMPLE_THICKNESS_MM, mass_calibration=0.75)
        cells = [f"{result.row(v).agatston:.3f}" for v in ("LAD", "RCA", "TAC")]
        cac = result.row("CAC")
        lines.append(f"| {name} | {' | '.join(cells)} | {cac.volume_mm3:.3f} | "
                     f"{cac.n_lesions} | {profile.description} |")
    return "\n".join(lines) + "\n"
