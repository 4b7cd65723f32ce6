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

Example:
    >>> recorder = Recorder(make_engine("sqlite:///fitstream.db"))   # doctest: +SKIP
    >>> ConsumerLoop(recorder, EventStream()).run()                  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline import events as ev
from pipeline.config import Settings, get_settings
from pipeline.consumers.base import Received
from pipeline.db import bulk, summaries
from pipeline.db.batch_retention import compact_batch_metrics
from pipeline.db.migrate import require_head
from pipeline.db.models import SqlRun, SqlSweep
from pipeline.db.session import transaction
from pipeline.params import param_row
from pipeline.sweeps import SWEEP_CANCELLED_REASON

GROUP = "recorder"

#: The batch-curve retention runs this long after a recorder starts (or sooner, when
#: ``batch_metrics_compact_every_seconds`` is shorter), then every ``batch_metrics_compact_every_seconds``,
#: at most this many runs between two rounds of reading.
COMPACTION_DELAY_S = 60.0
COMPACTION_MAX_RUNS = 100

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("event_id", "run_id", "seq", "type", "ts", "payload")
METRIC_COLUMNS = ("run_id", "name", "epoch", "value")
EPOCH_COLUMNS = (
    "run_id",
    "epoch",
    "learning_rate",
    "wall_time_s",
    "steps",
    "samples_per_second",
    "steps_per_second",
    "ended_at",
    "event_id",
)
BATCH_METRIC_COLUMNS = ("run_id", "name", "step", "epoch", "value", "ts")
#: Events whose rows are their record (``epochs`` + ``epoch_metrics``, ``batch_metrics``): their raw
#: JSON is not kept in ``events`` as well (it would be most of the database's writes).
ROW_RECORDED_TYPES = frozenset({"epoch_end", "batch_end"})
CHECKPOINT_COLUMNS = (
    "run_id",
    "epoch",
    "path",
    "monitor",
    "value",
    "size_bytes",
    "sha256",
    "saved_at",
    "mode",
    "source",
    "batch",
)

# How each runs column merges an incoming value with the stored one.
STATUS_RANK = {"queued": 0, "running": 1}
_FIRST_WINS = ("started_at", "queued_at")
_MAXIMUM = ("epochs_completed", "last_event_at")
_LATEST_NON_NULL = (
    "name",
    "finished_at",
    "epochs_planned",
    "best_epoch",
    "stopped_epoch",
    "monitor",
    "mode",
    "best_value",
    "restored_best_weights",
    "model_name",
    "params_count",
    "optimizer",
    "batch_size",
    "host",
    "tags",
    "wall_time_s",
    "error_type",
    "error_message",
    "queue",
    "data_fingerprint",
    "sweep_id",
    "status_reason",
)
PARAM_COLUMNS = ("run_id", "key", "value", "value_num")


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


@dataclass
class BatchRows:
    """The rows one batch of events becomes, table by table."""

    events: list[tuple] = field(default_factory=list)
    metrics: list[tuple] = field(default_factory=list)
    batch_metrics: list[tuple] = field(default_factory=list)
    #: (run_id, metric) -> this batch's lowest, highest and last value (``summaries.accumulate``).
    summaries: dict[tuple[str, str], list[Any]] = field(default_factory=dict)
    epochs: list[tuple] = field(default_factory=list)
    checkpoints: list[tuple] = field(default_factory=list)
    params: list[tuple] = field(default_factory=list)
    sweeps: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, _RunUpdate] = field(default_factory=dict)
    #: Runs whose queue/start/finish was in the batch: their sweep's state may have moved.
    sweep_state_moves: set[str] = field(default_factory=set)


@dataclass
class _RunUpdate:
    """What one batch says about one run, merged in memory before one upsert."""

    values: dict[str, Any] = field(default_factory=dict)
    status: str = "running"
    _status_rank: int = -1
    last_ts: float = 0.0
    epochs: int = 0

    def promote(self, status: str) -> None:
        """Statuses only move forward: queued < running < any terminal status."""
        rank = STATUS_RANK.get(status, 2)
        if rank > self._status_rank:
            self.status, self._status_rank = status, rank

    def set(self, **values: Any) -> None:
        """The latest value of each column that is neither None nor NaN."""
        for key, value in values.items():
            if value is not None and not (isinstance(value, float) and math.isnan(value)):
                self.values[key] = value

    def set_first(self, key: str, value: Any) -> None:
        """A column whose first value stays (as ``coalesce(stored, new)`` keeps it across batches)."""
        self.values.setdefault(key, value)

    def bump(self, key: str, value: Any) -> None:
        current = self.values.get(key)
        if current is None or value > current:
            self.values[key] = value


