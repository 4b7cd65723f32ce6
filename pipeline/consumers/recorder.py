"""The recorder: persists runs, per-epoch and per-batch metrics, checkpoints and raw events into SQL.

One transaction per batch, acknowledged after commit. Each event is written where it is the
record: an ``epoch_end`` as one ``epochs`` row (with its event id) and its ``epoch_metrics`` rows,
a ``batch_end`` as ``batch_metrics`` rows, every other (lifecycle) event as its raw JSON in
``events``; the runs row merges them all. Every write is
idempotent (inserts skip existing keys; the run row is merged with rules
that give the same result in any order), so redelivered, reclaimed or
out-of-order events never create duplicates.

How the ``runs`` row merges a run's events, whether they come in one batch or many: the status
only moves forward (``run_queued`` says queued, every other event running, ``run_finished`` its
terminal status, and the first terminal status stays); ``queued_at`` and ``started_at`` keep the
first value; ``epochs_completed`` and ``last_event_at`` the largest; every other column the latest
value that is neither null nor NaN (SQLite cannot store NaN, so a NaN would replace a value on
PostgreSQL and leave it on SQLite; in ``epoch_metrics``, ``epochs`` and ``checkpoints`` NaN is
kept: NULL on SQLite).

This module holds the :class:`Recorder` handler and :func:`write_batch`, the order of one batch's
writes. The rows come from :mod:`~pipeline.consumers.recorder_rows`; the ``runs`` merge rules live in
:mod:`~pipeline.consumers.recorder_runs`, the sweep writes in :mod:`~pipeline.consumers.recorder_sweeps`.

Example:
    >>> recorder = Recorder(make_engine("sqlite:///fitstream.db"))   # doctest: +SKIP
    >>> ConsumerLoop(recorder, EventStream()).run()                  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Connection, Engine

from pipeline.config import Settings, get_settings
from pipeline.consumers.handler import Received
from pipeline.consumers.recorder_rows import (
    BATCH_METRIC_COLUMNS,
    CHECKPOINT_COLUMNS,
    EPOCH_COLUMNS,
    EVENT_COLUMNS,
    METRIC_COLUMNS,
    PARAM_COLUMNS,
    ROW_RECORDED_TYPES,
    BatchRows,
    rows_for,
)
from pipeline.consumers.recorder_runs import STATUS_RANK, upsert_runs
from pipeline.consumers.recorder_sweeps import update_sweep_states, upsert_sweeps
from pipeline.db import bulk, summaries
from pipeline.db.batch_retention import compact_batch_metrics
from pipeline.db.migrate import require_head
from pipeline.db.session import transaction

__all__ = [
    "BATCH_METRIC_COLUMNS",
    "CHECKPOINT_COLUMNS",
    "COMPACTION_DELAY_S",
    "COMPACTION_MAX_RUNS",
    "EPOCH_COLUMNS",
    "EVENT_COLUMNS",
    "GROUP",
    "METRIC_COLUMNS",
    "PARAM_COLUMNS",
    "ROW_RECORDED_TYPES",
    "STATUS_RANK",
    "BatchRows",
    "Recorder",
    "Received",
    "rows_for",
    "write_batch",
]

GROUP = "recorder"

#: The batch-curve retention runs this long after a recorder starts (or sooner, when
#: ``batch_metrics_compact_every_seconds`` is shorter), then every ``batch_metrics_compact_every_seconds``,
#: at most this many runs between two rounds of reading.
COMPACTION_DELAY_S = 60.0
COMPACTION_MAX_RUNS = 100

log = logging.getLogger(__name__)


def _first_per_key(metrics: Any) -> list[tuple]:
    """The metric rows ``epoch_metrics`` keeps: the first of each (run, name, epoch) in the batch."""
    kept: dict[tuple, tuple] = {}
    for row in metrics:
        kept.setdefault((row[0], row[1], row[2]), row)
    return list(kept.values())


def write_batch(conn: Connection, batch: Sequence[Received], rows: BatchRows | None = None) -> None:
    """All of a batch's rows (``rows_for(batch)`` unless given), in the caller's transaction."""
    rows = rows if rows is not None else rows_for(batch)
    upsert_sweeps(conn, rows.sweeps)
    upsert_runs(conn, rows.runs)
    bulk.insert_ignore(conn, "events", EVENT_COLUMNS, rows.events)
    if rows.epochs:  # before this batch's own epochs rows: which of its epochs are new
        keys = [(run_id, epoch) for run_id, epoch, *_ in rows.epochs]
        seen = summaries.recorded_epochs(conn, keys)
        if not seen and len(set(keys)) == len(keys):  # the common case: every epoch is new, once
            summaries.fold(conn, summaries.accumulated(rows.summaries))
        else:  # a replay or a re-run: only the epochs epoch_metrics takes, each the first time
            metrics = _first_per_key(m for m in rows.metrics if (m[0], m[2]) not in seen)
            summaries.fold(conn, summaries.fold_rows(metrics))
    bulk.insert_ignore(conn, "epoch_metrics", METRIC_COLUMNS, rows.metrics)
    bulk.insert_ignore(conn, "batch_metrics", BATCH_METRIC_COLUMNS, rows.batch_metrics)
    bulk.insert_ignore(conn, "epochs", EPOCH_COLUMNS, rows.epochs)
    bulk.insert_ignore(conn, "checkpoints", CHECKPOINT_COLUMNS, rows.checkpoints)
    bulk.insert_ignore(conn, "params", PARAM_COLUMNS, rows.params)
    update_sweep_states(conn, sorted(rows.sweep_state_moves))


class Recorder:
    """Consumer-group handler that writes events into the history database.

    Args:
        engine: The history database. Its schema must be at Alembic's head.
    """

    group = GROUP

    def __init__(self, engine: Engine, settings: Settings | None = None) -> None:
        require_head(engine)
        self.engine = engine
        self.settings = settings or get_settings()
        self._next_compaction = time.monotonic() + min(
            COMPACTION_DELAY_S, self.settings.batch_metrics_compact_every_seconds
        )

    def prepare(self, batch: Sequence[Received]) -> BatchRows:
        """The batch's rows, built ahead on the consumer's reader thread (no database involved)."""
        return rows_for(batch)

    def handle(self, batch: Sequence[Received], prepared: BatchRows | None = None) -> None:
        with transaction(self.engine) as conn:
            write_batch(conn, batch, prepared)

    def maintain(self) -> None:
        """Between two rounds of the consume loop: the batch-curve retention
        (:mod:`pipeline.db.batch_retention`) when due, a bounded piece at a time. A failure is logged
        and tried again next time, never a reason to stop recording."""
        if time.monotonic() < self._next_compaction:
            return
        settings = self.settings
        self._next_compaction = time.monotonic() + settings.batch_metrics_compact_every_seconds
        try:
            report = compact_batch_metrics(
                self.engine,
                retention_days=settings.batch_metrics_retention_days,
                bucket_steps=settings.batch_metrics_bucket_steps,
                max_runs=COMPACTION_MAX_RUNS,
            )
        except Exception as exc:
            log.warning("recorder: downsampling old batch curves failed (%s); trying again later", exc)
            return
        if report.runs:
            log.info(
                "recorder: downsampled the batch curves of %d runs (%d raw rows into %d buckets)",
                report.runs,
                report.raw_rows_removed,
                report.buckets_written,
            )
        if report.runs >= COMPACTION_MAX_RUNS:
            self._next_compaction = time.monotonic()  # more are due: go on after the next batch
