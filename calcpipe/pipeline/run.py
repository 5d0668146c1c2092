"""One run of the cohort pipeline: index -> plan -> score -> commit -> report.

:class:`Run` holds the stages; the Prefect flow (``calcpipe.flows.score_cohort``) calls
them as tasks and fans work out on Dask, and :func:`run_single_process` calls them in one
process (the reference the flow's rows are tested against).

Commit protocol (per shard, in the flow process): ``failures`` rows; the results'
``lesions`` and ``vessel_scores`` rows; then the ``study_scores`` rows, inserted only where
the ``result_id`` is absent (an atomic Delta merge, retried on conflict). A result exists
once its ``study_scores`` row does, and belongs to the run named there: the catalog's views
join on (result_id, run_id), so readers never see half a result, and the committing run
then deletes every other run's rows of its results (its own when a concurrent run won, an
earlier attempt's that died before its marker). So a result is committed at most once even
with two runs on one cohort at the same time.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from calcpipe import __version__
from calcpipe.pipeline.index import (
    GroupRead,
    Listing,
    arrow,
    current_headers,
    list_source,
    partition_filter,
    read_group,
)
from calcpipe.pipeline.params import ScoreParams
from calcpipe.pipeline.plan import (
    NOT_BLOCKING,
    PartitionPlan,
    Plan,
    Provenance,
    ShardSpec,
    StudyItem,
    plan,
    plan_partitions,
    read_items,
    write_items,
)
from calcpipe.pipeline.scratch import heartbeat, remove, scratch_root
from calcpipe.pipeline.work import StudyOutcome
from calcpipe.tables.schemas import RESULT_TABLES, SCHEMA_VERSION, to_table
from calcpipe.tables.store import TableStore, join

#: The keys of the tables a concurrent run may write the same rows of (docs/tables.md).
SERIES_KEY = ("study_key", "input_fingerprint", "series_id")
FAILURE_KEY = ("result_id", "attempt")

T = TypeVar("T")
R = TypeVar("R")
#: Runs a function over values, somewhere (Dask workers in the flow), in order.
Mapper = Callable[[Callable[[T], R], Sequence[T]], list[R]]


def in_process(function: Callable[[T], R], values: Sequence[T]) -> list[R]:
    """The :data:`Mapper` of a single-process run."""
    return [function(v) for v in values]


@dataclass
class RunCounts:
    objects_listed: int = 0
    headers_read: int = 0
    studies_found: int = 0
    studies_planned: int = 0
    studies_skipped: int = 0
    studies_scored: int = 0
    studies_failed: int = 0
    failure_codes: Counter[str] = field(default_factory=Counter)
    index_skipped: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=lambda: {
        "index_s": 0.0, "plan_s": 0.0, "score_s": 0.0, "study_s": 0.0})


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"calcpipe": __version__}
    for name in ("numpy", "pydicom", "torch", "pyarrow", "deltalake", "dask", "distributed",
                 "prefect"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def resolve_model(model: str) -> tuple[str, str]:
    """(model_id, checksum) of a model spec, without building the network."""
    from calcpipe.models.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(model)
    return checkpoint.model_id, checkpoint.sha256


def resolve_device(device: str) -> str:
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_segmenter(model: str, device: str, precision: str, threads: int | None) -> Any:
    from calcpipe.models.segment import UNetSegmenter

    return UNetSegmenter.load(model, device=resolve_device(device), precision=precision,
                              threads=threads)


class Run:
    """The state of one run and its stages (no Prefect, no cluster in here)."""

    def __init__(self, params: ScoreParams, secret: bytes | None,
                 run_id: str | None = None, *, resumed: bool = False) -> None:
        self.params = params
        self.secret = secret
        self.run_id = run_id or uuid.uuid4().hex
        # An earlier attempt under this run id (a retried flow run) may have died between
        # appending a shard's rows and its marker: those rows carry this run's id too.
        self.resumed = resumed
        self._commits_begun: set[str] = set()  # result ids whose commit began here
        self._scored_counted: set[str] = set()
        self._failures_counted: set[tuple[str, int]] = set()
        self.started_at = dt.datetime.now(dt.UTC)
        self.store = TableStore(params.out, params.storage_options or None)
        self.counts = RunCounts()
        self.report_markdown = ""
        from calcpipe.models.segment import resolve_precision

        model_id, checksum = resolve_model(params.model)
        device = resolve_device(params.device)
        if device.startswith("cuda") and params.cluster.startswith("local"):
            import torch  # the workers run here: refuse before anything is written

            if not torch.cuda.is_available():
                raise ValueError(f"device {device!r}: this machine has no CUDA device; use "
                                 "--device cpu or auto")
        self.provenance = Provenance(__version__, model_id, checksum, params.profile,
                                     device, resolve_precision(params.precision, device),
                                     self.run_id)

    # -- index -----------------------------------------------------------------------
    @property
    def scratch(self) -> str:
        """This run's scratch folder (INTERNAL: its files hold object paths)."""
        return scratch_root(self.store.root, self.run_id)

    def index(self, mapper: Mapper) -> Listing:
        """List the source and read what is new or changed, through ``mapper`` (the flow
        maps on Dask workers); only counts come back here."""
        start = time.perf_counter()
        listing = mapper(self.list_source, [None])[0]
        reads = mapper(self.read_group, list(range(listing.read_tasks)))
        c = self.counts
        c.objects_listed, c.headers_read = listing.objects_listed, listing.to_read
        c.index_skipped = listing.skipped + sum((r.skipped for r in reads), Counter())
        c.timings["index_s"] += time.perf_counter() - start
        return listing

    def list_source(self, _: object = None) -> Listing:
        return list_source(self.params.source, self.params.storage_options or None,
                           self.store, self.scratch, self.secret)

    def read_group(self, group: int) -> GroupRead:
        return read_group(self.params.source, self.params.storage_options or None,
                          self.store, self.scratch, group, self.secret, self.run_id)

    # -- plan ------------------------------------------------------------------------
    def plan(self, mapper: Mapper) -> list[ShardSpec]:
        """Plan every study of the listing in partitions (one ``mapper`` call each, by a
        hash of the study key) and return the shards to score; only counts and shard
        specifications come back here, the items stay in the scratch folder."""
        start = time.perf_counter()
        parts = plan_partitions(self.counts.objects_listed)
        partitions = mapper(functools.partial(self.plan_partition, parts=parts),
                            list(range(parts)))
        c = self.counts
        for p in partitions:
            c.studies_found += p.studies_found
            c.studies_planned += p.planned
            c.studies_skipped += p.skipped
            self._count_failures(p.failure_codes)
        c.timings["plan_s"] += time.perf_counter() - start
        return [ShardSpec(p.part, group, size) for p in partitions
                for group, size in enumerate(p.shard_sizes)]

    def plan_partition(self, part: int, parts: int) -> PartitionPlan:
        """Plan the studies of one partition (runs on a worker): append their ``series``
        and ``failures`` rows, write their items to the scratch folder in files of
        ``shard_size``; counts come back."""
        headers = current_headers(self.store, self.scratch, part, parts)
        committed, failed, blocked, seen = self._decided(part, parts)
        result = plan(tuple(headers), self.provenance,
                      committed={r["result_id"] for r in committed},
                      failed_attempts=failed, blocked=blocked, seen_fingerprints=seen,
                      retry_failed=self.params.retry_failed)
        if self.params.rescore:
            self._masks_for_rescore(result, committed)
        # insert-if-absent: a concurrent run plans the same studies and writes these too
        self.store.insert_absent("series", to_table("series", result.series_rows),
                                 key=SERIES_KEY)
        self.store.insert_absent("failures", to_table("failures", result.failures),
                                 key=FAILURE_KEY)
        sizes = write_items(self._items_path(part), result.items, self.params.shard_size,
                            self.store.storage_options) if result.items else []
        return PartitionPlan(part, result.studies_found, len(result.items), result.skipped,
                             Counter(f["code"] for f in result.failures), sizes)

    def shard_items(self, shard: ShardSpec) -> list[StudyItem]:
        """The studies of one shard (read from the scratch folder)."""
        return read_items(self._items_path(shard.part), shard.group, self.store.storage_options)

    def _items_path(self, part: int) -> str:
        return join(self.scratch, "plan", f"part-{part:05d}")

    def _decided(self, part: int, parts: int,
                 ) -> tuple[list[dict[str, Any]], Counter[str], set[str],
                            set[tuple[str, str]]]:
        """This partition's committed results (rows), failures per result, the results
        whose failures block a retry (:data:`NOT_BLOCKING`) and (study_key,
        input_fingerprint) pairs already in ``series``."""
        import duckdb

        with duckdb.connect() as con:
            for name in ("study_scores", "failures", "series"):
                self.store.register(con, name)
            where = f"WHERE {partition_filter('study_key', parts)} = ?"
            committed = arrow(
                con, "SELECT result_id, study_key, input_fingerprint, model_checksum, device, "
                f"precision, scored_at, segmentation_confidence FROM study_scores {where}",
                [part]).to_pylist()
            failures = con.execute(f"SELECT result_id, code FROM failures {where}",
                                   [part]).fetchall()
            failed = Counter[str](r for r, _ in failures)
            blocked = {r for r, code in failures if code not in NOT_BLOCKING}
            seen = {(k, f) for k, f in con.execute(
                f"SELECT DISTINCT study_key, input_fingerprint FROM series {where}",
                [part]).fetchall()}
        return committed, failed, blocked, seen

    def _masks_for_rescore(self, result: Plan, committed: list[dict[str, Any]]) -> None:
        """Keep the studies whose stored mask came from this model on these inputs (the
        latest such result gives device and precision); the others fail."""
        from calcpipe.pipeline.plan import failure_row

        made: dict[tuple[str, str], dict[str, Any]] = {}
        for row in sorted(committed, key=lambda r: r["scored_at"]):
            if row["model_checksum"] == self.provenance.model_checksum:
                made[(row["study_key"], row["input_fingerprint"])] = row
        kept = []
        for item in result.items:
            found = made.get((item.study_key, item.input_fingerprint))
            if found is None:
                result.failures.append(failure_row(
                    item.result_id, item.study_key, item.input_fingerprint, "plan",
                    "no_stored_mask", "no mask of this model for these inputs to re-score",
                    None, "run calcpipe score without --rescore first", attempt=item.attempt,
                    provenance=self.provenance, when=dt.datetime.now(dt.UTC)))
            else:
                kept.append(replace(item, device=found["device"], precision=found["precision"],
                                    confidence=found["segmentation_confidence"]))
        result.items = kept

    # -- commit ----------------------------------------------------------------------
    def commit(self, outcomes: Iterable[StudyOutcome]) -> None:
        """Commit one shard's outcomes (see the module docstring for the protocol)."""
        heartbeat(self.scratch, self.store.storage_options)  # this run's folder is in use
        outcomes = sorted(outcomes, key=lambda o: o.result_id)
        self.counts.timings["study_s"] += sum(o.seconds for o in outcomes)
        failures = [o.failure for o in outcomes if o.failure is not None]
        scored = [o for o in outcomes if o.study_row is not None]
        self.store.insert_absent("failures", to_table("failures", failures), key=FAILURE_KEY)
        new_failures = [f for f in failures if (f["result_id"], f["attempt"])
                        not in self._failures_counted]  # a commit tried again counts once
        self._failures_counted.update((f["result_id"], f["attempt"]) for f in new_failures)
        self._count_failures(Counter(f["code"] for f in new_failures))
        if scored and (self.resumed or not self._commits_begun.isdisjoint(
                o.result_id for o in scored)):
            # An earlier attempt under this run id got part of the way: a result with a
            # marker is done (left alone); the others' rows it left would count twice.
            done = self._winners([o.result_id for o in scored])
            self._count_scored(done)
            scored = [o for o in scored if o.result_id not in done]
            if scored:
                self._drop_own_rows([o.result_id for o in scored])
        if scored:
            ids = [o.result_id for o in scored]
            self._commits_begun.update(ids)
            self.store.append("lesions", to_table(
                "lesions", [r for o in scored for r in o.lesion_rows]))
            self.store.append("vessel_scores", to_table(
                "vessel_scores", [r for o in scored for r in o.vessel_rows]))
            # the marker, insert-if-absent: a result is committed at most once
            self.store.insert_absent("study_scores", to_table(
                "study_scores", [o.study_row for o in scored if o.study_row is not None]),
                key="result_id")
            winners = self._winners(ids)
            self._count_scored(winners)
            self._drop_losers(ids, winners)

    def _count_scored(self, winners: dict[str, str]) -> None:
        """Count the results this run committed, each once."""
        mine = {i for i, run in winners.items() if run == self.run_id} - self._scored_counted
        self._scored_counted |= mine
        self.counts.studies_scored += len(mine)

    def _winners(self, ids: list[str]) -> dict[str, str]:
        """result_id -> the run_id whose study_scores row committed it.

        Filtered in memory: merge commits write string_view columns, and pyarrow cannot
        push a string filter down to a dataset mixing both physical types."""
        import pyarrow as pa
        import pyarrow.compute as pc

        table = self.store.read("study_scores", ["result_id", "run_id"])
        keys = table.column("result_id").cast(pa.string())
        table = table.filter(pc.is_in(keys, value_set=pa.array(ids, pa.string())))
        return dict(zip(table.column("result_id").to_pylist(),
                        table.column("run_id").to_pylist(), strict=True))

    def _drop_losers(self, ids: list[str], winners: dict[str, str]) -> None:
        """Delete result rows of these results not written by the committing run: ours when
        a concurrent run won, or an earlier attempt's that died before its marker. (A
        delete that matches nothing commits nothing.)"""
        from calcpipe.tables.store import quoted

        keep = [f"{rid}:{run}" for rid, run in winners.items()]
        predicate = f"result_id IN ({quoted(ids)})"
        if keep:
            predicate += f" AND concat(result_id, ':', run_id) NOT IN ({quoted(keep)})"
        self._delete_result_rows(predicate)

    def _drop_own_rows(self, ids: list[str]) -> None:
        """Delete this run's result rows of these results, which have no marker: an
        earlier attempt of this run wrote them and died before its marker."""
        from calcpipe.tables.store import quoted

        self._delete_result_rows(f"result_id IN ({quoted(ids)}) "
                                 f"AND run_id = {quoted([self.run_id])}")

    def _delete_result_rows(self, predicate: str) -> None:
        for name in RESULT_TABLES:
            self.store.delete(name, predicate)

    def _count_failures(self, codes: Counter[str]) -> None:
        self.counts.studies_failed += codes.total()
        self.counts.failure_codes.update(codes)

    # -- finish ----------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Append the ``runs`` row, render the catalog, write the report; the row, which
        also carries ``study_s`` (the study work summed over studies, wherever it ran; the
        table does not hold it): ``score_s - study_s`` is what the stage spent around it."""
        from calcpipe.catalog import render_catalog
        from calcpipe.pipeline.report import write_report

        finished = dt.datetime.now(dt.UTC)
        c = self.counts
        row = {
            "run_id": self.run_id, "cohort": self.params.cohort,
            "mode": ("plan" if self.params.plan_only else
                     "rescore" if self.params.rescore else "score"),
            "started_at": self.started_at, "finished_at": finished,
            "parameters_json": json.dumps(self.params.recorded(), sort_keys=True),
            "versions_json": json.dumps(versions(), sort_keys=True),
            "pseudonymised": self.secret is not None,
            "objects_listed": c.objects_listed, "headers_read": c.headers_read,
            "studies_found": c.studies_found, "studies_planned": c.studies_planned,
            "studies_skipped": c.studies_skipped, "studies_scored": c.studies_scored,
            "studies_failed": c.studies_failed, **c.timings,
            "total_s": (finished - self.started_at).total_seconds(),
            "schema_version": SCHEMA_VERSION,
        }
        self.store.append("runs", to_table("runs", [row]))
        render_catalog(self.params.out, self.params.storage_options or None)
        write_report(self, row)
        self.remove_scratch()
        return row

    def remove_scratch(self) -> None:
        remove(self.scratch, self.store.storage_options)


def run_single_process(params: ScoreParams, secret: bytes | None = None,
                       threads: int | None = None) -> dict[str, Any]:
    """The whole pipeline in this process, without Prefect or Dask; the ``runs`` row."""
    from calcpipe.pipeline.work import score_study

    run = Run(params, secret)
    try:
        run.index(in_process)
        shards = run.plan(in_process)
        if params.plan_only:
            return run.finish()
        segmenter = None if params.rescore else load_segmenter(
            params.model, params.device, params.precision,
            threads if threads is not None else params.torch_threads)
        start = time.perf_counter()
        for shard in shards:
            run.commit([score_study(item, segmenter, run.provenance, out_root=run.store.root,
                                    storage_options=params.storage_options or None,
                                    secret=secret) for item in run.shard_items(shard)])
        run.counts.timings["score_s"] = time.perf_counter() - start
        return run.finish()  # removes the scratch folder
    except BaseException:  # object paths do not outlive a failed run (housekeeping: killed)
        run.remove_scratch()
        raise

