"""The publisher's background sender: a bounded buffer, pipelined XADDs, a disk spool.

The training thread only calls :meth:`EventSender.submit`, which never blocks
on the network: it puts the event in a bounded in-memory queue, or, when the
queue is full or Redis is away, appends it to the disk spool. A background
thread sends batches with one pipelined round trip each. Order is kept: once
anything is spooled, everything after it is spooled too until the spool has
been drained, in order, into Redis.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from pipeline.backoff import Backoff
from pipeline.callbacks.spool import DiskSpool
from pipeline.errors import StreamUnavailableError

log = logging.getLogger(__name__)

Fields = dict[str, str]
#: A queued item: encoded fields, or a function that makes them (run on the sender thread,
#: e.g. hashing a checkpoint file off the training thread).
Item = Fields | Callable[[], Fields]

DEFAULT_BUFFER_SIZE = 10_000
#: After the first event of a batch, wait this long for more before sending.
LINGER_S = 0.02
#: How long the idle sender waits on an empty queue before looking at its flags again.
IDLE_WAIT_S = 0.5
_WAKE: Callable[[], Fields] = lambda: {}  # noqa: E731 - a sentinel, never sent
DEFAULT_SEND_BATCH = 500
RETRY_INITIAL_S = 0.2
RETRY_MAX_S = 5.0


@dataclass(frozen=True)
class FlushReport:
    """What the sender managed by the end: sent to Redis, and still on disk."""

    sent: int
    spooled_total: int
    left_in_spool: int
    spool_path: Path

    @property
    def complete(self) -> bool:
        return self.left_in_spool == 0


def _materialize(item: Item) -> Fields:
    return item() if callable(item) else item


class EventSender:
    """Sends encoded events to a stream from a background thread.

    Args:
        publish: Function that appends a list of encoded events to the stream in one
            round trip, raising ``StreamUnavailableError`` when Redis is unreachable.
        spool_path: File for events that cannot be sent now.
        buffer_size: Bound of the in-memory queue (events).
        send_batch: Events per pipelined round trip.
    """

    def __init__(
        self,
        *,
        publish: Callable[[list[Fields]], object],
        spool_path: Path,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        send_batch: int = DEFAULT_SEND_BATCH,
    ) -> None:
        self._publish = publish
        self._queue: queue.Queue[Item] = queue.Queue(maxsize=buffer_size)
        self._spool = DiskSpool(spool_path)
        self._send_batch = send_batch
        self._lock = threading.Lock()
        self._spooling = False
        self._closing = threading.Event()
        self._deadline: float | None = None
        self._thread: threading.Thread | None = None
        self._outage_started: float | None = None
        self._queued = 0  # events put in the in-memory queue …
        self._settled = 0  # … and how many of them have since been sent or written to the spool
        self.sent = 0
        self.errors = 0

    # -- training-thread side -------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="fitstream-sender", daemon=True)
            self._thread.start()

    def submit(self, item: Item) -> None:
        """Queue one event. Never blocks on the network and never raises."""
        try:
            with self._lock:
                if not self._spooling:
                    try:
                        self._queue.put_nowait(item)
                        self._queued += 1
                        return
                    except queue.Full:
                        # Everything still queued precedes this event: spool it first, in order.
                        self._move_queue_to_spool([])
                        self._spooling = True
                        log.warning("fitstream: event buffer full; spooling events to %s", self._spool.path)
                self._spool.append([_materialize(item)])
        except Exception:  # the event path must never break training
            self.errors += 1
            log.exception("fitstream: could not queue an event")

    def persist(self, timeout: float) -> bool:
        """Wait until every event submitted so far is in Redis or in the spool file, so that a
        SIGKILL from now on loses none of them (called before a resume backup is written).

        Waits at most ``timeout`` seconds, then writes what is still queued to the spool
        (an event in flight may then be sent twice; consumers keep one per id). True when
        everything was sent or spooled in time.
        """
        deadline = time.monotonic() + max(0.0, timeout)
        target = self._queued
        while self._settled < target:
            if time.monotonic() >= deadline:
                with self._lock:
                    self._move_queue_to_spool([])
                return False
            time.sleep(0.0005)
        return True

    def close(self, timeout: float) -> FlushReport:
        """Send what is buffered (waiting at most ``timeout`` seconds) and stop the thread."""
        self._deadline = time.monotonic() + max(0.0, timeout)
        self._closing.set()
        try:
            self._queue.put_nowait(_WAKE)  # don't let the sender sleep out its idle wait
        except queue.Full:
            pass  # it is busy anyway
        if self._thread is not None:
            self._thread.join(timeout + 2 * 10.0)
        with self._lock:
            self._move_queue_to_spool([])
            left = self._spool.unread_count()
            if left == 0:
                self._spool.clear()
            self._spool.close()
        return FlushReport(self.sent, self._spool.appended, left, self._spool.path)

    # -- sender thread --------------------------------------------------------
    def _past_deadline(self) -> bool:
        return self._deadline is not None and time.monotonic() >= self._deadline

    def _run(self) -> None:
        backoff = Backoff(initial_s=RETRY_INITIAL_S, maximum_s=RETRY_MAX_S)
        while True:
            try:
                if self._spooling:
                    if self._drain_spool():
                        backoff.reset()
                        continue
                    if self._closing.is_set() and self._past_deadline():
                        return
                    time.sleep(
                        min(
                            backoff.next_delay(),
                            max(0.0, (self._deadline or float("inf")) - time.monotonic()),
                        )
                    )
                    continue
                batch = self._take_batch()
                if not batch:
                    # Spooling may have started (buffer overflow) since the check above.
                    if self._closing.is_set() and not self._spooling and self._queue.empty():
                        return
                    continue
                fields = [_materialize(item) for item in batch]
                try:
                    self._publish(fields)
                    self.sent += len(fields)
                    with self._lock:  # _move_queue_to_spool counts too, from the training thread
                        self._settled += len(fields)
                except StreamUnavailableError as exc:
                    self._begin_outage(fields, exc)
            except Exception:
                self.errors += 1
                log.exception("fitstream: sender error (training continues)")
                time.sleep(RETRY_INITIAL_S)

    def _take_batch(self) -> list[Item]:
        """Up to ``send_batch`` items; after the first, linger LINGER_S and take what came meanwhile,
        so that a burst (an event every batch) costs one round trip, not one per event — and one
        wake-up of this thread, not one per event (each would take the GIL from the training thread)."""
        try:
            # Once closing, never block: the wake-up sentinel may already have been consumed.
            first = (
                self._queue.get_nowait() if self._closing.is_set() else self._queue.get(timeout=IDLE_WAIT_S)
            )
        except queue.Empty:
            return []
        batch = [] if first is _WAKE else [first]
        if batch and not self._closing.is_set():
            self._closing.wait(LINGER_S)  # woken early only by close()
        while len(batch) < self._send_batch:  # whatever is already there, without waiting
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                batch.append(item)
        return batch

    def _move_queue_to_spool(self, head: list[Fields]) -> None:
        """Spool ``head`` then everything still queued, in order. Caller holds the lock."""
        rest: list[Fields] = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not _WAKE:
                rest.append(_materialize(item))
        if head or rest:
            self._spool.append(head + rest)
            self._spooling = True
        self._settled += len(rest)

    def _begin_outage(self, unsent: list[Fields], exc: Exception) -> None:
        with self._lock:
            # The failed batch precedes anything spooled meanwhile (by a buffer overflow):
            # it goes to the spool's front, so that it survives the process as the rest does.
            self._spool.prepend(unsent)
            self._settled += len(unsent)
            self._move_queue_to_spool([])
            self._spooling = True
        if self._outage_started is None:
            self._outage_started = time.monotonic()
            log.warning("fitstream: Redis unreachable (%s); spooling events to %s", exc, self._spool.path)

    def _drain_spool(self) -> bool:
        """Send spooled events in order. True once the spool is empty and spooling has stopped."""
        items, offset = self._spool.read(max_items=self._send_batch)
        if offset != self._spool.offset:
            if items:
                try:
                    self._publish(items)
                except StreamUnavailableError:
                    return False
            self._spool.commit(offset, len(items))
            self.sent += len(items)
            return True
        with self._lock:
            if self._spool.has_unread():
                return True  # a line was being written; read again
            self._spool.clear()
            self._spooling = False
        if self._outage_started is not None:
            log.warning(
                "fitstream: Redis reachable again after %.1fs; spooled events sent",
                time.monotonic() - self._outage_started,
            )
            self._outage_started = None
        return True
