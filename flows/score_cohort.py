"""The nightly cohort flow: index -> plan -> score and commit shards on Dask -> report.

Thin by design: every stage is a function of :class:`calcpipe.pipeline.Run`; this module
only decides where work runs. One Prefect task for index, one for plan, one per shard
(hundreds of studies) and one for the report, never one per study: 100,000 studies in shards
of 200 make 503 task runs. Index and plan run as Dask futures on the workers (header-reading
tasks of 4,096 objects, plan partitions of 100,000 objects) and hand each other files in the
run's scratch folder, so this process holds counts and shard specifications only. Inside a
shard, studies are Dask futures with at most ``in_flight`` outstanding, and commits happen
in this process (a single writer), shard by shard, so a run that dies keeps every shard
committed before it.

The pseudonymisation secret comes from the ``CALCPIPE_PSEUDONYM_KEY`` environment variable
or a Prefect ``Secret`` block named by ``secret_block``; it is never a flow parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from calcpipe.flows.cluster import (
    SegmenterPlugin,
    cluster_client,
    score_on_worker,
    torch_threads,
    uses_gpus,
)
from distributed import Client, as_completed
from distributed.scheduler import KilledWorker
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from calcpipe.pipeline.params import ScoreParams, secret_from_env
from calcpipe.pipeline.plan import ShardSpec, StudyItem
from calcpipe.pipeline.run import Mapper, Run
from calcpipe.pipeline.work import StudyOutcome, failed_outcome


def on_dask(client: Client) -> Mapper:
    """Map a stage's function over workers (one Dask future per value), in order."""
    def mapper(function: Any, values: Any) -> list[Any]:
        return list(client.gather(client.map(function, values, pure=False)))

    return mapper


@task(name="index", cache_policy=NO_CACHE)
def index_stage(run: Run, client: Client) -> None:
    listing = run.index(on_dask(client))
    get_run_logger().info(
        "index: %d objects listed, %d headers read (new or changed) in %d tasks, %s skipped",
        listing.objects_listed, listing.to_read, listing.read_tasks,
        dict(run.counts.index_skipped) or "none")


@task(name="plan", cache_policy=NO_CACHE)
def plan_stage(run: Run, client: Client) -> list[ShardSpec]:
    shards = run.plan(on_dask(client))
    c = run.counts
    get_run_logger().info(
        "plan: %d studies, %d to score in %d shards, %d already done, %d cannot be scored",
        c.studies_found, c.studies_planned, len(shards), c.studies_skipped, c.studies_failed)
    return shards


@task(name="score-shard", cache_policy=NO_CACHE)
def score_shard(run: Run, client: Client, spec: ShardSpec, number: int, total: int,
                progress: Any = None) -> None:
    """Score one shard on the cluster with at most ``in_flight`` studies outstanding, then
    commit it (from this process: the single writer of the result tables)."""
    start = time.perf_counter()
    p = run.params
    shard = run.shard_items(spec)
    # the network's tasks run only on GPU workers where the cluster has them (several
    # single-threaded processes per GPU, each with GPU=1: one study at a time each)
    resources = {"GPU": 1} if uses_gpus(p) and not p.rescore else None

    def submit(item: StudyItem) -> Any:
        return client.submit(score_on_worker, item, run.provenance, run.store.root,
                             p.storage_options or None, run.secret, p.rescore,
                             key=f"score-{item.result_id}-{run.run_id}", pure=False,
                             resources=resources)

    outcomes = []
    for item, future in in_flight_window(client, shard, submit,
                                         lambda: in_flight(p, client)):
        outcomes.append(_outcome(future, item, run))
        future.release()
        if progress is not None:
            progress.advance()
    scored = time.perf_counter()
    run.commit(outcomes)
    seconds = time.perf_counter() - start
    failed = sum(o.failure is not None for o in outcomes)
    get_run_logger().info(
        "shard %d/%d: %d studies (%d failed) in %.1f s, %.2f studies/s; %.1f s of study "
        "work on the workers, commit %.1f s", number, total, len(shard), failed, seconds,
        len(shard) / seconds if seconds else 0.0, sum(o.seconds for o in outcomes),
        time.perf_counter() - scored)


def in_flight(params: ScoreParams, client: Client) -> int:
    """Studies outstanding: ``params.in_flight``, or twice the cluster's worker threads at
    the time, at least 8 (workers of Kubernetes and Slurm clusters join while it runs:
    :func:`in_flight_window` asks again)."""
    if params.in_flight is not None:
        return params.in_flight
    return max(8, 2 * sum(client.nthreads().values()))


