"""Per-batch events: the throttle (every N batches and/or every T seconds), the event builder
that runs on the sender thread, so the training thread only captures values, and the gate that
keeps batch ends in order when Keras hands them to its thread pool."""

from __future__ import annotations

import bisect
import threading
import time
from collections.abc import Callable
from typing import Any

from pipeline import events as ev
from pipeline.errors import ConfigurationError


def check_batch_settings(every: int | None, seconds: float | None) -> None:
    """Refuse ``batch_events_every`` / ``batch_events_seconds`` values that cannot work."""
    if every is not None and (not isinstance(every, int) or every < 1):
        raise ConfigurationError(f"batch_events_every must be a positive integer or None; got {every!r}")
    if seconds is not None and not seconds > 0:
        raise ConfigurationError(f"batch_events_seconds must be > 0 or None; got {seconds!r}")


class BatchThrottle:
    """Says when a ``batch_end`` event is due."""

    def __init__(self, every: int | None, seconds: float | None) -> None:
        self.every = every
        self.seconds = seconds
        self.enabled = every is not None or seconds is not None
        self._since = 0
        self._last = 0.0

    def new_epoch(self) -> None:
        self._since = 0

    def due(self) -> bool:
        self._since += 1
        due = self.every is not None and self._since >= self.every
        if not due and self.seconds is not None:
            due = time.monotonic() - self._last >= self.seconds
        if due:
            self._since = 0
            self._last = time.monotonic()
        return due


def batch_event_maker(
    *,
    run_id: str,
    seq: int,
    epoch: int,
    batch: int,
    logs: dict[str, Any] | None,
    step: int | None = None,
) -> Callable[[], dict[str, str]]:
    """Captures a batch's values now (on the training thread); the returned function builds and
    encodes the ``batch_end`` event later, on the sender thread. ``step`` counts batches across epochs."""
    ts, values = time.time(), dict(logs or {})

    def make() -> dict[str, str]:
        metrics = {str(k): ev.to_float(v) for k, v in values.items()}
        return ev.encode(
            ev.build(
                ev.BatchEnd,
                run_id=run_id,
                seq=seq,
                ts=ts,
                epoch=epoch,
                batch=batch,
                step=step,
                metrics=metrics,
            )
        )

    return make


class BatchOrder:
    """Hands batch ends on in the order their batches began, whichever thread calls and when.

    A callback that says it is ``async_safe`` gets its ``on_train_batch_end`` calls on Keras'
    thread pool (backends that are thread safe: JAX, PyTorch; TensorFlow has no such pool), so the
    training thread goes on dispatching steps instead of waiting for each batch's logs to be copied
    off the device. Those calls may run side by side and finish in any order. The training thread
    records each batch's start (``began``, from ``on_train_batch_begin``: always called in order);
    ``ended`` holds a batch end back until every batch begun before it has ended too, then passes
    them on in order, under one lock. With ``steps_per_execution`` > 1 a batch end names the last
    step of its execution: it belongs to the latest batch begun at or before it.

    Example::

        >>> order, seen = BatchOrder(), []
        >>> for batch in (0, 1, 2):
        ...     order.began(batch)
        >>> order.ended(1, {"loss": 0.5}, lambda b, logs: seen.append(b))
        >>> order.ended(0, {"loss": 0.7}, lambda b, logs: seen.append(b))
        >>> order.ended(2, {"loss": 0.4}, lambda b, logs: seen.append(b))
        >>> seen
        [0, 1, 2]
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._begun: list[int] = []  # begun, not yet passed on; ascending within an epoch
        self._ended: dict[int, tuple[int, Any]] = {}  # begin step -> (end step, logs)

    def began(self, batch: int, logs: Any = None) -> None:
        """Record a batch's start (the signature of Keras' ``on_train_batch_begin``)."""
        with self._lock:
            if self._begun and batch <= self._begun[-1]:
                # A new epoch (Keras counts batches from 0 again) while ends are still held back:
                # Keras waits for every batch end before an epoch ends, so they never will come.
                self._begun.clear()
                self._ended.clear()
            self._begun.append(batch)

    def ended(self, batch: int, logs: Any, deliver: Callable[[int, Any], None]) -> None:
        """``deliver(batch, logs)`` for this batch end and every held-back one now in order."""
        with self._lock:
            i = bisect.bisect_right(self._begun, batch) - 1
            if i < 0:  # no recorded start (a hook installed mid-batch): nothing to order it against
                deliver(batch, logs)
                return
            self._ended[self._begun[i]] = (batch, logs)
            while self._begun and self._begun[0] in self._ended:
                end, held = self._ended.pop(self._begun.pop(0))
                deliver(end, held)

    def pending(self) -> int:
        """Batch ends begun but not passed on yet."""
        with self._lock:
            return len(self._begun)
