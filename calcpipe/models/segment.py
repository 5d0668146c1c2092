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

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from calcpipe.labels import CORONARY, GROUPS, LABEL_NAMES
from calcpipe.scoring import get_profile

#: Largest 3-D connected region at or above the threshold (26-connected) whose voxels may
#: keep a calcium label, mm^3. Larger regions are bone, the scanner table, devices or
#: calibration rods, never one calcification: on the real scans the network labelled voxels
#: of regions of 7 to 832 cm^3 (bench/bench_accuracy.py prints the effect). The cost:
#: calcium that touches bone joins its region and loses its label (10 of 100 held-out
#: synthetic studies lose some, 4 much; see the model card).
MAX_CALCIUM_REGION_MM3 = 5000.0

#: A lesion (a slice's 8-connected region of candidates, Agatston's) is calcium when the
#: network labelled at least this fraction of its voxels; then all of them are (see
#: :func:`label_whole_lesions`).
LESION_MAJORITY = 0.5

#: Label values of the coronary classes (the three coronary thorax rules apply to these).
CORONARY_VALUES = tuple(v for v, name in LABEL_NAMES.items() if name in CORONARY)
#: Label values of the aortic classes (the chest-wall rule applies to these).
AORTIC_VALUES = tuple(v for v, name in LABEL_NAMES.items() if name in GROUPS["AC"])

#: Studies one GPU scores at once: single-threaded worker processes sharing it, each with its
#: own copy of the network. A study needs about 0.3 core-seconds on the CPU (decoding,
#: connected regions, lungs, scoring) and a few milliseconds of an H100, so a GPU is kept
#: busy by processes, not threads (the GIL). One H100 node, 16 cores (bench/gpu_pipeline.py,
#: 2026-11-27): one process with 4 threads 5.8 studies/s, 8 processes 24.3, 15 processes
#: 39.9, the CPU 92 % busy and the GPU 28 %. Local clusters use all cores but one.
STUDIES_PER_GPU = 12

#: How a process waits for its GPU: ``spin`` is CUDA's default for a process with cores to
#: spare, a core polling until the results are ready; ``block`` sleeps until the GPU is
#: done (a blocking CUDA event), leaving the core to other processes. On an H200 node with
#: 15 processes (2026-12-04, bench/gpu_pipeline.py) sleeping gained nothing (29.4 against
#: 30.5 studies/s spinning): the processes wait little. The benchmark keeps measuring both.
GPU_WAIT = "spin"

#: The network's numeric precisions; ``auto`` picks bf16 where the device computes it
#: natively (see :func:`resolve_precision`), else fp32.
PRECISIONS = ("auto", "fp32", "bf16")


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


