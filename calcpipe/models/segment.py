"""Segmenters: HU volume -> canonical label map on the native DICOM grid.

Every segmenter returns labels only where HU is at or above the standard profile's
threshold for the scan's kVp (pixel-wise exactness: the network decides which vessel, the
threshold decides whether calcium). :class:`UNetSegmenter` runs a checkpoint batched over
slices (CPU: ``inference_mode``, channels-last, fixed threads; GPU: bf16 autocast, pinned
memory), evaluating the network on the model grid and reading its logits at each candidate
voxel's native position (bilinear). :class:`ThresholdSegmenter` labels a region of
interest, for tests and phantoms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from calcpipe.scoring import get_profile


@dataclass(frozen=True, eq=False)
class Segmentation:
    labels: npt.NDArray[np.uint8]  # (Z, Y, X), canonical label values
    confidence: float | None  # mean top-class probability over calcium voxels
    model_id: str
    model_checksum: str
    device: str
    precision: str


class Segmenter(Protocol):
    model_id: str
    model_checksum: str

    def segment(self, hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
                *, kvp: float = 120.0) -> Segmentation: ...


def threshold_for(kvp: float) -> float:
    return get_profile("standard").threshold_hu(kvp)[0]


class ThresholdSegmenter:
    """Labels of a region of interest where HU reaches the threshold (no network)."""

    model_id = "threshold-roi"
    model_checksum = ""

    def __init__(self, roi: npt.NDArray[np.integer]) -> None:
        self.roi = np.asarray(roi)

    def segment(self, hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
                *, kvp: float = 120.0) -> Segmentation:
        if self.roi.shape != hu.shape:
            raise ValueError(f"roi shape {self.roi.shape} differs from hu shape {hu.shape}")
        labels = np.where(hu >= threshold_for(kvp), self.roi, 0).astype(np.uint8)
        return Segmentation(labels, None, self.model_id, "", "cpu", "exact")


class UNetSegmenter:
    """A trained U-Net checkpoint, loaded once (per worker process)."""

    def __init__(self, checkpoint: Any, *, device: str = "cpu", precision: str = "fp32",
                 batch_size: int = 16, threads: int | None = None) -> None:
        import torch

        from calcpipe.models.unet import UNet, UNetConfig

        payload = checkpoint.payload
        self.model_id = checkpoint.model_id
        self.model_checksum = checkpoint.sha256
        self.config = UNetConfig(**payload["config"])
        self.spacing = float(payload["spacing_mm"])
        self.device = torch.device(device)
        self.precision = precision
        self.batch_size = batch_size
        if threads is not None:
            torch.set_num_threads(threads)
        model = UNet(self.config)
        model.load_state_dict(payload["state_dict"])
        model.eval()
        self.model = model.to(self.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(cls, model: str = "default", **kwargs: Any) -> UNetSegmenter:
        from calcpipe.models.checkpoint import load_checkpoint

        return cls(load_checkpoint(model), **kwargs)

    def logits(self, x: npt.NDArray[np.float32]) -> Any:
        """Network logits for a (N, C, H, W) batch, as a float32 tensor on the device."""
        import torch

        batch = torch.from_numpy(x)
        if self.device.type == "cuda":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = self.model(batch)
            else:
                out = self.model(batch)
        return out.float()

    def segment(self, hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
                *, kvp: float = 120.0) -> Segmentation:
        import torch
        import torch.nn.functional as F

        from calcpipe.models.preprocess import context_stack, to_model_grid

        x, grid = to_model_grid(hu, spacing_mm, model_spacing_mm=self.spacing,
                                stride=2**self.config.depth)
        stack = context_stack(x, self.config.context)
        labels = np.zeros(hu.shape, dtype=np.uint8)
        candidates = hu >= threshold_for(kvp)
        top_sum, top_count = 0.0, 0
        h, w = grid.shape
        for start in range(0, hu.shape[0], self.batch_size):
            stop = min(start + self.batch_size, hu.shape[0])
            flat = np.flatnonzero(candidates[start:stop])  # 3-D np.nonzero is far slower
            if not flat.size:
                continue
            z, r, c = np.unravel_index(flat, candidates[start:stop].shape)
            logits = self.logits(np.ascontiguousarray(stack[start:stop]))
            mr, mc = grid.to_model(r, c)
            # grid_sample coordinates in [-1, 1] (align_corners=False: pixel edges)
            gx = torch.from_numpy((mc + 0.5) / w * 2 - 1).float()
            gy = torch.from_numpy((mr + 0.5) / h * 2 - 1).float()
            points = torch.stack([gx, gy], dim=-1).to(logits.device)
            for k in np.unique(z):
                sel = np.flatnonzero(z == k)
                where = points[torch.from_numpy(sel).to(logits.device)][None, None]
                sampled = F.grid_sample(logits[k : k + 1], where, mode="bilinear",
                                        padding_mode="border", align_corners=False)
                probs = torch.softmax(sampled[0, :, 0, :], dim=0)
                top, label = probs.max(dim=0)
                label_np = label.cpu().numpy().astype(np.uint8)
                labels[start + k, r[sel], c[sel]] = label_np
                calcium = label_np > 0
                top_sum += float(top.cpu().numpy()[calcium].sum())
                top_count += int(calcium.sum())
        inside = np.zeros(hu.shape[1:], dtype=bool)
        inside[grid.row0 : grid.row0 + grid.rows, grid.col0 : grid.col0 + grid.cols] = True
        labels[:, ~inside] = 0
        confidence = top_sum / top_count if top_count else None
        return Segmentation(labels, confidence, self.model_id, self.model_checksum,
                            self.device.type, self.precision)
