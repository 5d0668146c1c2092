"""The Dask side of the flow: which cluster, and the model loaded once per worker.

Back-ends other than ``distributed.LocalCluster`` (dask-cuda, dask-kubernetes,
dask-jobqueue) are imported only when asked for, so that nothing here needs a GPU or a
cluster manager to import.
"""

from __future__ import annotations

import contextlib
import os
import shlex
from collections.abc import Iterator, Mapping
from typing import Any

from distributed import Client, WorkerPlugin, get_worker

from calcpipe.models.segment import STUDIES_PER_GPU
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


#: The image every deployment uses (infra/docker/*; tag = calcpipe version, "-cuda" for GPU).
IMAGE = "ghcr.io/calcpipe/calcpipe"
#: The nanny's environment for the worker processes it starts, as the environment variable
#: that configures it (see :func:`tuned_workers`); the images set it too.
WORKER_MALLOC_CONFIG = {"MALLOC_TRIM_THRESHOLD_": None, "MALLOC_ARENA_MAX": 1}
WORKER_MALLOC_ENV = {"DASK_DISTRIBUTED__NANNY__PRE_SPAWN_ENVIRON":  # Dask parses a literal
                     "{" + ", ".join(f'"{name}": {value!r}'
                                     for name, value in WORKER_MALLOC_CONFIG.items()) + "}"}
#: The event loop's tick in the processes of a local cluster (Dask's default: 20 ms).
EVENT_LOOP_TICK = "1s"
#: Dask's profiler off and its event-loop tick every second instead of every 20 ms in the
#: processes of a cluster (see :func:`tuned_workers`).
WORKER_DASK_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                   "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": "1s"}
#: Environment every worker gets (credentials come from the platform's secrets).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
              **WORKER_MALLOC_ENV, **WORKER_DASK_ENV}


def image(version: str, gpu: bool) -> str:
    return f"{IMAGE}:{version}{'-cuda' if gpu else ''}"


