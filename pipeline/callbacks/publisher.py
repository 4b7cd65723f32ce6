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
"""

from __future__ import annotations

import atexit
import logging
import math
import os
import socket
import threading
import time
import traceback
import uuid
import warnings
import weakref
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import keras

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.callbacks.batch_events import BatchOrder, BatchThrottle, batch_event_maker, check_batch_settings
from pipeline.callbacks.checkpoints import CheckpointReporter, batch_level_checkpoints, checkpoint_event_maker
from pipeline.callbacks.keras_state import (
    EARLY_STOPPING,
    REDUCE_LR,
    check_watchable,
    describe_callbacks,
    describe_model,
    early_stopping_decision,
    is_chief,
    learning_rate,
    monitor_problems,
    optimizer_iterations,
    primary_monitor,
    resolved_mode,
)
from pipeline.callbacks.sender import EventSender, FlushReport
from pipeline.config import Settings, get_settings
from pipeline.errors import ConfigurationError, MonitorNotFoundError
from pipeline.monitor import Monitor
from pipeline.params import flatten_params, run_params

log = logging.getLogger(__name__)

DEFAULT_FLUSH_TIMEOUT_S = 10.0


class EventPublisher(keras.callbacks.Callback):
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

    def _hook_batches_when_needed(self) -> None:
        """Hook every training batch only for batch events or a batch-level ModelCheckpoint. A callback
        with a batch-end hook makes Keras dispatch every batch synchronously (and copy the logs off
        the device); without one, Keras keeps its asynchronous batch dispatch.

        Batch events alone are ``async_safe``: where the backend allows it (JAX, PyTorch) Keras then
        calls the batch-end hook on its thread pool and the accelerator is not kept waiting for every
        batch's logs; ``BatchOrder`` keeps the events in batch order. A watched batch-level
        ModelCheckpoint keeps it on the training thread (its file is read right after Keras wrote it).
        """
        throttle = getattr(self, "_batch_throttle", None)
        per_batch_checkpoints = bool(batch_level_checkpoints(self._watch))
        needed = (throttle is not None and throttle.enabled) or per_batch_checkpoints
        if needed:
            self.on_train_batch_end = self._on_train_batch_end
        else:
            self.__dict__.pop("on_train_batch_end", None)
        self.async_safe = needed and not per_batch_checkpoints

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

    def _next_seq(self) -> int:
        with self._seq_lock:  # batch ends may come from Keras' thread pool (async_safe)
            seq = self._seq
            self._seq += 1
            return seq

    def _emit(self, cls: type[ev._Event], **fields: Any) -> None:
        try:
            event = ev.build(cls, run_id=self.run_id, seq=self._next_seq(), **fields)
            if self._sender is not None:
                self._sender.submit(ev.encode(event))
        except Exception:
            log.exception("fitstream: could not build %s event (training continues)", cls.__name__)

    def _emit_deferred(self, make: Any) -> None:
        if self._sender is not None:
            self._sender.submit(make)

    def _start_sender(self) -> None:
        if not is_chief():
            log.info("fitstream: not the chief of this tf.distribute cluster; publishing nothing")
            return
        stream = EventStream(redis_url=self._redis_url, settings=self.settings, stream=self._stream_name)
        spool_path = Path(self.settings.spool_dir) / f"{self.run_id}.jsonl"
        self._sender = EventSender(publish=stream.publish, spool_path=spool_path)
        self._sender.start()

    def _close_sender(self, timeout: float) -> FlushReport | None:
        if self._sender is None:
            return None
        report = self._sender.close(timeout)
        self._sender = None
        self.last_report = report
        if report.complete:
            log.info("fitstream: run %s: %d events sent", self.run_id, report.sent)
        else:
            log.warning(
                "fitstream: run %s: %d events could not reach Redis within %.1fs and remain spooled in %s; "
                "send them with: fitstream spool flush",
                self.run_id,
                report.left_in_spool,
                timeout,
                report.spool_path,
            )
        return report

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

    def _read_epoch_learning_rate(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        if self.async_safe:
            self.on_train_batch_begin = self._batch_order.began
            self._batch_order.began(batch)
        else:
            self.__dict__.pop("on_train_batch_begin", None)
        self._epoch_lr = self._learning_rate()

    def _on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        """Installed as ``on_train_batch_end`` only when batch events or batch-level checkpoints are on."""
        if self.cancel_requested:
            self.model.stop_training = True
        if not self.async_safe:
            self._batch_ended(batch, logs)
            return
        try:  # maybe on Keras' thread pool, where an exception would surface in fit()
            self._batch_order.ended(batch, logs, self._batch_ended)
        except Exception:
            log.exception("fitstream: could not publish batch %s (training continues)", batch)

    def _batch_ended(self, batch: int, logs: dict[str, Any] | None) -> None:
        """One batch's end, in batch order."""
        self._last_train_logs = logs
        self._last_batch = batch
        if self._checkpoints.per_batch:
            self._emit_checkpoints(
                self._checkpoints.batch_files(self._current_epoch, batch, logs, self._epoch_start_ns)
            )
        if self._batch_throttle.enabled and self._batch_throttle.due():
            # Only capture here; building and encoding happen on the sender thread.
            self._emit_deferred(
                batch_event_maker(
                    run_id=self.run_id,
                    seq=self._next_seq(),
                    epoch=self._current_epoch,
                    batch=batch,
                    logs=logs,
                    step=self._steps_before_epoch + batch,
                )
            )

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

    def _finalize_pending(self) -> None:
        if self._pending is None:
            return
        epoch, logs, wall = self._pending
        self._pending = None
        try:
            self._publish_epoch(epoch, logs, wall)
        except Exception:
            log.exception("fitstream: could not publish epoch %d (training continues)", epoch)

    def _publish_epoch(self, epoch: int, logs: dict[str, Any], wall: float) -> None:
        if self._epoch_lr is None:  # an epoch without batches
            self._epoch_lr = self._learning_rate()
        metrics = {str(k): ev.to_float(v) for k, v in logs.items()}
        steps = self.params.get("steps") if self.params else None
        self._epochs_completed = max(self._epochs_completed, epoch + 1)
        self._run_monitor = self._primary_monitor(logs)
        monitor = self._run_monitor[0]
        self._monitor_history.append((epoch, metrics.get(monitor) if monitor else None))
        self._emit(
            ev.EpochEnd,
            epoch=epoch,
            metrics=metrics,
            learning_rate=self._epoch_lr,
            wall_time_s=wall,
            steps=steps,
            steps_per_second=(steps / wall) if steps and wall > 0 else None,
            samples_per_second=(steps * self.batch_size / wall)
            if steps and self.batch_size and wall > 0
            else None,
        )
        new_lr = self._learning_rate()
        if self._epoch_lr is not None and new_lr is not None and new_lr != self._epoch_lr:
            reducer = next((c for c in self.watch if isinstance(c, REDUCE_LR)), None)
            self._emit(
                ev.LearningRateChanged,
                epoch=epoch,
                old=self._epoch_lr,
                new=new_lr,
                reason=f"ReduceLROnPlateau on {reducer.monitor}" if reducer is not None else None,
                monitor=reducer.monitor if reducer is not None else None,
                mode=resolved_mode(reducer) if reducer is not None else None,
            )
        self._emit_checkpoints(self._checkpoints.epoch_files(epoch, logs, self._epoch_start_ns))
        stopper = self._early_stopping()
        if (
            stopper is not None
            and stopper.stopped_epoch == epoch
            and epoch > 0
            and epoch not in self._early_stopped_reported
        ):
            self._emit_restored_checkpoint()  # before early_stopped: the promoter acts on that
            self._early_stopped_reported.add(epoch)
            self._emit(ev.EarlyStopped, **early_stopping_decision(stopper))

    def _emit_checkpoints(self, saved: Iterable[dict[str, Any]]) -> None:
        for fields in saved:
            # Hashing happens on the sender thread: a large checkpoint must not hold up training.
            self._emit_deferred(checkpoint_event_maker(run_id=self.run_id, seq=self._next_seq(), **fields))

    def _emit_restored_checkpoint(self) -> None:
        restored = self._checkpoints.take_restored()
        if restored is not None:
            self._emit_checkpoints([restored])

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

    def _batches_this_epoch(self) -> int | None:
        """The last batch index of the current epoch, from the optimizer's step counter (no batch hook
        needed; read only when asked: the first read of a variable after training steps waits for
        them, ~0.5 ms): None where the model has no Keras optimizer."""
        now = optimizer_iterations(self.model)
        if now is None or self._iterations_at_epoch is None or now <= self._iterations_at_epoch:
            return None
        return now - self._iterations_at_epoch - 1

    # -- outcome ------------------------------------------------------------------
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

    # -- resume (see pipeline.callbacks.resume.ResumableBackup) --------------------------------
    def finish_epoch(self) -> None:
        """Publish the finished epoch now (otherwise published when the next one begins), so that a
        resume snapshot taken next holds this publisher's state after it."""
        self._finalize_pending()

    def persist_events(self, timeout: float = 5.0) -> bool:
        """Wait until the events published so far are in Redis or in the disk spool (a SIGKILL then
        loses none of them). True when they got there within ``timeout`` seconds."""
        if self._sender is None:
            return True
        return self._sender.persist(timeout)

    def get_resume_state(self) -> dict[str, Any]:
        """What this publisher knows about the run so far, to survive a resume."""
        return {
            "monitor_history": [[epoch, value] for epoch, value in self._monitor_history],
            "epochs_completed": self._epochs_completed,
            "early_stopped_reported": sorted(self._early_stopped_reported),
        }

    def set_resume_state(self, state: dict[str, Any]) -> None:
        self._monitor_history = [(int(epoch), value) for epoch, value in state.get("monitor_history", [])]
        self._epochs_completed = max(self._epochs_completed, int(state.get("epochs_completed", 0)))
        self._early_stopped_reported = set(state.get("early_stopped_reported", []))

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


_LIVE_PUBLISHERS: weakref.WeakSet[EventPublisher] = weakref.WeakSet()


@atexit.register
def _fail_unfinished_runs() -> None:
    """A process that exits mid-fit still tells the consumers what happened to its run."""
    for publisher in list(_LIVE_PUBLISHERS):
        try:
            publisher.fail(SystemExit("the training process exited before the run finished"), timeout=3.0)
        except Exception:
            pass
