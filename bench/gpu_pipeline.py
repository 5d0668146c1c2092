"""End-to-end, library level: decode DICOM from local disk, segment, score; studies/s.

This is what one GPU worker of the flow does: ``STUDIES_PER_GPU`` studies at once on CPU
threads sharing one network, so that one study's DICOM decoding and scoring (CPU) overlap
another's inference (GPU; torch releases the GIL there). Measured side by side in one run:
one study at a time (no overlap) against ``STUDIES_PER_GPU`` at once, and GPU utilisation
sampled by nvidia-smi during each (None without a GPU).

Usage (GPU): ``python bench/gpu_pipeline.py`` within ``bench/gpu_check.sh``.
Smoke run on a CPU: ``python bench/gpu_pipeline.py --device cpu --studies 4 --matrix 128``.
Needs numpy, scipy, torch and pydicom (carried as a wheel to the GPU machine).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.dicom import load_volume
from calcpipe.dicom.writer import write_series
from calcpipe.models.segment import STUDIES_PER_GPU, UNetSegmenter
from calcpipe.scoring import score
from calcpipe.synthetic import render_study, sample_spec


def _write(args: tuple[int, int, str]) -> None:
    """One synthetic study as a DICOM series (no truth files: they need nibabel)."""
    index, matrix, out = args
    rendered = render_study(sample_spec(9100, index, matrix=matrix))
    write_series(Path(out) / f"study_{index:05d}", rendered.hu,
                 spacing_mm=rendered.spacing_mm, origin_mm=rendered.origin_mm,
                 study_uid=f"1.2.826.0.1.9100.{index}", series_uid=f"1.2.826.0.1.9100.{index}.1",
                 patient_id=f"GPU-{index:05d}")


def process(paths: list[Path], segmenter: UNetSegmenter) -> float:
    """One study: decode, segment, score; its CAC Agatston score."""
    volume = load_volume(paths)
    kvp = float(volume.metadata.kvp or 120.0)
    seg = segmenter.segment(volume.hu, volume.spacing_mm, kvp=kvp)
    result = score(volume.hu, seg.labels, volume.spacing_mm, profile="standard", kvp=kvp,
                   affine=volume.affine, slice_thickness_mm=volume.slice_thickness_mm)
    return float(result.row("CAC").agatston)


class GpuSampler:
    """Mean GPU utilisation (%) from ``nvidia-smi`` every 100 ms while running."""

    def __init__(self) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, check=False).stdout.strip()
            if out:
                self.samples.append(float(out.splitlines()[0]))
            self._stop.wait(0.1)

    def __enter__(self) -> GpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--studies", type=int, default=int(os.environ.get("STUDIES", 96)))
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--concurrent", type=int, default=STUDIES_PER_GPU)
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        cohort = Path(tmp) / "cohort"  # written without pyarrow (absent on the GPU machine)
        with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as writers:
            list(writers.map(_write, [(i, args.matrix, str(cohort))
                                      for i in range(args.studies)]))
        studies = [sorted(p.rglob("*.dcm")) for p in sorted(cohort.glob("study_*"))]
        written = time.monotonic() - start
        segmenter = UNetSegmenter.load("default", device=args.device,
                                       precision=args.precision if args.device != "cpu"
                                       else "fp32", batch_size=64)
        process(studies[0], segmenter)  # warm-up: kernels, allocator
        figures: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
            "date": time.strftime("%Y-%m-%d"), "studies": len(studies),
            "matrix": args.matrix, "slices": len(studies[0]),
            "precision": segmenter.precision, "cpu_cores": os.cpu_count(),
            "dicom_written_s": round(written, 1)}
        for concurrent in (1, args.concurrent):
            with GpuSampler() as sampler, ThreadPoolExecutor(concurrent) as pool:
                start = time.monotonic()
                scores = list(pool.map(lambda paths: process(paths, segmenter), studies))
                if args.device == "cuda":
                    torch.cuda.synchronize()
                seconds = time.monotonic() - start
            figures[f"concurrent_{concurrent}"] = {
                "studies_per_s": round(len(studies) / seconds, 2),
                "gpu_utilisation_percent": sampler.mean,
                "cac_sum": round(sum(scores), 1)}
        one, many = figures["concurrent_1"], figures[f"concurrent_{args.concurrent}"]
        figures["overlap_speedup"] = round(many["studies_per_s"] / one["studies_per_s"], 2)
    print(json.dumps(figures, indent=1))
    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_pipeline.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
