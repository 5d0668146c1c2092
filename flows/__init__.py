"""Prefect flows: thin orchestration over the calcpipe library.

Installed as ``calcpipe.flows`` (see ``[tool.setuptools] package-dir`` in pyproject.toml)
so the CLI and container images run flows without a source checkout. ``score_cohort`` is the
cohort flow; ``cluster`` chooses the Dask cluster and loads the model once per worker.
Importing this package imports neither Prefect nor Dask; its modules do.
"""

from importlib.resources import files


def catalog_template() -> str:
    """The data catalog template shipped inside the package."""
    return files("calcpipe").joinpath("data_catalog.yaml").read_text(encoding="utf-8")
