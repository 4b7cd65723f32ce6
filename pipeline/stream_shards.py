"""Which stream key holds a run's events: shard routing and shard key names.

With ``FITSTREAM_STREAM_SHARDS=N`` the events are spread over N stream keys by a hash of their run
id (:func:`shard_of`), so each run's events stay on one key, in the order they were published.
With more than one shard (or on a Redis Cluster) each shard's key is hash-tagged,
``{<stream>:<shard>}``, so that a cluster keeps a whole shard, its dead letters and counters
included, on one node (:func:`shard_stream_name`). :class:`pipeline.bus.EventStream` routes
through these functions; :func:`run_stream_name` answers without a client.

Example:
    >>> shard_stream_name("fitstream:events", shard_of("run-1", 4), 4)
    '{fitstream:events:3}'
"""

from __future__ import annotations

import json
import re
import zlib
from typing import Any

from pipeline import events as ev
from pipeline import redis_keys
from pipeline.config import Settings, is_cluster_url


def shard_of(run_id: str, shards: int) -> int:
    """The shard that holds ``run_id``'s events: CRC-32 of the run id, modulo the shard count.

    Example:
        >>> shard_of("run-1", 1), shard_of("run-1", 4)
        (0, 3)
    """
    return zlib.crc32(run_id.encode("utf-8", "surrogatepass")) % shards if shards > 1 else 0


def shard_stream_name(base: str, shard: int, shards: int, *, cluster: bool = False) -> str:
    """The stream key of ``shard`` (named in :mod:`pipeline.redis_keys`).

    Example:
        >>> shard_stream_name("fitstream:events", 0, 1), shard_stream_name("fitstream:events", 2, 4)
        ('fitstream:events', '{fitstream:events:2}')
    """
    return redis_keys.shard_stream(base, shard, shards, cluster=cluster)


_RUN_ID = re.compile(r'^\{"v":\d+,"id":"[0-9a-f]*","run_id":"([^"]*)"')


def run_stream_name(settings: Settings, run_id: str) -> str:
    """The stream key that holds ``run_id``'s events, without a client (the dashboard reads it async).

    Example:
        >>> run_stream_name(Settings(stream="s", stream_shards=4), "run-1")
        '{s:3}'
    """
    shards = settings.stream_shards
    return shard_stream_name(
        settings.stream, shard_of(run_id, shards), shards, cluster=is_cluster_url(settings.redis_url)
    )


def run_id_of(item: Any) -> str:
    """The run id of an event model or of its encoded stream fields."""
    run_id = getattr(item, "run_id", None)
    if run_id is not None:
        return str(run_id)
    raw = item.get(ev.PAYLOAD_FIELD, item.get(ev.PAYLOAD_FIELD.encode()))
    # The encoder writes "run_id" near the front: find it without parsing the whole payload (the
    # spool and the sender hand over encoded events); anything unusual (escapes) is parsed.
    found = _RUN_ID.search(raw) if isinstance(raw, str) else None
    if found is not None and "\\" not in found.group(1):
        return found.group(1)
    try:
        return str(json.loads(raw)["run_id"])
    except (TypeError, ValueError, KeyError):
        return ""  # not an event a consumer can decode: shard 0, where it is dead-lettered
