"""calcpipe: vessel-specific coronary and aortic calcium scoring for CT cohorts.

The core library (this package) imports no orchestrator and starts no cluster; the
Prefect flows ship beside it as :mod:`calcpipe.flows`.
"""

import os
from importlib.metadata import PackageNotFoundError, version

# PyTorch's CPU allocator backs tensors of 2 MB and more with transparent huge pages only
# when this is set, and reads it once, at its first allocation: hence here, before any
# calcpipe module imports torch. A U-Net forward pass allocates its activations (tens of MB)
# afresh; faulting them in 4 KiB pages took about a third of CPU segmentation time
# (bench/bench_segmentation.py prints both). THP_MEM_ALLOC_ENABLE=0 turns it off.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

try:
    __version__ = version("calcpipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
