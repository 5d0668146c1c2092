"""End-to-end, library level: decode DICOM from local disk, segment, write the mask as the
flow's workers do (gzipped NIfTI, where nibabel is installed), score; studies/s.

Measured side by side in one run, on the same studies:

- ``threads_1``: one study at a time in one process (no overlap), with the time each stage
  took (decode, segment, score) summed over the studies;
- ``threads_N``: one process, N studies at once on threads sharing one network
  (``--concurrent``, 4), so that one study's decoding and scoring (CPU) overlap another's
  inference (GPU; torch releases the GIL there): dask-cuda's one worker per GPU;
- ``processes_P``: P processes on the same GPU, each with its own copy of the network and
  one study at a time (``--processes``), as the flow's GPU workers are
  (``STUDIES_PER_GPU``), which also spreads the Python-level CPU work (decoding, connected
  regions, lungs, scoring) over the node's cores, past the GIL, spinning while they wait
  for the GPU (CUDA's default); ``processes_P_block``: the same sleeping instead
  (``GPU_WAIT``, ``--block-processes``).

With ``--segment-only``, the studies are rendered volumes in each process's memory and
only the segment call is timed, in the same process modes (``segment_processes_P``).

Each mode reports studies/s, mean GPU utilisation and GPU memory used (nvidia-smi every
100 ms; None without a GPU), the node's CPU busy fraction (/proc/stat) and the core-seconds
a study took (busy fraction x cores x seconds / studies).

Usage (GPU): ``python bench/gpu_pipeline.py`` within ``bench/gpu_check.sh``.
Smoke run on a CPU: ``python bench/gpu_pipeline.py --device cpu --studies 4 --matrix 128
--processes 2``. Needs numpy, scipy, torch, pydicom and nibabel (the last two carried as
wheels to the GPU machine; without nibabel no mask is written, ``masks_written`` false).
"""

from __future__ import annotations

import argparse
import functools
import json
import multiprocessing as mp
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.dicom import load_volume
from calcpipe.dicom.writer import write_series
from calcpipe.models.segment import UNetSegmenter
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


@functools.cache
def masks_written() -> bool:
    """Whether each study's mask is written as the flow's workers write it (gzipped NIfTI,
    which needs nibabel: carry its wheel, and importlib-resources' below Python 3.12)."""
    try:
        import nibabel  # noqa: F401
    except ImportError:
        return False
    return True


def process(paths: list[Path], segmenter: UNetSegmenter,
            stages: dict[str, float] | None = None) -> float:
    """One study: decode, segment, write the mask (where nibabel is installed), score; its
    CAC Agatston score. With ``stages``, adds each stage's seconds to it (the GPU
    synchronised after segmenting)."""
    t0 = time.perf_counter()
    volume = load_volume(paths)
    kvp = volume.scoring_kvp
    t1 = time.perf_counter()
    seg = segmenter.segment(volume.hu, volume.spacing_mm, kvp=kvp)
    if stages is not None and segmenter.device.type == "cuda":
        import torch

        torch.cuda.synchronize()
    t2 = time.perf_counter()
    if masks_written():
        from calcpipe.synthetic.truth import nifti_bytes

        # one file per process and thread, overwritten: the cost is encoding and writing
        mask = Path(tempfile.gettempdir()) / f"mask-{os.getpid()}-{threading.get_ident()}.nii.gz"
        mask.write_bytes(nifti_bytes(seg.labels, volume.affine))
    t3 = time.perf_counter()
    result = score(volume.hu, seg.labels, volume.spacing_mm, profile="standard", kvp=kvp,
                   affine=volume.affine, slice_thickness_mm=volume.slice_thickness_mm)
    if stages is not None:
        for name, seconds in (("decode", t1 - t0), ("segment", t2 - t1), ("mask", t3 - t2),
                              ("score", time.perf_counter() - t3)):
            stages[name] = stages.get(name, 0.0) + seconds
    return float(result.row("CAC").agatston)


class Sampler:
    """While running: GPU utilisation (%) and memory used (MiB) from ``nvidia-smi`` every
    100 ms, and the node's CPU busy fraction from /proc/stat."""

    def __init__(self) -> None:
        self.utilisation: list[float] = []
        self.memory_mib: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.cpu_busy: float | None = None

    def _run(self) -> None:
        if shutil.which("nvidia-smi") is None:
            return
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu,memory.used",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True, check=False).stdout.strip()
            if out:
                util, memory = out.splitlines()[0].split(",")
                self.utilisation.append(float(util))
                self.memory_mib.append(float(memory))
            self._stop.wait(0.1)

    @staticmethod
    def _cpu_times() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except OSError:
            return None
        idle = fields[3] + fields[4]  # idle + iowait
        return sum(fields) - idle, sum(fields)

    def __enter__(self) -> Sampler:
        self._cpu0 = self._cpu_times()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        cpu1 = self._cpu_times()
        if self._cpu0 and cpu1 and cpu1[1] > self._cpu0[1]:
            self.cpu_busy = (cpu1[0] - self._cpu0[0]) / (cpu1[1] - self._cpu0[1])

    def figures(self, seconds: float, studies: int) -> dict[str, Any]:
        cores = os.cpu_count() or 1
        return {"core_seconds_per_study": (round(self.cpu_busy * cores * seconds / studies, 3)
                                           if self.cpu_busy is not None else None),
                "gpu_utilisation_percent": (round(statistics.fmean(self.utilisation), 1)
                                            if self.utilisation else None),
                "gpu_memory_peak_mib": max(self.memory_mib) if self.memory_mib else None,
                "cpu_busy_fraction": (round(self.cpu_busy, 3) if self.cpu_busy is not None
                                      else None)}


