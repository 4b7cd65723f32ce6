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
from redis.exceptions import LockNotOwnedError

from pipeline.errors import FitstreamError

log = logging.getLogger(__name__)

# Taking a lease over from a holder known to be dead: the one operation redis-py's Lock lacks.
_TAKE_FROM = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('set', KEYS[1], ARGV[2], 'PX', ARGV[3]) and 1 "
    "else return 0 end"
)


class RedisLease:
    """The key ``key`` holds the owner's name while the lease is held.

    A named wrapper around redis-py's :class:`redis.lock.Lock`, whose token is the owner's name
    (so that ``holder()`` says who holds it): the Lock does the owner-checked renew, release and
    ``owned``; this class adds the reentrant acquire and ``take_from`` that leases need.
    """

    def __init__(self, client: redis.Redis, key: str, *, owner: str, ttl_s: float) -> None:
        self.client = client
        self.key = key
        self.owner = owner
        self.ttl_ms = int(ttl_s * 1000)
        # Not thread-local: a LeaseKeeper renews from its own thread what another thread acquired.
        self._lock = client.lock(key, timeout=ttl_s, blocking=False, thread_local=False)
        self._lock.local.token = client.get_encoder().encode(owner)
        self._take_from = client.register_script(_TAKE_FROM)

    def acquire(self, *, reentrant: bool = False) -> bool:
        """Take the lease if nobody holds it (or, ``reentrant``, if this owner already does)."""
        if reentrant and self.renew():
            return True
        return bool(self._lock.acquire(blocking=False, token=self.owner))

    def take_from(self, holder: str) -> bool:
        """Take the lease over from ``holder`` (known to be dead), only if it still holds it."""
        return bool(self._take_from(keys=[self.key], args=[holder, self.owner, self.ttl_ms]))

    def renew(self) -> bool:
        """Extend the lease to a full ``ttl_s``; False when it is no longer this owner's."""
        try:
            return bool(self._lock.reacquire())
        except LockNotOwnedError:
            return False

    def release(self) -> None:
        """Give the lease up (only if still held by this owner)."""
        with contextlib.suppress(LockNotOwnedError):
            self._lock.do_release(self._lock.local.token)

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
