"""The Dask side of the flow: which cluster, and the model loaded once per worker.

Back-ends other than ``distributed.LocalCluster`` (dask-cuda, dask-kubernetes,
dask-jobqueue) are imported only when asked for, so that nothing here needs a GPU or a
cluster manager to import.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from typing import Any

from distributed import Client, WorkerPlugin, get_worker

from calcpipe.pipeline.params import ScoreParams
from calcpipe.pipeline.plan import Provenance, StudyItem
from calcpipe.pipeline.work import StudyOutcome, score_study

PLUGIN_NAME = "calcpipe-segmenter"


class SegmenterPlugin(WorkerPlugin):
    """Loads the segmentation model once when a worker starts (and on workers that join
    later); tasks take it from the worker instead of unpickling weights per study."""

    name = PLUGIN_NAME

    def __init__(self, model: str, device: str, precision: str, threads: int | None) -> None:
        self.model, self.device, self.precision, self.threads = model, device, precision, threads
        self.segmenter: Any = None

    def setup(self, worker: Any) -> None:
        from calcpipe.pipeline.run import load_segmenter

        self.segmenter = load_segmenter(self.model, self.device, self.precision, self.threads)


def score_on_worker(item: StudyItem, provenance: Provenance, out_root: str,
                    storage_options: Mapping[str, Any] | None, secret: bytes | None,
                    rescore: bool) -> StudyOutcome:
    segmenter = None
    if not rescore:
        segmenter = get_worker().plugins[PLUGIN_NAME].segmenter  # type: ignore[attr-defined]
    return score_study(item, segmenter, provenance, out_root=out_root,
                       storage_options=storage_options, secret=secret)


@contextlib.contextmanager
def cluster_client(params: ScoreParams) -> Iterator[Client]:
    """A client on the cluster the parameters name: a LocalCluster of processes (default),
    of threads (``local-threads``), or an existing scheduler's address."""
    if "://" in params.cluster:
        with Client(params.cluster, set_as_default=False) as client:
            yield client
        return
    from distributed import LocalCluster

    processes = params.cluster == "local"
    with LocalCluster(n_workers=params.workers if processes else 1,
                      threads_per_worker=1 if processes else params.workers,
                      processes=processes, dashboard_address=None,
                      silence_logs=40) as cluster, \
            Client(cluster, set_as_default=False) as client:
        yield client


def torch_threads(params: ScoreParams) -> int | None:
    """Threads per worker for the network on a local cluster (cores shared evenly)."""
    if params.torch_threads is not None:
        return params.torch_threads
    if "://" in params.cluster:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // params.workers) if params.cluster == "local" else 1
