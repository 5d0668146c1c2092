"""The U-Net, pre-processing, segmenters, checkpoints and a training smoke run."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pydicom
import pytest
import torch

from calcpipe.models import checkpoint as ckpt
from calcpipe.models.preprocess import (
    body_box,
    context_stack,
    hu_transform,
    labels_to_model_grid,
    to_model_grid,
)
from calcpipe.models.segment import ThresholdSegmenter, UNetSegmenter
from calcpipe.models.train import (
    TrainConfig,
    data_hash,
    prepare_study,
    split_patients,
    train,
)
from calcpipe.models.unet import UNet, UNetConfig
from calcpipe.synthetic import render_study, sample_spec


def test_unet_shapes_and_paper_configuration():
    paper = UNet(UNetConfig())
    assert paper.config.base == 16 and paper.config.depth == 4
    assert paper(torch.zeros(2, 1, 64, 48)).shape == (2, 8, 64, 48)
    context = UNet(UNetConfig(base=4, context=2, convs_per_block=2))
    assert context(torch.zeros(1, 5, 32, 32)).shape == (1, 8, 32, 32)
    first = paper.encoders[0][0].weight.detach()
    bound = np.sqrt(6 / (first.shape[1] * 9))  # He uniform: U(-b, b), b = sqrt(6 / fan_in)
    assert float(first.abs().max()) <= bound and float(first.std()) > bound / 4


def test_folding_batch_norm_keeps_the_logits_and_drops_the_norm_layers():
    from calcpipe.models.unet import fold_batch_norm

    torch.manual_seed(0)
    model = UNet(UNetConfig(base=4, context=1, convs_per_block=2))
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        # trained statistics and affine terms, not the identity a fresh layer has
        norm.running_mean.uniform_(-1, 1)
        norm.running_var.uniform_(0.5, 2)
        norm.weight.data.uniform_(0.5, 2)
        norm.bias.data.uniform_(-1, 1)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batch_norm(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        before = model.eval()(x)
        after = fold_batch_norm(model)(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


def test_inference_preparation_splits_the_skip_convolutions_and_keeps_the_logits():
    from calcpipe.models.unet import SkipConv, prepare_for_inference

    torch.manual_seed(1)
    model = UNet(UNetConfig(base=4, context=1, convs_per_block=2)).eval()
    for norm in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        norm.running_mean.uniform_(-1, 1)  # folded into the split convolutions' bias
        norm.bias.data.uniform_(-1, 1)
    x = torch.randn(2, 3, 48, 32)
    with torch.inference_mode():
        before = model(x)
        prepare_for_inference(model)
        after = model(x)
        channels_last = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last))
    assert all(isinstance(decoder[0], SkipConv) for decoder in model.decoders)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(channels_last, before, rtol=1e-4, atol=1e-4)


def test_hu_transform_is_fixed_per_voxel():
    a = np.array([[-2000, 0, 130, 3000]])
    b = np.array([[-2000, 0, 130, 0]])
    np.testing.assert_array_equal(hu_transform(a)[0, :3], hu_transform(b)[0, :3])
    np.testing.assert_allclose(hu_transform(a)[0], [-2.0, 0.0, 0.26, 3.0])


def test_body_crop_never_cuts_calcium():
    for index in range(3):
        rendered = render_study(sample_spec(21, index, matrix=128))
        r0, r1, c0, c1 = body_box(rendered.hu, rendered.spacing_mm[1:])
        _z, r, c = np.nonzero(rendered.labels)
        assert np.all((r >= r0) & (r < r1) & (c >= c0) & (c < c1))
    # calcium at the very edge of the body, next to the skin, stays inside the crop too
    hu = np.full((3, 64, 64), -1000, np.int16)
    hu[:, 10:50, 12:52] = 40
    hu[1, 10, 12] = 600
    r0, r1, c0, c1 = body_box(hu, (1.0, 1.0))
    assert r0 <= 10 < r1 and c0 <= 12 < c1


def test_model_grid_targets_keep_every_calcium_spot():
    rendered = render_study(sample_spec(22, 1, matrix=256))
    x, grid = to_model_grid(rendered.hu, rendered.spacing_mm, model_spacing_mm=1.0, stride=16)
    assert x.shape[1] % 16 == 0 and x.shape[2] % 16 == 0
    target = labels_to_model_grid(rendered.labels, grid)
    for k in np.flatnonzero(rendered.labels.any(axis=(1, 2))):
        assert set(np.unique(rendered.labels[k])) == set(np.unique(target[k]))
    assert context_stack(x, 1).shape == (x.shape[0], 3, *x.shape[1:])


def test_threshold_segmenter_labels_only_calcium():
    hu = np.array([[[100, 130, 145, 150]]], dtype=np.int16)
    roi = np.full(hu.shape, 2, dtype=np.uint8)
    assert ThresholdSegmenter(roi).segment(hu, (3, 1, 1)).labels.tolist() == [[[0, 2, 2, 2]]]
    assert ThresholdSegmenter(roi).segment(hu, (3, 1, 1), kvp=100).labels.tolist() == [
        [[0, 0, 0, 2]]]


def test_shipped_model_loads_verified_and_segments_deterministically():
    checkpoint = ckpt.load_checkpoint("default")
    payload = checkpoint.payload
    assert payload["classes"]["2"] == "LAD" and payload["spacing_mm"] == 1.0
    assert "synthetic" in payload["training"]["data"]
    assert ckpt.default_path().stat().st_size < 20 * 2**20
    segmenter = UNetSegmenter(checkpoint, threads=2)
    rendered = render_study(sample_spec(31, 3, matrix=128))
    first = segmenter.segment(rendered.hu, rendered.spacing_mm)
    again = segmenter.segment(rendered.hu, rendered.spacing_mm)
    np.testing.assert_array_equal(first.labels, again.labels)
    assert np.all(rendered.hu[first.labels > 0] >= 130)
    assert first.confidence is None or 0 < first.confidence <= 1
    assert first.model_checksum == checkpoint.sha256


def test_precision_auto_is_bf16_only_where_the_device_computes_it(monkeypatch):
    from calcpipe.models import segment
    from calcpipe.pipeline import ScoreParams

    assert segment.resolve_precision("fp32", "cpu") == "fp32"
    assert segment.resolve_precision("bf16", "cpu") == "bf16"
    for avx512_bf16, amx, expected in ((True, False, "bf16"), (False, True, "bf16"),
                                       (False, False, "fp32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda v=avx512_bf16: v)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda v=amx: v)
        assert segment.resolve_precision("auto", "cpu") == expected
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert segment.resolve_precision("auto", "cuda") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert segment.resolve_precision("auto", "cuda") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        segment.resolve_precision("fp16", "cpu")
    segmenter = UNetSegmenter.load("default", threads=2)  # auto: fp32 on this mocked CPU
    assert segmenter.precision == "fp32"
    assert ScoreParams(source="in", out="out").precision == "auto"
    with pytest.raises(ValueError, match="precision"):
        ScoreParams(source="in", out="out", precision="fp16")


def test_bf16_labels_agree_with_fp32_on_a_synthetic_study():
    """bf16 on the CPU (autocast) moves logits by bf16 rounding: the labels of a synthetic
    study stay almost all the same (the held-out cohort's accuracy: the model card)."""
    rendered = render_study(sample_spec(31, 7, matrix=128))
    labels = {p: UNetSegmenter.load("default", threads=2, precision=p).segment(
        rendered.hu, rendered.spacing_mm) for p in ("fp32", "bf16")}
    assert labels["bf16"].precision == "bf16" and labels["fp32"].precision == "fp32"
    calcium = (labels["fp32"].labels > 0) | (labels["bf16"].labels > 0)
    assert calcium.sum() > 100
    same = labels["fp32"].labels[calcium] == labels["bf16"].labels[calcium]
    assert same.mean() >= 0.95


def test_damaged_shipped_model_is_refused(tmp_path, monkeypatch):
    damaged = tmp_path / "default.pt"
    shutil.copy(ckpt.default_path(), damaged)
    shutil.copy(ckpt.default_path().with_suffix(".sha256"), tmp_path / "default.sha256")
    with open(damaged, "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00\x01\x02\x03")
    monkeypatch.setattr(ckpt, "default_path", lambda: damaged)
    with pytest.raises(ValueError, match="checksum"):
        ckpt.load_checkpoint("default")


@pytest.mark.parametrize("changed", [
    {"hu_transform": {"clip": [-1024.0, 3071.0], "scale": 1000.0}},
    {"classes": {"1": "LAD", "2": "LM", "3": "LCX", "4": "RCA", "5": "TAC", "6": "AVC",
                 "7": "MAC"}}])
def test_a_checkpoint_of_other_conventions_is_refused(tmp_path, changed):
    """Inference applies one HU transform and one label map: weights trained under others
    would give wrong labels without a sign."""
    from calcpipe.models.segment import UNetSegmenter

    payload = {**ckpt.load_checkpoint("default").payload, **changed}
    ckpt.save_checkpoint(tmp_path / "other.pt", payload)
    with pytest.raises(ValueError, match="cannot be used as it is"):
        UNetSegmenter.load(str(tmp_path / "other.pt"))


def test_a_volume_smaller_than_a_model_pixel_or_without_slices_is_refused_clearly():
    from calcpipe.models.segment import UNetSegmenter

    segmenter = UNetSegmenter.load("default", precision="fp32")
    hu = np.full((2, 9, 9), 40, np.int16)
    with pytest.raises(ValueError, match="smaller than one 1 mm pixel"):
        segmenter.segment(hu, (3.0, 0.1, 0.1))
    with pytest.raises(ValueError, match="at least one voxel"):
        segmenter.segment(hu[:0], (3.0, 0.7, 0.7))
    assert segmenter.segment(hu, (3.0, 0.2, 0.2)).labels.shape == hu.shape  # 1.8 mm: fine


def test_patient_split_is_60_20_20_and_disjoint():
    keys = [f"p{i}" for i in range(10)]
    train_keys, val_keys, test_keys = split_patients(keys, seed=1)
    assert (len(train_keys), len(val_keys), len(test_keys)) == (6, 2, 2)
    assert sorted(train_keys + val_keys + test_keys) == sorted(keys)
    assert split_patients(keys, seed=1) == (train_keys, val_keys, test_keys)


def test_the_studies_of_one_patient_fall_in_one_part():
    """Follow-up scans share a patient: none may be tested on a patient trained on."""
    patient_of = {f"s{i}": f"p{i // 3}" for i in range(30)}  # 10 patients, 3 studies each
    for seed in range(5):
        parts = split_patients(patient_of, seed=seed)
        patients = [{patient_of[k] for k in part} for part in parts]
        assert [len(p) for p in patients] == [6, 2, 2]
        assert not (patients[0] & patients[1] or patients[0] & patients[2]
                    or patients[1] & patients[2])
        assert sorted(k for part in parts for k in part) == sorted(patient_of)


def test_a_cohort_is_split_by_its_patient_ids(tmp_path):
    from calcpipe.models.train import TrainConfig, load_cohort
    from calcpipe.synthetic import write_cohort

    cohort = write_cohort(tmp_path / "cohort", studies=4, seed=44, matrix=32, workers=1)
    folders = sorted(p for p in cohort.iterdir() if p.name.startswith("study_"))
    for folder in folders[:3]:  # three visits of one patient, one other patient
        for path in folder.rglob("*.dcm"):
            ds = pydicom.dcmread(path)
            ds.PatientID = "SAME-PATIENT"
            ds.save_as(path)
    studies, patients = load_cohort(cohort, TrainConfig(), log=lambda _: None)
    assert len(studies) == 4 and len(set(patients.values())) == 2
    for seed in range(4):
        parts = split_patients(patients, seed=seed)
        assert any(set(part) >= {k for k, p in patients.items() if p == "SAME-PATIENT"}
                   for part in parts)


def test_training_smoke_run_writes_an_auditable_checkpoint(tmp_path):
    config = TrainConfig(unet=UNetConfig(base=4, depth=3, context=1), model_spacing_mm=2.0,
                         patch=64, batch=4, max_steps=6, eval_every=3)
    studies = [render_study(sample_spec(41, i, matrix=96)) for i in range(3)]
    prepared = [prepare_study(str(i), r.hu, r.labels, r.spacing_mm, config)
                for i, r in enumerate(studies)]
    result = train(prepared[:2], prepared[2:], config, tmp_path / "m.pt",
                   description={"data": "smoke"}, log=lambda _: None)
    assert result["steps"] == 6 and len(result["history"]) == 2
    loaded = ckpt.load_checkpoint(tmp_path / "m.pt")
    assert loaded.payload["config"]["base"] == 4
    assert loaded.payload["hu_transform"] == {"clip": [-1000.0, 1500.0], "scale": 500.0}
    assert loaded.payload["training"]["data"] == "smoke"
    resumed = train(prepared[:2], prepared[2:], config, tmp_path / "m.pt",
                    description={"data": "smoke"}, resume=True, log=lambda _: None)
    assert resumed["steps"] == 6  # already finished: nothing more to do


def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path):
    """The batches, augmentations and history go on where they stopped."""
    config = TrainConfig(unet=UNetConfig(base=4, depth=2, context=1), model_spacing_mm=2.0,
                         patch=32, batch=2, max_steps=6, eval_every=2, patience=100, seed=3)
    prepared = [prepare_study(str(i), r.hu, r.labels, r.spacing_mm, config) for i, r in
                enumerate(render_study(sample_spec(41, i, matrix=64)) for i in range(3))]
    whole = train(prepared[:2], prepared[2:], config, tmp_path / "whole.pt",
                  description={}, log=lambda _: None)

    class Stop(Exception):
        pass

    def stop_at_step_4(message: str) -> None:  # after step 2's resume point was saved
        if message.startswith("step 4 "):
            raise Stop

    with pytest.raises(Stop):
        train(prepared[:2], prepared[2:], config, tmp_path / "cut.pt", description={},
              log=stop_at_step_4)
    resumed = train(prepared[:2], prepared[2:], config, tmp_path / "cut.pt", description={},
                    resume=True, log=lambda _: None)
    assert resumed["history"] == whole["history"] and len(whole["history"]) == 3
    ends = [torch.load(tmp_path / f"{name}.resume.pt", weights_only=True)["model"]
            for name in ("whole", "cut")]
    assert all(torch.equal(ends[0][k], ends[1][k]) for k in ends[0])