def resolve_precision(precision: str, device: Any) -> str:
    """``fp32`` or ``bf16`` for ``precision`` (one of :data:`PRECISIONS`) on ``device``.

    ``auto`` is bf16 where the device has bf16 arithmetic: a CUDA GPU that supports it,
    or a CPU with AVX512-BF16 or AMX instructions (on the 2-core AMD EPYC of the
    benchmarks the network runs 1.7x faster than in fp32, at the same held-out accuracy;
    see the model card). Elsewhere bf16 would be emulated, slower than fp32, so ``auto``
    is fp32 there."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision != "auto":
        return precision
    if torch.device(device).type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if cpu_has_bf16() else "fp32"


def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX tiles)."""
    import torch

    return any(bool(getattr(torch.cpu, name, lambda: False)())
               for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))


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

    def __init__(self, checkpoint: Any, *, device: str = "cpu", precision: str = "auto",
                 batch_size: int = 16, threads: int | None = None,
                 max_region_mm3: float | None = MAX_CALCIUM_REGION_MM3,
                 thorax_rules: bool = True, whole_lesions: bool = True,
                 lesion_ends: bool = True) -> None:
        import torch

        from calcpipe.models.unet import UNet, UNetConfig, prepare_for_inference

        payload = checkpoint.payload
        check_conventions(payload, checkpoint.path)
        self.model_id = checkpoint.model_id
        self.model_checksum = checkpoint.sha256
        self.config = UNetConfig(**payload["config"])
        self.spacing = float(payload["spacing_mm"])
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.batch_size = batch_size
        self.max_region_mm3 = max_region_mm3
        self.thorax_rules = thorax_rules
        self.whole_lesions = whole_lesions
        self.lesion_ends = lesion_ends
        if threads is not None:
            torch.set_num_threads(threads)
        model = UNet(self.config)
        model.load_state_dict(payload["state_dict"])
        prepare_for_inference(model.eval())
        self.model = model.to(self.device).to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    @classmethod
    def load(cls, model: str = "default", **kwargs: Any) -> UNetSegmenter:
        from calcpipe.models.checkpoint import load_checkpoint

        return cls(load_checkpoint(model), **kwargs)

    def logits(self, x: Any) -> Any:
        """Network logits for a (N, C, H, W) batch (array or tensor), a tensor on the device
        in the network's precision (bf16 under bf16 autocast: :func:`sample_labels` widens
        only the values it reads)."""
        import torch

        batch = torch.as_tensor(x)
        if batch.is_cpu and self.device.type == "cuda":
            batch = batch.pin_memory()  # only host memory can be pinned
        batch = batch.to(self.device, non_blocking=True)  # no copy where it already is
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            if self.precision == "bf16":
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    out = self.model(batch)
            else:
                out = self.model(batch)
        return out

    def segment(self, hu: npt.NDArray[np.integer], spacing_mm: tuple[float, float, float],
                *, kvp: float = 120.0) -> Segmentation:
        from calcpipe.models.preprocess import model_input
        from calcpipe.models.thorax import Thorax

        stack, grid = model_input(hu, spacing_mm, model_spacing_mm=self.spacing,
                                  stride=2**self.config.depth, context=self.config.context,
                                  device=self.device)
        labels = np.zeros(hu.shape, dtype=np.uint8)
        # candidates only in the body crop, compared there alone (half the time)
        crop = (slice(None), slice(grid.row0, grid.row0 + grid.rows),
                slice(grid.col0, grid.col0 + grid.cols))
        candidates = np.zeros(hu.shape, dtype=bool)
        np.greater_equal(hu[crop], threshold_for(kvp), out=candidates[crop])
        calcium_at, calcium_top = [], []  # flat indices and top-class probabilities
        for start in range(0, hu.shape[0], self.batch_size):
            stop = min(start + self.batch_size, hu.shape[0])
            flat = np.flatnonzero(candidates[start:stop])  # 3-D np.nonzero is far slower
            if not flat.size:
                continue
            z, r, c = np.unravel_index(flat, candidates[start:stop].shape)
            logits = self.logits(stack[start:stop])
            label, top = sample_labels(logits, z, *grid.to_model(r, c))
            calcium = label > 0  # the rest stays background: only calcium is written
            calcium_at.append(flat[calcium] + start * hu.shape[1] * hu.shape[2])
            labels.ravel()[calcium_at[-1]] = label[calcium]
            calcium_top.append(top[calcium])
        at = np.concatenate(calcium_at) if calcium_at else np.zeros(0, np.intp)
        tops = np.concatenate(calcium_top) if calcium_top else np.zeros(0, np.float32)
        if self.max_region_mm3 is not None and at.size:
            # After the network, so that only the regions it labelled are measured. The
            # same labels as removing oversized regions from the candidates first: a
            # lesion lies wholly in one region, so whole-lesion labelling below never
            # reaches a voxel of an oversized region through a kept label.
            big = in_oversized_regions(candidates, at, spacing_mm, self.max_region_mm3)
            labels.flat[at[big]] = 0
            at, tops = at[~big], tops[~big]
        if self.whole_lesions and at.size:
            added = label_whole_lesions(labels, candidates)
            kept = labels.flat[at] > 0  # voxels it labelled have no network top-class
            at = np.concatenate([at[kept], added])
            tops = np.concatenate([tops[kept], np.full(added.size, np.nan, np.float32)])
            if self.lesion_ends:
                ends = label_lesion_ends(labels, candidates, at)
                at = np.concatenate([at, ends])
                tops = np.concatenate([tops, np.full(ends.size, np.nan, np.float32)])
        if self.thorax_rules and at.size:
            dropped = np.flatnonzero(misplaced(labels.flat[at], np.unravel_index(at, hu.shape),
                                               Thorax.find(hu, spacing_mm)))
            labels.flat[at[dropped]] = 0
            tops = np.delete(tops, dropped)
        tops = tops[~np.isnan(tops)]  # the network's own calcium decisions
        confidence = float(tops.astype(np.float64).mean()) if tops.size else None
        return Segmentation(labels, confidence, self.model_id, self.model_checksum,
                            self.device.type, self.precision)


