"""The canonical label map (DESIGN.md): model output, annotation import, table names."""

from __future__ import annotations

from types import MappingProxyType

#: label value -> name, exactly the strings used in tables and APIs (0 is background)
LABEL_NAMES = MappingProxyType({
    1: "LM",   # left main
    2: "LAD",  # left anterior descending, with diagonals
    3: "LCX",  # left circumflex, with obtuse marginals
    4: "RCA",  # right coronary artery, with PDA
    5: "TAC",  # thoracic aorta wall
    6: "AVC",  # aortic valve
    7: "MAC",  # mitral annulus
})
BACKGROUND = 0

#: group name -> member label names; a group row is the sum of its member rows
GROUPS = MappingProxyType({
    "CAC": ("LM", "LAD", "LCX", "RCA"),
    "AC": ("TAC", "AVC"),
    "TOTAL": tuple(LABEL_NAMES.values()),
})

#: coronary vessels counted by CAC-DRS (the left main counts as a vessel)
CORONARY = GROUPS["CAC"]

#: overlay colours (RGB) for QC images
COLOURS = MappingProxyType({
    "LM": (0, 255, 255), "LAD": (0, 200, 0), "LCX": (0, 90, 255), "RCA": (255, 230, 0),
    "TAC": (230, 0, 0), "AVC": (255, 140, 0), "MAC": (255, 0, 255),
})
