"""The pruner: a consumer of the event stream that stops sweep trials falling behind their sweep.

It follows the trials of sweeps that ask for pruning (``sweep: {prune: {kind: median, …}}``): their
monitored value at each epoch (its own copy, in ``pruner_values``: it does not wait for the
recorder) and how each ended (``pruner_trials``). At each ``epoch_end`` of a running trial it applies
:func:`pipeline.pruning.prune_reason` against the sweep's finished trials and, when the trial is
behind, asks it to stop through the cancel path (:meth:`pipeline.job_records.JobRecords.request_cancel`
with status ``pruned`` and the reason): the worker stops it at its next batch and it ends
``pruned``, the reason in ``runs.status_reason``.

The request is written to Redis before the pruner's own transaction commits, so a pruner killed in
between asks again on redelivery (asking twice changes nothing). Decisions need a sweep's events in
order, so one pruner of the group leads and the others stand by (``ordered``).

Example:
    >>> loop = ConsumerLoop(Pruner(make_engine(url), JobRecords(redis_client)), EventStream())  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from sqlalchemy.engine import Connection, Engine

from pipeline import events as ev
from pipeline.consumers.base import Received
from pipeline.db import pruner_state
from pipeline.db.migrate import require_head
from pipeline.db.pruner_state import PrunerTrial
from pipeline.db.session import transaction
from pipeline.errors import ConfigurationError
from pipeline.job_records import JobRecords
from pipeline.monitor import infer_mode
from pipeline.pruning import prune_reason

log = logging.getLogger(__name__)

GROUP = "pruner"
#: Finished trials whose values count for the median (Optuna's COMPLETE trials).
COUNTED = ("completed", "early_stopped")
#: What a trial is judged by when neither ``prune: {monitor: …}`` nor a callback of its own names a metric.
DEFAULT_MONITOR = "val_loss"


class Pruner:
    """Consumer-group handler: median pruning of sweep trials (see the module docstring)."""

    group = GROUP
    ordered = True

    def __init__(self, engine: Engine, jobs: JobRecords) -> None:
        require_head(engine)
        self.engine = engine
        self.jobs = jobs

    def handle(self, batch: Sequence[Received]) -> None:
        with transaction(self.engine) as conn:
            for item in batch:
                self._apply(conn, item.event)

    def _apply(self, conn: Connection, event: ev.Event) -> None:
        if isinstance(event, ev.RunQueued):
            prune = (event.sweep.spec or {}).get("prune") if event.sweep is not None else None
            if prune:
                pruner_state.add_trial(
                    conn,
                    PrunerTrial(
                        run_id=event.run_id,
                        sweep_id=event.sweep.id,  # type: ignore[union-attr]
                        status="queued",
                        warmup_epochs=int(prune.get("warmup_epochs") or 0),
                        min_trials=int(prune.get("min_trials") or 1),
                        monitor=prune.get("monitor"),
                        mode=prune.get("mode"),
                    ),
                )
            return
        if not isinstance(event, (ev.RunStarted, ev.EpochEnd, ev.RunFinished)):
            return
        trial = pruner_state.get_trial(conn, event.run_id)
        if trial is None:
            return
        if isinstance(event, ev.RunStarted):
            monitor = trial.monitor or event.monitor or DEFAULT_MONITOR
            mode = trial.mode or (event.mode if monitor == event.monitor else None) or _mode(monitor)
            pruner_state.start_trial(conn, event.run_id, monitor=monitor, mode=mode)
        elif isinstance(event, ev.RunFinished):
            pruner_state.set_trial_status(conn, event.run_id, event.status)
        else:
            self._epoch(conn, trial, event)

    def _epoch(self, conn: Connection, trial: PrunerTrial, event: ev.EpochEnd) -> None:
        if not trial.monitor or trial.monitor not in event.metrics:
            return
        value = event.metrics[trial.monitor]
        pruner_state.record_value(conn, trial, event.epoch, value)
        if trial.status != "running" or not trial.mode:
            return
        finished = pruner_state.finished_values(conn, trial.sweep_id, event.epoch, counted=COUNTED)
        reason = prune_reason(
            trial.monitor,
            trial.mode,
            epoch=event.epoch,
            value=value,
            finished=finished,
            warmup_epochs=trial.warmup_epochs,
            min_trials=trial.min_trials,
        )
        if reason is None:
            return
        log.info("pruning run %s of sweep %s: %s", trial.run_id, trial.sweep_id, reason)
        self.jobs.request_cancel(
            trial.run_id, status="pruned", reason=f"pruned: {reason}"
        )  # before the commit
        pruner_state.set_trial_status(conn, trial.run_id, "pruning")


def _mode(monitor: str | None) -> str | None:
    try:
        return infer_mode(monitor) if monitor else None
    except ConfigurationError:
        log.warning(
            "pruning: cannot tell whether %r is minimised or maximised; set prune: {monitor: …, mode: …}",
            monitor,
        )
        return None


__all__ = ["GROUP", "Pruner"]