@pytest.mark.parametrize(("context", "steps"), [(2, 3), (0, 2), (1, 1)])
def test_any_context_and_any_number_of_steps_train(tmp_path, context, steps):
    """Two neighbours a side give five input channels; two steps once divided by zero."""
    config = TrainConfig(unet=UNetConfig(base=4, depth=2, context=context),
                         model_spacing_mm=2.0, patch=32, batch=2, max_steps=steps,
                         eval_every=steps)
    prepared = [prepare_study(str(i), r.hu, r.labels, r.spacing_mm, config) for i, r in
                enumerate(render_study(sample_spec(41, i, matrix=64)) for i in range(2))]
    result = train(prepared[:1], prepared[1:], config, tmp_path / "m.pt", description={},
                   log=lambda _: None)
    assert result["steps"] == steps
    assert ckpt.load_checkpoint(tmp_path / "m.pt").payload["config"]["context"] == context


def test_fine_tuning_starts_from_the_given_weights_and_the_data_hash_follows_content(
        tmp_path):
    config = TrainConfig(unet=UNetConfig(base=4, depth=3, context=1), model_spacing_mm=2.0,
                         patch=64, batch=2, max_steps=4, eval_every=4, learning_rate=1e-12)
    studies = [render_study(sample_spec(41, i, matrix=96)) for i in range(2)]
    prepared = [prepare_study(str(i), r.hu, r.labels, r.spacing_mm, config)
                for i, r in enumerate(studies)]
    start = {k: torch.full_like(v, 0.01) if v.is_floating_point() else v
             for k, v in UNet(config.unet).state_dict().items()}
    train(prepared[:1], prepared[1:], config, tmp_path / "ft.pt", description={"data": "ft"},
          init_state=start, log=lambda _: None)
    weights = ckpt.load_checkpoint(tmp_path / "ft.pt").payload["state_dict"]
    # four steps at a negligible learning rate: the weights are still the starting ones
    conv = next(k for k, v in start.items() if v.is_floating_point() and v.dim() == 4)
    np.testing.assert_allclose(np.asarray(weights[conv]), 0.01, atol=1e-6)
    assert data_hash(prepared) == data_hash(prepared[::-1])
    edited = [prepared[0], replace(prepared[1], y=np.zeros_like(prepared[1].y))]
    assert prepared[1].y.any() and data_hash(edited) != data_hash(prepared)


