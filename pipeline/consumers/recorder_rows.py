"""What a batch of events becomes in SQL, table by table, before anything is written.

:func:`rows_for` turns a batch of :class:`~pipeline.consumers.handler.Received` events into
:class:`BatchRows`: an ``epoch_end`` into one ``epochs`` row and its ``epoch_metrics`` rows, a
``batch_end`` into ``batch_metrics`` rows, a checkpoint into a ``checkpoints`` row, every other
(lifecycle) event into its raw JSON for ``events``, and one merged update per run and sweep. It touches
no database, so the consume loop runs it ahead, on its reader thread (the recorder's ``prepare``).
The column tuples name each table's columns in the order of these rows.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline import events as ev
from pipeline.consumers.handler import Received
from pipeline.consumers.recorder_runs import RunUpdate
from pipeline.consumers.recorder_sweeps import sweep_row
from pipeline.db import summaries
from pipeline.params import param_row

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
    runs: dict[str, RunUpdate] = field(default_factory=dict)
    #: Runs whose queue/start/finish was in the batch: their sweep's state may have moved.
    sweep_state_moves: set[str] = field(default_factory=set)


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
            run = runs[event.run_id] = RunUpdate()
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
                sweep_row(rows.sweeps, event.sweep, at)
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
