"""The recorder: persists runs, per-epoch metrics, checkpoints and raw events into SQL.

One transaction per batch, acknowledged after commit. Every write is
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
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from pipeline import events as ev
from pipeline.consumers.base import Received
from pipeline.db import bulk
from pipeline.db.migrate import require_head
from pipeline.db.models import SqlRun
from pipeline.db.session import transaction

GROUP = "recorder"

EVENT_COLUMNS = ("event_id", "run_id", "seq", "type", "ts", "payload")
METRIC_COLUMNS = ("run_id", "name", "epoch", "value")
EPOCH_COLUMNS = ("run_id", "epoch", "learning_rate", "wall_time_s", "steps", "samples_per_second", "steps_per_second", "ended_at")
CHECKPOINT_COLUMNS = (
    "run_id", "epoch", "path", "monitor", "value", "size_bytes", "sha256", "saved_at", "mode", "source", "batch",
)

# How each runs column merges an incoming value with the stored one.
STATUS_RANK = {"queued": 0, "running": 1}
_FIRST_WINS = ("started_at", "queued_at")
_MAXIMUM = ("epochs_completed", "last_event_at")
_LATEST_NON_NULL = (
    "name", "finished_at", "epochs_planned", "best_epoch", "stopped_epoch", "monitor", "mode", "best_value",
    "restored_best_weights", "model_name", "params_count", "optimizer", "batch_size", "host", "tags",
    "wall_time_s", "error_type", "error_message", "queue", "data_fingerprint",
)


def _utc(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, tz=timezone.utc)


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


def rows_for(batch: Sequence[Received]) -> tuple[list[tuple], list[tuple], list[tuple], list[tuple], dict[str, _RunUpdate]]:
    """Turn a batch of events into rows for events, epoch_metrics, epochs, checkpoints, and run updates."""
    event_rows: list[tuple] = []
    metric_rows: list[tuple] = []
    epoch_rows: list[tuple] = []
    checkpoint_rows: list[tuple] = []
    runs: dict[str, _RunUpdate] = {}
    for item in batch:
        event = item.event
        at = _utc(event.ts)
        event_rows.append((event.id, event.run_id, event.seq, event.type, at, item.payload))
        run = runs.get(event.run_id)
        if run is None:
            run = runs[event.run_id] = _RunUpdate()
        if event.ts > run.last_ts:
            run.last_ts = event.ts
        if not isinstance(event, (ev.RunQueued, ev.RunFinished)):
            run.promote("running")  # an event from training (or after it) says the run left the queue
        if isinstance(event, ev.EpochEnd):
            run_id, epoch = event.run_id, event.epoch
            metric_rows += [(run_id, name, epoch, value) for name, value in event.metrics.items()]
            epoch_rows.append(
                (run_id, epoch, event.learning_rate, event.wall_time_s, event.steps,
                 event.samples_per_second, event.steps_per_second, at)
            )
            if epoch + 1 > run.epochs:
                run.epochs = epoch + 1
        elif isinstance(event, ev.RunQueued):
            run.promote("queued")
            run.set_first("queued_at", at)
            run.set(name=event.name, queue=event.queue, tags=json.dumps(event.tags) if event.tags else None)
        elif isinstance(event, ev.RunStarted):
            run.set_first("started_at", at)
            run.set(
                name=event.name, epochs_planned=event.epochs, monitor=event.monitor, mode=event.mode,
                model_name=event.model_name, params_count=event.params_count,
                optimizer=json.dumps(event.optimizer) if event.optimizer is not None else None,
                batch_size=event.batch_size, host=event.host,
                tags=json.dumps(event.tags) if event.tags else None, data_fingerprint=event.data_fingerprint,
            )
        elif isinstance(event, ev.CheckpointSaved):
            checkpoint_rows.append(
                (event.run_id, event.epoch, event.path, event.monitor, event.value, event.size_bytes, event.sha256, at,
                 event.mode, event.source, event.batch)
            )
        elif isinstance(event, ev.EarlyStopped):
            run.set(
                stopped_epoch=event.stopped_epoch, best_epoch=event.best_epoch, best_value=event.best_value,
                monitor=event.monitor, mode=event.mode,
            )
        elif isinstance(event, ev.RunFinished):
            run.promote(event.status)
            run.set(
                finished_at=at, wall_time_s=event.wall_time_s, best_epoch=event.best_epoch,
                best_value=event.best_value, monitor=event.monitor, mode=event.mode,
                restored_best_weights=int(event.restored_best_weights),
            )
            run.bump("epochs_completed", event.epochs_completed)
        elif isinstance(event, ev.RunFailed):
            run.set(error_type=event.error_type, error_message=event.message)
    for run in runs.values():
        run.bump("last_event_at", _utc(run.last_ts))
        if run.epochs:
            run.bump("epochs_completed", run.epochs)
    return event_rows, metric_rows, epoch_rows, checkpoint_rows, runs


def _upsert_runs(conn: Connection, runs: dict[str, _RunUpdate]) -> None:
    if not runs:
        return
    table = SqlRun.__table__
    insert = bulk.upsert_insert(conn, table)
    excluded, current = insert.excluded, table.c
    def rank(column: Any) -> Any:
        return sa.case((column == "queued", 0), (column == "running", 1), else_=2)

    merge: dict[str, Any] = {
        "status": sa.case((rank(current.status) >= rank(excluded.status), current.status), else_=excluded.status),
    }
    for name in _FIRST_WINS:
        merge[name] = sa.func.coalesce(current[name], excluded[name])
    for name in _MAXIMUM:
        merge[name] = sa.func.coalesce(bulk.greatest(conn, current[name], excluded[name]), excluded[name], current[name])
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


def write_batch(conn: Connection, batch: Sequence[Received]) -> None:
    """All of a batch's rows, in the caller's transaction."""
    event_rows, metric_rows, epoch_rows, checkpoint_rows, runs = rows_for(batch)
    _upsert_runs(conn, runs)
    bulk.insert_ignore(conn, "events", EVENT_COLUMNS, event_rows)
    bulk.insert_ignore(conn, "epoch_metrics", METRIC_COLUMNS, metric_rows)
    bulk.insert_ignore(conn, "epochs", EPOCH_COLUMNS, epoch_rows)
    bulk.insert_ignore(conn, "checkpoints", CHECKPOINT_COLUMNS, checkpoint_rows)


class Recorder:
    """Consumer-group handler that writes events into the history database.

    Args:
        engine: The history database. Its schema must be at Alembic's head.
    """

    group = GROUP

    def __init__(self, engine: Engine) -> None:
        require_head(engine)
        self.engine = engine

    def handle(self, batch: Sequence[Received]) -> None:
        with transaction(self.engine) as conn:
            write_batch(conn, batch)
