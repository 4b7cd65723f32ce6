"""Redis Streams: publishing, consumer groups, reclaiming, dead letters, retention.

Retention policy (documented in the README):

* ``XADD`` never trims. An entry is removed only by :meth:`EventStream.trim`,
  which consumers call periodically.
* :meth:`EventStream.trim` removes entries that **every** consumer group has
  acknowledged (older than each group's oldest pending entry and not after its
  last-delivered id) **and** that are older than ``stream_retention_seconds``.
* If the stream is still longer than ``stream_max_events`` (Redis memory cap),
  it is trimmed to that length even though some groups have not acknowledged
  everything: this is logged at ERROR level with the number of unacknowledged
  events dropped, and counted in the ``<stream>:forced_trims`` hash that
  ``fitstream status`` reports.

Sharding (``FITSTREAM_STREAM_SHARDS``, default 1): the events are spread over that many stream
keys by a hash of their run id (:func:`pipeline.stream_shards.shard_of`), so each run's events
stay on one key, in the order they were published. An :class:`EventStream` is one shard: its
consumer groups, dead letters, counters and consumer states. :meth:`EventStream.publish` routes
every event to its run's shard, whichever shard it is called on. With more than one shard (or on
a Redis Cluster) each shard's keys share a hash tag, ``{<stream>:<shard>}``, so a cluster keeps a
whole shard, dead letters and counters included, on one node. Connecting, and the safety
warnings about the Redis itself, are :mod:`pipeline.redis_client`'s.

Example:
    >>> stream = EventStream(redis_url="redis://localhost:6379/0")   # doctest: +SKIP
    >>> stream.publish([event])                                       # doctest: +SKIP
    >>> [shard.stream for shard in EventStream(settings=Settings(stream_shards=2)).all_shards()]  # doctest: +SKIP
    ['{fitstream:events:0}', '{fitstream:events:1}']
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from pipeline import events as ev
from pipeline import redis_keys
from pipeline.config import Settings, get_settings, is_cluster_url
from pipeline.errors import StreamUnavailableError

# EventStream.client calls connect through this module's global, so a test can replace bus.connect.
from pipeline.redis_client import (
    SOCKET_CONNECT_TIMEOUT_S,
    SOCKET_TIMEOUT_S,
    connect,
    is_cluster_client,
    safety_warnings,
)
from pipeline.redis_client import reply_str as _sid
from pipeline.stream_shards import run_id_of, run_stream_name, shard_of, shard_stream_name

# Names other modules import from here (most have moved to redis_client and stream_shards).
__all__ = [
    "SOCKET_CONNECT_TIMEOUT_S",
    "SOCKET_TIMEOUT_S",
    "EventStream",
    "StreamMessage",
    "_sid",
    "connect",
    "run_stream_name",
    "shard_of",
    "shard_stream_name",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StreamMessage:
    """One stream entry as read by a consumer: its Redis id and raw fields."""

    message_id: str
    fields: dict[bytes, bytes]


def _id_tuple(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


class EventStream:
    """The event stream and its consumer groups.

    Args:
        redis_url: Redis to use; default from settings.
        client: An existing ``redis.Redis`` (overrides ``redis_url``).
        settings: Settings to read the stream names, shard count and retention from.
        stream: The stream's base name (default ``settings.stream``).
        shard: Which shard this object reads, trims and dead-letters on (default 0).
    """

    def __init__(
        self,
        *,
        redis_url: str | None = None,
        client: redis.Redis | None = None,
        settings: Settings | None = None,
        stream: str | None = None,
        shard: int = 0,
    ) -> None:
        self.settings = settings or get_settings()
        self.redis_url = redis_url or self.settings.redis_url
        # Connected on first use: a Redis Cluster client asks a node for the slot map when made, and
        # a publisher must start (and spool) while Redis is away.
        self._client = client
        self._connecting = threading.Lock()
        self.base_stream = stream or self.settings.stream
        self.shard_count = self.settings.stream_shards
        if not 0 <= shard < self.shard_count:
            raise ValueError(
                f"shard {shard} does not exist: FITSTREAM_STREAM_SHARDS is {self.shard_count} (shards 0..{self.shard_count - 1})"
            )
        self.shard = shard
        self.cluster = is_cluster_url(self.redis_url) or (client is not None and is_cluster_client(client))
        self.stream = shard_stream_name(self.base_stream, shard, self.shard_count, cluster=self.cluster)
        self.dead_letter_stream = redis_keys.dead_letters(self.stream)
        self.forced_trims_key = redis_keys.forced_trims(self.stream)
        self.dead_letter_counts_key = redis_keys.dead_letter_counts(self.stream)
        self.dead_letter_kinds_key = redis_keys.dead_letter_kinds(self.stream)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            # One client per stream even when threads ask at once: a second client, dropped, closes
            # its pool (``Redis.__del__``) under whatever command was in flight on it.
            with self._connecting:
                if self._client is None:
                    try:
                        self._client = connect(self.redis_url)
                    except redis.exceptions.RedisClusterException as exc:  # no node of the cluster answered
                        raise StreamUnavailableError(
                            f"cannot reach the Redis Cluster at {self._safe_url()}: {exc}"
                        ) from exc
        return self._client

    # -- shards ---------------------------------------------------------------
    def for_shard(self, shard: int) -> EventStream:
        """The stream of ``shard`` (same client, same settings)."""
        if shard == self.shard:
            return self
        return EventStream(
            redis_url=self.redis_url,
            client=self.client,
            settings=self.settings,
            stream=self.base_stream,
            shard=shard,
        )

    def for_run(self, run_id: str) -> EventStream:
        """The shard that holds ``run_id``'s events (``fitstream watch`` reads it)."""
        return self.for_shard(shard_of(run_id, self.shard_count))

    def all_shards(self) -> list[EventStream]:
        return [self.for_shard(i) for i in range(self.shard_count)]

    # -- publishing ---------------------------------------------------------
    def publish(self, batch: Iterable[Any]) -> list[str]:
        """Append events (models or already-encoded field dicts) in one pipelined round trip, each
        to its run's shard. Returns their stream ids, in the order given.

        Raises:
            StreamUnavailableError: Redis did not answer; nothing is known to be written.
        """
        pipe = self.client.pipeline(transaction=False)
        count = 0
        names: dict[int, str] = {}
        for item in batch:
            fields = item if isinstance(item, dict) else ev.encode(item)
            if self.shard_count == 1:
                key = self.stream
            else:
                shard = shard_of(run_id_of(item), self.shard_count)
                key = names.get(shard) or names.setdefault(
                    shard, shard_stream_name(self.base_stream, shard, self.shard_count, cluster=self.cluster)
                )
            pipe.xadd(key, fields)
            count += 1
        if not count:
            return []
        try:
            return [_sid(i) for i in pipe.execute()]
        except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
            raise StreamUnavailableError(f"cannot publish to Redis at {self._safe_url()}: {exc}") from exc

    # -- consumer groups ----------------------------------------------------
    def ensure_group(self, group: str, *, start_id: str = "0") -> None:
        """Create ``group`` (and the stream) if missing. New groups read from the oldest retained event."""
        try:
            self.client.xgroup_create(self.stream, group, id=start_id, mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def read(
        self, group: str, consumer: str, *, count: int, block_ms: int | None, pending: bool = False
    ) -> list[StreamMessage]:
        """New messages for ``consumer`` (or, with ``pending``, its own unacknowledged ones)."""
        start = "0" if pending else ">"
        reply = self.client.xreadgroup(
            group, consumer, {self.stream: start}, count=count, block=None if pending else block_ms
        )
        return [
            StreamMessage(_sid(mid), fields)
            for _stream, entries in reply or []
            for mid, fields in entries
            if fields is not None  # deleted (trimmed) entries still pending come back as None
        ]

    def claim_stale(self, group: str, consumer: str, *, min_idle_ms: int, count: int) -> list[StreamMessage]:
        """Take over messages pending on other consumers for at least ``min_idle_ms`` (dead consumers)."""
        messages: list[StreamMessage] = []
        cursor = "0-0"
        while len(messages) < count:
            reply = self.client.xautoclaim(self.stream, group, consumer, min_idle_ms, cursor, count=count)
            cursor = _sid(reply[0])
            messages.extend(
                StreamMessage(_sid(mid), fields) for mid, fields in reply[1] if fields is not None
            )
            if cursor == "0-0":
                break
        return messages

    def ack(self, group: str, message_ids: Sequence[str]) -> int:
        if not message_ids:
            return 0
        return int(self.client.xack(self.stream, group, *message_ids))

    def dead_letter(
        self, group: str, message: StreamMessage, reason: str, *, kind: str = "invalid_event"
    ) -> None:
        """Move a message aside with the reason (``kind``: invalid_event or handler_failed); the
        caller acknowledges it. ``fitstream dead-letters`` lists, shows, replays and purges them."""
        fields: dict[Any, Any] = {
            # A reason may quote an exception's text, surrogates and all: never let it crash the consumer.
            b"reason": reason.encode("utf-8", "backslashreplace"),
            b"kind": kind.encode(),
            b"group": group.encode(),
            b"source_id": message.message_id.encode(),
        }
        for key, value in message.fields.items():
            fields[b"orig." + (key if isinstance(key, bytes) else str(key).encode())] = value
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(self.dead_letter_stream, fields)
        pipe.hincrby(self.dead_letter_counts_key, group, 1)
        pipe.hincrby(self.dead_letter_kinds_key, kind, 1)
        pipe.execute()

    def dead_letter_kinds(self) -> dict[str, int]:
        """Dead letters by reason kind (invalid_event, handler_failed), for ``fitstream status``."""
        return {
            _sid(k): int(v) for k, v in self.client.hgetall(self.dead_letter_kinds_key).items() if int(v) > 0
        }

    def dead_letter_count(self, group: str | None = None) -> int:
        counts = self.client.hgetall(self.dead_letter_counts_key)
        if group is None:
            return sum(int(v) for v in counts.values())
        return int(counts.get(group.encode(), 0))

    def groups(self) -> list[dict[str, Any]]:
        """XINFO GROUPS as plain dicts (name, consumers, pending, last-delivered-id, lag)."""
        try:
            raw = self.client.xinfo_groups(self.stream)
        except redis.ResponseError:
            return []
        return [{_sid(k): (_sid(v) if isinstance(v, bytes) else v) for k, v in g.items()} for g in raw]

    # -- how safe the Redis is (fitstream status) --------------------------------
    def safety_warnings(self) -> list[str]:
        """What this Redis would lose or let in (see :func:`pipeline.redis_client.safety_warnings`)."""
        return safety_warnings(self.client)

    # -- consumer states (fitstream status) ------------------------------------
    def _states_key(self, group: str) -> str:
        return redis_keys.consumer_states(self.stream, group)

    def set_consumer_state(self, group: str, consumer: str, state: dict[str, Any] | None) -> None:
        """Record that ``consumer`` is paused (and why), or clear it (``state=None``)."""
        key = self._states_key(group)
        if state is None:
            self.client.hdel(key, consumer)
        else:
            self.client.hset(key, consumer, json.dumps(state))

    def consumer_states(self, group: str) -> dict[str, dict[str, Any]]:
        raw = self.client.hgetall(self._states_key(group))
        return {_sid(k): json.loads(v) for k, v in raw.items()}

    # -- retention ----------------------------------------------------------
    def safe_trim_id(self) -> str | None:
        """The id below which every group has acknowledged everything, or None if no group exists."""
        groups = self.groups()
        if not groups:
            return None
        floor: tuple[int, int] | None = None
        for group in groups:
            name = group["name"]
            summary = self.client.xpending(self.stream, name)
            if summary and summary.get("pending"):
                candidate = _id_tuple(_sid(summary["min"]))
            else:
                last = _id_tuple(str(group["last-delivered-id"]))
                candidate = (last[0], last[1] + 1)
            floor = candidate if floor is None or candidate < floor else floor
        assert floor is not None
        return f"{floor[0]}-{floor[1]}"

    def trim(self, *, now: float | None = None) -> int:
        """Apply the retention policy (see module docstring). Returns the number of entries removed."""
        removed = 0
        safe = self.safe_trim_id()
        if safe is not None:
            horizon_ms = int(((now or time.time()) - self.settings.stream_retention_seconds) * 1000)
            cutoff = min(_id_tuple(safe), (horizon_ms, 0))
            if cutoff > (0, 0):
                removed += int(
                    self.client.xtrim(self.stream, minid=f"{cutoff[0]}-{cutoff[1]}", approximate=False)
                )
        length = int(self.client.xlen(self.stream))
        cap = self.settings.stream_max_events
        if length > cap:
            dropped = int(self.client.xtrim(self.stream, maxlen=cap, approximate=False))
            removed += dropped
            log.error(
                "stream %s exceeded FITSTREAM_STREAM_MAX_EVENTS=%d: dropped %d events that some consumer group "
                "had not acknowledged yet; start more consumers or raise the cap",
                self.stream,
                cap,
                dropped,
            )
            pipe = self.client.pipeline(transaction=False)
            pipe.hincrby(self.forced_trims_key, "events_dropped", dropped)
            pipe.hincrby(self.forced_trims_key, "times", 1)
            pipe.hset(self.forced_trims_key, "last_at", str(time.time()))
            pipe.execute()
        return removed

    def forced_trims(self) -> dict[str, int | float]:
        """How often the length cap dropped unacknowledged events: ``times``, ``events_dropped``
        and ``last_at`` (Unix time); empty when it never did."""
        raw = {_sid(k): _sid(v) for k, v in self.client.hgetall(self.forced_trims_key).items()}
        return {key: (float(value) if key == "last_at" else int(value)) for key, value in raw.items()}

    def _safe_url(self) -> str:
        """The Redis URL with any password masked."""
        from pipeline.db.session import mask_url  # the one masking rule, for redis:// URLs too

        return mask_url(self.redis_url)