def conventions() -> dict[str, Any]:
    """The label map and HU transform inference applies, as a checkpoint records them."""
    from calcpipe.models.preprocess import HU_CLIP, HU_SCALE

    return {"classes": {str(k): v for k, v in LABEL_NAMES.items()},
            "hu_transform": {"clip": [float(v) for v in HU_CLIP], "scale": float(HU_SCALE)}}


def check_conventions(payload: Mapping[str, Any], where: str) -> None:
    """Refuses a checkpoint trained under another HU transform or label map than the one
    inference applies (:func:`conventions`): its labels would come out silently wrong."""
    for field, value in conventions().items():
        found = payload.get(field)
        if found is not None and found != value:
            raise ValueError(f"{where} records {field} {found!r}; calcpipe's inference "
                             f"applies {value!r}: the checkpoint cannot be used as it is")


def misplaced(values: npt.NDArray[np.uint8], points: tuple[npt.NDArray[np.intp], ...],
              thorax: Any) -> npt.NDArray[np.bool_]:
    """Which labelled voxels (label ``values`` at ``points``) lie where their class cannot,
    by the lungs (:class:`calcpipe.models.thorax.Thorax`): coronary labels where no heart
    can be (chest wall, hila and lungs, upper abdomen), aortic labels in the chest wall."""
    out = np.zeros(values.shape, dtype=bool)
    for members, rule in ((CORONARY_VALUES, thorax.not_coronary),
                          (AORTIC_VALUES, thorax.chest_wall)):
        these = np.flatnonzero(np.isin(values, members))
        if these.size:
            out[these] = rule(tuple(p[these] for p in points))
    return out


def sample_labels(logits: Any, z: npt.NDArray[np.intp], rows: npt.NDArray[np.float64],
                  cols: npt.NDArray[np.float64],
                  ) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32]]:
    """Top class at points of a (N, C, H, W) logits batch, and its probability where it is
    not background (NaN elsewhere): slice ``z``, model-grid position (``rows``, ``cols``)
    in pixel-centre coordinates, bilinear, positions clamped to the grid (as
    ``grid_sample(..., padding_mode="border", align_corners=False)``), all points in one
    vectorised gather, one transfer back.

    Only the gathered logits are widened to float32 (bf16 logits: the same values as
    widening the whole batch first, without its copy), and the top probability,
    1 / sum(exp(logit - top logit)), is computed only for calcium: most candidate voxels
    are bone the network calls background, and only calcium's probabilities are used."""
    import torch

    device = logits.device
    _, _, h, w = logits.shape
    y = torch.from_numpy(rows).to(device, torch.float32).clamp_(0, h - 1)
    x = torch.from_numpy(cols).to(device, torch.float32).clamp_(0, w - 1)
    y0, x0 = y.floor().long(), x.floor().long()
    y1, x1 = (y0 + 1).clamp_(max=h - 1), (x0 + 1).clamp_(max=w - 1)
    wy, wx = (y - y0)[:, None], (x - x0)[:, None]
    b = torch.from_numpy(z).to(device)

    def at(yy: Any, xx: Any) -> Any:
        return logits[b, :, yy, xx].float()

    values = ((1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1))
              + wy * ((1 - wx) * at(y1, x0) + wx * at(y1, x1)))
    top_logit, label = values.max(dim=1)
    top = torch.full(label.shape, float("nan"), device=device)
    calcium = label > 0
    top[calcium] = 1.0 / torch.exp(values[calcium] - top_logit[calcium, None]).sum(dim=1)
    wait_for(device)
    return label.to(torch.uint8).cpu().numpy(), top.cpu().numpy()


def wait_for(device: Any) -> None:
    """Wait until the work queued on ``device`` is done, as :data:`GPU_WAIT` says (the copy
    back to the host that follows would wait spinning)."""
    if device.type == "cuda" and GPU_WAIT == "block":
        import torch

        done = torch.cuda.Event(blocking=True)
        done.record()
        done.synchronize()