def in_flight_window(client: Client, values: Iterable[Any], submit: Callable[[Any], Any],
                     in_flight: int | Callable[[], int], recheck_s: float = 1.0,
                     ) -> Iterator[tuple[Any, Any]]:
    """Submit ``submit(value)`` for each value with at most ``in_flight`` futures
    outstanding; yield (value, future) as each completes, submitting the next. A callable
    ``in_flight`` is asked again at most every ``recheck_s`` seconds as futures complete
    (a cluster that grows gets more work)."""
    limit = in_flight if callable(in_flight) else (lambda: in_flight)
    pending = iter(values)
    submitted: dict[str, Any] = {}

    def submit_next() -> Any:
        value = next(pending, None)
        if value is None:
            return None
        future = submit(value)
        submitted[future.key] = value
        return future

    current, checked = limit(), time.monotonic()
    window = as_completed([f for f in (submit_next() for _ in range(current))
                           if f is not None], loop=client.loop)
    for future in window:
        yield submitted.pop(future.key), future
        if time.monotonic() - checked >= recheck_s:
            current, checked = limit(), time.monotonic()
        while len(submitted) < current:
            following = submit_next()
            if following is None:
                break
            window.add(following)


def _outcome(future: Any, item: StudyItem, run: Run) -> StudyOutcome:
    """The study's outcome; a study whose task died with its workers (``KilledWorker``
    after Dask's allowed retries) or could not run becomes a failure, not a failed shard."""
    try:
        return future.result()
    except KilledWorker as e:
        return failed_outcome(item, run.provenance, "score", "worker_lost",
                              f"the study's task killed its worker repeatedly: {e}",
                              fix="inspect the study; it may exhaust worker memory")
    except Exception as e:
        return failed_outcome(item, run.provenance, "score", "internal_error",
                              f"{type(e).__name__}: {e}")


@task(name="report", cache_policy=NO_CACHE)
def report_stage(run: Run) -> dict[str, Any]:
    row = run.finish()
    create_markdown_artifact(run.report_markdown, key="calcpipe-run-summary",
                             description=f"calcpipe run {run.run_id}")
    return row


def load_secret(secret_block: str | None) -> bytes | None:
    """The pseudonymisation secret: a Prefect Secret block if named, else the environment."""
    if secret_block:
        from prefect.blocks.system import Secret

        block: Any = Secret.load(secret_block)
        value = block.get()
        return str(value).encode("utf-8") if value else None
    return secret_from_env()


@flow(name="score-cohort", validate_parameters=True)
def score_cohort(params: ScoreParams, secret_block: str | None = None,
                 show_progress: bool = True) -> dict[str, Any]:
    """Score every study under ``params.source`` that has no committed result yet.

    Returns the run's ``runs`` row. ``show_progress`` draws a rich progress bar over the
    studies to score.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    run = Run(params, load_secret(secret_block), run_id=str(flow_run.get_id() or "") or None,
              resumed=flow_run.get_run_count() > 1)  # a retry keeps the flow run's id
    get_run_logger().info("run %s: %s -> %s (model %s, profile %s)", run.run_id,
                          params.source, params.out, run.provenance.model_id, params.profile)
    try:
        with cluster_client(params) as client:
            if not (params.rescore or params.plan_only):
                client.register_plugin(SegmenterPlugin(
                    params.model, params.device, params.precision, torch_threads(params)))
            index_stage(run, client)
            shards = plan_stage(run, client)
            if params.plan_only:  # planned and reported; nothing is scored
                shards = []
            bar = Progress("[progress.description]{task.description}", BarColumn(),
                           MofNCompleteColumn(), TimeRemainingColumn(),
                           disable=not show_progress)
            with bar:
                counter = _Advance(bar, bar.add_task("scoring",
                                                     total=run.counts.studies_planned))
                start = time.perf_counter()
                for number, shard in enumerate(shards, start=1):
                    score_shard(run, client, shard, number, len(shards), counter)
                # the whole stage: Prefect's cost per task run is part of the overhead
                run.counts.timings["score_s"] = time.perf_counter() - start
        return report_stage(run)  # removes the scratch folder
    except BaseException:  # object paths do not outlive a failed run (housekeeping: killed)
        run.remove_scratch()
        raise


class _Advance:
    """Advances one rich progress task (passed into the shard task)."""

    def __init__(self, bar: Any, task_id: Any) -> None:
        self.bar, self.task_id = bar, task_id

    def advance(self) -> None:
        self.bar.advance(self.task_id)
