"""The Dask side of the flow: which cluster, and the model loaded once per worker.

Back-ends other than ``distributed`` (dask-kubernetes, dask-jobqueue) are imported only when
asked for, so that nothing here needs a GPU or a cluster manager to import.

GPU workers are ``studies_per_gpu`` single-threaded worker processes per GPU, each with the
model and the worker resource ``GPU=1`` (see :data:`calcpipe.models.segment.STUDIES_PER_GPU`
for why processes): one worker process per GPU, dask-cuda's layout, with 4 threads kept an
H100 2.6 % busy (bench/gpu_pipeline.py).
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
#: The event loop's tick in the processes of a cluster (Dask's default: 20 ms).
EVENT_LOOP_TICK = "1s"
#: Dask's profiler off and its event-loop tick every second instead of every 20 ms in the
#: processes of a cluster (see :func:`tuned_workers`).
WORKER_DASK_ENV = {"DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED": "False",
                   "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL": EVENT_LOOP_TICK}
#: Environment every worker gets (credentials come from the platform's secrets).
WORKER_ENV = {"OMP_NUM_THREADS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
              **WORKER_MALLOC_ENV, **WORKER_DASK_ENV}


def image(version: str, gpu: bool) -> str:
    return f"{IMAGE}:{version}{'-cuda' if gpu else ''}"


def one_gpu_at_most(gpus_per_worker: int) -> bool:
    """Whether a pod or job has a GPU: one at most (its processes all use the one they see;
    more GPUs means more pods or jobs)."""
    if gpus_per_worker not in (0, 1):
        raise ValueError(f"gpus_per_worker must be 0 or 1, not {gpus_per_worker}: scale the "
                         "number of workers instead (one GPU per pod or job)")
    return gpus_per_worker == 1


def kubernetes_spec_for(params: ScoreParams) -> dict[str, Any]:
    """The ``DaskCluster`` of a run's parameters: ``cluster_options`` ``name``,
    ``gpus_per_worker``, ``memory`` (a pod's, e.g. "64Gi") and ``cores`` (a pod's CPU
    limit), as for Slurm."""
    from calcpipe import __version__

    options = params.cluster_options
    return kubernetes_cluster_spec(
        str(options.get("name", "calcpipe")), version=__version__, workers=params.workers,
        gpus_per_worker=int(options.get("gpus_per_worker", 1)),
        memory=None if options.get("memory") is None else str(options["memory"]),
        cpu=None if options.get("cores") is None else str(options["cores"]),
        studies_per_gpu=studies_per_gpu(params))


def kubernetes_cluster_spec(name: str, *, version: str, workers: int = 2,
                            gpus_per_worker: int = 1, memory: str | None = None,
                            cpu: str | None = None,
                            node_selector: dict[str, str] | None = None,
                            tolerations: list[dict[str, str]] | None = None,
                            studies_per_gpu: int = STUDIES_PER_GPU,
                            ) -> dict[str, Any]:
    """A ``DaskCluster`` resource for the Dask Kubernetes operator: a scheduler and
    ``workers`` pods, each on one GPU (``studies_per_gpu`` single-threaded worker processes
    with the resource GPU=1 each, a core each and one for the nanny, 3 GiB each and 4 for
    the rest: a process peaked at 1.35 GB on 512 x 512 x 59 studies, docs/scale.md) or
    CPU-only when ``gpus_per_worker`` is 0 (one single-threaded process per core of its
    limit). The containers' ``command`` replaces the images' ``calcpipe`` entrypoint
    (``args`` alone would run ``calcpipe dask worker``)."""
    gpu = one_gpu_at_most(gpus_per_worker)
    env = [{"name": k, "value": v} for k, v in sorted(WORKER_ENV.items())]
    limits: dict[str, str] = {
        "memory": memory or (f"{3 * studies_per_gpu + 4}Gi" if gpu else "24Gi"),
        "cpu": cpu or (str(studies_per_gpu + 1) if gpu else "6")}
    if gpu:
        limits["nvidia.com/gpu"] = "1"
    worker_args = ["dask", "worker", "--name", "$(DASK_WORKER_NAME)", "--nthreads", "1"]
    if gpu:
        worker_args += ["--nworkers", str(studies_per_gpu), "--resources", "GPU=1"]
    elif limits["cpu"].isdigit():  # one single-threaded process per core it is given
        worker_args += ["--nworkers", limits["cpu"]]
    pod: dict[str, Any] = {"containers": [{
        "name": "worker", "image": image(version, gpu), "imagePullPolicy": "IfNotPresent",
        "command": worker_args, "env": env,
        "resources": {"limits": limits, "requests": dict(limits)},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001}}]}
    if gpu:
        pod["nodeSelector"] = node_selector or {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = tolerations or [
            {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    scheduler = {
        "spec": {"containers": [{
            "name": "scheduler", "image": image(version, gpu), "imagePullPolicy": "IfNotPresent",
            "command": ["dask", "scheduler"], "env": [dict(e) for e in env],
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
    """Keyword arguments of ``dask_jobqueue.SLURMCluster``: one GPU per job
    (``--gres=gpu:1``) shared by ``studies_per_gpu`` single-threaded worker processes with
    the resource GPU=1 each, a core and 3 GB each (4 GB more for the rest); without a GPU
    (``gpus_per_worker`` 0), one process of ``cores`` threads."""
    gpu = one_gpu_at_most(int(options.get("gpus_per_worker", 1)))
    processes = int(options.get("studies_per_gpu", STUDIES_PER_GPU)) if gpu else 1
    cores = int(options.get("cores", processes if gpu else 8))
    if cores < processes:
        raise ValueError(f"cores ({cores}) must be at least studies_per_gpu ({processes}): "
                         "each worker process needs a core")
    kwargs: dict[str, Any] = {
        "cores": cores, "processes": processes,
        "memory": str(options.get("memory", f"{3 * processes + 4}GB" if gpu else "32GB")),
        "walltime": str(options.get("walltime", "04:00:00")),
        "job_name": "calcpipe-worker",
        "job_script_prologue": [f"export {k}={shlex.quote(v)}"
                                for k, v in sorted(WORKER_ENV.items())],
    }
    for key in ("queue", "account"):
        if options.get(key):
            kwargs[key] = options[key]
    if gpu:
        kwargs["job_extra_directives"] = ["--gres=gpu:1"]
        kwargs["worker_extra_args"] = ["--resources", "GPU=1"]
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


def studies_per_gpu(params: ScoreParams, default: int = STUDIES_PER_GPU) -> int:
    """Studies one GPU scores at once (``cluster_options["studies_per_gpu"]``): worker
    processes sharing it, each study's task asking for its process's ``GPU=1``."""
    return max(1, int(params.cluster_options.get("studies_per_gpu", default)))


def local_gpus(count: int) -> list[str]:
    """The local GPUs' ``CUDA_VISIBLE_DEVICES`` entries: those this process was given
    (a Slurm allocation, a shared machine, MIG instances), else 0 to ``count`` - 1."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return [str(g) for g in range(count)]
    return [d.strip() for d in visible.split(",") if d.strip()][:count]


