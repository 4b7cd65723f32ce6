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

This module holds :class:`ConsumerLoop` (the rounds: reclaim, read, process, acknowledge, trim;
signals, idle exit, Redis outages) and its :class:`ConsumerStats`. Its parts live beside it:
:mod:`~pipeline.consumers.handler` (what a handler receives and provides, decoding),
:mod:`~pipeline.consumers.batch_commit` (committing a batch: pausing, dead-lettering),
:mod:`~pipeline.consumers.leadership` (ordered groups) and :mod:`~pipeline.consumers.read_ahead`.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import redis

from pipeline.backoff import Backoff
from pipeline.bus import EventStream, StreamMessage
from pipeline.consumers.batch_commit import RETRY_INITIAL_S, RETRY_MAX_S, BatchCommitter
from pipeline.consumers.handler import Handler, ReadBatch, Received, decode_batch
from pipeline.consumers.leadership import GroupLeadership, leader_key
from pipeline.consumers.read_ahead import ReadAhead
from pipeline.identity import process_identity
from pipeline.lease import LeaseKeeper, RedisLease

__all__ = [
    "RETRY_INITIAL_S",
    "RETRY_MAX_S",
    "TRIM_INTERVAL_S",
    "ConsumerLoop",
    "ConsumerStats",
    "Handler",
    "Received",
    "leader_key",
]

log = logging.getLogger(__name__)

TRIM_INTERVAL_S = 30.0


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


class ConsumerLoop(GroupLeadership, ReadAhead, BatchCommitter):
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
        self.consumer_name = consumer_name or process_identity()
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
        self._next_read: Future[ReadBatch] | None = None

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

    def _maintain(self) -> None:
        """The handler's own periodic work (``maintain()``, optional), between two rounds."""
        maintain = getattr(self.handler, "maintain", None)
        if maintain is not None and not self.stop_event.is_set():
            maintain()

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

    # -- one batch ------------------------------------------------------------------
    def process(self, messages: Sequence[StreamMessage]) -> int:
        """Decode, dead-letter the invalid, handle the rest in one commit, then acknowledge all."""
        if not messages:
            return 0
        return self._process_read(decode_batch(self.handler, messages))

    def _process_read(self, read: ReadBatch) -> int:
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