def test_vectorised_label_sampling_equals_grid_sample_per_slice():
    """sample_labels reads every point of a batch in one gather; it must give what
    F.grid_sample (bilinear, border, align_corners=False) gives slice by slice, including
    points beyond the grid's edges."""
    import torch
    import torch.nn.functional as F

    from calcpipe.models.segment import sample_labels

    rng = np.random.default_rng(4)
    logits = torch.from_numpy(rng.normal(size=(3, 8, 16, 24)).astype(np.float32))
    z = rng.integers(0, 3, 500)
    rows, cols = rng.uniform(-2, 17, 500), rng.uniform(-2, 25, 500)
    label, top = sample_labels(logits, z, rows, cols)
    for k in range(3):
        sel = np.flatnonzero(z == k)
        where = torch.stack([torch.from_numpy((cols[sel] + 0.5) / 24 * 2 - 1),
                             torch.from_numpy((rows[sel] + 0.5) / 16 * 2 - 1)], -1).float()
        sampled = F.grid_sample(logits[k:k + 1], where[None, None], mode="bilinear",
                                padding_mode="border", align_corners=False)
        expected_top, expected = torch.softmax(sampled[0, :, 0], dim=0).max(dim=0)
        assert (label[sel] == expected.numpy()).all()
        calcium = label[sel] > 0  # the top probability only where it is calcium
        assert 0 < calcium.sum() < sel.size
        np.testing.assert_allclose(top[sel][calcium], expected_top.numpy()[calcium],
                                   rtol=1e-5, atol=1e-6)
        assert np.isnan(top[sel][~calcium]).all()
    # bf16 logits: only the values read are widened, the same as widening them all first
    half = logits.to(torch.bfloat16)
    for got, expected in zip(sample_labels(half, z, rows, cols),
                             sample_labels(half.float(), z, rows, cols), strict=True):
        np.testing.assert_array_equal(got, expected)


