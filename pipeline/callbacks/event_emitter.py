"""How an ``EventPublisher``'s events leave the training process.

``EventEmitter`` is the part of :class:`~pipeline.callbacks.publisher.EventPublisher` that numbers
events (``seq``), hands them to the background :class:`~pipeline.callbacks.sender.EventSender`
(started only on the chief of a ``tf.distribute`` cluster), defers checkpoint events whose file is
hashed on the sender thread, and closes the sender at the end of a run with a report of what reached
Redis and what stayed in the disk spool. It holds no state of its own: the publisher's ``__init__``
creates the attributes it uses (``_seq``, ``_seq_lock``, ``_sender``, ``_checkpoints`` …).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.callbacks.checkpoints import checkpoint_event_maker
from pipeline.callbacks.keras_state import is_chief
from pipeline.callbacks.sender import EventSender, FlushReport

# The publisher's own logger name, so that logging configured for it still covers this part of it.
log = logging.getLogger("pipeline.callbacks.publisher")


class EventEmitter:
    """Sequence numbers and the background sender of an ``EventPublisher`` (a mixin)."""

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

    def _emit_checkpoints(self, saved: Iterable[dict[str, Any]]) -> None:
        for fields in saved:
            # Hashing happens on the sender thread: a large checkpoint must not hold up training.
            self._emit_deferred(checkpoint_event_maker(run_id=self.run_id, seq=self._next_seq(), **fields))

    def _emit_restored_checkpoint(self) -> None:
        restored = self._checkpoints.take_restored()
        if restored is not None:
            self._emit_checkpoints([restored])

    def persist_events(self, timeout: float = 5.0) -> bool:
        """Wait until the events published so far are in Redis or in the disk spool (a SIGKILL then
        loses none of them). True when they got there within ``timeout`` seconds."""
        if self._sender is None:
            return True
        return self._sender.persist(timeout)
