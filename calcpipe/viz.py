"""QC pictures without a plotting library: slice montages with label overlays, as PNG.

Images carry no text and no identifiers (nothing burned in).
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import numpy.typing as npt

from calcpipe.labels import COLOURS, LABEL_NAMES


def png_bytes(image: npt.NDArray[np.uint8]) -> bytes:
    """Encode a (H, W) grey or (H, W, 3) RGB uint8 image as PNG."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"image must be (H, W[, 3]) uint8; got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    colour_type = 2 if image.ndim == 3 else 0
    rows = np.ascontiguousarray(image).reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def window(hu: npt.ArrayLike, level: float = 40.0, width: float = 400.0) -> npt.NDArray[np.uint8]:
    """HU to grey levels with a CT window (default: soft tissue / mediastinum)."""
    scaled = (np.asarray(hu, dtype=np.float32) - (level - width / 2)) / width
    return (np.clip(scaled, 0.0, 1.0) * 255).astype(np.uint8)


def overlay(hu: npt.ArrayLike, labels: npt.ArrayLike, *, alpha: float = 0.65,
            level: float = 40.0, width: float = 400.0) -> npt.NDArray[np.uint8]:
    """A (H, W, 3) picture of one slice with calcium labels in the DESIGN.md colours."""
    grey = window(hu, level, width)
    rgb = np.repeat(grey[..., None], 3, axis=-1).astype(np.float32)
    labels_arr = np.asarray(labels)
    for value, name in LABEL_NAMES.items():
        mask = labels_arr == value
        if mask.any():
            rgb[mask] = (1 - alpha) * rgb[mask] + alpha * np.asarray(COLOURS[name], np.float32)
    return rgb.astype(np.uint8)


def montage(hu: npt.ArrayLike, labels: npt.ArrayLike, slices: list[int], *,
            columns: int = 4, crop: tuple[slice, slice] | None = None) -> npt.NDArray[np.uint8]:
    """Slices side by side (rows of ``columns``), each with its overlay."""
    hu_arr, label_arr = np.asarray(hu), np.asarray(labels)
    tiles = []
    for k in slices:
        h, lab = hu_arr[k], label_arr[k]
        if crop is not None:
            h, lab = h[crop], lab[crop]
        tiles.append(overlay(h, lab))
    while len(tiles) % columns:
        tiles.append(np.zeros_like(tiles[0]))
    rows = [np.concatenate(tiles[i : i + columns], axis=1) for i in range(0, len(tiles), columns)]
    return np.concatenate(rows, axis=0)


def write_png(path: str | Path, image: npt.NDArray[np.uint8]) -> Path:
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(png_bytes(image))
    return out
