"""Evaluation flow: ``calcpipe evaluate`` as a Prefect flow, with its summary as an artifact."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact

from calcpipe.evaluation import run_evaluation


@flow(name="evaluate", validate_parameters=True)
def evaluate(pred: str, truth: str, report: str, profile: str = "standard") -> dict[str, Any]:
    """Evaluate the results in ``pred`` against ``truth``; tables and ``evaluation.md``
    land in ``report``."""
    result = run_evaluation(pred, Path(truth), Path(report), profile=profile)
    create_markdown_artifact((Path(report) / "evaluation.md").read_text(encoding="utf-8"),
                             key="calcpipe-evaluation")
    return {"studies": result.n_studies, "kappa": result.kappa,
            "agreement": result.agreement}