def local_gpu_workers(gpus: list[str], per_gpu: int, env: Mapping[str, str] | None = None,
                      ) -> dict[str, dict[str, Any]]:
    """Worker specifications of a local GPU cluster (``distributed.SpecCluster``):
    ``per_gpu`` single-threaded nannies per GPU (``CUDA_VISIBLE_DEVICES`` entries), each
    seeing only its GPU, listening on the loopback interface only."""
    from distributed import Nanny

    return {f"gpu{g}-{i}": {"cls": Nanny, "options": {
        "nthreads": 1, "resources": {"GPU": 1}, "host": "127.0.0.1",
        "env": {**(env or {}), "CUDA_VISIBLE_DEVICES": gpu}}}
        for g, gpu in enumerate(gpus) for i in range(per_gpu)}


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
    of threads (``local-threads``), single-threaded processes sharing each local GPU
    (``local-cuda``: all cores but one unless ``studies_per_gpu`` says), a
    Dask Kubernetes operator cluster (``kubernetes``, dask-kubernetes), a Slurm cluster
    (``slurm``, dask-jobqueue), or an existing scheduler's address. Back-ends are imported
    only here, so that none of them is needed to import the flow."""
    if "://" in params.cluster:
        with Client(params.cluster, set_as_default=False) as client:
            yield client
        return
    with _start(params) as cluster, Client(cluster, set_as_default=False) as client:
        scale(cluster, params)
        yield client


def scale(cluster: Any, params: ScoreParams) -> None:
    """Ask a Kubernetes or Slurm cluster for ``params.workers`` pods or jobs (one GPU
    each, several worker processes each). dask-jobqueue's ``scale(n)`` counts worker
    processes, the Dask operator's counts pods."""
    if params.cluster == "slurm":
        cluster.scale(jobs=params.workers)
    elif params.cluster == "kubernetes":
        cluster.scale(params.workers)


def _start(params: ScoreParams) -> Any:
    kind, options = params.cluster, params.cluster_options
    if kind in ("local", "local-threads"):
        from distributed import LocalCluster

        processes = kind == "local"
        with tuned_workers(bool(options.get("profiler", False))):
            return LocalCluster(n_workers=params.workers if processes else 1,
                                threads_per_worker=1 if processes else params.workers,
                                processes=processes, dashboard_address=None,
                                silence_logs=40)
    if kind == "local-cuda":
        import torch
        from distributed import Scheduler, SpecCluster

        gpus = local_gpus(torch.cuda.device_count())
        if not gpus:
            raise RuntimeError("cluster 'local-cuda' needs a CUDA GPU: torch sees none "
                               f"(torch {torch.__version__})")
        # the node's cores but one, shared among its GPUs
        per_gpu = studies_per_gpu(params,
                                  default=max(1, ((os.cpu_count() or 2) - 1) // len(gpus)))
        with tuned_workers(bool(options.get("profiler", False))):
            return SpecCluster(workers=local_gpu_workers(gpus, per_gpu,
                                                         {"OMP_NUM_THREADS": "1"}),
                               scheduler={"cls": Scheduler, "options": {
                                   "host": "127.0.0.1", "dashboard_address": None}},
                               silence_logs=40)
    try:
        if kind == "kubernetes":
            from dask_kubernetes.operator import KubeCluster

            return KubeCluster(custom_cluster_spec=kubernetes_spec_for(params))
        from dask_jobqueue import SLURMCluster

        return SLURMCluster(**slurm_cluster_options(options))
    except ImportError as e:
        package = {"kubernetes": "dask-kubernetes", "slurm": "dask-jobqueue"}[kind]
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
                      "step): 4 GPU worker pods,\n# one GPU each, for the Dask Kubernetes "
                      "operator. "
                      "kubectl apply -f daskcluster.yaml\n"
                      + yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    print(f"wrote {target}")
