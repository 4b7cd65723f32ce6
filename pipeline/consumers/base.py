"""The consume loop shared by every consumer: read, decode, handle, acknowledge.

Each consumer kind is its own Redis consumer group, so each sees every
event at least once. A message is acknowledged only after its handler's
effect is committed; a consumer that dies leaves its messages pending, and
another consumer of the same group reclaims them after ``claim_idle_ms``.
Undecodable payloads go to the dead-letter stream with the reason; they never
stop the loop.

A handler whose effect depends on the order of a run's events (the alerter's rule state
machine) sets ``ordered = True``: then one consumer of the group leads (a lease in Redis) and
the others stand by; a new leader first takes over every message still pending in the group,
oldest first, before it reads new ones, so no run's events are ever handled out of order.

An unordered group reads ahead: while one batch is written, a reader thread fetches and decodes the
next (and, for a handler with ``prepare``, turns it into rows), so that Python and the database do
not take turns. At most one batch is read ahead; a consumer that stops handles it before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from pipeline import events as ev
from pipeline.backoff import Backoff
from pipeline.bus import EventStream, StreamMessage
from pipeline.errors import DatabaseError, InvalidEventError
from pipeline.lease import LeaseKeeper, RedisLease

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 30.0
RETRY_INITIAL_S = 0.5
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class Received:
    """A decoded event with its stream id and its payload as it was sent."""

    message_id: str
    event: ev.Event
    payload: str


class Handler(Protocol):
    """What a consumer does with events. ``handle`` commits its whole batch or raises.
    An ``ordered`` handler (attribute, default False) gets its group's events in stream order.
    A handler may also have ``prepare(batch)``, pure work without side effects that the loop runs
    ahead on its reader thread; its result comes back as ``handle(batch, prepared)``. And it may
    have ``maintain()``, its periodic work, called between two rounds (about every ``block_ms``
    when idle); it must not raise."""

    group: str

    def handle(self, batch: Sequence[Received]) -> None: ...


@dataclass
class _ReadBatch:
    """Messages read and decoded, not yet handled."""

    messages: Sequence[StreamMessage]
    received: list[Received]
    invalid: list[tuple[StreamMessage, str]]
    prepared: Any = None


@dataclass
class ConsumerStats:
    processed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    batches: int = 0
    batch_fallbacks: int = 0
    pauses: int = 0  # times the database made this consumer pause
    groups_recreated: int = 0  # NOGROUP: Redis lost the stream or the group
    started_at: float = field(default_factory=time.time)


def leader_key(stream: str, group: str) -> str:
    """The Redis key of an ordered group's leader lease (it holds the leader's consumer name)."""
    return f"{stream}:{group}:leader"


def default_consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class ConsumerLoop:
    """Runs a :class:`Handler` against the stream in its consumer group.

    Args:
        handler: The effect (recorder, alerter, promoter).
        stream: The event stream.
        consumer_name: Unique name within the group; default ``host-pid``.
        batch_size: Messages per read. Default from settings.
        block_ms: How long a read waits for new messages. Default from settings.
        claim_idle_ms: Reclaim messages pending this long on another consumer. Default from settings.
    """

    def __init__(
        self,
        handler: Handler,
        stream: EventStream,
        *,
        consumer_name: str | None = None,
        batch_size: int | None = None,
        block_ms: int | None = None,
        claim_idle_ms: int | None = None,
        trim_interval_s: float = TRIM_INTERVAL_S,
        read_ahead: bool = True,
    ) -> None:
        settings = stream.settings
        self.handler = handler
        self.stream = stream
        self.group = handler.group
        self.consumer_name = consumer_name or default_consumer_name()
        self.batch_size = batch_size or settings.consumer_batch_size
        self.block_ms = block_ms or settings.consumer_block_ms
        self.claim_idle_ms = claim_idle_ms or settings.claim_idle_ms
        self.trim_interval_s = trim_interval_s
        self.stop_event = threading.Event()
        self.stats = ConsumerStats()
        self._last_claim = 0.0
        self._last_trim = 0.0
        self.ordered = bool(getattr(handler, "ordered", False))
        self._standing_by = False
        self._paused_since: float | None = None
        self._keeper: LeaseKeeper | None = None
        self.leader = (
            RedisLease(
                stream.client,
                leader_key(stream.stream, self.group),
                owner=self.consumer_name,
                ttl_s=settings.leader_ttl_seconds,
            )
            if self.ordered
            else None
        )
        #: Read the next batch while this one is written (never for an ordered group).
        self.read_ahead = read_ahead and not self.ordered
        self._reader: ThreadPoolExecutor | None = None
        self._handled = True  # whether the last batch's effect was committed
        self._next_read: Future[_ReadBatch] | None = None

    # -- running ------------------------------------------------------------------
    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT finish the current batch, then stop."""

        def _stop(signum: int, _frame: object) -> None:
            log.info("%s: signal %d received; stopping after this batch", self.consumer_name, signum)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)

    def run(self, *, idle_exit_after: float | None = None) -> ConsumerStats:
        """Consume until stopped (or, with ``idle_exit_after``, until no message came for that long)."""
        self.stream.ensure_group(self.group)
        if not self.ordered:
            self._drain_own_pending()
        idle_since = time.monotonic()
        backoff = Backoff(initial_s=RETRY_INITIAL_S, maximum_s=RETRY_MAX_S)
        leading = False
        try:
            while not self.stop_event.is_set():
                try:
                    if self.leader is not None and not (leading := self._lead(leading)):
                        count = 0
                        self.stop_event.wait(min(1.0, self.block_ms / 1000))
                    else:
                        count = self._read_ahead_round() if self.read_ahead else self.run_once()
                    self._maintain()
                    backoff.reset()
                except (redis.ConnectionError, redis.TimeoutError) as exc:
                    delay = backoff.next_delay()
                    log.warning(
                        "%s: Redis unavailable (%s); retrying in %.1fs", self.consumer_name, exc, delay
                    )
                    self.stop_event.wait(delay)
                    continue
                except redis.ResponseError as exc:
                    # Redis' own error codes: NOGROUP, and UNBLOCKED for a read waiting on a deleted stream.
                    if not str(exc).startswith(("NOGROUP", "UNBLOCKED")):
                        raise
                    # Redis restarted without its data (no persistence): the stream and the group
                    # are gone. Recreate the group from the start of whatever stream there is now.
                    log.warning(
                        "%s: consumer group %s is gone (%s) — did Redis restart without persistence? "
                        "recreating it from the start of the stream",
                        self.consumer_name,
                        self.group,
                        exc,
                    )
                    self.stats.groups_recreated += 1
                    self.stream.ensure_group(self.group)
                    leading = False
                    continue
                if count:
                    idle_since = time.monotonic()
                elif idle_exit_after is not None and time.monotonic() - idle_since >= idle_exit_after:
                    break
        finally:
            self._finish_read_ahead()
            self._stop_keeping()
            if leading and self.leader is not None:
                try:
                    self.leader.release()  # the standby takes over now, not a lease period later
                except redis.RedisError:
                    pass
        return self.stats

    def _lead(self, leading: bool) -> bool:
        """Ordered groups: keep (or take) the lead. A new leader first handles every message still
        pending in the group, oldest first — the old leader's unfinished batch included."""
        assert self.leader is not None
        if leading:
            if self._keeper is not None and not self._keeper.lost.is_set():
                return True
            self._stop_keeping()
            log.warning(
                "%s: lost the lead of group %s to %s; standing by",
                self.consumer_name,
                self.group,
                self.leader.holder(),
            )
            return False
        if not self.leader.acquire(reentrant=True):
            if not self._standing_by:
                self._standing_by = True
                log.info(
                    "%s: %s leads group %s; standing by", self.consumer_name, self.leader.holder(), self.group
                )
            return False
        self._standing_by = False
        self._keeper = LeaseKeeper(self.leader)
        log.info("%s: leading group %s", self.consumer_name, self.group)
        taken_over = 0
        while not self.stop_event.is_set() and not self._keeper.lost.is_set():
            pending = self.stream.claim_stale(
                self.group, self.consumer_name, min_idle_ms=0, count=self.batch_size
            )
            if not pending:
                break
            self.stats.reclaimed += len(pending)
            taken_over += len(pending)
            self.process(pending)
        if taken_over:
            log.warning(
                "%s: took the lead of group %s and handled %d messages left pending before anything newer",
                self.consumer_name,
                self.group,
                taken_over,
            )
        return True

    def _maintain(self) -> None:
        """The handler's own periodic work (``maintain()``, optional), between two rounds."""
        maintain = getattr(self.handler, "maintain", None)
        if maintain is not None and not self.stop_event.is_set():
            maintain()

    def _stop_keeping(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None

    def run_once(self) -> int:
        """One round: reclaim stale messages when due, read new ones, process them."""
        now = time.monotonic()
        count = self._claim_when_due(now)
        messages = self.stream.read(
            self.group, self.consumer_name, count=self.batch_size, block_ms=self.block_ms
        )
        count += self.process(messages)
        self._trim_when_due(now)
        return count

    def _claim_when_due(self, now: float, skip: set[str] | frozenset[str] = frozenset()) -> int:
        if now - self._last_claim < self.claim_idle_ms / 2000:
            return 0
        self._last_claim = now
        claimed = self.stream.claim_stale(
            self.group, self.consumer_name, min_idle_ms=self.claim_idle_ms, count=self.batch_size
        )
        claimed = [m for m in claimed if m.message_id not in skip]
        if not claimed:
            return 0
        log.info("%s: reclaimed %d messages from a silent consumer", self.consumer_name, len(claimed))
        self.stats.reclaimed += len(claimed)
        return self.process(claimed)

    def _trim_when_due(self, now: float) -> None:
        if now - self._last_trim < self.trim_interval_s:
            return
        self._last_trim = now
        try:
            self.stream.trim()
        except redis.RedisError as exc:
            log.warning("%s: stream trim failed: %s", self.consumer_name, exc)

    def _drain_own_pending(self) -> None:
        """Messages delivered to this consumer name before a restart, not yet acknowledged."""
        while not self.stop_event.is_set():
            pending = self.stream.read(
                self.group, self.consumer_name, count=self.batch_size, block_ms=None, pending=True
            )
            if not pending:
                return
            self.process(pending)

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

    def _read_new(self) -> _ReadBatch:
        messages = self.stream.read(
            self.group, self.consumer_name, count=self.batch_size, block_ms=self.block_ms
        )
        return self._decode(messages)

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

    # -- one batch ------------------------------------------------------------------
    def process(self, messages: Sequence[StreamMessage]) -> int:
        """Decode, dead-letter the invalid, handle the rest in one commit, then acknowledge all."""
        if not messages:
            return 0
        return self._process_read(self._decode(messages))

    def _decode(self, messages: Sequence[StreamMessage]) -> _ReadBatch:
        """Decode (no side effects: it may run on the reader thread)."""
        received: list[Received] = []
        invalid: list[tuple[StreamMessage, str]] = []
        for message in messages:
            try:
                event = ev.decode(message.fields)
            except InvalidEventError as exc:
                invalid.append((message, str(exc)))
                continue
            raw = message.fields.get(ev.PAYLOAD_FIELD.encode(), b"")
            received.append(
                Received(
                    message.message_id, event, raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
                )
            )
        read = _ReadBatch(messages, received, invalid)
        prepare = getattr(self.handler, "prepare", None)
        if prepare is not None and received:
            try:
                read.prepared = prepare(received)
            except Exception:  # handle() meets the same problem again, and isolates the event
                read.prepared = None
        return read

    def _process_read(self, read: _ReadBatch) -> int:
        if not read.messages:
            return 0
        if self._keeper is not None and self._keeper.lost.is_set():
            return 0  # no longer the leader: the new one takes these over, in order
        for message, reason in read.invalid:
            self._dead_letter(message, reason)
        received = read.received
        if received:
            self._handle(received, read.prepared)
        if self.stop_event.is_set() and received and not self._handled:
            return 0  # stopped while the database was down: leave the batch pending
        self.stream.ack(self.group, [m.message_id for m in read.messages])
        self.stats.processed += len(received)
        self.stats.batches += 1
        return len(read.messages)

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