def kubernetes_cluster_spec(name: str, *, version: str, workers: int = 2,
                            gpus_per_worker: int = 1, memory: str = "24Gi", cpu: str = "6",
                            node_selector: dict[str, str] | None = None,
                            tolerations: list[dict[str, str]] | None = None,
                            studies_per_gpu: int = STUDIES_PER_GPU,
                            ) -> dict[str, Any]:
    """A ``DaskCluster`` resource for the Dask Kubernetes operator: a scheduler and
    ``workers`` pods, each on ``gpus_per_worker`` GPUs (``dask-cuda-worker``: one worker
    process per GPU, with the GPU=1 resource and ``studies_per_gpu`` threads) or CPU-only
    when 0."""
    gpu = gpus_per_worker > 0
    env = [{"name": k, "value": v} for k, v in sorted(WORKER_ENV.items())]
    limits: dict[str, str] = {"memory": memory, "cpu": cpu}
    if gpu:
        limits["nvidia.com/gpu"] = str(gpus_per_worker)
    worker_args = (["dask-cuda-worker", "--name", "$(DASK_WORKER_NAME)",
                    "--nthreads", str(studies_per_gpu),
                    "--resources", "GPU=1"] if gpu else
                   ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1"])
    pod: dict[str, Any] = {"containers": [{
        "name": "worker", "image": image(version, gpu), "imagePullPolicy": "IfNotPresent",
        "args": worker_args, "env": env,
        "resources": {"limits": limits, "requests": dict(limits)},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001}}]}
    if gpu:
        pod["nodeSelector"] = node_selector or {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = tolerations or [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    scheduler = {
        "spec": {"containers": [{
            "name": "scheduler", "image": image(version, gpu), "imagePullPolicy": "IfNotPresent",
            "args": ["dask", "scheduler"], "env": [dict(e) for e in env],
            "ports": [{"name": "tcp-comm", "containerPort": 8786, "protocol": "TCP"},
                      {"name": "http-dashboard", "containerPort": 8787, "protocol": "TCP"}],
            "resources": {"limits": {"memory": "4Gi", "cpu": "2"}},
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001}}]},
        "service": {"type": "ClusterIP", "selector": {
            "dask.org/cluster-name": name, "dask.org/component": "scheduler"},
            "ports": [{"name": "tcp-comm", "protocol": "TCP", "port": 8786,
                       "targetPort": "tcp-comm"},
                      {"name": "http-dashboard", "protocol": "TCP", "port": 8787,
                       "targetPort": "http-dashboard"}]},
    }
    return {"apiVersion": "kubernetes.dask.org/v1", "kind": "DaskCluster",
            "metadata": {"name": name},
            "spec": {"worker": {"replicas": workers, "spec": pod}, "scheduler": scheduler}}


def slurm_cluster_options(options: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments of ``dask_jobqueue.SLURMCluster``: one GPU per job and worker
    (``--gres=gpu:N``, worker resource ``GPU=N``), one process per job."""
    gpus = int(options.get("gpus_per_worker", 1))
    kwargs: dict[str, Any] = {
        "cores": int(options.get("cores", 8)), "processes": 1,
        "memory": str(options.get("memory", "32GB")),
        "walltime": str(options.get("walltime", "04:00:00")),
        "job_name": "calcpipe-worker",
        "job_script_prologue": [f"export {k}={shlex.quote(v)}"
                                for k, v in sorted(WORKER_ENV.items())],
    }
    for key in ("queue", "account"):
        if options.get(key):
            kwargs[key] = options[key]
    if gpus:
        kwargs["job_extra_directives"] = [f"--gres=gpu:{gpus}"]
        kwargs["worker_extra_args"] = ["--resources", f"GPU={gpus}"]
    return kwargs


def tuned_workers(profiler: bool = False) -> Any:
    """Dask configuration for starting a local cluster's workers for study work: glibc's
    malloc set for it (:data:`WORKER_MALLOC_CONFIG`; a ``None`` value makes the nanny leave
    a variable unset) and, unless ``profiler``, Dask's statistical profiler off. Nannies
    keep the configuration they were created with, so restarted workers get it too.

    - Without Dask's ``MALLOC_TRIM_THRESHOLD_=65536``. Setting it also turns off glibc's
      dynamic mmap threshold, so every large array of a study is mapped and unmapped afresh:
      16 studies took 61.6-66.2 s (median 63.5, 7 runs) with it against 36.3-51.3 s (median
      41.9, 7 runs) without, in one process (2026-11-27).
    - With ``MALLOC_ARENA_MAX=1``. Dask runs tasks in a thread, and glibc gives other threads
      their own arenas, whose heaps are unmapped whenever they fall empty: the network's
      activations were faulted in afresh batch after batch. Study work ran 8 % slower in a
      thread than in the main thread of one process, 1 % with one arena (48 paired studies
      each); in a worker against a plain process, over 6 fresh pairs of processes, +4.3 %
      (95 % interval 0.0 to +8.6 %) without and -1.7 % (-6.7 to +3.2 %) with (2026-11-27).
    - Without the profiler. Every 10 ms it takes the GIL from the study's thread to walk its
      stack (and a second one samples each event loop). Study work back to back, 8 studies
      per block, in a worker against a plain process, two probes of 3 fresh pairs each
      (2026-11-27): with one study in flight, +8.5 % and +9.2 % with it, +0.1 % and +4.0 %
      without; with four in flight (as the flow submits), +5.7 % and +3.8 % with it,
      +3.5 % and +5.5 % without, no difference shown. The dashboard's task stream,
      progress and memory plots do not need it; its Profile tab does
      (``cluster_options={"profiler": true}``).
    - With the event loop's tick every second (Dask's default: 20 ms). The tick only
      measures the loop's latency (a metric and the "event loop was unresponsive" log,
      after 3 s), yet it was most of the event loop's CPU while a worker scored studies:
      16 studies, four in flight, worker main thread 1.11 s and 0.96 s of CPU with Dask's
      defaults, 0.46 s with the 1 s tick (per-thread CPU times, 2026-11-27): 3.9 % of the
      study work's 27 s against 1.7 %. That thread takes the GIL from the study's thread,
      and on a worker given one core it takes the core."""
    import dask

    config: dict[str, Any] = {f"distributed.nanny.pre-spawn-environ.{name}": value
                              for name, value in WORKER_MALLOC_CONFIG.items()}
    config["distributed.worker.profile.enabled"] = profiler
    config["distributed.admin.tick.interval"] = EVENT_LOOP_TICK
    return dask.config.set(config)


def studies_per_gpu(params: ScoreParams) -> int:
    """Studies a GPU worker scores at once (``cluster_options["studies_per_gpu"]``): its
    threads, each study's task asking for 1/N of the worker's ``GPU=1`` resource, so that
    decoding and scoring on the CPU overlap inference on the GPU."""
    return max(1, int(params.cluster_options.get("studies_per_gpu", STUDIES_PER_GPU)))


def uses_gpus(params: ScoreParams) -> bool:
    """Whether the segmentation tasks ask for the GPU=1 worker resource."""
    if params.cluster == "local-cuda":
        return True
    if params.cluster in ("kubernetes", "slurm"):
        return int(params.cluster_options.get("gpus_per_worker", 1)) > 0
    return False


@contextlib.contextmanager
def cluster_client(params: ScoreParams) -> Iterator[Client]:
    """A client on the cluster the parameters name: a LocalCluster of processes (default),
    of threads (``local-threads``), one worker per local GPU (``local-cuda``, dask-cuda), a
    Dask Kubernetes operator cluster (``kubernetes``, dask-kubernetes), a Slurm cluster
    (``slurm``, dask-jobqueue), or an existing scheduler's address. Back-ends are imported
    only here, so that none of them is needed to import the flow."""
    if "://" in params.cluster:
        with Client(params.cluster, set_as_default=False) as client:
            yield client
        return
    with _start(params) as cluster, Client(cluster, set_as_default=False) as client:
        if params.cluster in ("kubernetes", "slurm"):
            cluster.scale(params.workers)
        yield client


def _start(params: ScoreParams) -> Any:
    from calcpipe import __version__

    kind, options = params.cluster, params.cluster_options
    if kind in ("local", "local-threads"):
        from distributed import LocalCluster

        processes = kind == "local"
        with tuned_workers(bool(options.get("profiler", False))):
            return LocalCluster(n_workers=params.workers if processes else 1,
                                threads_per_worker=1 if processes else params.workers,
                                processes=processes, dashboard_address=None,
                                silence_logs=40)
    try:
        if kind == "local-cuda":
            try:
                from dask_cuda import LocalCUDACluster
            except Exception as e:  # without CUDA, importing dask_cuda can fail in many ways
                raise ImportError(str(e)) from e

            with tuned_workers(bool(options.get("profiler", False))):
                return LocalCUDACluster(threads_per_worker=studies_per_gpu(params),
                                        resources={"GPU": 1}, dashboard_address=None)
        if kind == "kubernetes":
            from dask_kubernetes.operator import KubeCluster

            return KubeCluster(custom_cluster_spec=kubernetes_cluster_spec(
                str(options.get("name", "calcpipe")), version=__version__,
                workers=params.workers,
                gpus_per_worker=int(options.get("gpus_per_worker", 1)),
                studies_per_gpu=studies_per_gpu(params)))
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**slurm_cluster_options(options))
    except ImportError as e:
        package = {"local-cuda": "dask-cuda (and CUDA)", "kubernetes": "dask-kubernetes",
                   "slurm": "dask-jobqueue"}[kind]
        raise RuntimeError(f"cluster {kind!r} needs {package}: pip install "
                           f"'calcpipe[clusters]' ({e})") from e


def torch_threads(params: ScoreParams) -> int | None:
    """Threads per worker for the network on a local cluster (cores shared evenly)."""
    if params.torch_threads is not None:
        return params.torch_threads
    if "://" in params.cluster:
        return None
    cores = os.cpu_count() or 1
    return max(1, cores // params.workers) if params.cluster == "local" else 1


if __name__ == "__main__":  # regenerate infra/k8s/daskcluster.yaml from the spec above
    import sys
    from pathlib import Path

    import yaml

    from calcpipe import __version__

    target = Path(sys.argv[1] if len(sys.argv) > 1 else "infra/k8s/daskcluster.yaml")
    spec = kubernetes_cluster_spec("calcpipe", version=__version__, workers=4)
    target.write_text("# Generated by `python -m calcpipe.flows.cluster` (a test keeps it in "
                      "step): 4 GPU workers,\n# one per GPU, for the Dask Kubernetes operator. "
                      "kubectl apply -f daskcluster.yaml\n"
                      + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    print(f"wrote {target}")
