"""Shared fixtures: real scans from ../shared/data (skipped when absent) and a series writer."""

from __future__ import annotations

from collections.abc import Callable
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
