"""Reconstruction kernel classes (soft / medium / sharp / unknown) per vendor.

HEURISTIC. Vendors do not publish a common sharpness scale; these lists follow the naming
conventions in the vendors' conformance statements and reconstruction manuals and the
kernels used for calcium scoring in the literature (Siemens B35f / Qr36, GE STANDARD,
Philips B / XCA, Canon FC12; e.g. SCCT guideline for coronary artery calcium scanning, J
Cardiovasc Comput Tomogr 2021;15:192, and the scanner-specific protocols of van der Werf et
al., Med Phys 2021). They rank a soft series above a sharp one of the same study; they never
reject a series. A kernel not listed is ``unknown``, ranked with ``medium``.

| vendor | soft | sharp |
|---|---|---|
| Siemens (B, Br, Bf, Bv, Qr, I, D, H + number) | number <= 40 | number >= 50 |
| GE | STANDARD, STND, STD, STD+, SOFT, SMOOTH | BONE, BONEPLUS, BONE+, LUNG, EDGE, DETAIL, CHEST |
| Philips | A, B, C, XCA | D, E, YC, L |
| Canon / Toshiba | FC01-FC18 | FC30 and above (FC50+ lung) |

Siemens numbers 41-49 and Canon FC19-FC29 are ``medium``.
"""

from __future__ import annotations

import re
from typing import Literal

KernelClass = Literal["soft", "medium", "sharp", "unknown"]

_SIEMENS = re.compile(r"^(?:B|BR|BF|BV|QR|I|D|H|HR|J)(\d{2})")
_CANON = re.compile(r"^FC(\d{1,2})\b")
_GE_SOFT = {"STANDARD", "STND", "STD", "STD+", "SOFT", "SMOOTH"}
_GE_SHARP = {"BONE", "BONEPLUS", "BONE+", "LUNG", "EDGE", "DETAIL", "CHEST"}
_PHILIPS_SOFT = {"A", "B", "C", "XCA"}
_PHILIPS_SHARP = {"D", "E", "YC", "L"}


def kernel_class(kernel: str | None, manufacturer: str | None = None) -> KernelClass:
    """Class of a ConvolutionKernel value (first value when multi-valued, e.g. ``Br38f\\3``).

    ``manufacturer`` picks the vendor's list; without it (or for another vendor) every list
    is tried, GE and
    Philips names first, then the Canon and Siemens number patterns.
    """
    if not kernel:
        return "unknown"
    name = kernel.split("\\")[0].strip().upper()
    vendor = (manufacturer or "").upper()
    if not (vendor.startswith("GE")
            or any(v in vendor for v in ("PHILIPS", "TOSHIBA", "CANON", "SIEMENS"))):
        vendor = ""  # an unknown vendor: try every list
    if vendor.startswith("GE") or (not vendor and name in _GE_SOFT | _GE_SHARP):
        return "soft" if name in _GE_SOFT else "sharp" if name in _GE_SHARP else "unknown"
    if "PHILIPS" in vendor or (not vendor and name in _PHILIPS_SOFT | _PHILIPS_SHARP):
        return ("soft" if name in _PHILIPS_SOFT else "sharp" if name in _PHILIPS_SHARP
                else "unknown")
    canon = _CANON.match(name)
    if canon and (not vendor or "TOSHIBA" in vendor or "CANON" in vendor):
        number = int(canon.group(1))
        return "soft" if number <= 18 else "sharp" if number >= 30 else "medium"
    siemens = _SIEMENS.match(name)
    if siemens and (not vendor or "SIEMENS" in vendor):
        number = int(siemens.group(1))
        return "soft" if number <= 40 else "sharp" if number >= 50 else "medium"
    return "unknown"
