"""Shared fixtures: real scans from ../shared/data (skipped when absent) and a series writer."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from calcpipe.dicom.writer import write_series

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real CT scans not available: {SHARED_DATA} is absent")
    return SHARED_DATA


def random_hu(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1024, 3000, size=shape).astype(np.int16)


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., tuple[Path, np.ndarray, list[Path]]]:
    """Write a small CT series; returns (folder, hu, files)."""
    counter = iter(range(1000))

    def make(shape: tuple[int, int, int] = (5, 24, 32), *, seed: int = 0,
             spacing_mm: tuple[float, float, float] = (3.0, 0.5, 0.6),
             **kwargs: Any) -> tuple[Path, np.ndarray, list[Path]]:
        folder = tmp_path / f"series{next(counter)}"
        hu = random_hu(shape, seed)
        files = write_series(folder, hu, spacing_mm=spacing_mm, **kwargs)
        return folder, hu, files

    return make


# The pipeline tests talk to a local S3 server with dummy credentials; Dask worker
# processes inherit the environment when they start, so it is set before any test runs.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One Prefect test harness (temporary database and API) for the whole session."""
    os.environ["PREFECT_HOME"] = str(tmp_path_factory.mktemp("prefect_home"))
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture(scope="session")
def dask_address() -> Iterator[str]:
    """A local Dask cluster shared by the pipeline tests (the flow's scheduler-address
    mode): two single-threaded worker processes."""
    from calcpipe.flows.cluster import tuned_workers  # as the flow's local clusters
    from distributed import LocalCluster

    with tuned_workers(), LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
            silence_logs=40) as cluster:
        yield cluster.scheduler_address


@pytest.fixture(scope="session")
def local_s3() -> Iterator[Any]:
    """A moto S3 server on 127.0.0.1 for the whole session."""
    from calcpipe.ingest.local_s3 import LocalS3

    with LocalS3() as server:
        yield server
