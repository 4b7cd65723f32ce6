"""Reading ahead: an unordered group fetches and decodes its next batch while this one is written.

:class:`ReadAhead` is the round of :class:`~pipeline.consumers.base.ConsumerLoop` for an unordered
group: a reader thread fetches and decodes the next batch (and, for a handler with ``prepare``, turns
it into rows) while the loop's thread writes the current one, so that Python and the database do not
take turns. At most one batch is read ahead; a consumer that stops handles it before it exits, unless
the database is unwell, when it stays pending for this consumer's restart or a reclaim.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from pipeline.bus import EventStream
from pipeline.consumers.handler import Handler, ReadBatch, decode_batch

log = logging.getLogger(__name__)


class ReadAhead:
    """Mixin of the consume loop: one round with the next batch read on a reader thread.

    It uses the loop's ``handler``, ``stream``, ``group``, ``consumer_name``, ``batch_size``,
    ``block_ms``, ``stop_event``, ``_handled``, ``_paused_since`` and its steps
    ``_claim_when_due``, ``_process_read`` and ``_trim_when_due``; it keeps ``_reader`` (the
    thread) and ``_next_read`` (the batch being read ahead).
    """

    handler: Handler
    stream: EventStream
    group: str
    consumer_name: str
    batch_size: int
    block_ms: int
    stop_event: threading.Event
    _handled: bool
    _paused_since: float | None
    _reader: ThreadPoolExecutor | None
    _next_read: Future[ReadBatch] | None

    def _read_ahead_round(self) -> int:
        """:meth:`run_once` with the next batch read (and prepared) on the reader thread while this
        one is written."""
        now = time.monotonic()
        if self._reader is None:
            self._reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{self.group}-reader")
        if self._next_read is None:
            self._next_read = self._reader.submit(self._read_new)
        try:
            read = self._next_read.result()  # Redis' errors are raised here, in the loop's thread
        finally:
            self._next_read = None
        # Reclaim only now, with no read in flight: the batch just read waited, pending on this very
        # consumer, while the previous one was written, and XAUTOCLAIM would hand it over a second time.
        count = self._claim_when_due(now, skip={m.message_id for m in read.messages})
        if not self.stop_event.is_set():
            self._next_read = self._reader.submit(self._read_new)
        count += self._process_read(read)
        self._trim_when_due(now)
        return count

    def _read_new(self) -> ReadBatch:
        messages = self.stream.read(
            self.group, self.consumer_name, count=self.batch_size, block_ms=self.block_ms
        )
        return decode_batch(self.handler, messages)

    def _finish_read_ahead(self) -> None:
        """A stopping consumer handles the batch it has read ahead (it is delivered to this consumer:
        left alone, it would wait ``claim_idle_ms`` for another consumer to reclaim it)."""
        pending, self._next_read = self._next_read, None
        healthy = self._handled and self._paused_since is None
        if pending is not None and not healthy:
            # Stopped while the database is unwell: another attempt could only wait for it (SQLite's
            # busy timeout). The batch stays pending, for this consumer's restart or a reclaim.
            pending.cancel()
        elif pending is not None:
            try:
                self._process_read(pending.result())
            except Exception as exc:  # Redis or the handler failing on the way out: left pending
                log.warning(
                    "%s: the batch read ahead stays pending (%s); it is handled after a restart",
                    self.consumer_name,
                    exc,
                )
        if self._reader is not None:
            self._reader.shutdown(wait=True)
            self._reader = None
