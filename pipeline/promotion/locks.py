"""Promotions of one model name take turns: :class:`PromotionLocks`, a lease in Redis per name.

Two promotions of a model at once would pick the same version number; promoters and
``fitstream promote`` by hand therefore hold the name's lease while they pick and take one.

Example:
    >>> locks = PromotionLocks(redis_client, "fitstream:events")   # doctest: +SKIP
    >>> with locks("digits-mlp"):                                  # doctest: +SKIP
    ...     promote()
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

import redis

from pipeline import redis_keys
from pipeline.identity import process_identity
from pipeline.lease import LeaseBusyError, RedisLease, held
from pipeline.promotion.outcome import PromotionRefusedError

#: A promotion lock lives this long without renewal (its holder renews it); others wait up to LOCK_WAIT_S.
LOCK_TTL_S = 30.0
LOCK_WAIT_S = 600.0


class PromotionLocks:
    """One promotion per model name at a time — across promoters and ``fitstream promote`` by hand —
    so that two never pick the same version number (a lease in Redis, next to the stream)."""

    def __init__(self, client: redis.Redis, stream_key: str, *, wait_s: float = LOCK_WAIT_S) -> None:
        self.client = client
        self.stream_key = stream_key
        self.wait_s = wait_s
        self.owner = f"{process_identity()}-{uuid.uuid4().hex[:8]}"

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        lease = RedisLease(
            self.client, redis_keys.promotion_lock(self.stream_key, name), owner=self.owner, ttl_s=LOCK_TTL_S
        )
        try:
            with held(lease, wait_s=self.wait_s):
                yield
        except LeaseBusyError as exc:
            raise PromotionRefusedError(
                f"another promotion of {name} is still running after {self.wait_s:g} s ({exc}); "
                "promote again later with: fitstream promote RUN"
            ) from None
        except redis.ConnectionError as exc:
            raise PromotionRefusedError(
                f"cannot reach Redis to take turns with other promotions of {name} ({exc}); "
                "start Redis or check FITSTREAM_REDIS_URL"
            ) from None
