"""Study, series and instance keys: real UIDs, derived keys and pseudonyms.

Rules (the public contract in DESIGN.md):

* A present, non-empty UID is used as it is.
* A missing or empty UID is replaced by a *derived key*: ``2.25.<integer>``, a valid DICOM
  UID whose integer is the first 128 bits of a SHA-256 over a documented, deterministic
  tuple of file contents (see :func:`derived_uid`). The same files always give the same key,
  whatever the path or the order in which they are read.

  - instance: the bytes of the file up to the PixelData element (the whole header,
    positions and instance number included);
  - series: the study key, Modality, SeriesNumber, SeriesDate, SeriesTime,
    FrameOfReferenceUID, ConvolutionKernel, SliceThickness, Rows, Columns, PixelSpacing and
    ImageOrientationPatient (rounded to 1e-4);
  - study: PatientID, StudyDate, StudyTime, AccessionNumber and StudyID when any of them is
    non-empty, otherwise FrameOfReferenceUID, otherwise the sorted instance keys of the
    series (a study of one series).

* When a pseudonymisation secret is configured, every key written to a table is the
  HMAC-SHA256 of the key under that secret (:func:`pseudonymise`). The secret comes from the
  environment or an orchestrator secret, read by the CLI or the flow, never by this module.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable

DERIVED_PREFIX = "2.25."


def derived_uid(kind: str, parts: Iterable[object]) -> str:
    """Deterministic UID-shaped key from a kind and an ordered tuple of parts.

    Parameters
    ----------
    kind : str
        What is being keyed (``"study"``, ``"series"``, ``"instance"``); keeps keys of
        different kinds apart even for equal parts.
    parts : iterable
        Values; ``bytes`` are hashed as they are, anything else through ``str``.

    Returns
    -------
    str
        ``"2.25."`` followed by the decimal value of the first 128 bits of the digest.
    """
    digest = hashlib.sha256(kind.encode() + b"\x00")
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode("utf-8")
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)
    return DERIVED_PREFIX + str(int.from_bytes(digest.digest()[:16], "big"))


def table_key(key: str, secret: bytes | None) -> str:
    """The key as tables, masks and exports carry it: its pseudonym when a secret is set."""
    return pseudonymise(key, secret) if secret else key


def pseudonymise(key: str, secret: bytes) -> str:
    """HMAC-SHA256 of ``key`` under ``secret``, as 64 lowercase hex digits."""
    if not secret:
        raise ValueError("pseudonymisation secret is empty; unset it or give a real secret")
    return hmac.new(secret, key.encode("utf-8"), hashlib.sha256).hexdigest()
