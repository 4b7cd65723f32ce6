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

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

import redis

from pipeline.errors import FitstreamError

log = logging.getLogger(__name__)

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
_ACQUIRE_REENTRANT = (
    "local holder = redis.call('get', KEYS[1]) "
    "if holder == false then return redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2]) and 1 "
    "elseif holder == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
)
_TAKE_FROM = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 "
    "else return 0 end"
)
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisLease:
    """The key ``key`` holds the owner's name while the lease is held."""

    def __init__(self, client: redis.Redis, key: str, *, owner: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)

    def acquire(self, *, reentrant: bool = False) -> bool:
        """Take the lease if nobody holds it (or, ``reentrant``, if this owner already does)."""
        if reentrant:
            return bool(self.client.eval(_ACQUIRE_REENTRANT, 1, self.key, self.owner, self.ttl_ms))
        return bool(self.client.set(self.key, self.owner, nx=True, px=self.ttl_ms))

    def take_from(self, holder: str) -> bool:
        """Take the lease over from ``holder`` (known to be dead), only if it still holds it."""
        return bool(self.client.eval(_TAKE_FROM, 1, self.key, holder, self.owner, self.ttl_ms))

    def renew(self) -> bool:
        """Extend the lease; False when it is no longer this owner's."""
        return bool(self.client.eval(_RENEW, 1, self.key, self.owner, self.ttl_ms))

    def release(self) -> None:
        """Give the lease up (only if still held by this owner)."""
        self.client.eval(_RELEASE, 1, self.key, self.owner)

    def holder(self) -> str | None:
        raw = self.client.get(self.key)
        return raw.decode() if raw is not None else None


class LeaseKeeper:
    """Renews a held lease every third of its lifetime from a thread of its own, so a long piece of
    work never outlives it; ``lost`` is set once the lease is somebody else's."""

    def __init__(self, lease: RedisLease) -> None:
        self.lease = lease
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{lease.key}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl_ms / 3000):
            try:
                if not self.lease.renew():
                    log.warning("lease %s is no longer held by %s", self.lease.key, self.lease.owner)
                    self.lost.set()
                    return
            except redis.RedisError as exc:
                log.warning("could not renew lease %s: %s", self.lease.key, exc)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class LeaseBusyError(FitstreamError):
    """The lease stayed with another owner for longer than we could wait."""


@contextlib.contextmanager
def held(lease: RedisLease, *, wait_s: float, poll_s: float = 0.1) -> Iterator[None]:
    """Hold ``lease`` for the ``with`` block (renewed by a :class:`LeaseKeeper`), waiting up to
    ``wait_s`` for its current owner to let go.

    Raises:
        LeaseBusyError: still held by another owner after ``wait_s``.
    """
    deadline = time.monotonic() + wait_s
    while not lease.acquire():
        if time.monotonic() >= deadline:
            raise LeaseBusyError(f"{lease.key} is held by {lease.holder() or 'another process'}")
        time.sleep(poll_s)
    keeper = LeaseKeeper(lease)
    try:
        yield
    finally:
        keeper.stop()
        lease.release()
