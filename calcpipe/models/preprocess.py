"""Pre-processing shared by training and inference: a fixed HU transform, resampling to
the model's in-plane spacing, and a crop to the body that never cuts away calcium.

The crop is the bounding box of the body (the largest connected region above -300 HU in
the maximum projection over slices, which excludes the scanner table) plus a margin, so
every voxel of the patient, and so every calcium voxel, stays inside it; only air and the
table are removed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy import ndimage

#: HU transform: clip, then divide (no per-image statistics)
HU_CLIP = (-1000.0, 1500.0)
HU_SCALE = 500.0
BODY_HU = -300.0
CROP_MARGIN_MM = 6.0


def hu_transform(hu: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """Fixed intensity transform: clip to ``HU_CLIP`` and divide by ``HU_SCALE``."""
    x = np.clip(np.asarray(hu, dtype=np.float32), *HU_CLIP)
    return x / np.float32(HU_SCALE)


@dataclass(frozen=True)
class ModelGrid:
    """Where the model's in-plane grid lies on the native one.

    Native pixel (row, col) maps to model pixel ((row - row0) * scale_y, (col - col0) *
    scale_x), with scale = native spacing / model spacing.
    """

    row0: int
    col0: int
    rows: int  # native rows in the crop
    cols: int
    scale_y: float
    scale_x: float
    shape: tuple[int, int]  # model grid (H, W), multiples of the network's stride

    def to_model(self, rows: npt.ArrayLike, cols: npt.ArrayLike
                 ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """Model-grid coordinates of native pixel centres."""
        r = (np.asarray(rows, dtype=np.float64) - self.row0 + 0.5) * self.scale_y - 0.5
        c = (np.asarray(cols, dtype=np.float64) - self.col0 + 0.5) * self.scale_x - 0.5
        return r, c


def body_box(hu: npt.NDArray[np.integer], pixel_mm: tuple[float, float]) -> tuple[int, int,
                                                                                  int, int]:
    """(row0, row1, col0, col1) of the body plus ``CROP_MARGIN_MM`` (whole image if none)."""
    if not hu.shape[0]:
        return 0, hu.shape[1], 0, hu.shape[2]
    projection = hu.max(axis=0) > BODY_HU  # as (hu > BODY_HU).any(axis=0), without its mask
    labelled, n = ndimage.label(projection)
    if n == 0:
        return 0, hu.shape[1], 0, hu.shape[2]
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    rows, cols = np.nonzero(labelled == int(np.argmax(sizes)))
    my, mx = int(np.ceil(CROP_MARGIN_MM / pixel_mm[0])), int(np.ceil(CROP_MARGIN_MM / pixel_mm[1]))
    return (max(int(rows.min()) - my, 0), min(int(rows.max()) + 1 + my, hu.shape[1]),
            max(int(cols.min()) - mx, 0), min(int(cols.max()) + 1 + mx, hu.shape[2]))


def to_model_grid(hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float], *,
                  model_spacing_mm: float, stride: int) -> tuple[npt.NDArray[np.float32],
                                                                 ModelGrid]:
    """Transformed intensities of the body crop on the model grid, (Z, H, W) float32,
    padded (air after the transform is -2, so pad with that) to multiples of ``stride``."""
    x, grid = model_input(hu, spacing_mm, model_spacing_mm=model_spacing_mm, stride=stride)
    return x.numpy(), grid


def model_input(hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float], *,
                model_spacing_mm: float, stride: int, context: int | None = None,
                device: Any = "cpu") -> tuple[Any, ModelGrid]:
    """:func:`to_model_grid` as a torch tensor on ``device``; with ``context``, each slice
    with its neighbours, (Z, 2 * context + 1, H, W) (as :func:`context_stack`).

    On a GPU only the body crop of the int16 volume crosses the bus, and the transform,
    resampling and stacking run there: the CPU only finds the crop."""
    import torch
    import torch.nn.functional as F

    if hu.ndim != 3 or 0 in hu.shape:
        raise ValueError(f"segmentation needs a (Z, Y, X) volume of at least one voxel, not "
                         f"shape {hu.shape}")
    row0, row1, col0, col1 = body_box(hu, (spacing_mm[1], spacing_mm[2]))
    scale_y, scale_x = spacing_mm[1] / model_spacing_mm, spacing_mm[2] / model_spacing_mm
    if int((row1 - row0) * scale_y) < 1 or int((col1 - col0) * scale_x) < 1:
        raise ValueError(f"the image's body region, {(row1 - row0) * spacing_mm[1]:.3g} x "
                         f"{(col1 - col0) * spacing_mm[2]:.3g} mm, is smaller than one "
                         f"{model_spacing_mm:g} mm pixel of the model")
    crop = torch.from_numpy(np.ascontiguousarray(hu[:, row0:row1, col0:col1]))
    if torch.device(device).type == "cuda":
        crop = crop.pin_memory()
    with torch.inference_mode():
        x = crop.to(device, non_blocking=True).float().clamp_(*HU_CLIP).div_(HU_SCALE)
        # Bilinear, pixel-centre aligned (align_corners=False) with the exact scale factor,
        # so model pixel m samples native position (m + 0.5) / scale - 0.5, the inverse of
        # ModelGrid.to_model. torch's kernel is multi-threaded: 10x faster than ndimage.zoom.
        x = F.interpolate(x[None], scale_factor=(scale_y, scale_x), mode="bilinear",
                          align_corners=False, recompute_scale_factor=False)[0]
        h, w = x.shape[1:]
        padded_h, padded_w = -(-h // stride) * stride, -(-w // stride) * stride
        x = F.pad(x, (0, padded_w - w, 0, padded_h - h), value=HU_CLIP[0] / HU_SCALE)
        if context is not None:
            x = x[torch.from_numpy(context_index(x.shape[0], context)).to(x.device)]
    grid = ModelGrid(row0, col0, row1 - row0, col1 - col0, scale_y, scale_x,
                     (padded_h, padded_w))
    return x, grid


def labels_to_model_grid(labels: npt.NDArray[np.integer], grid: ModelGrid) -> npt.NDArray[np.int64]:
    """Training targets on the model grid: each native calcium voxel marks the model pixel
    its centre falls in (so no calcium spot vanishes when pixels get larger)."""
    target = np.zeros((labels.shape[0], *grid.shape), dtype=np.int64)
    z, r, c = np.nonzero(labels)
    inside = (r >= grid.row0) & (r < grid.row0 + grid.rows) & (c >= grid.col0) & (
        c < grid.col0 + grid.cols)
    z, r, c = z[inside], r[inside], c[inside]
    mr, mc = grid.to_model(r, c)
    mr = np.clip(np.rint(mr).astype(int), 0, grid.shape[0] - 1)
    mc = np.clip(np.rint(mc).astype(int), 0, grid.shape[1] - 1)
    target[z, mr, mc] = labels[z, r, c]
    return target


def context_stack(x: npt.NDArray[np.float32], context: int) -> npt.NDArray[np.float32]:
    """(Z, H, W) -> (Z, 2*context+1, H, W): each slice with its neighbours (edge slices
    repeat the first/last one)."""
    return x[context_index(x.shape[0], context)]


def context_index(z: int, context: int) -> npt.NDArray[np.intp]:
    """(Z, 2*context+1) slice indices of each slice's neighbourhood, clamped at the ends."""
    return np.clip(np.arange(z)[:, None] + np.arange(-context, context + 1)[None, :], 0, z - 1)