_WORKER: dict[str, Any] = {}


def _segmenter(device: str, precision: str) -> UNetSegmenter:
    """The network of one process of the process modes (one torch thread)."""
    import torch

    torch.set_num_threads(1)
    return UNetSegmenter.load("default", device=device, precision=precision, batch_size=64)


def _init_worker(device: str, precision: str, first: list[Path], wait: str) -> None:
    """A process of the ``processes_P`` mode: the network loaded once and warmed up
    (kernels, allocator) before any timed study; ``wait``: how it waits for the GPU."""
    from calcpipe.models import segment

    segment.GPU_WAIT = wait
    segmenter = _segmenter(device, precision)
    process(first, segmenter)
    _WORKER["segmenter"] = segmenter


def _ready(barrier: Any) -> int:
    """Blocks until every process of the pool runs one: so all of them have loaded."""
    barrier.wait(timeout=300)
    return os.getpid()


def _score_in_worker(paths: list[Path]) -> tuple[float, float]:
    """A study's CAC score, and the process's peak resident memory so far (MB)."""
    import resource

    cac = process(paths, _WORKER["segmenter"])
    return cac, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _render_npy(args: tuple[int, int, str]) -> None:
    """One synthetic study's HU volume and spacing as .npy files (``--segment-only``)."""
    index, matrix, out = args
    rendered = render_study(sample_spec(9100, index, matrix=matrix))
    np.save(Path(out) / f"hu_{index:05d}.npy", rendered.hu)
    np.save(Path(out) / f"spacing_{index:05d}.npy", np.asarray(rendered.spacing_mm))


def _init_segment_worker(device: str, precision: str, folder: str) -> None:
    """A process of the ``segment_processes_P`` mode: every study in memory, the network
    loaded and warmed up, so that only segmentation is timed."""
    _WORKER["studies"] = [(np.load(hu), tuple(np.load(str(hu).replace("hu_", "spacing_"))))
                          for hu in sorted(Path(folder).glob("hu_*.npy"))]
    segmenter = _segmenter(device, precision)
    segmenter.segment(*_WORKER["studies"][0])
    _WORKER["segmenter"] = segmenter


def _segment_in_worker(index: int) -> int:
    hu, spacing = _WORKER["studies"][index]
    return int(np.count_nonzero(_WORKER["segmenter"].segment(hu, spacing).labels))


def timed_pool_map(function: Any, work: list[Any], workers: int, initializer: Any,
                   initargs: tuple[Any, ...]) -> tuple[list[Any], dict[str, Any]]:
    """``function`` over ``work`` in ``workers`` processes (spawned: CUDA cannot be forked),
    every one of them initialised before the clock starts; its results, studies/s and the
    sampler's figures."""
    context = mp.get_context("spawn")
    with context.Manager() as manager, context.Pool(
            workers, initializer=initializer, initargs=initargs) as pool:
        barrier = manager.Barrier(workers)
        pids = pool.map(_ready, [barrier] * workers, chunksize=1)
        assert len(set(pids)) == workers, "a process of the pool ran twice"
        with Sampler() as sampler:
            start = time.monotonic()
            results = pool.map(function, work, chunksize=1)
            seconds = time.monotonic() - start
    return results, {"studies_per_s": round(len(work) / seconds, 2),
                     **sampler.figures(seconds, len(work))}


