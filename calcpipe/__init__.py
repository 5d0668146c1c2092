"""calcpipe: vessel-specific coronary and aortic calcium scoring for CT cohorts.

The core library (this package) imports no orchestrator and starts no cluster; the
Prefect flows ship beside it as :mod:`calcpipe.flows`.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("calcpipe")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__"]
