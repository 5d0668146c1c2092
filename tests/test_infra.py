"""Deployment files: every manifest parses, images and resources agree, specs generate
without a cluster (no container daemon or cluster here: these are the checks that can run)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from calcpipe.flows.cluster import (
    IMAGE,
    WORKER_ENV,
    WORKER_MALLOC_CONFIG,
    WORKER_MALLOC_ENV,
    kubernetes_cluster_spec,
    kubernetes_spec_for,
    slurm_cluster_options,
    studies_per_gpu,
    tuned_workers,
    uses_gpus,
)

from calcpipe import __version__
from calcpipe.models.segment import STUDIES_PER_GPU
from calcpipe.pipeline import ScoreParams

INFRA = Path(__file__).resolve().parents[1] / "infra"


def _documents(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_every_manifest_parses_and_names_this_version_of_the_image():
    files = sorted(INFRA.rglob("*.yaml"))
    assert {f.name for f in files} >= {"compose.yaml", "daskcluster.yaml",
                                       "prefect-worker.yaml", "jobqueue.yaml"}
    images = set()
    for path in files:
        text = path.read_text()
        assert _documents(path), path
        images |= set(re.findall(rf"{re.escape(IMAGE)}:[\w.\-]+", text))
    assert images == {f"{IMAGE}:{__version__}", f"{IMAGE}:{__version__}-cuda"}
    for dockerfile in INFRA.glob("docker/Dockerfile*"):
        text = dockerfile.read_text()
        assert text.count("\nFROM ") + text.startswith("FROM ") >= 2, "multi-stage"
        assert "USER 10001" in text and ":latest" not in text
        assert "constraints" in text and "load_checkpoint('default')" in text
    # PyPI's Linux torch is the CUDA build: the CPU image takes its pinned torch from
    # PyTorch's CPU index, and the build fails if any CUDA wheel got in anyway
    cpu = (INFRA / "docker" / "Dockerfile").read_text()
    assert "https://download.pytorch.org/whl/cpu" in cpu
    assert "grep '^torch==' constraints.txt" in cpu
    assert "grep -q '^nvidia_'" in cpu
    # the CUDA image keeps its base image's torch: installed over it, never downloaded
    cuda = (INFRA / "docker" / "Dockerfile.cuda").read_text()
    assert "venv --system-site-packages" in cuda and "grep -v '^torch=='" in cuda
    assert "pip wheel" not in cuda and "grep -qxE '(torch|nvidia)'" in cuda


def test_generated_daskcluster_manifest_is_in_step_with_the_spec():
    checked_in = _documents(INFRA / "k8s" / "daskcluster.yaml")[0]
    assert checked_in == kubernetes_cluster_spec("calcpipe", version=__version__, workers=4)
    worker = checked_in["spec"]["worker"]["spec"]
    container = worker["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # the images' entrypoint is calcpipe: the containers must replace it, not add to it
    entrypoint = (INFRA / "docker" / "Dockerfile.cuda").read_text()
    assert 'ENTRYPOINT ["calcpipe"]' in entrypoint and "args" not in container
    args = container["command"]
    assert args[:2] == ["dask", "worker"] and args[args.index("--resources") + 1] == "GPU=1"
    # several single-threaded processes share the GPU, a core each and one for the nanny
    assert args[args.index("--nthreads") + 1] == "1"
    assert int(args[args.index("--nworkers") + 1]) == STUDIES_PER_GPU > 1
    assert container["resources"]["limits"]["cpu"] == str(STUDIES_PER_GPU + 1)
    assert container["resources"]["requests"] == container["resources"]["limits"]
    with pytest.raises(ValueError, match="0 or 1"):
        kubernetes_cluster_spec("two", version=__version__, gpus_per_worker=2)
    assert worker["tolerations"][0]["key"] == "nvidia.com/gpu" and worker["nodeSelector"]
    assert {e["name"]: e["value"] for e in container["env"]} == WORKER_ENV
    scheduler = checked_in["spec"]["scheduler"]["spec"]["containers"][0]
    assert scheduler["command"] == ["dask", "scheduler"] and "args" not in scheduler
    cpu_only = kubernetes_cluster_spec("cpu", version=__version__, gpus_per_worker=0)
    cpu_worker = cpu_only["spec"]["worker"]["spec"]["containers"][0]
    assert cpu_worker["command"][cpu_worker["command"].index("--nworkers") + 1] == (
        cpu_worker["resources"]["limits"]["cpu"])  # a process per core it is given
    assert scheduler["image"] == container["image"] == f"{IMAGE}:{__version__}-cuda"


def test_cpu_only_kubernetes_workers_ask_for_no_gpu():
    spec = kubernetes_cluster_spec("cpu", version=__version__, gpus_per_worker=0)
    pod = spec["spec"]["worker"]["spec"]
    assert "nvidia.com/gpu" not in pod["containers"][0]["resources"]["limits"]
    assert "tolerations" not in pod and pod["containers"][0]["image"].endswith(__version__)


def test_compose_stack_is_complete_and_consistent():
    compose = _documents(INFRA / "compose.yaml")[0]
    services = compose["services"]
    assert set(services) == {"postgres", "prefect-server", "minio", "dask-scheduler",
                             "dask-worker", "prefect-worker"}
    assert "postgresql+asyncpg://" in services["prefect-server"]["environment"][
        "PREFECT_API_DATABASE_CONNECTION_URL"]
    for name in ("dask-scheduler", "dask-worker", "prefect-worker", "prefect-server"):
        assert services[name]["image"] == f"{IMAGE}:{__version__}"
        assert services[name]["environment"]["AWS_ENDPOINT_URL"] == "http://minio:9000"
    assert "tcp://dask-scheduler:8786" in services["dask-worker"]["entrypoint"]


def test_slurm_job_script_asks_for_one_gpu_per_worker():
    from dask_jobqueue import SLURMCluster

    options = {"queue": "gpu", "account": "cardio", "walltime": "02:00:00"}
    with SLURMCluster(**slurm_cluster_options(options)) as cluster:
        script = cluster.job_script()
    assert "#SBATCH --gres=gpu:1" in script and "#SBATCH -p gpu" in script
    assert "#SBATCH -A cardio" in script and "--resources GPU=1" in script
    assert f"--nworkers {STUDIES_PER_GPU} " in script and "--nthreads 1 " in script
    assert f"#SBATCH --cpus-per-task={STUDIES_PER_GPU}" in script
    assert "#SBATCH --mem=38G" in script  # 40 GB: 3 GB per process and 4 for the rest
    with SLURMCluster(**slurm_cluster_options({"studies_per_gpu": 6})) as cluster:
        assert "--nworkers 6 " in cluster.job_script()
    cpu_only = slurm_cluster_options({"gpus_per_worker": 0, "cores": 4})
    assert (cpu_only["processes"], cpu_only["cores"]) == (1, 4)
    assert "job_extra_directives" not in cpu_only
    assert "export OMP_NUM_THREADS=1" in script
    config = _documents(INFRA / "slurm" / "jobqueue.yaml")[0]["jobqueue"]["slurm"]
    defaults = slurm_cluster_options({})
    assert config["job-extra-directives"] == defaults["job_extra_directives"]
    assert config["worker-extra-args"] == defaults["worker_extra_args"]
    assert (config["cores"], config["memory"], config["walltime"]) == (
        defaults["cores"], defaults["memory"], defaults["walltime"])
    assert config["job-script-prologue"] == defaults["job_script_prologue"]


def test_workers_everywhere_start_with_calcpipes_malloc_and_profiler_settings(dask_address):
    """Dask's nanny sets MALLOC_TRIM_THRESHOLD_=65536 in its workers unless configured
    otherwise (it made every study about 50 % slower), glibc gives the task thread its
    own arena (about 4-8 % slower), and Dask's profiler takes the GIL from the study every
    10 ms (about 7 % with one study in flight): every worker starts without the first,
    with MALLOC_ARENA_MAX=1 and without the profiler (flows/cluster.tuned_workers)."""
    import ast
    import os
    import subprocess
    import sys

    from distributed import Client

    # local clusters (the tests' cluster is started as the flow starts its own)
    with Client(dask_address, set_as_default=False) as client:
        seen = client.run(lambda dask_worker: (
            os.environ.get("MALLOC_TRIM_THRESHOLD_"), os.environ.get("MALLOC_ARENA_MAX"),
            "profile" in dask_worker.periodic_callbacks))
    assert seen and set(seen.values()) == {(None, "1", False)}
    # Slurm's job script (the shell quoting included), Kubernetes pods and the images:
    # the environment variable, read by the nanny's own configuration
    ask = ("import dask; from distributed.nanny import _get_env_variables; "
           "print((_get_env_variables('distributed.nanny.pre-spawn-environ'), "
           "dask.config.get('distributed.worker.profile.enabled')))")
    script = "\n".join([*slurm_cluster_options({})["job_script_prologue"],
                        f'{sys.executable} -c "{ask}"'])
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    environ, profiler = ast.literal_eval(out.stdout.strip())
    assert profiler is False
    assert environ["OMP_NUM_THREADS"] == "1" and environ["MALLOC_ARENA_MAX"] == "1"
    assert "MALLOC_TRIM_THRESHOLD_" not in environ
    (name, value), = WORKER_MALLOC_ENV.items()
    assert ast.literal_eval(value) == WORKER_MALLOC_CONFIG
    assert WORKER_ENV[name] == value
    import dask

    with tuned_workers():
        assert dask.config.get("distributed.worker.profile.enabled") is False
    with tuned_workers(profiler=True):  # cluster_options={"profiler": true}
        assert dask.config.get("distributed.worker.profile.enabled") is True
    with tuned_workers():
        assert dask.config.get("distributed.admin.tick.interval") == "1s"
    assert WORKER_ENV["DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED"] == "False"
    assert WORKER_ENV["DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL"] == "1s"
    for dockerfile in INFRA.glob("docker/Dockerfile*"):
        assert f"{name}='{value}'" in dockerfile.read_text(), dockerfile
        assert "DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED=False" in dockerfile.read_text()
        assert "DASK_DISTRIBUTED__ADMIN__TICK__INTERVAL=1s" in dockerfile.read_text()


def test_cluster_kinds_validate_and_missing_back_ends_fail_clearly(tmp_path):
    from calcpipe.flows.cluster import cluster_client

    for kind in ("local-cuda", "kubernetes", "slurm"):
        assert ScoreParams(source="a", out="b", cluster=kind).cluster == kind
    assert uses_gpus(ScoreParams(source="a", out="b", cluster="slurm"))
    assert not uses_gpus(ScoreParams(source="a", out="b", cluster="slurm",
                                     cluster_options={"gpus_per_worker": 0}))
    assert not uses_gpus(ScoreParams(source="a", out="b"))
    assert studies_per_gpu(ScoreParams(source="a", out="b")) == STUDIES_PER_GPU
    assert studies_per_gpu(ScoreParams(source="a", out="b", cluster="local-cuda",
                                       cluster_options={"studies_per_gpu": 2})) == 2
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="needs a CUDA GPU"):
            with cluster_client(ScoreParams(source="a", out="b", cluster="local-cuda")):
                pass


def test_local_gpu_workers_share_each_gpu_one_study_per_process():
    from calcpipe.flows.cluster import local_gpu_workers

    specs = local_gpu_workers(["0", "1"], 3, {"OMP_NUM_THREADS": "1"})
    assert len(specs) == 6
    options = [spec["options"] for spec in specs.values()]
    assert sorted(o["env"]["CUDA_VISIBLE_DEVICES"] for o in options) == ["0"] * 3 + ["1"] * 3
    assert all(o["nthreads"] == 1 and o["resources"] == {"GPU": 1} for o in options)
    assert all(o["env"]["OMP_NUM_THREADS"] == "1" and o["host"] == "127.0.0.1"
               for o in options)

    # the specification starts a cluster whose processes each see their own GPU's number
    # and run tasks that ask for GPU=1
    from distributed import Client, Scheduler, SpecCluster, get_worker

    def seen(_: int) -> tuple[str, str]:
        import os
        import time

        time.sleep(0.2)
        return get_worker().name, os.environ["CUDA_VISIBLE_DEVICES"]

    with SpecCluster(workers=local_gpu_workers(["0", "1"], 1), silence_logs=40,
                     scheduler={"cls": Scheduler, "options": {"dashboard_address": None}}
                     ) as cluster, Client(cluster) as client:
        runs = client.gather(client.map(seen, range(6), resources={"GPU": 1}))
    assert {name: gpu for name, gpu in runs} == {"gpu0-0": "0", "gpu1-0": "1"}


def test_local_cuda_cluster_uses_the_gpus_it_was_given_on_loopback(monkeypatch):
    """``--cluster local-cuda`` in a process given GPUs 5 and 7 (a Slurm allocation):
    the workers see those, not 0 and 1, and nothing listens beyond this machine."""
    import os

    import distributed
    import torch
    from calcpipe.flows.cluster import _start

    started = {}

    class Captured:
        def __init__(self, **kwargs):
            started.update(kwargs)

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    monkeypatch.setattr(distributed, "SpecCluster", Captured)
    _start(ScoreParams(source="a", out="b", cluster="local-cuda",
                       cluster_options={"studies_per_gpu": 2}))
    workers = [spec["options"] for spec in started["workers"].values()]
    assert sorted(w["env"]["CUDA_VISIBLE_DEVICES"] for w in workers) == ["5", "5", "7", "7"]
    assert {w["host"] for w in workers} == {"127.0.0.1"}
    assert started["scheduler"]["options"]["host"] == "127.0.0.1"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    _start(ScoreParams(source="a", out="b", cluster="local-cuda"))  # the cores but one
    workers = [spec["options"] for spec in started["workers"].values()]
    assert len(workers) == 2 * max(1, (os.cpu_count() or 2) // 2 - 1)
    assert {w["env"]["CUDA_VISIBLE_DEVICES"] for w in workers} == {"0", "1"}


def test_kubernetes_scales_pods_and_slurm_scales_jobs():
    from calcpipe.flows.cluster import scale

    class Cluster:
        def scale(self, n=None, jobs=0):
            self.asked = (n, jobs)

    for kind, asked in (("slurm", (None, 3)), ("kubernetes", (3, 0))):
        cluster = Cluster()
        scale(cluster, ScoreParams(source="a", out="b", cluster=kind, workers=3))
        assert cluster.asked == asked
    cluster = Cluster()
    scale(cluster, ScoreParams(source="a", out="b", cluster="local", workers=3))
    assert not hasattr(cluster, "asked")
    with pytest.raises(ValueError, match="at least studies_per_gpu"):
        slurm_cluster_options({"cores": 4})


def test_in_flight_window_grows_with_the_cluster(dask_address):
    """A callable limit is asked again as studies complete: work follows the workers that
    join a Kubernetes or Slurm cluster after the start."""
    import threading
    import time

    from calcpipe.flows.score_cohort import in_flight_window
    from distributed import Client

    lock, outstanding, peak = threading.Lock(), [0], []

    def work(value: int) -> int:
        time.sleep(0.05)
        return value

    limits = iter([1] * 4 + [3] * 100)
    with Client(dask_address, set_as_default=False) as client:
        def submit(value: int):
            with lock:
                outstanding[0] += 1
                peak.append(outstanding[0])
            return client.submit(work, value, pure=False)

        done = []
        for _value, future in in_flight_window(client, range(12), submit,
                                              lambda: next(limits), recheck_s=0.0):
            done.append(future.result())
            with lock:
                outstanding[0] -= 1
    assert sorted(done) == list(range(12))
    assert peak[:3] == [1, 1, 1] and max(peak) == 3


def test_in_flight_defaults_to_twice_the_clusters_threads():
    from calcpipe.flows.score_cohort import in_flight

    class Client:
        def __init__(self, threads: list[int]) -> None:
            self.threads = threads

        def nthreads(self) -> dict[str, int]:
            return {f"w{i}": n for i, n in enumerate(self.threads)}

    params = ScoreParams(source="a", out="b")
    assert in_flight(params, Client([1] * 30)) == 60  # a GPU node's 30 processes
    assert in_flight(params, Client([1, 1])) == 8
    assert in_flight(params.model_copy(update={"in_flight": 3}), Client([1] * 30)) == 3


def test_kubernetes_pods_take_memory_and_cores_from_the_cluster_options():
    """As Slurm jobs do: docs/scale.md lists both for Kubernetes and Slurm."""
    params = ScoreParams(source="s3://b/in", out="s3://b/out", cluster="kubernetes",
                         cluster_options={"memory": "64Gi", "cores": 20,
                                          "studies_per_gpu": 16})
    limits = kubernetes_spec_for(params)["spec"]["worker"]["spec"]["containers"][0][
        "resources"]["limits"]
    assert (limits["memory"], limits["cpu"]) == ("64Gi", "20")
    default = kubernetes_spec_for(ScoreParams(source="s3://b/in", out="s3://b/out",
                                              cluster="kubernetes"))
    assert default == kubernetes_cluster_spec("calcpipe", version=__version__, workers=2)
