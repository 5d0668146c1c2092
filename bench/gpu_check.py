"""GPU measurements in one run (``bench/gpu_check.sh``): segmentation studies per second
with the shipped model on synthetic 512 x 512 studies rendered on the CPU cores.

Needs numpy, scipy, torch and pydicom (carry the pydicom wheel in gpu_carry/).
"""

from __future__ import annotations

import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from calcpipe.models.segment import UNetSegmenter
from calcpipe.synthetic import render_study, sample_spec

STUDIES = 40


def _render(index: int) -> tuple[object, object]:
    rendered = render_study(sample_spec(9001, index))
    return rendered.hu, rendered.spacing_mm


def main() -> int:
    import torch

    out = Path(os.environ.get("OUT", "gpu_out"))
    out.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(max(1, (os.cpu_count() or 2) - 1)) as pool:
        studies = list(pool.map(_render, range(STUDIES)))
    figures = {"gpu": torch.cuda.get_device_name(0), "studies": STUDIES,
               "date": time.strftime("%Y-%m-%d")}
    for precision in ("fp32", "bf16"):
        segmenter = UNetSegmenter.load("default", device="cuda", precision=precision,
                                       batch_size=64)
        segmenter.segment(*studies[0])
        torch.cuda.synchronize()
        start = time.monotonic()
        for hu, spacing in studies:
            segmenter.segment(hu, spacing)
        torch.cuda.synchronize()
        figures[f"{precision}_studies_per_s"] = STUDIES / (time.monotonic() - start)
    print(json.dumps(figures, indent=1))
    (out / "gpu_check.json").write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