def rows_for(batch: Sequence[Received]) -> BatchRows:
    """Turn a batch of events into rows for each table, and one update per run."""
    rows = BatchRows()
    runs = rows.runs
    for item in batch:
        event = item.event
        at = _utc(event.ts)
        if event.type not in ROW_RECORDED_TYPES or (isinstance(event, ev.BatchEnd) and event.step is None):
            rows.events.append((event.id, event.run_id, event.seq, event.type, at, item.payload))
        run = runs.get(event.run_id)
        if run is None:
            run = runs[event.run_id] = _RunUpdate()
        if event.ts > run.last_ts:
            run.last_ts = event.ts
        if not isinstance(event, (ev.RunQueued, ev.RunFinished)):
            run.promote("running")  # an event from training (or after it) says the run left the queue
        if isinstance(event, (ev.RunQueued, ev.RunStarted, ev.RunFinished)):
            rows.sweep_state_moves.add(event.run_id)
        if isinstance(event, ev.EpochEnd):
            run_id, epoch = event.run_id, event.epoch
            rows.metrics += [(run_id, name, epoch, value) for name, value in event.metrics.items()]
            summaries.accumulate(rows.summaries, run_id, epoch, event.metrics)
            rows.epochs.append(
                (
                    run_id,
                    epoch,
                    event.learning_rate,
                    event.wall_time_s,
                    event.steps,
                    event.samples_per_second,
                    event.steps_per_second,
                    at,
                    event.id,
                )
            )
            if epoch + 1 > run.epochs:
                run.epochs = epoch + 1
        elif isinstance(event, ev.BatchEnd):
            if event.step is not None:  # publishers before batch_metrics sent no step: kept in events
                run_id, step, epoch = event.run_id, event.step, event.epoch
                rows.batch_metrics += [
                    (run_id, name, step, epoch, value, at) for name, value in event.metrics.items()
                ]
        elif isinstance(event, ev.RunQueued):
            run.promote("queued")
            run.set_first("queued_at", at)
            run.set(name=event.name, queue=event.queue, tags=json.dumps(event.tags) if event.tags else None)
            rows.params += [(event.run_id, *param_row(k, v)) for k, v in event.params.items()]
            if event.sweep is not None:
                run.set(sweep_id=event.sweep.id)
                _sweep_row(rows.sweeps, event.sweep, at)
        elif isinstance(event, ev.RunStarted):
            run.set_first("started_at", at)
            run.set(
                name=event.name,
                epochs_planned=event.epochs,
                monitor=event.monitor,
                mode=event.mode,
                model_name=event.model_name,
                params_count=event.params_count,
                optimizer=json.dumps(event.optimizer) if event.optimizer is not None else None,
                batch_size=event.batch_size,
                host=event.host,
                tags=json.dumps(event.tags) if event.tags else None,
                data_fingerprint=event.data_fingerprint,
            )
            rows.params += [(event.run_id, *param_row(k, v)) for k, v in event.params.items()]
        elif isinstance(event, ev.CheckpointSaved):
            rows.checkpoints.append(
                (
                    event.run_id,
                    event.epoch,
                    event.path,
                    event.monitor,
                    event.value,
                    event.size_bytes,
                    event.sha256,
                    at,
                    event.mode,
                    event.source,
                    event.batch,
                )
            )
        elif isinstance(event, ev.EarlyStopped):
            run.set(
                stopped_epoch=event.stopped_epoch,
                best_epoch=event.best_epoch,
                best_value=event.best_value,
                monitor=event.monitor,
                mode=event.mode,
            )
        elif isinstance(event, ev.RunFinished):
            run.promote(event.status)
            run.set(
                finished_at=at,
                wall_time_s=event.wall_time_s,
                best_epoch=event.best_epoch,
                best_value=event.best_value,
                monitor=event.monitor,
                mode=event.mode,
                restored_best_weights=int(event.restored_best_weights),
                status_reason=event.reason,
            )
            run.bump("epochs_completed", event.epochs_completed)
        elif isinstance(event, ev.RunFailed):
            run.set(error_type=event.error_type, error_message=event.message)
    for run in runs.values():
        run.bump("last_event_at", _utc(run.last_ts))
        if run.epochs:
            run.bump("epochs_completed", run.epochs)
    return rows


def _sweep_row(sweeps: dict[str, dict[str, Any]], sweep: ev.SweepTrial, at: datetime) -> None:
    row = sweeps.setdefault(
        sweep.id,
        {
            "id": sweep.id,
            "name": sweep.name,
            "spec": None,
            "created_at": at,
            "trials": sweep.trials,
            "state": "queued",
        },
    )
    row["created_at"] = min(row["created_at"], at)
    if sweep.spec is not None:
        row["spec"] = json.dumps(sweep.spec)


def _upsert_sweeps(conn: Connection, sweeps: dict[str, dict[str, Any]]) -> None:
    if not sweeps:
        return
    table = SqlSweep.__table__
    insert = bulk.upsert_insert(conn, table)
    current, excluded = table.c, insert.excluded
    statement = insert.on_conflict_do_update(
        index_elements=[current.id],
        set_={
            "spec": sa.func.coalesce(current.spec, excluded.spec),
            "created_at": sa.func.coalesce(current.created_at, excluded.created_at),
        },
    )
    conn.execute(statement, [sweeps[k] for k in sorted(sweeps)])


