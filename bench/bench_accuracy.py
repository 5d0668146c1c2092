"""Accuracy of the shipped default model (``make bench-accuracy``, outside CI).

1. A held-out synthetic cohort (seed 9001, never used in training; 100 studies by default)
   rendered here, segmented on this CPU: per-patient Dice median (IQR) per class beside the
   paper's, Agatston agreement for CAC and AC, risk-category kappa.
2. Held-out randomised calcium phantoms (``calcpipe.synthetic.phantom``, seed 9002; training
   used seed 2000): insert calcium labelled, inserts found, calcium labelled outside the
   inserts (calibration rods, spine) and the phantoms' total Agatston against the truth's.
3. The real scans in ../shared/data: CAC on the real chest CT (no visible coronary calcium;
   expected about 0) and, on the real QRM phantom, insert calcium labelled as calcium and
   calcium labelled outside the inserts.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from calcpipe.dicom import load_volume
from calcpipe.labels import LABEL_NAMES
from calcpipe.models.accuracy import AccuracyReport, format_summary
from calcpipe.models.segment import AORTIC_VALUES, CORONARY_VALUES, UNetSegmenter
from calcpipe.models.thorax import Thorax
from calcpipe.scoring import score
from calcpipe.synthetic import render_study, sample_spec
from calcpipe.synthetic.phantom import render_phantom
from calcpipe.synthetic.qrm import insert_labels, lesion_voxels

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_SEED = 9001
PHANTOM_TEST_SEED = 9002


def _render(index: int) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float], float,
                                 dict[str, int]]:
    spec = sample_spec(TEST_SEED, index)
    rendered = render_study(spec)
    return (rendered.hu, rendered.labels, rendered.spacing_mm, spec.scanner.kvp,
            _thorax_rules_on_truth(rendered.hu, rendered.labels, rendered.spacing_mm))


def _thorax_rules_on_truth(hu: np.ndarray, truth: np.ndarray,
                           spacing: tuple[float, float, float]) -> dict[str, int]:
    """How many true coronary and aortic voxels each thorax rule would remove (each should
    be 0), and how many aortic ones lie beyond the lungs (the chest-wall rule's margin)."""
    points = np.nonzero(np.isin(truth, CORONARY_VALUES))
    aortic = np.nonzero(np.isin(truth, AORTIC_VALUES))
    thorax = Thorax.find(hu, spacing)
    return {"coronary voxels": int(points[0].size),
            "lungs in view": int(thorax.lung_range() is not None),
            "beyond lungs": int(thorax.beyond_lungs(points).sum()),
            "in lung": int(thorax.in_lung(points).sum()),
            "outside the lungs' range": int(thorax.outside_lung_range(points).sum()),
            "aortic voxels": int(aortic[0].size),
            "aortic beyond lungs": int(thorax.beyond_lungs(aortic).sum()),
            "aortic chest wall": int(thorax.chest_wall(aortic).sum())}


def _synthetic(segmenter: UNetSegmenter, studies: int) -> None:
    """Accuracy on the held-out synthetic cohort and the thorax rules' cost on its truth."""
    report = AccuracyReport()
    rules: Counter[str] = Counter()
    with ProcessPoolExecutor(1) as pool:
        for hu, truth, spacing, kvp, removed in pool.map(_render, range(studies)):
            result = segmenter.segment(hu, spacing, kvp=kvp)
            report.add(truth, result.labels, hu, spacing, kvp, result.confidence)
            rules.update(removed)
    print(f"held-out synthetic cohort (seed {TEST_SEED}), {segmenter.model_id} "
          f"(sha256 {segmenter.model_checksum[:12]}), CPU, "
          f"{segmenter.precision}:")
    print(format_summary(report.summary()))
    print(f"thorax rules on the true coronary voxels (lungs in view in {rules['lungs in view']} "
          f"of {studies} studies): of {rules['coronary voxels']:,}, "
          + ", ".join(f"{name} {rules[name]:,}" for name in
                      ("beyond lungs", "in lung", "outside the lungs' range"))
          + f"; of {rules['aortic voxels']:,} true aortic voxels, {rules['aortic beyond lungs']:,}"
          f" beyond the lungs, chest wall {rules['aortic chest wall']:,}")


def _phantoms(segmenter: UNetSegmenter, phantoms: int) -> None:
    """Insert calcium labelled on held-out randomised phantoms, and calcium labelled
    anywhere else (rods, spine): voxels, whole inserts, and the total Agatston score."""
    from scipy import ndimage

    truth_voxels = labelled = outside = inserts = found = 0
    errors = []
    with ProcessPoolExecutor(1) as pool:
        for phantom in pool.map(render_phantom, [PHANTOM_TEST_SEED] * phantoms,
                                range(phantoms)):
            truth = phantom.labels > 0
            pred = segmenter.segment(phantom.hu, phantom.spacing_mm, kvp=phantom.kvp).labels > 0
            truth_voxels += int(truth.sum())
            labelled += int((pred & truth).sum())
            outside += int((pred & ~truth).sum())
            components, n = ndimage.label(truth, np.ones((3, 3, 3)))  # one per insert
            hit = ndimage.maximum(pred, components, np.arange(1, n + 1)) if n else []
            inserts += n
            found += int(np.count_nonzero(hit))
            reference = score(phantom.hu, truth.astype(np.uint8), phantom.spacing_mm,
                              kvp=phantom.kvp).row("TOTAL").agatston
            measured = score(phantom.hu, pred.astype(np.uint8), phantom.spacing_mm,
                             kvp=phantom.kvp).row("TOTAL").agatston
            if reference > 0:
                errors.append(abs(measured / reference - 1))
    print(f"held-out randomised phantoms (seed {PHANTOM_TEST_SEED}, {phantoms}): "
          f"{labelled:,} of {truth_voxels:,} insert calcium voxels labelled "
          f"({labelled / max(truth_voxels, 1):.1%}); {found} of {inserts} inserts with calcium "
          f"found; {outside:,} voxels labelled outside the inserts; Agatston |error| median "
          f"{np.median(errors) if errors else float('nan'):.1%}, max "
          f"{max(errors) if errors else float('nan'):.1%}")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--studies", type=int, default=100,
                        help="held-out synthetic studies (0: the real scans only)")
    parser.add_argument("--phantoms", type=int, default=30,
                        help="held-out randomised calcium phantoms (0: none)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16"),
                        help="the network's precision on this CPU (auto: as calcpipe score)")
    parser.add_argument("--model", default="default",
                        help="checkpoint to measure (default: the shipped model)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one core segments while the other renders the next studies
    segmenter = UNetSegmenter.load(args.model, threads=1, precision=args.precision)
    if args.studies:
        _synthetic(segmenter, args.studies)
    if args.phantoms:
        _phantoms(segmenter, args.phantoms)
    torch.set_num_threads(2)
    chest = SHARED / "chest_ct_lung_pet_ct_dx" / "study_A0002" / "series_B40f"
    qrm = SHARED / "qrm_phantom_canon"
    if not chest.is_dir() or not qrm.is_dir():
        print(f"(real-scan checks skipped: {SHARED} absent)")
        return 0
    volume = load_volume(chest)
    kvp = volume.scoring_kvp
    labels = segmenter.segment(volume.hu, volume.spacing_mm, kvp=kvp)
    scores = score(volume.hu, labels.labels, volume.spacing_mm)
    unruled = UNetSegmenter.load(args.model, thorax_rules=False,
                                 precision=args.precision).segment(
        volume.hu, volume.spacing_mm, kvp=kvp)
    before = score(volume.hu, unruled.labels, volume.spacing_mm)
    cac = scores.row("CAC").agatston
    print(f"real chest CT (no visible coronary calcium): CAC {cac:.1f} AU "
          f"(target <= 10: {'met' if cac <= 10 else 'MISSED'}; without the thorax rules "
          f"{before.row('CAC').agatston:.1f} AU); AC {scores.row('AC').agatston:.1f} AU "
          f"(without the thorax rules {before.row('AC').agatston:.1f} AU)")
    volume = load_volume(qrm / "dicom")
    labels = segmenter.segment(volume.hu, volume.spacing_mm, kvp=120).labels
    rois, names = insert_labels(qrm / "inserts.csv", volume.hu.shape, volume.spacing_mm)
    inserts = rois > 0
    calcium = volume.hu >= 130
    lesions = lesion_voxels(calcium, volume.spacing_mm)
    inside = int((calcium & inserts).sum())
    labelled_inside = int(((labels > 0) & inserts).sum())
    outside = int(((labels > 0) & ~inserts).sum())
    print(f"real QRM phantom: {labelled_inside} of {inside} insert calcium voxels labelled; "
          f"{outside} voxels labelled outside the inserts (target: all and 0: "
          f"{'met' if labelled_inside == inside and outside == 0 else 'MISSED'}); of the "
          f"voxels in Agatston lesions (>= 1 mm^2), {int(((labels > 0) & inserts & lesions).sum())}"
          f" of {int((inserts & lesions).sum())}")
    for value, name in names.items():
        here = (rois == value) & calcium
        classes = np.bincount(labels[here & (labels > 0)], minlength=8)
        print(f"  {name:<10} {int((labels[here] > 0).sum()):4d} of {int(here.sum()):4d} calcium "
              f"voxels labelled ({int((labels[here & lesions] > 0).sum())} of "
              f"{int((here & lesions).sum())} in lesions), as "
              + (", ".join(f"{LABEL_NAMES[c]} {n}" for c, n in enumerate(classes) if n and c)
                 or "nothing"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
