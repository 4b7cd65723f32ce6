"""How an ``EventPublisher``'s run ends: its status, its best epoch, and a failure recorded.

``RunOutcome`` is the part of :class:`~pipeline.callbacks.publisher.EventPublisher` that publishes
``run_finished`` (best epoch and value as EarlyStopping decided, else by the run's
:class:`~pipeline.monitor.Monitor`), recognises a run TerminateOnNaN stopped on a non-finite loss,
and records a failure (``fail``: ``run_failed`` then ``run_finished``, also for a run that failed
before ``fit`` started). A process that exits mid-fit still finishes its runs (an ``atexit`` hook
over the live publishers).
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import time
import traceback
import weakref
from typing import TYPE_CHECKING

from pipeline import events as ev
from pipeline.callbacks.keras_state import resolved_mode
from pipeline.errors import ConfigurationError
from pipeline.monitor import Monitor

if TYPE_CHECKING:
    from pipeline.callbacks.publisher import EventPublisher

# The publisher's own logger name, so that logging configured for it still covers this part of it.
log = logging.getLogger("pipeline.callbacks.publisher")


class RunOutcome:
    """The end of an ``EventPublisher``'s run (a mixin)."""

    def _stopped_on_non_finite_loss(self) -> str | None:
        """Why training stopped, when it was stopped at a batch whose loss was NaN or infinite."""
        # The epoch's logs hold the running mean of the loss: no longer finite once one batch's was not.
        loss = (self._last_train_logs or self._last_epoch_logs or {}).get("loss")
        try:
            value = float(loss) if loss is not None else None
        except (TypeError, ValueError):
            return None
        if value is None or math.isfinite(value) or not getattr(self.model, "stop_training", False):
            return None
        batch = self._last_batch if self._last_batch is not None else self._batches_this_epoch()
        where = f"epoch {self._current_epoch}" + (f", batch {batch}" if batch is not None else "")
        return (
            f"training stopped: the loss became {value} at {where} "
            "(TerminateOnNaN); lower the learning rate, clip gradients or look for NaN in the data"
        )

    def _best(self) -> tuple[int | None, float | None, str | None, str | None]:
        """(best epoch, best value, monitor, mode) as EarlyStopping decided, else by the run's monitor."""
        stopper = self._early_stopping()
        if stopper is not None and stopper.best is not None:
            return int(stopper.best_epoch), ev.to_float(stopper.best), stopper.monitor, resolved_mode(stopper)
        monitor, mode = self._run_monitor
        if monitor is None:
            return None, None, None, None
        try:
            rule = Monitor(monitor, mode=mode or "auto")
        except ConfigurationError:
            return None, None, monitor, mode
        best = rule.best_of(value for _, value in self._monitor_history)
        if best is None:
            return None, None, monitor, rule.mode
        return self._monitor_history[best[0]][0], best[1], monitor, rule.mode

    def _finish(self, status: str, *, timeout: float | None = None) -> None:
        reason = self._cancel_reason if self.cancel_requested and status == self.cancel_status else None
        best_epoch, best_value, monitor, mode = self._best()
        stopper = self._early_stopping()
        self._emit(
            ev.RunFinished,
            status=status,
            epochs_completed=self._epochs_completed,
            wall_time_s=time.monotonic() - self._t0 if self._t0 else None,
            best_epoch=best_epoch,
            best_value=best_value,
            monitor=monitor,
            mode=mode,
            restored_best_weights=bool(
                stopper is not None and stopper.restore_best_weights and stopper.best_weights is not None
            ),
            reason=reason,
        )
        self._state = "finished"
        _LIVE_PUBLISHERS.discard(self)
        self._close_sender(self.flush_timeout if timeout is None else timeout)

    def fail(self, error: BaseException, *, timeout: float | None = None) -> None:
        """Record that the run failed with ``error`` (published as run_failed + run_finished).

        Keras does not tell callbacks about exceptions raised inside ``fit``; use the
        publisher as a context manager (or call this from your ``except``) so that a
        crash is recorded::

            with EventPublisher(name="digits") as publisher:
                model.fit(x, y, callbacks=[publisher])
        """
        if self._state == "idle":
            # Failed before fit started (building the model or loading data): still a run.
            self._state = "running"
            self._t0 = time.monotonic()
            try:
                self._start_sender()
            except Exception:
                log.exception("fitstream: could not start the event sender")
            self._emit(
                ev.RunStarted,
                name=self.name,
                tags=self.tags,
                host=socket.gethostname(),
                pid=os.getpid(),
                data_fingerprint=self.data_fingerprint,
            )
        if self._state != "running":
            return
        self._finalize_pending()
        cancelled = isinstance(error, KeyboardInterrupt)
        if not cancelled:
            self._emit(
                ev.RunFailed,
                error_type=type(error).__name__,
                message=str(error)[:4000],
                traceback="".join(traceback.format_exception(type(error), error, error.__traceback__))[
                    -8000:
                ],
            )
        self._finish("cancelled" if cancelled else "failed", timeout=timeout)


_LIVE_PUBLISHERS: weakref.WeakSet[EventPublisher] = weakref.WeakSet()


@atexit.register
def _fail_unfinished_runs() -> None:
    """A process that exits mid-fit still tells the consumers what happened to its run."""
    for publisher in list(_LIVE_PUBLISHERS):
        try:
            publisher.fail(SystemExit("the training process exited before the run finished"), timeout=3.0)
        except Exception:
            pass
