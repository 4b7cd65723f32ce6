"""What a promotion ends in: the :class:`Promotion` it registered, or :class:`PromotionRefused`
saying why not; and the aliases every promotion may move (``latest``, ``champion``).

Example:
    >>> str(PromotionRefused("checkpoint missing: /runs/r1/best.keras"))
    'checkpoint missing: /runs/r1/best.keras'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import FitstreamError

CHAMPION = "champion"
LATEST = "latest"


class PromotionRefused(FitstreamError):
    """A checkpoint cannot be promoted; the message says why (missing, changed, not loadable by
    Keras, run failed or cancelled, store full or not writable)."""


@dataclass(frozen=True)
class Promotion:
    name: str
    version: int
    champion: bool
    previous_champion: int | None
    previous_value: float | None
    created: bool  # False when this run was already registered (redelivery)
    metric: str | None = None
    value: float | None = None
    mode: str | None = None
    epoch: int | None = None
    source: str | None = None
    champion_reason: str | None = None  # why champion did not move, when not for being worse
