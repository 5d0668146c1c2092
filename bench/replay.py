"""Shared by the host-CPU benchmarks: the network's logits replayed, and the steps a GPU
node runs on its GPU timed apart.

Imports calcpipe only when called, so that ``probe_host_cpu_calibration.py`` can use it
against another checkout's library (whichever ``calcpipe`` comes first on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any


class Replay:
    """The network's logits recorded per call in a first pass, returned in order after."""

    def __init__(self, network: Any) -> None:
        self.network, self.recorded, self.at = network, [], None

    def __call__(self, x: Any) -> Any:
        if self.at is None:
            out = self.network(x).clone()
            self.recorded.append(out)
            return out
        out = self.recorded[self.at % len(self.recorded)]
        self.at += 1
        return out


@contextlib.contextmanager
def on_gpu_there(stages: dict[str, float], resampling: str = "resampling",
                 reading: str = "reading logits") -> Iterator[None]:
    """Adds to ``stages`` the seconds of the segment stage's steps that a GPU node runs on
    its GPU: ``model_input`` less finding the body crop (under ``resampling``) and
    ``sample_labels`` (under ``reading``)."""
    from calcpipe.models import preprocess, segment

    def timed(function: Any, name: str, sign: float) -> Any:
        def wrapper(*a: Any, **k: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return function(*a, **k)
            finally:
                stages[name] = stages.get(name, 0.0) + sign * (time.perf_counter() - t0)
        return wrapper

    originals = (preprocess.model_input, preprocess.body_box, segment.sample_labels)
    preprocess.model_input = timed(originals[0], resampling, 1.0)
    preprocess.body_box = timed(originals[1], resampling, -1.0)
    segment.sample_labels = timed(originals[2], reading, 1.0)
    try:
        yield
    finally:
        preprocess.model_input, preprocess.body_box, segment.sample_labels = originals
