"""Parameters of a cohort scoring run, validated with pydantic (no secrets in here)."""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

#: Environment variable holding the pseudonymisation secret (never a parameter).
SECRET_ENV = "CALCPIPE_PSEUDONYM_KEY"
#: Clusters the flow can start itself (besides an existing scheduler's address).
CLUSTER_KINDS = ("local", "local-threads", "local-cuda", "kubernetes", "slurm")


class ScoreParams(BaseModel):
    """What ``calcpipe score`` runs.

    ``source`` and ``out`` are local paths or fsspec URLs. ``cluster`` is ``"local"`` (a
    ``distributed.LocalCluster`` of ``workers`` processes), ``"local-threads"`` (one process,
    ``workers`` threads), ``"local-cuda"`` (worker processes sharing each local GPU),
    ``"kubernetes"`` (the Dask operator), ``"slurm"`` (dask-jobqueue), or the address of an
    existing Dask scheduler (``tcp://host:8786``); ``cluster_options`` tune Kubernetes and
    Slurm (name, gpus_per_worker, queue, account, walltime, memory, cores:
    ``calcpipe.flows.cluster``), GPU workers (studies_per_gpu: worker processes per GPU)
    and local clusters (profiler: Dask's statistical profiler, off by default).
    ``torch_threads``: threads of the network per worker (default: the cores shared evenly
    among the workers of a local cluster; torch's own default elsewhere).
    ``plan_only``: index and plan (the ``series`` rows and the failures of studies that
    cannot be scored are written), score nothing: what the run would do.
    ``storage_options`` are fsspec options for both source and out (e.g. an S3
    ``endpoint_url``); put credentials in the environment, not here.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str
    out: str
    cohort: str = "cohort"
    model: str = "default"
    profile: str = "standard"
    shard_size: int = Field(default=200, ge=1, le=100_000)
    # None: twice the cluster's worker threads, at least 8 (a GPU node's many processes
    # must all have work)
    in_flight: int | None = Field(default=None, ge=1, le=10_000)
    cluster: str = "local"
    workers: int = Field(default=2, ge=1, le=4096)
    torch_threads: int | None = Field(default=None, ge=1, le=256)
    device: str = "auto"
    precision: str = "auto"  # bf16 where the device computes it natively, else fp32
    rescore: bool = False
    retry_failed: bool = False
    plan_only: bool = False
    storage_options: dict[str, Any] = Field(default_factory=dict)
    cluster_options: dict[str, Any] = Field(default_factory=dict)

    @field_validator("source", "out")
    @classmethod
    def _location(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must be a path or URL")
        return value if "://" in value else os.path.abspath(value)

    @field_validator("out")
    @classmethod
    def _writable(cls, value: str) -> str:
        from calcpipe.tables.store import TableStore

        TableStore(value)  # refuses a local folder Delta Lake cannot write under
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        from calcpipe.scoring import get_profile

        get_profile(value)  # KeyError -> validation error naming the profiles
        return value

    @field_validator("precision")
    @classmethod
    def _precision(cls, value: str) -> str:
        from calcpipe.models.segment import PRECISIONS

        if value not in PRECISIONS:
            raise ValueError(f"precision is one of {', '.join(PRECISIONS)}")
        return value

    @field_validator("cluster")
    @classmethod
    def _cluster(cls, value: str) -> str:
        if value in CLUSTER_KINDS or "://" in value:
            return value
        raise ValueError("cluster is one of " + ", ".join(CLUSTER_KINDS)
                         + " or a scheduler address like tcp://host:8786")

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
            return value
        raise ValueError("device is auto, cpu, cuda, cuda:N or mps")

    @field_validator("storage_options")
    @classmethod
    def _no_secrets(cls, value: dict[str, Any]) -> dict[str, Any]:
        def names(options: Any) -> list[str]:  # every key, nested ones too
            if isinstance(options, dict):
                return [str(k) for k in options] + [n for v in options.values()
                                                    for n in names(v)]
            if isinstance(options, list | tuple):
                return [n for v in options for n in names(v)]
            return []

        for name in names(value):
            if _CREDENTIAL.search(name) and not name.lower().endswith("kms_key_id"):
                raise ValueError(f"options must not hold {name!r}: they are stored in run "
                                 "records and the orchestrator's database; use the "
                                 "environment (AWS_ACCESS_KEY_ID, ...) instead")
        return value

    def public(self) -> dict[str, Any]:
        """The parameters, as a deployment passes them to its runs."""
        return self.model_dump(mode="json")

    def recorded(self) -> dict[str, Any]:
        """The parameters as the ``runs`` table records them: source and out as the
        SHA-256 of their text (object paths may hold names), the rest as given."""
        out = self.public()
        for name in ("source", "out"):
            out[name] = "sha256:" + hashlib.sha256(out[name].encode("utf-8")).hexdigest()
        return out


#: Option names that hold credentials (secret, key, token, password, credential, ...)
_CREDENTIAL = re.compile(r"secret|key|token|passw|credential|connection_string|sas",
                         re.IGNORECASE)


def secret_from_env() -> bytes | None:
    value = os.environ.get(SECRET_ENV, "")
    return value.encode("utf-8") if value else None