def label_whole_lesions(labels: npt.NDArray[np.uint8], candidates: npt.NDArray[np.bool_],
                        ) -> npt.NDArray[np.intp]:
    """Decide calcium lesion by lesion, in place: a lesion (a slice's 8-connected region of
    ``candidates``, Agatston's) of which the network labelled at least
    :data:`LESION_MAJORITY` of the voxels is labelled whole, each voxel the network left
    as background taking the label of the nearest labelled voxel of its lesion (a lesion
    across two vessels keeps both); a lesion it labelled less of loses its labels.

    The network leaves partial-volume rims and thin ends of the lesions it recognises as
    background (the real QRM phantom: 441 of 1,254 insert voxels), and on real scans
    labels a few voxels of larger structures it does not recognise; Agatston, volume and
    mass are sums over whole lesions (the effect: bench/bench_accuracy.py, model card).
    Returns the flat indices of the voxels it labelled."""
    from scipy import ndimage

    added = []
    for z in np.flatnonzero(labels.any(axis=(1, 2))):
        window, lesions, numbers = _lesions_touched(candidates[z], labels[z])
        plane = labels[z][window]
        boxes = ndimage.find_objects(lesions)
        for number in numbers:
            box = boxes[number - 1]
            lesion = lesions[box] == number
            known = np.where(lesion, plane[box], 0)
            missing = lesion & (known == 0)
            if not missing.any():
                continue
            if (known > 0).sum() < LESION_MAJORITY * lesion.sum():
                plane[box][lesion] = 0
                continue
            _, (rows, cols) = ndimage.distance_transform_edt(known == 0, return_indices=True)
            plane[box][missing] = known[rows[missing], cols[missing]]
            r, c = np.nonzero(missing)
            added.append(np.ravel_multi_index(
                (np.full(r.size, z), r + box[0].start + window[0].start,
                 c + box[1].start + window[1].start), labels.shape))
    return np.concatenate(added) if added else np.zeros(0, np.intp)


def label_lesion_ends(labels: npt.NDArray[np.uint8], candidates: npt.NDArray[np.bool_],
                      at: npt.NDArray[np.intp] | None = None, margin: int = 16,
                      ) -> npt.NDArray[np.intp]:
    """Label the faint ends of labelled lesions in the next slices, in place: a lesion
    (a slice's 8-connected region of ``candidates``) with no label, lying over labelled
    voxels of the slice above or below and no larger than the labelled lesions it lies
    over, takes the labels of the nearest of those voxels. One slice beyond the labels as
    they were (no chains), after :func:`label_whole_lesions`.

    A calcification's last slice holds only its partial-volume edge, a few voxels just
    above the threshold that the network leaves as background (the real QRM phantom: the
    end slices of three inserts, 30 voxels), while its body in the next slice is labelled.
    ``at``: the flat indices of the labelled voxels where the caller has them (finding
    them in the whole volume costs more than the rest). Works in a window around each
    slice's labels (``margin`` pixels), the whole slice where a lesion it would label
    reaches the window's edge. Returns the flat indices of the voxels it labelled."""
    at = np.flatnonzero(labels) if at is None else at
    if not at.size:
        return np.zeros(0, np.intp)
    values = labels.flat[at]  # the labels as they were: no chains
    zs, rows, cols = np.unravel_index(at, labels.shape)
    order = np.argsort(zs, kind="stable")
    starts = np.flatnonzero(np.diff(zs[order], prepend=-1))
    eight = np.ones((3, 3), dtype=bool)
    added = []
    for part in np.split(order, starts[1:]):
        z = int(zs[part[0]])
        points = (rows[part], cols[part], values[part])
        window = (slice(max(int(points[0].min()) - margin, 0), int(points[0].max()) + margin + 1),
                  slice(max(int(points[1].min()) - margin, 0), int(points[1].max()) + margin + 1))
        for target in (z - 1, z + 1):
            # cheap test first: an end lies over labelled voxels, unlabelled itself
            if (0 <= target < labels.shape[0]
                    and (candidates[target][points[:2]]
                         & (labels[target][points[:2]] == 0)).any()):
                added += _label_ends(labels, candidates, points, z, target, window, eight)
    return np.concatenate(added) if added else np.zeros(0, np.intp)


