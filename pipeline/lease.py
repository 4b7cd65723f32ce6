"""A lease in Redis: one owner at a time, for as long as it keeps renewing.

Used for a run (only its holder trains it) and for an ordered consumer group (only its
leader consumes). Renew well within ``ttl_s``; a holder that dies loses the lease when it
expires, and another owner may take it.

Example:
    >>> lease = RedisLease(redis.Redis(), "fitstream:lease:demo", owner="worker-1", ttl_s=30)  # doctest: +SKIP
    >>> lease.acquire(), lease.renew(), lease.holder()  # doctest: +SKIP
    (True, True, 'worker-1')
"""

from __future__ import annotations

import redis

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLease:
    """The key ``key`` holds the owner's name while the lease is held."""

    def __init__(self, client: redis.Redis, key: str, *, owner: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)

    def acquire(self) -> bool:
        """Take the lease if nobody holds it."""
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer this owner's."""
        return bool(self.client.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms))

    def release(self) -> None:
        """Give the lease up (only if still held by this owner)."""
        self.client.eval(_RELEASE, 1, self.key, self.owner)

    def holder(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if raw is not None else None
