"""Training the U-Net on labelled CT volumes (synthetic cohorts now, annotated real ones later).

Patient-level split (60/20/20, :func:`split_patients`); class-weighted cross-entropy plus
soft Dice, favouring the coronary classes; patches centred on calcium more often than not,
with aorta-only calcium undersampled; augmentation on the GPU (or CPU) batch: HU gain and
offset, noise, blur, small rotation, scale and translation - never a left-right flip, which
would put the RCA on the wrong side; AdamW with a cosine schedule; early stopping on
validation coronary Dice; fixed seeds; resumable from the last checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from calcpipe import __version__
from calcpipe.models.preprocess import (
    HU_CLIP,
    HU_SCALE,
    labels_to_model_grid,
    to_model_grid,
)
from calcpipe.models.unet import UNetConfig


@dataclass(frozen=True)
class TrainConfig:
    unet: UNetConfig = field(default_factory=lambda: UNetConfig(base=8, context=1))
    model_spacing_mm: float = 1.0
    patch: int = 160
    batch: int = 32
    max_steps: int = 4000
    max_minutes: float = 60.0
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    #: background, LM, LAD, LCX, RCA, TAC, AVC, MAC
    class_weights: tuple[float, ...] = (1.0, 10.0, 10.0, 10.0, 10.0, 4.0, 4.0, 4.0)
    dice_weight: float = 1.0
    #: Cross-entropy weight of calcium pixels in small lesions, up to this factor:
    #: sqrt(9 / calcium pixels in the 5 x 5 neighbourhood), clamped to [1, factor]
    #: (1: off). For the small, faint lesions the network misses (see the model card).
    small_lesion_weight: float = 1.0
    calcium_patch_share: float = 0.7
    aortic_sampling_weight: float = 0.3  # undersampling of aortic-only calcium
    eval_every: int = 200
    patience: int = 6
    seed: int = 0


@dataclass(frozen=True, eq=False)
class PreparedStudy:
    """A study on the model grid: inputs (Z, H, W) float16 and targets (Z, H, W) uint8."""

    key: str
    x: npt.NDArray[np.float16]
    y: npt.NDArray[np.uint8]


def prepare_study(key: str, hu: npt.NDArray[np.integer], labels: npt.NDArray[np.integer],
                  spacing_mm: tuple[float, float, float], config: TrainConfig) -> PreparedStudy:
    x, grid = to_model_grid(hu, spacing_mm, model_spacing_mm=config.model_spacing_mm,
                            stride=2**config.unet.depth)
    y = labels_to_model_grid(labels, grid)
    return PreparedStudy(key, x.astype(np.float16), y.astype(np.uint8))


def split_patients(patient_of: Mapping[str, str] | Sequence[str], seed: int,
                   ) -> tuple[list[str], list[str], list[str]]:
    """Study keys split 60/20/20 by patient (``patient_of``: each study's patient; a plain
    sequence of keys: each study its own patient), deterministic for a seed: all studies
    of a patient (follow-up scans) fall in one part, so that none is tested on a patient
    it was trained on."""
    if not isinstance(patient_of, Mapping):
        patient_of = {key: key for key in patient_of}
    order = sorted(set(patient_of.values()))
    np.random.default_rng(seed).shuffle(order)
    n_train, n_val = round(0.6 * len(order)), round(0.2 * len(order))
    part = {patient: (0 if i < n_train else 1 if i < n_train + n_val else 2)
            for i, patient in enumerate(order)}
    split: tuple[list[str], list[str], list[str]] = ([], [], [])
    for key in sorted(patient_of):
        split[part[patient_of[key]]].append(key)
    return split


def data_hash(studies: Sequence[PreparedStudy]) -> str:
    """Hash of the training data's content (keys, inputs and targets on the model grid):
    the same keys rendered by another simulator or read from edited files hash apart."""
    digest = hashlib.sha256()
    for study in sorted(studies, key=lambda s: s.key):
        digest.update(study.key.encode())
        digest.update(np.ascontiguousarray(study.x).tobytes())
        digest.update(np.ascontiguousarray(study.y).tobytes())
    return digest.hexdigest()[:16]


class _Bank:
    """All training slices padded to one size, on the training device."""

    def __init__(self, studies: Sequence[PreparedStudy], config: TrainConfig, device: Any):
        import torch

        h = max(s.x.shape[1] for s in studies)
        w = max(s.x.shape[2] for s in studies)
        h, w = max(h, config.patch), max(w, config.patch)
        total = sum(s.x.shape[0] for s in studies)
        air = HU_CLIP[0] / HU_SCALE
        x = np.full((total, h, w), air, dtype=np.float16)
        y = np.zeros((total, h, w), dtype=np.uint8)
        first, last = np.zeros(total, np.int64), np.zeros(total, np.int64)  # of each study
        start = 0
        for s in studies:
            z = s.x.shape[0]
            x[start : start + z, : s.x.shape[1], : s.x.shape[2]] = s.x
            y[start : start + z, : s.y.shape[1], : s.y.shape[2]] = s.y
            first[start : start + z], last[start : start + z] = start, start + z - 1
            start += z
        self.x = torch.from_numpy(x).to(device)
        self.y = torch.from_numpy(y).to(device)
        self.first = torch.from_numpy(first).to(device)
        self.last = torch.from_numpy(last).to(device)
        sl, rr, cc = np.nonzero(y)
        weights = np.where(y[sl, rr, cc] <= 4, 1.0, config.aortic_sampling_weight)
        self.calcium = torch.from_numpy(np.stack([sl, rr, cc], 1)).to(device)
        self.calcium_p = torch.from_numpy(weights / max(weights.sum(), 1e-9)).float().to(device)
        self.shape = (total, h, w)
        self.device = device

    def batch(self, n: int, config: TrainConfig, generator: Any) -> tuple[Any, Any]:
        import torch

        total, h, w = self.shape
        p = config.patch
        dev = self.device
        centred = torch.rand(n, generator=generator, device=dev) < config.calcium_patch_share
        slices = torch.randint(0, total, (n,), generator=generator, device=dev)
        rows = torch.randint(0, h - p + 1, (n,), generator=generator, device=dev)
        cols = torch.randint(0, w - p + 1, (n,), generator=generator, device=dev)
        if len(self.calcium) and centred.any():
            pick = torch.multinomial(self.calcium_p, int(centred.sum()), replacement=True,
                                     generator=generator)
            chosen = self.calcium[pick]
            jitter = torch.randint(-p // 3, p // 3 + 1, (len(pick), 2), generator=generator,
                                   device=dev)
            slices[centred] = chosen[:, 0]
            rows[centred] = (chosen[:, 1] - p // 2 + jitter[:, 0]).clamp(0, h - p)
            cols[centred] = (chosen[:, 2] - p // 2 + jitter[:, 1]).clamp(0, w - p)
        ar = torch.arange(p, device=dev)
        r_idx = (rows[:, None] + ar[None, :])[:, :, None]
        c_idx = (cols[:, None] + ar[None, :])[:, None, :]
        # each slice with ``context`` neighbours on each side, clamped at its study's ends
        # (as preprocess.context_index does at inference)
        channels = [torch.minimum(torch.maximum(slices + d, self.first[slices]),
                                  self.last[slices])
                    for d in range(-config.unet.context, config.unet.context + 1)]
        x = torch.stack([self.x[s[:, None, None], r_idx, c_idx] for s in channels], dim=1)
        y = self.y[slices[:, None, None], r_idx, c_idx]
        return x.float(), y.long()


#: Probabilities of the CT defects :func:`augment` adds to a batch.
P_BLUR, P_MOTION, P_STREAKS, P_ELASTIC = 0.3, 0.2, 0.2, 0.3


def augment(x: Any, y: Any, generator: Any, *, p_blur: float = P_BLUR,
            p_motion: float = P_MOTION, p_streaks: float = P_STREAKS,
            p_elastic: float = P_ELASTIC) -> tuple[Any, Any]:
    """CT-like defects on a batch (N, C, H, W) and its labels (N, H, W): HU gain and
    offset, noise, blur, motion (a smear along a random direction, as a beating heart
    leaves), streaks (bright and dark rays from a dense point, as from metal or beam
    hardening), small rotation, scale and translation, and a smooth elastic deformation.
    Never a flip: left-right would put the RCA on the wrong side."""
    import torch
    import torch.nn.functional as F

    n = x.shape[0]
    dev = x.device

    def uniform(low: float, high: float, shape: tuple[int, ...] = (n, 1, 1, 1)) -> Any:
        return low + (high - low) * torch.rand(shape, generator=generator, device=dev)

    def happens(p: float) -> bool:
        return bool(torch.rand(1, generator=generator, device=dev).item() < p)

    x = x * uniform(0.92, 1.08) + uniform(-0.06, 0.06)  # HU gain and offset
    x = x + torch.randn(x.shape, generator=generator, device=dev) * uniform(0.0, 0.05)
    if happens(p_motion):
        x = _motion(x, float(uniform(0, math.pi, (1,)).item()),
                    int(uniform(2, 6, (1,)).item()))
    if happens(p_streaks):
        x = x + _streaks(x.shape, generator, dev)
    if happens(p_blur):
        sigma = float(uniform(0.5, 1.0, (1,)).item())
        k = torch.arange(-2, 3, device=dev, dtype=x.dtype)
        kernel = torch.exp(-(k**2) / (2 * sigma**2))
        kernel = kernel / kernel.sum()
        c = x.shape[1]
        x = F.conv2d(x, kernel.view(1, 1, 1, 5).repeat(c, 1, 1, 1), padding=(0, 2), groups=c)
        x = F.conv2d(x, kernel.view(1, 1, 5, 1).repeat(c, 1, 1, 1), padding=(2, 0), groups=c)
    angle = uniform(-math.pi / 18, math.pi / 18, (n,))
    scale = uniform(0.9, 1.1, (n,))
    shift = uniform(-0.08, 0.08, (n, 2))
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1),
                         torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    if happens(p_elastic):
        grid = grid + _elastic(x.shape, generator, dev)
    air = HU_CLIP[0] / HU_SCALE
    x = F.grid_sample(x - air, grid, mode="bilinear", align_corners=False) + air
    y = F.grid_sample(y[:, None].float(), grid, mode="nearest", align_corners=False)
    return x, y[:, 0].long()


def _motion(x: Any, angle: float, length: int) -> Any:
    """Average of ``length`` copies shifted one pixel at a time along ``angle``."""
    import torch

    dy, dx = math.sin(angle), math.cos(angle)
    copies = [torch.roll(x, shifts=(round(k * dy), round(k * dx)), dims=(2, 3))
              for k in range(length)]
    return torch.stack(copies).mean(dim=0)


def _streaks(shape: Any, generator: Any, device: Any) -> Any:
    """Rays of alternating sign through a random point, fading with distance (transformed
    HU units: 0.1 is 50 HU)."""
    import torch

    n, _, h, w = shape
    yy = torch.arange(h, device=device, dtype=torch.float32)[:, None]
    xx = torch.arange(w, device=device, dtype=torch.float32)[None, :]
    out = torch.zeros((n, 1, h, w), device=device)
    for i in range(n):
        cy, cx, phase, rays, amplitude = torch.rand(5, generator=generator, device=device)
        theta = torch.atan2(yy - cy * h, xx - cx * w)
        radius = torch.hypot(yy - cy * h, xx - cx * w)
        pattern = torch.cos(theta * int(4 + 8 * rays) + 2 * math.pi * phase)
        out[i, 0] = (0.05 + 0.15 * amplitude) * pattern * torch.exp(-radius / (0.5 * max(h, w)))
    return out


def _elastic(shape: Any, generator: Any, device: Any) -> Any:
    """A smooth random displacement field in grid units (N, H, W, 2): coarse noise,
    upsampled, at most about 2 % of the patch."""
    import torch
    import torch.nn.functional as F

    n, _, h, w = shape
    coarse = torch.randn((n, 2, 5, 5), generator=generator, device=device) * 0.02
    field = F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)
    return field.permute(0, 2, 3, 1)


def loss_fn(logits: Any, y: Any, class_weights: Any, dice_weight: float,
            small_lesion_weight: float = 1.0) -> Any:
    import torch
    import torch.nn.functional as F

    if small_lesion_weight > 1.0:
        calcium = (y > 0).float()[:, None]
        crowd = F.avg_pool2d(calcium, 5, stride=1, padding=2, count_include_pad=True) * 25
        boost = torch.sqrt(9.0 / crowd.clamp(min=1.0)).clamp(1.0, small_lesion_weight)[:, 0]
        pixel = class_weights[y] * torch.where(y > 0, boost, torch.ones_like(boost))
        ce = (F.cross_entropy(logits, y, reduction="none") * pixel).sum() / pixel.sum()
    else:
        ce = F.cross_entropy(logits, y, weight=class_weights)
    probs = torch.softmax(logits, dim=1)
    one_hot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).float()
    dims = (0, 2, 3)
    intersection = (probs * one_hot).sum(dims)
    denominator = probs.sum(dims) + one_hot.sum(dims)
    present = one_hot.sum(dims)[1:] > 0
    dice = (2 * intersection[1:] + 1.0) / (denominator[1:] + 1.0)
    soft_dice = 1 - dice[present].mean() if present.any() else logits.sum() * 0
    return ce + dice_weight * soft_dice


def validation_dice(model: Any, studies: Sequence[PreparedStudy], config: TrainConfig,
                    device: Any) -> float:
    """Median per-patient coronary Dice on the model grid (prediction kept only where the
    transformed HU reaches 130 HU, like the threshold at inference)."""
    import torch

    from calcpipe.metrics import dice_per_class, median_iqr
    from calcpipe.models.preprocess import context_stack

    values = []
    model.eval()
    with torch.inference_mode():
        for s in studies:
            stack = context_stack(s.x.astype(np.float32), config.unet.context)
            preds = []
            for i in range(0, len(stack), 16):
                batch = torch.from_numpy(stack[i : i + 16]).to(device)
                preds.append(model(batch).argmax(1).cpu().numpy())
            pred = np.concatenate(preds).astype(np.uint8)
            pred[s.x.astype(np.float32) * HU_SCALE < 130] = 0
            values.append(dice_per_class(s.y, pred)["coronary"])
    model.train()
    median = median_iqr(values)[0]
    return 0.0 if math.isnan(median) else median


def train(train_studies: Sequence[PreparedStudy], val_studies: Sequence[PreparedStudy],
          config: TrainConfig, out: str | Path, *, description: dict[str, Any],
          device: str = "cpu", resume: bool = False, init_state: dict[str, Any] | None = None,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train, keep the best validation checkpoint at ``out``; return its metrics.
    ``init_state`` (a checkpoint's state dict) starts from trained weights: fine-tuning."""
    import torch

    from calcpipe.models.unet import UNet

    torch.manual_seed(config.seed)
    dev = torch.device(device)
    generator = torch.Generator(device=dev)
    generator.manual_seed(config.seed)
    model = UNet(config.unet).to(dev)
    if init_state is not None:
        model.load_state_dict(init_state)
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    # at least a few warm-up steps; OneCycleLR needs its warm-up to end after step 0 and
    # before the last step (max_steps 2 divided by zero), so very short runs get 3 steps
    total_steps = max(config.max_steps, 3)
    warmup = min(0.5, max(0.1, 3 / total_steps))
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, config.learning_rate, total_steps=total_steps, pct_start=warmup)
    resume_path = Path(out).with_suffix(".resume.pt")
    step, best, stale = 0, -1.0, 0
    history: list[dict[str, Any]] = []
    if resume and resume_path.is_file():
        state = torch.load(resume_path, map_location=dev, weights_only=True)
        model.load_state_dict(state["model"])
        optimiser.load_state_dict(state["optimiser"])
        schedule.load_state_dict(state["schedule"])
        step, best, stale = state["step"], state["best"], state["stale"]
        # the batches and augmentations go on where they stopped, the history with them:
        # a resumed run ends as the uninterrupted one would
        generator.set_state(state["generator"].cpu())  # a generator's state lives on the CPU
        history = json.loads(state["history"])
        log(f"resumed at step {step} (best validation Dice {best:.4f})")
    bank = _Bank(train_studies, config, dev)
    weights = torch.tensor(config.class_weights, device=dev)
    started = time.monotonic()
    model.train()
    while step < config.max_steps:
        x, y = bank.batch(config.batch, config, generator)
        x, y = augment(x, y, generator)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
            logits = model(x)
        loss = loss_fn(logits.float(), y, weights, config.dice_weight,
                       config.small_lesion_weight)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        step += 1
        out_of_time = (time.monotonic() - started) / 60 > config.max_minutes
        if step % config.eval_every == 0 or step == config.max_steps or out_of_time:
            dice = validation_dice(model, val_studies, config, dev)
            history.append({"step": step, "loss": float(loss.detach()), "val_coronary_dice": dice})
            log(f"step {step} loss {float(loss.detach()):.4f} validation coronary Dice {dice:.4f}")
            if dice > best:
                best, stale = dice, 0
                _save(out, model, config, description, step, best, history)
            else:
                stale += 1
            torch.save({"model": model.state_dict(), "optimiser": optimiser.state_dict(),
                        "schedule": schedule.state_dict(), "step": step, "best": best,
                        "stale": stale, "generator": generator.get_state(),
                        "history": json.dumps(history)}, resume_path)
            if stale >= config.patience or out_of_time:
                log("early stop" if stale >= config.patience else "time limit reached")
                break
    return {"steps": step, "best_val_coronary_dice": best, "history": history,
            "minutes": (time.monotonic() - started) / 60}


