"""Redis clients: how Fitstream connects (timeouts, Redis Cluster URLs) and what a connected Redis
would lose or let in (the warnings ``fitstream status`` shows).

:class:`pipeline.bus.EventStream` connects through :func:`connect` on first use; the CLI and the
training process call it for their own clients.

Example:
    >>> reply_str(b"fitstream:events"), reply_str(3)
    ('fitstream:events', '3')
"""

from __future__ import annotations

from typing import Any

import redis

from pipeline.config import is_cluster_url

#: How long a client waits to connect / for an answer before calling Redis unreachable.
SOCKET_CONNECT_TIMEOUT_S = 2.0
SOCKET_TIMEOUT_S = 10.0


def connect(redis_url: str, **kwargs: Any) -> redis.Redis:
    """A Redis client with Fitstream's timeouts (bytes in, bytes out); a ``RedisCluster`` for a
    ``redis+cluster://`` URL (it finds the other nodes from the one named)."""
    options: dict[str, Any] = {
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
        "health_check_interval": 30,
    }
    options.update(kwargs)
    if is_cluster_url(redis_url):
        from redis.cluster import RedisCluster

        plain = redis_url.replace("+cluster://", "://", 1)
        return RedisCluster.from_url(plain, **options)  # type: ignore[return-value]
    return redis.Redis.from_url(redis_url, **options)


def reply_str(value: Any) -> str:
    """A Redis reply as text (the clients answer bytes)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def is_cluster_client(client: Any) -> bool:
    from redis.cluster import RedisCluster

    return isinstance(client, RedisCluster)


def cluster_node_kwargs(client: Any) -> dict[str, Any]:
    """A cluster node's connection settings (every node is reached with the same password)."""
    try:
        node = client.get_default_node()
        return dict(node.redis_connection.connection_pool.connection_kwargs)
    except Exception:  # status never fails on a client it cannot look into
        return {}


def safety_warnings(client: Any) -> list[str]:
    """What this Redis would lose or let in: no persistence, an evicting memory policy, no
    password on a non-loopback address. Managed Redis that hides CONFIG is not second-guessed."""
    warnings: list[str] = []
    try:
        config = {
            reply_str(k): reply_str(v)
            for k, v in client.config_get("*").items()
            if reply_str(k) in ("appendonly", "save", "maxmemory-policy")
        }
    except redis.RedisError:
        config = {}
    if config.get("appendonly") == "no" and not config.get("save", "x").strip():
        warnings.append(
            "Redis keeps no data across a restart (appendonly no, no save points): events not yet consumed "
            "are lost with it; set appendonly yes"
        )
    elif config.get("appendonly") == "no":
        warnings.append(
            "Redis persists by snapshots only (appendonly no): events since the last snapshot are lost "
            "in a crash; set appendonly yes"
        )
    policy = config.get("maxmemory-policy")
    if policy and policy != "noeviction":
        warnings.append(
            f"Redis may evict keys under memory pressure (maxmemory-policy {policy}): the stream itself "
            "could go; set maxmemory-policy noeviction"
        )
    pool = getattr(client, "connection_pool", None)  # a RedisCluster has one per node
    kwargs = pool.connection_kwargs if pool is not None else cluster_node_kwargs(client)
    host = str(kwargs.get("host") or "localhost")
    if (
        not kwargs.get("password")
        and not kwargs.get("path")
        and host not in ("localhost", "::1")
        and not host.startswith("127.")
    ):
        warnings.append(
            f"Redis at {host} is reached without a password: anyone who reaches it can read the events "
            "and queue jobs; require a password (requirepass or an ACL user) and give it to Fitstream with FITSTREAM_REDIS_PASSWORD_FILE"
        )
    return warnings