def _label_ends(labels: npt.NDArray[np.uint8], candidates: npt.NDArray[np.bool_],
                points: tuple[Any, Any, Any], z: int, target: int,
                window: tuple[slice, slice], eight: npt.NDArray[np.bool_]) -> list[Any]:
    """:func:`label_lesion_ends` from slice ``z`` (its labelled ``points``: rows, columns,
    values) into slice ``target``, in a window of the slices."""
    from scipy import ndimage

    ends, _ = ndimage.label(candidates[target][window], structure=eight)
    known = np.zeros(ends.shape, dtype=np.uint8)
    known[points[0] - window[0].start, points[1] - window[1].start] = points[2]
    over = np.unique(ends[(known > 0) & (ends > 0)])
    over = over[~np.isin(over, ends[labels[target][window] > 0])]
    if not over.size:
        return []
    edge = np.concatenate([ends[0], ends[-1], ends[:, 0], ends[:, -1]])
    if ends.shape != labels.shape[1:] and np.isin(over, edge).any():
        whole = (slice(0, labels.shape[1]), slice(0, labels.shape[2]))
        return _label_ends(labels, candidates, points, z, target, whole, eight)
    body, _ = ndimage.label(candidates[z][window] & (known > 0), structure=eight)
    body_area, end_area = np.bincount(body.ravel()), np.bincount(ends.ravel())
    plane = labels[target][window]
    nearest = None
    added = []
    for number in over:
        end = ends == number
        if end_area[number] > body_area[np.unique(body[end & (body > 0)])].sum():
            continue
        if nearest is None:
            _, nearest = ndimage.distance_transform_edt(known == 0, return_indices=True)
        plane[end] = known[nearest[0][end], nearest[1][end]]
        r, c = np.nonzero(end)
        added.append(np.ravel_multi_index(
            (np.full(r.size, target), r + window[0].start, c + window[1].start), labels.shape))
    return added


def _lesions_touched(candidates: npt.NDArray[np.bool_], labels: npt.NDArray[np.uint8],
                     margin: int = 16) -> tuple[tuple[slice, slice], Any, Any]:
    """The lesions of one slice that hold labelled voxels: a window of the slice, its
    8-connected regions of candidates, and the region numbers holding labels. Labelling a
    window around the labelled voxels is several times faster than the whole slice; where
    such a lesion reaches the window's edge, the whole slice is labelled instead."""
    rows, cols = np.flatnonzero(labels.any(axis=1)), np.flatnonzero(labels.any(axis=0))
    window = (slice(max(int(rows[0]) - margin, 0), int(rows[-1]) + margin + 1),
              slice(max(int(cols[0]) - margin, 0), int(cols[-1]) + margin + 1))
    lesions, numbers = _regions_holding_labels(candidates[window], labels[window])
    edge = np.concatenate([lesions[0], lesions[-1], lesions[:, 0], lesions[:, -1]])
    if lesions.shape != candidates.shape and np.isin(numbers, edge).any():
        window = (slice(0, labels.shape[0]), slice(0, labels.shape[1]))
        lesions, numbers = _regions_holding_labels(candidates, labels)
    return window, lesions, numbers


def _regions_holding_labels(candidates: npt.NDArray[np.bool_], labels: npt.NDArray[np.uint8],
                            ) -> tuple[Any, Any]:
    from scipy import ndimage

    lesions, _ = ndimage.label(candidates, structure=np.ones((3, 3), dtype=bool))
    numbers = np.unique(lesions[labels > 0])
    return lesions, numbers[numbers > 0]