def _save(out: str | Path, model: Any, config: TrainConfig, description: dict[str, Any],
          step: int, best: float, history: list[dict[str, Any]]) -> None:
    from calcpipe.models.checkpoint import save_checkpoint
    from calcpipe.models.segment import conventions

    state = {k: v.detach().cpu().float() if v.is_floating_point() else v.detach().cpu()
             for k, v in model.state_dict().items()}
    save_checkpoint(out, {
        "state_dict": state, "config": config.unet.to_dict(),
        **conventions(),
        "spacing_mm": config.model_spacing_mm,
        "training": {**description, "config": json.dumps(asdict(config), default=str),
                     "step": step},
        "metrics": {"val_coronary_dice": best, "history": json.dumps(history)},
        "code_version": __version__,
    })


def load_cohort(cohort: str | Path, config: TrainConfig, log: Callable[[str], None] = print,
                ) -> tuple[list[tuple[str, Any, Any, Any, float]], dict[str, str]]:
    """Studies of a cohort folder with truth label maps (``_truth/labels/<key>.nii.gz``):
    (key, hu, labels, spacing, kVp) for each, the series chosen by the selection rules;
    and each study's patient (its PatientID, or the study key where it has none)."""
    from calcpipe.dicom import load_volume
    from calcpipe.dicom.metadata import patient_id
    from calcpipe.ingest import discover
    from calcpipe.synthetic.truth import read_labels

    root = Path(cohort)
    truth_dir = root / "_truth" / "labels"
    studies, patients = [], {}
    for choice in discover(root).studies:  # one scan: not one per study
        key = choice.study.study_key
        truth_file = truth_dir / f"{key}.nii.gz"
        if not truth_file.is_file():
            log(f"skipping study {key}: no truth label map")
            continue
        if choice.chosen is None:
            log(f"skipping study {key}: no series passes the selection rules")
            continue
        volume = load_volume(list(choice.chosen.urls))
        labels, _ = read_labels(truth_file)
        if labels.shape != volume.hu.shape:
            raise ValueError(f"truth {truth_file} has shape {labels.shape}, the chosen series "
                             f"{volume.hu.shape}")
        studies.append((key, volume.hu, labels, volume.spacing_mm, volume.scoring_kvp))
        patients[key] = patient_id(volume.source_files[0]) or f"study:{key}"
    return studies, patients