def test_regions_too_large_to_be_one_calcification_keep_no_label(monkeypatch):
    from calcpipe.models.segment import in_oversized_regions, oversized_regions

    candidates = np.zeros((4, 10, 10), dtype=bool)
    candidates[0:4, 0:5, 0:5] = True  # 100 voxels of 2 mm^3: 200 mm^3
    candidates[1, 8, 8] = candidates[2, 9, 9] = True  # 26-connected pair: 4 mm^3
    big = oversized_regions(candidates, (2.0, 1.0, 1.0), max_mm3=100.0)
    assert big.sum() == 100 and big[0:4, 0:5, 0:5].all()
    assert not oversized_regions(candidates, (2.0, 1.0, 1.0), max_mm3=200.0).any()

    # measured in a window around the voxels asked about, exactly as on the whole volume:
    # the block is too large inside the window already; the pair lies wholly inside it
    at = np.flatnonzero(candidates)
    assert (in_oversized_regions(candidates, at, (2.0, 1.0, 1.0), 100.0, margin=(1, 1, 1))
            == big.ravel()[at]).all()
    # a thin region whose part in the first window is small but which is large beyond it:
    # windows grow along it (a margin at a time) until it is too large or ends
    from scipy import ndimage

    import calcpipe.models.segment as segment

    rod = np.zeros((3, 5, 60), dtype=bool)
    rod[1, 2, :] = True  # 60 voxels of 1 mm^3
    seed = np.array([np.ravel_multi_index((1, 2, 30), rod.shape)])
    windows: list[tuple[int, ...]] = []
    monkeypatch.setattr(ndimage, "label",
                        lambda x, *a, label=ndimage.label, **k: windows.append(x.shape)
                        or label(x, *a, **k))
    assert in_oversized_regions(rod, seed, (1.0, 1.0, 1.0), 50.0, margin=(1, 1, 2))[0]
    assert not in_oversized_regions(rod, seed, (1.0, 1.0, 1.0), 70.0, margin=(1, 1, 2))[0]
    assert windows[0] == (3, 3, 5) and windows[1] == (3, 3, 9)  # the rod found + margin
    assert all(shape[2] < 60 for shape in windows[:-1])  # the whole rod only at the end
    monkeypatch.undo()
    # sparse random regions (below 26-connected percolation), asked about in the middle,
    # decided in windows alone (never by labelling the whole volume), as there exactly
    noise = np.random.default_rng(3).random((12, 80, 80)) > 0.9
    middle = np.zeros(noise.shape, dtype=bool)
    middle[5:7, 30:50, 30:50] = True
    at = np.random.default_rng(1).choice(np.flatnonzero(noise & middle), 6, replace=False)
    whole_volume, large = [], []
    monkeypatch.setattr(segment, "oversized_regions",
                        lambda *a: whole_volume.append(1) or oversized_regions(*a))
    for limit in (2.0, 5.0, 10.0, 40.0):
        truth = oversized_regions(noise, (1.0, 1.0, 1.0), limit).ravel()[at]
        assert (in_oversized_regions(noise, at, (1.0, 1.0, 1.0), limit, margin=(3, 12, 12))
                == truth).all()
        large.append(int(truth.sum()))
    assert 0 < min(large) and min(large) < 6  # some regions too large, some not
    assert not whole_volume  # (the truth above is computed by the function itself)
    # random volumes, spacings, limits and margins: the same answer as the whole volume's
    rng = np.random.default_rng(7)
    for _ in range(60):
        volume = rng.random(tuple(rng.integers(3, 30, 3))) < rng.uniform(0.05, 0.3)
        at = rng.choice(np.flatnonzero(volume), min(10, int(volume.sum())), replace=False)
        spacing = tuple(float(v) for v in rng.uniform(0.3, 3.0, 3))
        limit, margin = float(rng.uniform(1, 200)), tuple(int(m) for m in rng.integers(1, 6, 3))
        assert (in_oversized_regions(volume, at, spacing, limit, margin=margin)
                == oversized_regions(volume, spacing, limit).ravel()[at]).all()
    assert not in_oversized_regions(noise, np.zeros(0, np.intp), (1.0, 1.0, 1.0), 1.0).size
    # voxels spread over many windows: their bounding box is labelled first, and windows
    # grow from there; the same answers either way
    scattered = np.zeros((20, 120, 120), dtype=bool)
    for z, r, c in rng.integers((0, 0, 0), (19, 117, 117), (150, 3)):
        scattered[z : z + 2, r : r + 3, c : c + 3] = True
    scattered[:, 100:, :] = True  # a slab across the volume, larger than the limit
    at = np.flatnonzero(scattered)[::7]
    points = np.stack(np.unravel_index(at, scattered.shape), axis=1)
    assert segment._box_first(points, (3, 16, 16))
    assert not segment._box_first(points[:1], (3, 16, 16))
    truth = oversized_regions(scattered, (1.0, 1.0, 1.0), 500.0).ravel()[at]
    assert 0 < truth.sum() < truth.size
    for overhead in (segment.WINDOW_OVERHEAD_VOXELS, 0):  # box first, then windows only
        monkeypatch.setattr(segment, "WINDOW_OVERHEAD_VOXELS", overhead)
        assert (in_oversized_regions(scattered, at, (1.0, 1.0, 1.0), 500.0) == truth).all()

    # the shipped network: a 30 mm bone-like block (27 cm^3) near the heart gets no label
    rendered = render_study(sample_spec(2024, 0, matrix=128))
    hu = rendered.hu.copy()
    z, y, x = (s // 2 for s in hu.shape)
    rows = int(15 / rendered.spacing_mm[1])
    slices = max(1, int(15 / rendered.spacing_mm[0]))
    hu[z - slices:z + slices, y - rows:y + rows, x - rows:x + rows] = 700
    block = np.zeros(hu.shape, dtype=bool)
    block[z - slices:z + slices, y - rows:y + rows, x - rows:x + rows] = True
    labels = UNetSegmenter.load("default", threads=2).segment(hu, rendered.spacing_mm).labels
    assert not labels[block].any()


def test_lesions_are_labelled_whole_or_not_at_all_by_majority():
    """A lesion the network labelled at least half of gets every voxel labelled, each from
    its nearest labelled voxel (a lesion across two vessels keeps both); one it labelled
    less of loses its labels; lesions are 8-connected within a slice, never across."""
    from calcpipe.models.segment import LESION_MAJORITY, label_whole_lesions

    assert LESION_MAJORITY == 0.5
    candidates = np.zeros((2, 8, 12), dtype=bool)
    labels = np.zeros((2, 8, 12), dtype=np.uint8)
    candidates[0, 1, 0:6] = True  # LAD (2) at its left end, RCA (4) at its right: 4 of 6
    labels[0, 1, [0, 1]] = 2
    labels[0, 1, [4, 5]] = 4
    candidates[0, 4:6, 8:10] = True  # 1 of 4 voxels labelled: not calcium
    labels[0, 4, 8] = 3
    candidates[0, 6, 0] = candidates[0, 7, 1] = True  # diagonal neighbours: one lesion
    labels[0, 6, 0] = 1
    candidates[1, 1, 0:6] = True  # the next slice: its own lesion, left unlabelled
    label_whole_lesions(labels, candidates)
    assert labels[0, 1, 0:6].tolist() == [2, 2, 2, 4, 4, 4]
    assert not labels[0, 4:6, 8:10].any()
    assert labels[0, 6, 0] == labels[0, 7, 1] == 1
    assert not labels[1].any()
    assert not labels[~candidates].any()

    # a lesion longer than the window around its labelled voxels: the whole slice is used
    candidates = np.zeros((1, 100, 100), dtype=bool)
    labels = np.zeros((1, 100, 100), dtype=np.uint8)
    candidates[0, 50, 5:95] = True
    labels[0, 50, 5:55] = 3  # 50 of 90 voxels, all at one end
    added = label_whole_lesions(labels, candidates)
    assert (labels[0, 50, 5:95] == 3).all() and labels.sum() == 3 * 90
    assert sorted(added.tolist()) == list(range(50 * 100 + 55, 50 * 100 + 95))


def test_lesion_ends_take_the_labels_of_the_lesion_they_lie_over():
    """An unlabelled lesion in the next slice, over labelled voxels and no larger than the
    lesion it lies over, takes the labels of the nearest of them; one larger (bone under
    calcium), one not over labels, or one a slice further (no chains) stays background."""
    from calcpipe.models.segment import label_lesion_ends

    candidates = np.zeros((5, 10, 12), dtype=bool)
    labels = np.zeros((5, 10, 12), dtype=np.uint8)
    candidates[2, 2:5, 2:5] = True  # a lesion's body: LAD left, RCA right
    labels[2, 2:5, 2:4] = 2
    labels[2, 2:5, 4] = 4
    candidates[3, 3, 3:6] = True  # its end, 3 voxels, over the body
    candidates[3, 8, 8:10] = True  # a speck not over any label
    candidates[4, 3, 3:6] = True  # the end's own end: no chains
    candidates[1, 0:10, 0:6] = True  # larger than the body it lies over: bone
    before = labels.copy()
    added = label_lesion_ends(labels, candidates)
    assert labels[3, 3, 3:6].tolist() == [2, 4, 4]  # nearest labelled voxel of slice 2
    assert not labels[3, 8].any() and not labels[4].any() and not labels[1].any()
    np.testing.assert_array_equal(labels[2], before[2])
    assert sorted(added.tolist()) == np.flatnonzero(labels != before).tolist()
    # an end already holding a label is the network's decision: left as it is
    labels = before.copy()
    labels[3, 3, 3] = 7
    label_lesion_ends(labels, candidates)
    assert labels[3, 3].tolist()[3:6] == [7, 0, 0]


def test_lesion_ends_do_not_depend_on_the_window():
    """Random slices: a window around each slice's labels gives what whole slices give, and
    the labelled voxels passed in any order give what finding them gives."""
    from calcpipe.models.segment import label_lesion_ends

    rng = np.random.default_rng(3)
    candidates = rng.random((20, 100, 120)) < rng.choice([0.15, 0.45], size=(20, 1, 1))
    labels = np.zeros(candidates.shape, dtype=np.uint8)
    for z, (r, c) in enumerate(rng.integers(0, 80, size=(20, 2))):
        box = (z, slice(r, r + 20), slice(c, c + 20))
        labels[box] = np.where(candidates[box], rng.integers(1, 8, (20, 20)), 0)
    windowed, whole, given = labels.copy(), labels.copy(), labels.copy()
    added = label_lesion_ends(windowed, candidates)
    label_lesion_ends(whole, candidates, margin=1000)
    np.testing.assert_array_equal(windowed, whole)
    label_lesion_ends(given, candidates, rng.permutation(np.flatnonzero(labels)))  # as segment
    np.testing.assert_array_equal(given, whole)
    assert added.size and sorted(added.tolist()) == np.flatnonzero(windowed != labels).tolist()
    # (measured: 38 windows and 12 fallbacks to the whole slice)


def test_whole_lesion_labelling_does_not_depend_on_its_window(monkeypatch):
    """Random slices: labelling a window around the labelled voxels gives what labelling
    each whole slice gives, and the voxels it reports are exactly those it labelled."""
    import functools

    import calcpipe.models.segment as segment

    rng = np.random.default_rng(7)
    # per slice: sparse small lesions or one spanning region; few or most voxels labelled
    density = rng.choice([0.2, 0.5], size=(30, 1, 1))
    labelled = rng.choice([0.1, 0.7], size=(30, 1, 1))
    candidates = rng.random((30, 120, 160)) < density
    labels = np.where(candidates & (rng.random(candidates.shape) < labelled),
                      rng.integers(1, 8, candidates.shape), 0).astype(np.uint8)
    keep = np.zeros(labels.shape, dtype=bool)  # labels in a small box: windows
    for z, (r, c) in enumerate(rng.integers(0, 100, size=(30, 2))):
        keep[z, r:r + 20, c:c + 20] = True
    labels[~keep] = 0
    labels[rng.random(30) < 0.2] = 0  # some slices without labels
    windowed, whole = labels.copy(), labels.copy()
    added = segment.label_whole_lesions(windowed, candidates)
    monkeypatch.setattr(segment, "_lesions_touched",
                        functools.partial(segment._lesions_touched, margin=1000))
    segment.label_whole_lesions(whole, candidates)
    np.testing.assert_array_equal(windowed, whole)
    assert sorted(added.tolist()) == np.flatnonzero((labels == 0) & (windowed > 0)).tolist()
    # the case exercises both outcomes (and, measured, 14 windows and 12 whole slices)
    assert added.size and ((labels > 0) & (windowed == 0)).any()


def test_augmentation_adds_every_ct_defect_and_never_flips():
    from calcpipe.models.train import augment

    x = torch.full((4, 3, 64, 64), -0.2)
    x[:, :, 20:28, 44:52] = 1.0  # dense spot on the image's right half
    y = torch.zeros((4, 64, 64), dtype=torch.long)
    y[:, 20:28, 44:52] = 4  # RCA
    plain, _ = augment(x, y, torch.Generator().manual_seed(3), p_blur=0, p_motion=0,
                       p_streaks=0, p_elastic=0)
    for defect in ("p_blur", "p_motion", "p_streaks", "p_elastic"):
        only = {k: 0.0 for k in ("p_blur", "p_motion", "p_streaks", "p_elastic")}
        changed, _ = augment(x, y, torch.Generator().manual_seed(3), **{**only, defect: 1.0})
        assert not torch.allclose(changed, plain, atol=1e-3), defect
    out_x, out_y = augment(x, y, torch.Generator().manual_seed(3), p_blur=1, p_motion=1,
                           p_streaks=1, p_elastic=1)
    assert out_x.shape == x.shape and out_y.shape == y.shape and torch.isfinite(out_x).all()
    assert set(out_y.unique().tolist()) <= {0, 4}
    for i in range(4):
        cols = torch.nonzero(out_y[i] == 4)[:, 1].float()
        assert cols.numel() > 0 and cols.mean() > 32  # still on the right: no flip


def test_training_flow_trains_and_measures_on_the_test_patients(prefect_api, tmp_path):
    from calcpipe.flows.train_model import train_model
    from prefect.artifacts import Artifact

    from calcpipe.synthetic import write_cohort

    cohort = write_cohort(tmp_path / "cohort", studies=5, seed=43, matrix=64, workers=1)
    out = tmp_path / "flow.pt"
    result = train_model(str(cohort), str(out), steps=4, base=4, depth=3, spacing=2.0,
                         patch=32, batch=2)
    assert result["steps"] == 4 and out.is_file()
    assert result["test"]["patients"] == 1  # 5 studies: 3 train, 1 validation, 1 test
    payload = ckpt.load_checkpoint(out).payload
    assert payload["training"]["data"].endswith(
        "3 train, 1 validation, 1 test studies of 5 patients, split by patient")
    artifact = Artifact.get("calcpipe-training", _sync=True)  # type: ignore[call-arg]
    assert artifact is not None and "1 test studies" in artifact.data


def _thorax(lungs: bool = True) -> np.ndarray:
    """A hand-built chest, 8 slices of 128 x 128 at 2 mm: body; two lungs in slices 2-7,
    only a small posterior recess of them in slice 1 and none in slice 0 (the upper
    abdomen); a rib beside each lung, a mediastinal calcification, a calcified node inside
    the right lung, a table with air slots below the body, and a small gas pocket (bowel)
    in the body below the heart."""
    yy, xx = np.mgrid[0:128, 0:128]
    hu = np.full((8, 128, 128), -1000, dtype=np.int16)
    body = ((yy - 60) / 45) ** 2 + ((xx - 64) / 60) ** 2 <= 1
    hu[:, body] = 40
    if lungs:
        for cx in (34, 94):
            hu[2:, ((yy - 60) / 30) ** 2 + ((xx - cx) / 18) ** 2 <= 1] = -850
            hu[1, ((yy - 85) / 5) ** 2 + ((xx - cx) / 8) ** 2 <= 1] = -850
        hu[:, 40, 40] = 300  # a calcified node in the right lung
    hu[:, 60, 9:12] = 700  # rib beyond the right lung (image left)
    hu[:, 58:60, 117:119] = 700  # rib beyond the left lung
    hu[:, 50, 64] = 400  # calcium between the lungs
    hu[:, 108:116, 10:118] = 250  # the table below the body
    hu[:, 110:114, 20:30] = -1000  # an air slot in it
    hu[:, 92:95, 60:63] = -900  # gas in the body below the heart
    return hu


#: (slice, row, column): rib beyond the right lung, rib beyond the left, calcium between
#: the lungs, a mediastinal voxel, the node in the lung, calcium between the lungs in the
#: abdomen (slice 0) and where only the lungs' recess is in view (slice 1)
_POINTS = (np.array([2, 2, 2, 2, 2, 0, 1]), np.array([60, 58, 50, 60, 40, 50, 50]),
           np.array([10, 117, 64, 64, 40, 64, 64]))


def test_lungs_are_the_large_air_regions_inside_the_body():
    from calcpipe.models.thorax import lung_mask

    lungs = lung_mask(_thorax())
    assert lungs[2:, 60, 34].all() and lungs[2:, 60, 94].all() and lungs[1, 85, 34]
    assert not lungs[:, 112, 25].any()  # the table's air slot is outside the body
    assert not lungs[:, 93, 61].any()  # the gas pocket: far smaller than a lung
    assert not lungs[:, 5, 64].any()  # the air around the patient


def test_lungs_cut_by_the_field_of_view_are_still_lungs():
    """Cardiac reconstructions cut the chest: the body and lungs reach the image border."""
    from calcpipe.models.thorax import lung_mask

    cropped = _thorax()[:, :, 20:108]  # columns 20-107: both lungs touch the sides
    lungs = lung_mask(cropped)
    assert lungs[2:, 60, 0].all() and lungs[2:, 60, 87].all()
    assert not lungs[:, 5, 44].any() and not lungs[:, 125, 44].any()  # air above and below


def test_thorax_rules_exclude_chest_wall_lung_and_abdomen_not_the_mediastinum():
    from calcpipe.models.thorax import Thorax

    thorax = Thorax.find(_thorax(), (3.0, 2.0, 2.0))
    assert thorax.lung_range() == (2, 7)  # slice 1's recess is under a quarter of a lung
    assert thorax.beyond_lungs(_POINTS).tolist()[:4] == [True, True, False, False]
    assert thorax.in_lung(_POINTS).tolist() == [False, False, False, False, True, False, False]
    assert thorax.outside_lung_range(_POINTS).tolist() == [False] * 5 + [True, True]
    assert thorax.not_coronary(_POINTS).tolist() == [True, True, False, False, True, True, True]
    # aortic labels: the ribs (12 and 14 mm deep), not the node in the lung (40 mm deep)
    assert thorax.depth_mm(_POINTS)[[0, 1]].max() < 15 < 35 < thorax.depth_mm(_POINTS)[4]
    assert thorax.chest_wall(_POINTS).tolist() == [True, True] + [False] * 5
    # a field of view inside the body: no outline in view, so no chest wall by depth
    inside = _thorax()
    inside[inside == -1000] = 40
    thorax = Thorax.find(inside, (3.0, 2.0, 2.0))
    assert thorax.beyond_lungs(_POINTS)[:2].all()
    assert np.isinf(thorax.depth_mm(_POINTS)).all() and not thorax.chest_wall(_POINTS).any()
    # no lungs in view (a phantom): nothing is excluded
    assert not Thorax.find(_thorax(lungs=False), (3.0, 2.0, 2.0)).not_coronary(_POINTS).any()


def test_thorax_rules_keep_every_synthetic_coronary_and_aortic_voxel():
    """Over 100 held-out synthetic studies at 512^2 the rules removed none of 79,065 true
    coronary voxels and none of 14,250 true aortic ones, 2,001 of which lie beyond the lungs
    (the descending aorta; bench/bench_accuracy.py prints it). Here 3 small studies with
    aortic calcium beyond the lungs, every true coronary and aortic voxel."""
    from calcpipe.models.segment import AORTIC_VALUES, CORONARY_VALUES, misplaced
    from calcpipe.models.thorax import Thorax

    coronary = beyond = 0
    for index in (1, 5, 7):
        rendered = render_study(sample_spec(9001, index, matrix=128))
        thorax = Thorax.find(rendered.hu, rendered.spacing_mm)
        assert thorax.lung_range() is not None
        points = np.nonzero(np.isin(rendered.labels, CORONARY_VALUES))
        coronary += points[0].size
        assert not thorax.not_coronary(points).any()
        points = np.nonzero(np.isin(rendered.labels, AORTIC_VALUES))
        beyond += int(thorax.beyond_lungs(points).sum())
        assert not thorax.chest_wall(points).any()
        labelled = np.nonzero(rendered.labels)
        assert not misplaced(rendered.labels[labelled], labelled, thorax).any()
    assert coronary > 0 and beyond > 0


def test_each_class_gets_its_own_thorax_rule():
    """Coronary labels: all three rules; aortic (TAC, AVC): the chest wall only; the mitral
    annulus: none."""
    from calcpipe.models.segment import misplaced
    from calcpipe.models.thorax import Thorax

    thorax = Thorax.find(_thorax(), (3.0, 2.0, 2.0))
    values = np.array([5, 2, 5, 2, 5, 6, 7], dtype=np.uint8)  # TAC, LAD, ..., AVC, MAC
    assert misplaced(values, _POINTS, thorax).tolist() == [True, True] + [False] * 5
    values = np.full(7, 2, dtype=np.uint8)
    assert misplaced(values, _POINTS, thorax).tolist() == thorax.not_coronary(_POINTS).tolist()


@pytest.mark.parametrize(("setting", "huge"), [(None, True), ("0", False)])
def test_importing_calcpipe_puts_torchs_large_cpu_tensors_on_huge_pages(setting, huge):
    """calcpipe turns on PyTorch's transparent-huge-page CPU allocation (a third faster
    segmentation, bench/bench_segmentation.py) unless the user set it: torch then aligns
    tensors of 2 MB and more to a page for madvise, where plain allocation is 64-byte
    aligned past glibc's chunk header."""
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        env["THP_MEM_ALLOC_ENABLE"] = setting
    code = ("import calcpipe, torch; "
            "print(torch.empty(8 << 20, dtype=torch.uint8).data_ptr() % 4096)")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True)
    assert (int(out.stdout) == 0) == huge