def run_segment_processes(folder: str, studies: int, workers: int, device: str,
                          precision: str, passes: int) -> dict[str, Any]:
    """Segmentation alone in ``workers`` processes sharing the GPU (volumes in memory)."""
    voxels, figures = timed_pool_map(_segment_in_worker, list(range(studies)) * passes,
                                     workers, _init_segment_worker, (device, precision, folder))
    return {**figures, "labelled_voxels": sum(voxels) // passes}


def run_processes(studies: list[list[Path]], workers: int, device: str, precision: str,
                  passes: int, wait: str = "spin") -> dict[str, Any]:
    """End to end in ``workers`` processes sharing the GPU, waiting for it as ``wait`` says
    (:data:`calcpipe.models.segment.GPU_WAIT`); each study scored ``passes`` times."""
    results, figures = timed_pool_map(_score_in_worker, studies * passes, workers,
                                      _init_worker, (device, precision, studies[0], wait))
    return {**figures, "cac_sum": round(sum(cac for cac, _ in results) / passes, 1),
            "worker_peak_rss_mb": round(max(rss for _, rss in results))}


def run_threads(studies: list[list[Path]], threads: int, segmenter: UNetSegmenter,
                stages: dict[str, float] | None = None) -> dict[str, Any]:
    import torch

    with Sampler() as sampler, ThreadPoolExecutor(threads) as pool:
        start = time.monotonic()
        scores = list(pool.map(lambda paths: process(paths, segmenter, stages), studies))
        if segmenter.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.monotonic() - start
    return {"studies_per_s": round(len(studies) / seconds, 2),
            **sampler.figures(seconds, len(studies)),
            "cac_sum": round(sum(scores), 1), "studies": len(studies)}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="bf16")
    parser.add_argument("--studies", type=int, default=int(os.environ.get("STUDIES", 96)))
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--concurrent", type=int, default=4, help="threads (0: skip)")
    parser.add_argument("--sequential", type=int, default=24,
                        help="studies of the one-at-a-time mode (the slowest; 0: skip)")
    parser.add_argument("--processes", type=int, nargs="*", default=[15, 24])
    parser.add_argument("--block-processes", type=int, nargs="*", default=[15],
                        help="process counts also run asleep while waiting for the GPU")
    parser.add_argument("--passes", type=int, default=2,
                        help="times the process modes score each study")
    parser.add_argument("--segment-only", action="store_true",
                        help="time segmentation alone, volumes in memory, process modes")
    args = parser.parse_args()
    import torch

    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    precision = args.precision if args.device != "cpu" else "fp32"
    if args.segment_only:
        return segment_only(args, precision, out)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        cohort = Path(tmp) / "cohort"  # written without pyarrow (absent on the GPU machine)
        with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as writers:
            list(writers.map(_write, [(i, args.matrix, str(cohort))
                                      for i in range(args.studies)]))
        studies = [sorted(p.rglob("*.dcm")) for p in sorted(cohort.glob("study_*"))]
        written = time.monotonic() - start
        segmenter = UNetSegmenter.load("default", device=args.device, precision=precision,
                                       batch_size=64)
        process(studies[0], segmenter)  # warm-up: kernels, allocator
        figures: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
            "date": time.strftime("%Y-%m-%d"), "studies": len(studies),
            "matrix": args.matrix, "slices": len(studies[0]),
            "precision": segmenter.precision, "cpu_cores": os.cpu_count(),
            "torch": torch.__version__, "dicom_written_s": round(written, 1),
            "masks_written": masks_written()}
        stages: dict[str, float] = {}
        sequential = studies[: args.sequential]
        if sequential:
            figures["threads_1"] = run_threads(sequential, 1, segmenter, stages)
            figures["threads_1"]["stage_s_per_study"] = {
                name: round(seconds / len(sequential), 4) for name, seconds in stages.items()}
            print(json.dumps(figures, indent=1), flush=True)
        if args.concurrent:
            figures[f"threads_{args.concurrent}"] = run_threads(studies, args.concurrent,
                                                                segmenter)
            print(json.dumps(figures[f"threads_{args.concurrent}"]), flush=True)
        del segmenter
        if args.device == "cuda":
            torch.cuda.empty_cache()
        modes = [(w, "spin") for w in args.processes] + [(w, "block")
                                                          for w in args.block_processes]
        for workers, wait in modes:
            name = f"processes_{workers}" + ("_block" if wait == "block" else "")
            figures[name] = run_processes(studies, workers, args.device, precision,
                                          args.passes, wait)
            print(name, json.dumps(figures[name]), flush=True)
            (out / "gpu_pipeline.json").write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    (out / "gpu_pipeline.json").write_text(json.dumps(figures, indent=1))
    return 0


def segment_only(args: Any, precision: str, out: Path) -> int:
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as renderers:
            list(renderers.map(_render_npy, [(i, args.matrix, tmp)
                                             for i in range(args.studies)]))
        figures: dict[str, Any] = {
            "device": torch.cuda.get_device_name(0) if args.device == "cuda" else args.device,
            "date": time.strftime("%Y-%m-%d"), "studies": args.studies,
            "matrix": args.matrix, "precision": precision, "cpu_cores": os.cpu_count(),
            "torch": torch.__version__}
        for workers in args.processes:
            figures[f"segment_processes_{workers}"] = run_segment_processes(
                tmp, args.studies, workers, args.device, precision, args.passes)
            print(json.dumps(figures[f"segment_processes_{workers}"]), flush=True)
    print(json.dumps(figures, indent=1))
    (out / "gpu_segment.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
