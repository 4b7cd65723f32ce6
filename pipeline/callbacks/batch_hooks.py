"""What an ``EventPublisher`` does at training batches.

``BatchHooks`` is the part of :class:`~pipeline.callbacks.publisher.EventPublisher` that decides
whether to hook every training batch at all (only for ``batch_end`` events or a batch-level
ModelCheckpoint, so that Keras otherwise keeps its asynchronous batch dispatch), reads the epoch's
learning rate at its first batch, publishes throttled ``batch_end`` events in batch order (also when
Keras calls the hook on its thread pool), and tells which batch an epoch reached from the optimizer's
step counter. The publisher's ``__init__`` creates the attributes it uses.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.callbacks.batch_events import batch_event_maker
from pipeline.callbacks.checkpoints import batch_level_checkpoints
from pipeline.callbacks.keras_state import optimizer_iterations

# The publisher's own logger name, so that logging configured for it still covers this part of it.
log = logging.getLogger("pipeline.callbacks.publisher")


class BatchHooks:
    """The training-batch hooks of an ``EventPublisher`` (a mixin)."""

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

    def _batches_this_epoch(self) -> int | None:
        """The last batch index of the current epoch, from the optimizer's step counter (no batch hook
        needed; read only when asked: the first read of a variable after training steps waits for
        them, ~0.5 ms): None where the model has no Keras optimizer."""
        now = optimizer_iterations(self.model)
        if now is None or self._iterations_at_epoch is None or now <= self._iterations_at_epoch:
            return None
        return now - self._iterations_at_epoch - 1
