"""The one retry rule: exponential backoff with a ceiling and full jitter.

Every retry loop in Fitstream (consumers waiting for the database or Redis, the publisher's
sender waiting for Redis, the alert deliverer waiting for a receiver) takes its delays from here.

Example:
    >>> backoff = Backoff(initial_s=0.5, maximum_s=4.0, jitter=0.0)
    >>> [backoff.next_delay() for _ in range(5)]
    [0.5, 1.0, 2.0, 4.0, 4.0]
    >>> backoff.reset(); backoff.next_delay()
    0.5
    >>> Backoff(initial_s=1.0, maximum_s=60.0, jitter=0.0).delay_for(attempt=3)
    4.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class Backoff:
    """Delays ``initial_s × 2^n`` up to ``maximum_s``; ``jitter`` (0–1) takes up to that fraction off
    each delay at random, so that many clients retrying together spread out."""

    initial_s: float = 0.5
    maximum_s: float = 30.0
    jitter: float = 0.2
    _attempt: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.initial_s <= self.maximum_s:
            raise ValueError(
                f"need 0 < initial_s <= maximum_s; got {self.initial_s!r} and {self.maximum_s!r}"
            )
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1; got {self.jitter!r}")

    def delay_for(self, *, attempt: int) -> float:
        """The delay before retry number ``attempt`` (1 for the first retry)."""
        base = min(self.maximum_s, self.initial_s * 2 ** min(max(attempt, 1) - 1, 32))
        return base * (1.0 - self.jitter * random.random()) if self.jitter else base

    def next_delay(self) -> float:
        self._attempt += 1
        return self.delay_for(attempt=self._attempt)

    def reset(self) -> None:
        self._attempt = 0

    @property
    def attempts(self) -> int:
        return self._attempt