def train_from_cohort(cohort: str | Path, out: str | Path, config: TrainConfig, *,
                      device: str = "cpu", resume: bool = False,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Split a labelled cohort by patient (60/20/20), train, and measure the best checkpoint
    on the test part. Returns the training result with the test summary."""
    split = split_cohort(cohort, config, log)
    result = train(split.train, split.validation, config, out, description=split.description,
                   device=device, resume=resume, log=log)
    return {**result, "test": evaluate_test(out, split.test, device)}


def train_config(*, steps: int, minutes: float, base: int, depth: int, context: int,
                 spacing: float, patch: int, batch: int, seed: int) -> TrainConfig:
    """The training configuration of ``calcpipe train``'s options (CLI and flow)."""
    from calcpipe.models.unet import UNetConfig

    return TrainConfig(unet=UNetConfig(base=base, depth=depth, context=context),
                       model_spacing_mm=spacing, patch=patch, batch=batch, max_steps=steps,
                       max_minutes=minutes, seed=seed, eval_every=max(1, min(200, steps)))


@dataclass
class CohortSplit:
    """A labelled cohort split by patient: prepared training and validation studies, raw
    test studies (key, hu, labels, spacing, kVp), and the checkpoint's data description."""

    train: list[PreparedStudy]
    validation: list[PreparedStudy]
    test: list[tuple[str, Any, Any, Any, float]]
    description: dict[str, Any]


def split_cohort(cohort: str | Path, config: TrainConfig,
                 log: Callable[[str], None] = print) -> CohortSplit:
    """Load a labelled cohort and split it 60/20/20 by patient."""
    studies, patients = load_cohort(cohort, config, log)
    n_patients = len(set(patients.values()))
    if n_patients < 3:
        raise ValueError(f"{cohort} holds labelled studies of {n_patients} patients; at "
                         "least 3 needed")
    by_key = {s[0]: s for s in studies}
    train_keys, val_keys, test_keys = split_patients(patients, config.seed)

    def prepared(keys: list[str]) -> list[PreparedStudy]:
        return [prepare_study(k, by_key[k][1], by_key[k][2], by_key[k][3], config)
                for k in keys]

    train_set, val_set = prepared(train_keys), prepared(val_keys)
    description = {"data": f"cohort {Path(cohort).name}: {len(train_keys)} train, "
                           f"{len(val_keys)} validation, {len(test_keys)} test studies "
                           f"of {n_patients} patients, split by patient",
                   "data_hash": data_hash(train_set + val_set)}
    return CohortSplit(train_set, val_set, [by_key[k] for k in test_keys], description)


def evaluate_test(checkpoint: str | Path, test: list[tuple[str, Any, Any, Any, float]],
                  device: str = "cpu") -> dict[str, Any]:
    """Accuracy summary of a checkpoint on the held-out test studies."""
    from calcpipe.models.accuracy import evaluate
    from calcpipe.models.checkpoint import load_checkpoint
    from calcpipe.models.segment import UNetSegmenter

    segmenter = UNetSegmenter(load_checkpoint(checkpoint), device=device)
    return evaluate(segmenter, [(hu, labels, spacing, kvp)
                                for _, hu, labels, spacing, kvp in test]).summary()
