"""Per-batch events: the throttle (every N batches and/or every T seconds) and the event
builder that runs on the sender thread, so the training thread only captures values."""

from __future__ import annotations

import time
from typing import Any, Callable

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
    *, run_id: str, seq: int, epoch: int, batch: int, logs: dict[str, Any] | None, step: int | None = None,
) -> Callable[[], dict[str, str]]:
    """Captures a batch's values now (on the training thread); the returned function builds and
    encodes the ``batch_end`` event later, on the sender thread. ``step`` counts batches across epochs."""
    ts, values = time.time(), dict(logs or {})

    def make() -> dict[str, str]:
        metrics = {str(k): ev.to_float(v) for k, v in values.items()}
        return ev.encode(ev.build(ev.BatchEnd, run_id=run_id, seq=seq, ts=ts, epoch=epoch, batch=batch, step=step, metrics=metrics))

    return make
