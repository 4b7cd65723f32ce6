"""Committing one batch's effect: pausing while the database is unwell, dead-lettering what fails alone.

:class:`BatchCommitter` is the part of :class:`~pipeline.consumers.base.ConsumerLoop` that runs the
handler on a decoded batch. A database error that is transient pauses the consumer: the batch is
retried with backoff, forever, and the pause is published as the consumer's state in Redis
(``fitstream status`` shows it). Any other failure of a batch retries its events one by one; an event
that fails on its own is dead-lettered with the reason (``kind="handler_failed"``), and the loop goes on.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

import redis

from pipeline import events as ev
from pipeline.backoff import Backoff
from pipeline.bus import EventStream, StreamMessage
from pipeline.consumers.handler import Handler, Received
from pipeline.errors import DatabaseError

if TYPE_CHECKING:
    from pipeline.consumers.base import ConsumerStats

log = logging.getLogger(__name__)

RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


class BatchCommitter:
    """Mixin of the consume loop: commits a batch's effect or isolates the event that prevents it.

    It uses the loop's ``handler``, ``stream``, ``group``, ``consumer_name``, ``stats`` and
    ``stop_event``, and keeps ``_handled`` (whether the last batch's effect was committed) and
    ``_paused_since`` (when the database made this consumer pause; None while it answers).
    """

    handler: Handler
    stream: EventStream
    group: str
    consumer_name: str
    stats: ConsumerStats
    stop_event: threading.Event
    _handled: bool
    _paused_since: float | None

    def _dead_letter(self, message: StreamMessage, reason: str, *, kind: str = "invalid_event") -> None:
        log.warning("%s: dead-lettering %s: %s", self.consumer_name, message.message_id, reason)
        self.stream.dead_letter(self.group, message, reason, kind=kind)
        self.stats.dead_lettered += 1

    def _handle(self, batch: list[Received], prepared: Any = None) -> None:
        """Commit the batch's effect. A database that is unwell pauses the consumer (retrying with
        backoff, forever); only an event that fails on its own is dead-lettered, after the batch
        is retried one event at a time to find it."""
        self._handled = False
        failure = self._commit(batch, prepared)
        if failure is None:
            self._handled = True
            return
        if failure is _STOPPED:
            return  # stopped while the database was down: the batch stays pending
        if len(batch) > 1:
            log.warning(
                "%s: a batch of %d failed (%s); retrying its events one by one to isolate the bad one",
                self.consumer_name,
                len(batch),
                _describe(failure),
            )
            self.stats.batch_fallbacks += 1
            for item in batch:
                self._handle([item])
                if not self._handled:
                    return
            self._handled = True
            return
        item = batch[0]
        log.error("%s: %s fails on its own: %s", self.consumer_name, item.message_id, _describe(failure))
        self._dead_letter(
            StreamMessage(item.message_id, {ev.PAYLOAD_FIELD.encode(): item.payload.encode()}),
            f"{self.group} handler failed: {_describe(failure)}",
            kind="handler_failed",
        )
        self._handled = True

    def _commit(self, batch: list[Received], prepared: Any = None) -> BaseException | object | None:
        """Run the handler until it succeeds (None), fails because of the data (the error), or the
        consumer is stopped while the database is unwell (``_STOPPED``)."""
        backoff = Backoff(initial_s=RETRY_INITIAL_S, maximum_s=RETRY_MAX_S)
        while True:
            try:
                if prepared is not None:
                    self.handler.handle(batch, prepared)  # type: ignore[call-arg]
                else:
                    self.handler.handle(batch)
            except DatabaseError as exc:
                if not exc.transient:
                    return exc
                self._set_paused(exc)
                if self.stop_event.is_set():
                    return _STOPPED
                self.stop_event.wait(backoff.next_delay())
                continue
            except Exception as exc:  # a bug or an event the handler cannot take: isolate it
                return exc
            self._set_paused(None)
            return None

    def _set_paused(self, error: DatabaseError | None) -> None:
        """Log and publish the consumer's state once per change (``fitstream status`` shows it)."""
        if (error is not None) == (self._paused_since is not None):
            return
        if error is not None:
            self._paused_since = time.time()
            self.stats.pauses += 1
            log.warning(
                "%s: the database is unavailable (%s); paused — nothing is dead-lettered, the batch is retried "
                "with backoff until it succeeds",
                self.consumer_name,
                _describe(error),
            )
            state = {"state": "paused", "since": self._paused_since, "reason": _describe(error)[:500]}
        else:
            log.warning(
                "%s: the database answers again after %.1fs; resumed",
                self.consumer_name,
                time.time() - (self._paused_since or 0),
            )
            self._paused_since = None
            state = None
        try:
            self.stream.set_consumer_state(self.group, self.consumer_name, state)
        except redis.RedisError as exc:
            log.warning("%s: could not record the consumer's state in Redis: %s", self.consumer_name, exc)


_STOPPED = object()


def _describe(error: BaseException | object) -> str:
    code = getattr(error, "code", None)
    text = f"{type(error).__name__}: {error}"
    return f"{text} [{code}]" if code else text
