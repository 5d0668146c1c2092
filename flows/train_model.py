"""Training flow: split a labelled cohort by patient, train the U-Net, measure it on the
test part (``calcpipe train --flow``). The same steps as :func:`train_from_cohort`, as
Prefect tasks, so that training runs are recorded, scheduled and watched like scoring runs;
the test summary is published as a markdown artifact."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from calcpipe.models.train import (
    CohortSplit,
    TrainConfig,
    evaluate_test,
    split_cohort,
    train,
    train_config,
)


@task(name="split-cohort", cache_policy=NO_CACHE)
def split_task(cohort: str, config: TrainConfig) -> CohortSplit:
    split = split_cohort(cohort, config, get_run_logger().info)
    get_run_logger().info("split: %s", split.description["data"])
    return split


@task(name="train", cache_policy=NO_CACHE)
def train_task(split: CohortSplit, config: TrainConfig, out: str, device: str,
               resume: bool) -> dict[str, Any]:
    return train(split.train, split.validation, config, out, description=split.description,
                 device=device, resume=resume, log=get_run_logger().info)


@task(name="evaluate-test", cache_policy=NO_CACHE)
def evaluate_task(out: str, split: CohortSplit, device: str) -> dict[str, Any]:
    return evaluate_test(out, split.test, device)


@flow(name="train-model", validate_parameters=True)
def train_model(cohort: str, out: str, steps: int = 4000, minutes: float = 60.0,
                base: int = 8, depth: int = 4, context: int = 1, spacing: float = 1.0,
                patch: int = 160, batch: int = 32, device: str = "cpu", seed: int = 0,
                resume: bool = False) -> dict[str, Any]:
    """Train on ``cohort`` (studies with ``_truth/labels/<key>.nii.gz``), write the
    checkpoint ``out``; the training result with the test summary."""
    from calcpipe.models.accuracy import format_summary

    config = train_config(steps=steps, minutes=minutes, base=base, depth=depth,
                          context=context, spacing=spacing, patch=patch, batch=batch, seed=seed)
    split = split_task(cohort, config)
    result = train_task(split, config, out, device, resume)
    test = evaluate_task(out, split, device)
    create_markdown_artifact(f"# Model `{out}`\n\n{split.description['data']}\n\n```\n"
                             f"{format_summary(test)}\n```", key="calcpipe-training",
                             description=f"training run for {out}")
    return {**result, "test": test}