def in_oversized_regions(candidates: npt.NDArray[np.bool_], at: npt.NDArray[np.intp],
                         spacing_mm: tuple[float, float, float], max_mm3: float,
                         margin: tuple[int, int, int] = (3, 16, 16)) -> npt.NDArray[np.bool_]:
    """Whether each candidate at flat index ``at`` lies in a 26-connected region of
    ``candidates`` larger than ``max_mm3`` (as :func:`oversized_regions`, exactly).

    Labels small windows, not the volume: a window around one undecided voxel (``margin``
    around it) decides every voxel asked about inside it whose region is already too large
    there (a region's part inside a window is part of the region) or does not reach the
    window's inner faces (then the window holds all of it). While the first voxel's region
    is undecided, the next window is that region's part found so far plus ``margin`` (the
    whole volume at worst). A study's labelled voxels lie in a few dozen lesions and bones:
    labelling the bounding box of all of them instead (and the whole volume where a region
    reached that box's edge) took 62 ms per study on 10 synthetic 512 x 512 studies on
    this CPU, these windows 10 ms; margins doubled at each growth, 21 ms (windows of a
    long lesion grew to most of the volume). On a GPU node's cores the old way took 0.13 s
    of a study's 0.25 s of segmentation. Where the voxels are spread over so many windows
    that labelling their bounding box is cheaper (see :func:`_box_first`), that box is the
    first window, and windows grow from there (600 scattered lesions, this CPU: 317 ms in
    windows alone, 85 ms with the box first, 59 ms labelling the whole volume)."""
    from scipy import ndimage

    points = np.stack(np.unravel_index(at, candidates.shape), axis=1)  # (N, 3)
    big = np.zeros(at.size, dtype=bool)
    undecided = np.ones(at.size, dtype=bool)
    voxel_mm3 = float(np.prod(spacing_mm))
    structure = np.ones((3, 3, 3), dtype=bool)
    box_first = _box_first(points, margin)
    while undecided.any():
        first = int(np.flatnonzero(undecided)[0])
        low, high = (points.min(axis=0), points.max(axis=0)) if box_first else (
            points[first], points[first])
        box_first = False
        while undecided[first]:
            window = tuple(slice(max(int(lo) - m, 0), min(int(hi) + m + 1, n))
                           for lo, hi, m, n in zip(low, high, margin, candidates.shape,
                                                   strict=True))
            origin = np.array([w.start for w in window])
            stop = np.array([w.stop for w in window])
            regions, _ = ndimage.label(candidates[window], structure=structure)
            here = np.flatnonzero(undecided & ((points >= origin) & (points < stop)).all(axis=1))
            number = regions[tuple((points[here] - origin).T)]
            oversized = np.bincount(regions.ravel())[number] * voxel_mm3 > max_mm3
            decided = oversized | ~np.isin(number, _on_inner_faces(regions, window,
                                                                    candidates.shape))
            big[here[decided]] = oversized[decided]
            undecided[here[decided]] = False
            if undecided[first]:  # grow around the first voxel's region as found so far
                seed = regions[tuple(points[first] - origin)]
                box = ndimage.find_objects((regions == seed).astype(np.uint8))[0]
                low = origin + [b.start for b in box]
                high = origin + [b.stop - 1 for b in box]
    return big


#: The cost of labelling one window beyond its voxels' (calls, counting, faces), in voxels
#: labelled in the same time (about 0.4 ms on the benchmarks' CPU).
WINDOW_OVERHEAD_VOXELS = 20_000


def _box_first(points: npt.NDArray[np.intp], margin: tuple[int, int, int]) -> bool:
    """Whether labelling the bounding box of ``points`` (N, 3) plus ``margin`` would cost
    less than a window per occupied cell of window size: the cells estimate the windows
    :func:`in_oversized_regions` would label."""
    if not len(points):
        return False
    extent = 2 * np.asarray(margin) + 1
    cells = len(np.unique(points // extent, axis=0))
    box = float(np.prod(points.max(axis=0) - points.min(axis=0) + extent))
    return box + WINDOW_OVERHEAD_VOXELS < cells * (float(np.prod(extent))
                                                   + WINDOW_OVERHEAD_VOXELS)


def _on_inner_faces(regions: npt.NDArray[Any], window: tuple[slice, ...],
                    shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """The values of ``regions`` (a window of a volume of ``shape``) on the window's faces
    that lie inside the volume (its edges that a region can continue past)."""
    faces = [regions[(slice(None),) * axis + (end,)].ravel()
             for axis, (w, n) in enumerate(zip(window, shape, strict=True))
             for end, at_border in ((0, w.start == 0), (-1, w.stop == n))
             if not at_border]
    return np.unique(np.concatenate(faces)) if faces else np.zeros(0, regions.dtype)


def oversized_regions(candidates: npt.NDArray[np.bool_], spacing_mm: tuple[float, float, float],
                      max_mm3: float) -> npt.NDArray[np.bool_]:
    """Voxels of the 26-connected regions of ``candidates`` larger than ``max_mm3``.

    Labels only the candidates' bounding box and reads region numbers at the candidates
    alone (a few per cent of the voxels): half the time of whole-volume passes."""
    from scipy import ndimage

    out = np.zeros(candidates.shape, dtype=bool)
    flat = np.flatnonzero(candidates)
    if not flat.size:
        return out
    at = np.unravel_index(flat, candidates.shape)
    first = [int(a.min()) for a in at]
    box = tuple(slice(f, int(a.max()) + 1) for f, a in zip(first, at, strict=True))
    regions, _ = ndimage.label(candidates[box], structure=np.ones((3, 3, 3), dtype=bool))
    number = regions[tuple(a - f for a, f in zip(at, first, strict=True))]
    oversized = np.bincount(number) * float(np.prod(spacing_mm)) > max_mm3
    out.ravel()[flat[oversized[number]]] = True
    return out
