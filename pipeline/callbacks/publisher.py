"""``EventPublisher``: the Keras callback that streams a run's events to Redis.

Drop it into any ``model.fit`` beside Keras' own callbacks::

    from pipeline import EventPublisher
    stop = keras.callbacks.EarlyStopping(patience=3, restore_best_weights=True)
    ckpt = keras.callbacks.ModelCheckpoint("best.keras", save_best_only=True)
    publisher = EventPublisher(name="digits-mlp", watch=[stop, ckpt])
    model.fit(x, y, validation_split=0.2, callbacks=[stop, ckpt, publisher])
    print(publisher.run_id)

It reports what Keras decided (best and stopped epoch, restored weights,
checkpoints written, learning-rate changes, and the direction each callback
used) by reading the watched callbacks' own state after they have acted, so
where it stands in ``callbacks=`` does not matter: an epoch is published at the
start of the next epoch (or at the end of training), when every callback has
finished with it.

With ``save_restored_model=PATH`` it also saves, once at the end of training, the
model EarlyStopping restored to its best weights, and reports it as a checkpoint of
EarlyStopping's best epoch (``source="early_stopping_restore"``): what the promoter
takes when no ModelCheckpoint file can be promoted.

Training is never slowed or broken by the event path: events go to a bounded
buffer sent by a background thread, or to a disk spool while Redis is away.
The one error it raises on purpose is a configuration error Keras only warns
about: a watched callback monitoring a metric the model does not log.

This module holds the callback itself: its arguments, the Keras hooks and its public methods. Its
parts live beside it, one concern a module: :mod:`~pipeline.callbacks.event_emitter` (sequence
numbers and the background sender), :mod:`~pipeline.callbacks.batch_hooks` (training batches),
:mod:`~pipeline.callbacks.epoch_publishing` (a finished epoch's events, resumable state) and
:mod:`~pipeline.callbacks.run_outcome` (how a run ends).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import keras

from pipeline import events as ev
from pipeline.callbacks.batch_events import BatchOrder, BatchThrottle, check_batch_settings
from pipeline.callbacks.batch_hooks import BatchHooks
from pipeline.callbacks.checkpoints import CheckpointReporter
from pipeline.callbacks.epoch_publishing import EpochPublishing
from pipeline.callbacks.event_emitter import EventEmitter
from pipeline.callbacks.keras_state import (
    EARLY_STOPPING,
    check_watchable,
    describe_callbacks,
    describe_model,
    is_chief,
    learning_rate,
    monitor_problems,
    optimizer_iterations,
    primary_monitor,
)
from pipeline.callbacks.run_outcome import _LIVE_PUBLISHERS, RunOutcome
from pipeline.callbacks.sender import EventSender, FlushReport
from pipeline.config import Settings, get_settings
from pipeline.errors import ConfigurationError, MonitorNotFoundError
from pipeline.params import flatten_params, run_params

# is_chief: imported from here by callers that ask whether this process publishes.
__all__ = ["DEFAULT_FLUSH_TIMEOUT_S", "EventPublisher", "is_chief"]

log = logging.getLogger(__name__)

DEFAULT_FLUSH_TIMEOUT_S = 10.0


class EventPublisher(BatchHooks, EpochPublishing, RunOutcome, EventEmitter, keras.callbacks.Callback):
    """Publishes a training run's events to the Fitstream event stream.

    Args:
        name: Name of the run (e.g. the job or model name). Required.
        run_id: Id of the run; a new one is generated when None. Read it as ``.run_id``.
        redis_url: Redis to publish to. Default: ``FITSTREAM_REDIS_URL``.
        batch_events_every: Publish a ``batch_end`` event every N training batches. Default None (off).
        watch: The ``EarlyStopping``, ``ModelCheckpoint`` and ``ReduceLROnPlateau``
            instances of the same fit whose decisions to report.
        batch_events_seconds: Publish a ``batch_end`` event at most every T seconds. Default None.
        batch_size: The fit's batch size, for samples/s (Keras does not tell callbacks). Default None.
        tags: Free-form string labels stored with the run.
        flush_timeout: Seconds to wait at the end of training for buffered events to reach Redis.
        settings: Settings to use instead of the environment's.
        stream: Stream key to publish to (default ``FITSTREAM_STREAM``).
        seq_start: First sequence number (a resumed run continues after its last event).
        data_fingerprint: Which data the run trains on, e.g. ``fingerprint_data(x, y)`` from
            :mod:`pipeline.fingerprint`; kept with the run and with any model promoted from it.
        save_restored_model: Where to save the model EarlyStopping restored to its best weights at the
            end of training (a ``.keras`` path), reported as a checkpoint. Default None (not saved);
            queued jobs save it in the run's directory unless the job says ``promote: {save_restored_model: false}``.
        params: What this run tries, e.g. ``{"hidden": 64, "optimizer": {"learning_rate": 1e-3}}``: nested
            mappings are flattened with dots into the ``params`` table (see :mod:`pipeline.params`),
            beside the optimizer's own Keras config (``optimizer.learning_rate`` …).

    Example:
        >>> publisher = EventPublisher(name="digits", watch=[early_stopping])  # doctest: +SKIP
        >>> model.fit(x, y, validation_split=0.2, callbacks=[early_stopping, publisher])  # doctest: +SKIP
    """

    def __init__(
        self,
        name: str,
        run_id: str | None = None,
        redis_url: str | None = None,
        batch_events_every: int | None = None,
        watch: Sequence[keras.callbacks.Callback] = (),
        *,
        batch_events_seconds: float | None = None,
        batch_size: int | None = None,
        tags: dict[str, str] | None = None,
        flush_timeout: float = DEFAULT_FLUSH_TIMEOUT_S,
        settings: Settings | None = None,
        stream: str | None = None,
        seq_start: int = 0,
        data_fingerprint: str | None = None,
        save_restored_model: str | os.PathLike[str] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        #: What this run tries (nested mappings flattened with dots); checked against the bounds now,
        #: so a bad value fails before training, not in the middle of it.
        self.run_params = flatten_params(params or {})
        if not isinstance(name, str) or not name.strip():
            raise ConfigurationError(f"EventPublisher needs a non-empty name; got {name!r}")
        check_batch_settings(batch_events_every, batch_events_seconds)
        if batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ConfigurationError(f"batch_size must be a positive integer or None; got {batch_size!r}")
        self.name = name
        self.run_id = run_id or uuid.uuid4().hex
        self._run_id_given = run_id is not None
        self._watch = tuple(check_watchable(watch))
        self.batch_events_every = batch_events_every
        self.batch_events_seconds = batch_events_seconds
        self.batch_size = batch_size
        self.tags = dict(tags or {})
        self.data_fingerprint = data_fingerprint
        if save_restored_model is not None and not str(save_restored_model).endswith(".keras"):
            raise ConfigurationError(
                f"save_restored_model must be a .keras path; got {str(save_restored_model)!r}"
            )
        self.save_restored_model = save_restored_model
        self.flush_timeout = flush_timeout
        self.settings = settings or get_settings()
        self._redis_url = redis_url or self.settings.redis_url
        self._stream_name = stream or self.settings.stream
        self._seq = seq_start
        self._seq_lock = threading.Lock()
        self._sender: EventSender | None = None
        self._state = "idle"  # idle -> running -> finished
        self.last_report: FlushReport | None = None
        self.cancel_requested = False
        self.cancel_status, self._cancel_reason = "cancelled", None
        self._reset_run_state()
        self._hook_batches_when_needed()

    @property
    def watch(self) -> tuple[keras.callbacks.Callback, ...]:
        """The watched callbacks (settable before ``fit``, as a worker does once it has built them)."""
        return self._watch

    @watch.setter
    def watch(self, callbacks: Sequence[keras.callbacks.Callback]) -> None:
        self._watch = tuple(check_watchable(callbacks))
        self._hook_batches_when_needed()

    # -- lifecycle helpers -----------------------------------------------------
    def _reset_run_state(self) -> None:
        self._t0 = 0.0
        self._epoch_t0 = 0.0
        self._epoch_start_ns = 0
        self._epoch_lr: float | None = None
        self._pending: tuple[int, dict[str, Any], float] | None = None
        self._epochs_completed = 0
        self._monitor_history: list[tuple[int, float | None]] = []
        self._run_monitor: tuple[str | None, str | None] = (None, None)
        self._checked_monitors = False
        self._early_stopped_reported: set[int] = set()
        self._batch_throttle = BatchThrottle(self.batch_events_every, self.batch_events_seconds)
        self._current_epoch = 0
        self._checkpoints = CheckpointReporter(self.watch)
        self._last_train_logs: dict[str, Any] | None = None
        self._last_epoch_logs: dict[str, Any] | None = None
        self._last_batch: int | None = None
        self._batch_order = BatchOrder()
        #: Optimizer steps taken before the current epoch (global batch steps, for batch events and
        #: for where a run stopped) and the optimizer's own counter at the epoch's start.
        self._steps_before_epoch = 0
        self._iterations_at_epoch: int | None = None
        self._epochs_seen = 0

    # -- what the run is watching -------------------------------------------------
    def _primary_monitor(self, logs: dict[str, Any] | None = None) -> tuple[str | None, str | None]:
        return primary_monitor(self.watch, logs)

    def _early_stopping(self) -> Any | None:
        return next((c for c in self.watch if isinstance(c, EARLY_STOPPING)), None)

    def _learning_rate(self) -> float | None:
        return learning_rate(self.model)

    # -- Keras hooks --------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        if self._state == "finished" and not self._run_id_given:
            self.run_id = uuid.uuid4().hex
            self._seq = 0
        self._reset_run_state()
        self._state = "running"
        self._t0 = time.monotonic()
        if self.cancel_requested:
            self.model.stop_training = True
        _LIVE_PUBLISHERS.add(self)
        try:
            self._start_sender()
        except Exception:
            log.exception("fitstream: could not start the event sender; this run will not be published")
            return
        try:
            monitor, mode = self._primary_monitor()
            model_facts = describe_model(self.model)
            self._emit(
                ev.RunStarted,
                name=self.name,
                **model_facts,
                params=run_params(
                    model_facts.get("optimizer"),
                    self.run_params,
                    fit={
                        "epochs": self.params.get("epochs") if self.params else None,
                        "batch_size": self.batch_size,
                    },
                ),
                epochs=self.params.get("epochs") if self.params else None,
                steps_per_epoch=self.params.get("steps") if self.params else None,
                batch_size=self.batch_size,
                monitor=monitor,
                mode=mode,
                callbacks=describe_callbacks(self.watch),
                tags=self.tags,
                host=socket.gethostname(),
                pid=os.getpid(),
                data_fingerprint=self.data_fingerprint,
            )
        except Exception:
            log.exception("fitstream: could not publish run_started (training continues)")

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._finalize_pending()
        steps = (self.params.get("steps") if self.params else None) or 0
        if self._epochs_seen == 0:  # a resumed fit starts at its initial epoch, after epoch × steps steps
            self._steps_before_epoch = epoch * steps
        else:  # the batch hook saw the last batch; without it (no batch events), Keras' steps per epoch
            self._steps_before_epoch += self._last_batch + 1 if self._last_batch is not None else steps
        self._epochs_seen += 1
        self._last_batch = None
        self._current_epoch = epoch
        self._epoch_t0 = time.monotonic()
        self._epoch_start_ns = time.time_ns()
        self._epoch_lr = None
        self._iterations_at_epoch = optimizer_iterations(self.model)
        self._batch_throttle.new_epoch()
        if self.cancel_requested:
            self.model.stop_training = True
        # The learning rate is read at the epoch's first batch, after every callback's
        # on_epoch_begin (a LearningRateScheduler anywhere in the list has set it by then), by a
        # hook that removes itself: no per-batch work. When batch ends may run on Keras' thread
        # pool, every batch's start is recorded too (one list append), to keep their order.
        self.on_train_batch_begin = self._read_epoch_learning_rate

    def on_test_end(self, logs: dict[str, Any] | None = None) -> None:
        # During fit, validation ends before any callback's on_epoch_end: the first moment
        # every metric name of the epoch is known, and before EarlyStopping can raise its
        # own, vaguer error for an unknown metric in "auto" mode.
        if self._state == "running" and not self._checked_monitors and logs:
            self._checked_monitors = True
            # Validation logs the same names training does (loss and the compiled metrics).
            names = set(self._last_train_logs or logs) | {f"val_{k}" for k in logs}
            self._check_monitors(names)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._checkpoints.per_batch:
            self._emit_checkpoints(
                self._checkpoints.batch_files(self._current_epoch, None, None, self._epoch_start_ns)
            )
        logs = logs if logs is not None else {}
        self._last_epoch_logs = logs
        if not self._checked_monitors:
            self._checked_monitors = True
            self._check_monitors(set(logs))
        # Keep a reference: callbacks after this one may still add to the same dict
        # (ReduceLROnPlateau adds learning_rate); it is read when the epoch is finalised.
        self._pending = (epoch, logs, time.monotonic() - self._epoch_t0)

    def _check_monitors(self, logged: set[str]) -> None:
        error, problems = monitor_problems(self.watch, logged)
        for message in problems:
            log.warning("fitstream: %s", message)
            warnings.warn(message, stacklevel=3)
        if error is not None:
            failure = MonitorNotFoundError(error)
            self.fail(failure)
            raise failure

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        if self._state != "running":
            return
        stopper = self._early_stopping()
        if self.save_restored_model is not None and stopper is not None and self._sender is not None:
            self._checkpoints.save_restored(self.model, stopper, self.save_restored_model)
        self._finalize_pending()
        self._emit_restored_checkpoint()  # a run that completed without early stopping
        diverged = self._stopped_on_non_finite_loss()
        if self.cancel_requested:
            status = self.cancel_status
        elif diverged is not None:
            # TerminateOnNaN (or a callback like it) stopped a run whose loss is no longer a number:
            # not a completed run, whatever epochs it finished before.
            self._emit(ev.RunFailed, error_type="TerminateOnNaN", message=diverged)
            status = "failed"
        elif stopper is not None and stopper.stopped_epoch > 0:
            status = "early_stopped"
        else:
            status = "completed"
        self._finish(status)

    def request_cancel(self, status: str = "cancelled", reason: str | None = None) -> None:
        """Stop training at the next batch boundary; the run ends as ``status`` (``cancelled``, or
        ``pruned`` for a sweep trial that fell behind), with ``reason`` in its row."""
        self.cancel_status, self._cancel_reason = status, reason
        self.cancel_requested = True
        if self._state == "running" and self.model is not None:
            self.model.stop_training = True  # Keras looks at it after every batch

    def __enter__(self) -> EventPublisher:
        return self

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is not None:
            self.fail(exc)
