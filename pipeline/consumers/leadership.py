"""Leadership of an ordered consumer group: one consumer leads, the others stand by.

A handler whose effect depends on the order of a run's events sets ``ordered = True``. Its group's
consumers then compete for a lease in Redis (:func:`leader_key`); the holder reads, the others wait.
:class:`GroupLeadership` keeps or takes the lead between two rounds of the consume loop. A new leader
first handles every message still pending in the group, oldest first (the old leader's unfinished
batch included), before it reads anything newer, so no run's events are handled out of order.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from pipeline import redis_keys
from pipeline.bus import EventStream
from pipeline.lease import LeaseKeeper, RedisLease

if TYPE_CHECKING:
    from pipeline.consumers.base import ConsumerStats

log = logging.getLogger(__name__)


def leader_key(stream: str, group: str) -> str:
    """The Redis key of an ordered group's leader lease (it holds the leader's consumer name).

    Example:
        >>> leader_key("fitstream:events", "alerter")
        'fitstream:events:alerter:leader'
    """
    return redis_keys.group_leader(stream, group)


class GroupLeadership:
    """Mixin of the consume loop for ordered groups.

    It uses the loop's ``leader`` (the lease, None for an unordered group), ``stream``, ``group``,
    ``consumer_name``, ``batch_size``, ``stats``, ``stop_event`` and ``process(messages)``, and keeps
    ``_keeper`` (the thread that renews the lease while this consumer leads) and ``_standing_by``
    (whether "standing by" was logged already).
    """

    leader: RedisLease | None
    stream: EventStream
    group: str
    consumer_name: str
    batch_size: int
    stats: ConsumerStats
    stop_event: threading.Event
    _keeper: LeaseKeeper | None
    _standing_by: bool

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

    def _stop_keeping(self) -> None:
        if self._keeper is not None:
            self._keeper.stop()
            self._keeper = None