#: A sweep's state from its trials' rows: cancelled once `fitstream cancel SWEEP` cancelled a trial
#: and every trial ended, finished once every trial ended, running once one left the queue.
_SWEEP_STATE = sa.text(f"""
UPDATE sweeps SET state = CASE
  WHEN (SELECT count(*) FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status IN ({", ".join(f"'{s}'" for s in ev.TERMINAL_STATUSES)})) >= sweeps.trials
    THEN CASE WHEN EXISTS (SELECT 1 FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status = 'cancelled'
                           AND runs.status_reason = :cancelled_reason) THEN 'cancelled' ELSE 'finished' END
  WHEN EXISTS (SELECT 1 FROM runs WHERE runs.sweep_id = sweeps.id AND runs.status <> 'queued') THEN 'running'
  ELSE 'queued' END
WHERE sweeps.id IN :sweep_ids
""").bindparams(sa.bindparam("sweep_ids", expanding=True))
_SWEEPS_OF = sa.text(
    "SELECT DISTINCT sweep_id FROM runs WHERE sweep_id IS NOT NULL AND run_id IN :run_ids"
).bindparams(sa.bindparam("run_ids", expanding=True))
_LOCK_SWEEPS = sa.text("SELECT id FROM sweeps WHERE id IN :sweep_ids ORDER BY id FOR UPDATE").bindparams(
    sa.bindparam("sweep_ids", expanding=True)
)


def _update_sweep_states(conn: Connection, run_ids: Sequence[str]) -> None:
    """Move the state of the sweeps whose trials were queued, started or ended in this batch (most
    batches touch no sweep: one indexed look-up, nothing more)."""
    if not run_ids:
        return
    sweep_ids = sorted(conn.execute(_SWEEPS_OF, {"run_ids": list(run_ids)}).scalars())
    if not sweep_ids:
        return
    if conn.dialect.name == "postgresql":
        # Two recorders ending two trials of one sweep at once: the second waits here for the first
        # to commit, so that its UPDATE (a new snapshot, under READ COMMITTED) counts both trials.
        # SQLite needs nothing: one writer at a time.
        conn.execute(_LOCK_SWEEPS, {"sweep_ids": sweep_ids})
    conn.execute(_SWEEP_STATE, {"sweep_ids": sweep_ids, "cancelled_reason": SWEEP_CANCELLED_REASON})


def _upsert_runs(conn: Connection, runs: dict[str, _RunUpdate]) -> None:
    if not runs:
        return
    table = SqlRun.__table__
    insert = bulk.upsert_insert(conn, table)
    excluded, current = insert.excluded, table.c

    def rank(column: Any) -> Any:
        return sa.case((column == "queued", 0), (column == "running", 1), else_=2)

    merge: dict[str, Any] = {
        "status": sa.case(
            (rank(current.status) >= rank(excluded.status), current.status), else_=excluded.status
        ),
    }
    for name in _FIRST_WINS:
        merge[name] = sa.func.coalesce(current[name], excluded[name])
    for name in _MAXIMUM:
        merge[name] = sa.func.coalesce(
            bulk.greatest(conn, current[name], excluded[name]), excluded[name], current[name]
        )
    for name in _LATEST_NON_NULL:
        merge[name] = sa.func.coalesce(excluded[name], current[name])
    statement = insert.on_conflict_do_update(index_elements=[current.run_id], set_=merge)
    columns = ("status", *_FIRST_WINS, *_MAXIMUM, *_LATEST_NON_NULL)
    params = []
    for run_id, update in sorted(runs.items()):
        row = {name: update.values.get(name) for name in columns}
        row["run_id"] = run_id
        row["status"] = update.status if update._status_rank >= 0 else "running"
        row["epochs_completed"] = update.values.get("epochs_completed", 0)
        params.append(row)
    conn.execute(statement, params)


def _first_per_key(metrics: Any) -> list[tuple]:
    """The metric rows ``epoch_metrics`` keeps: the first of each (run, name, epoch) in the batch."""
    kept: dict[tuple, tuple] = {}
    for row in metrics:
        kept.setdefault((row[0], row[1], row[2]), row)
    return list(kept.values())


def write_batch(conn: Connection, batch: Sequence[Received], rows: BatchRows | None = None) -> None:
    """All of a batch's rows (``rows_for(batch)`` unless given), in the caller's transaction."""
    rows = rows if rows is not None else rows_for(batch)
    _upsert_sweeps(conn, rows.sweeps)
    _upsert_runs(conn, rows.runs)
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
    _update_sweep_states(conn, sorted(rows.sweep_state_moves))


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
