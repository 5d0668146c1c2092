"""Prefect flows: thin orchestration over the calcpipe library.

Installed as ``calcpipe.flows`` (see ``[tool.setuptools] package-dir`` in pyproject.toml)
so the CLI and container images run flows without a source checkout. The cohort scoring
flow arrives with the pipeline issue; nothing here imports Prefect until then.
"""

from importlib.resources import files


def catalog_template() -> str:
    """The data catalog template shipped inside the package."""
    return files("calcpipe").joinpath("data_catalog.yaml").read_text(encoding="utf-8")