def test_small_lesion_weight_raises_the_cross_entropy_of_isolated_calcium_pixels():
    import torch
    import torch.nn.functional as F

    from calcpipe.models.train import loss_fn

    weights = torch.tensor((1.0, 10, 10, 10, 10, 4, 4, 4))
    y = torch.zeros(1, 16, 16, dtype=torch.long)
    y[0, 2, 2] = 2  # an isolated pixel: 1 calcium pixel in its 5 x 5 neighbourhood
    y[0, 8:13, 8:13] = 3  # a 5 x 5 lesion: its centre sees 25
    logits = torch.zeros(1, 8, 16, 16)  # every pixel's cross-entropy is log(8)
    # off (1) and at the edge of on: the class-weighted cross-entropy, Dice weight 0
    expected = F.cross_entropy(logits, y, weight=weights)
    assert torch.isclose(loss_fn(logits, y, weights, 0.0), expected)
    assert torch.isclose(loss_fn(logits, y, weights, 0.0, 1.0 + 1e-6), expected)
    # factor 3: the isolated pixel weighs 10 * min(sqrt(9 / 1), 3) = 30; a lesion pixel
    # with n calcium neighbours 10 * clamp(sqrt(9 / n), 1, 3); equal cross-entropies, so
    # the weighted mean is still log(8): the weights show in the gradient
    logits.requires_grad_(True)
    loss_fn(logits, y, weights, 0.0, 3.0).backward()
    grad = logits.grad[0].abs().sum(dim=0)
    lesion_centre, lesion_corner = grad[10, 10], grad[8, 8]  # 25 and 9 calcium neighbours
    assert torch.isclose(grad[2, 2] / lesion_centre, torch.tensor(3.0))
    assert torch.isclose(lesion_corner / lesion_centre, torch.tensor(1.0))
    assert torch.isclose(grad[0, 15] * 10 / lesion_centre, torch.tensor(1.0))  # background


def test_inside_outline_is_the_share_of_a_hole_with_body_on_both_sides_in_row_or_column():
    from scipy import ndimage

    from calcpipe.models.thorax import _inside_outline

    rng = np.random.default_rng(11)
    for _ in range(40):
        body = rng.random((int(rng.integers(3, 20)), int(rng.integers(3, 20)))) < 0.5
        holes, n = ndimage.label(~body)
        if not n:
            continue
        numbers = np.arange(1, n + 1)
        inside = np.zeros(body.shape, dtype=bool)  # by the definition, pixel by pixel
        for r, c in np.ndindex(body.shape):
            row, col = body[r], body[:, c]
            inside[r, c] = ((row[: c + 1].any() and row[c:].any())
                            or (col[: r + 1].any() and col[r:].any()))
        expected = [inside[holes == k].mean() for k in numbers]
        np.testing.assert_allclose(_inside_outline(body, holes, numbers), expected)
