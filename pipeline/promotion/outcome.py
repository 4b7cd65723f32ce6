"""What a promotion ends in: the :class:`Promotion` it registered, or :class:`PromotionRefusedError`
saying why not; and the aliases every promotion may move (``latest``, ``champion``).

Example:
    >>> str(PromotionRefusedError("checkpoint missing: /runs/r1/best.keras"))
    'checkpoint missing: /runs/r1/best.keras'
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.errors import FitstreamError

CHAMPION = "champion"
LATEST = "latest"


class PromotionRefusedError(FitstreamError):
    """A checkpoint cannot be promoted; the message says why (missing, changed, not loadable by
    Keras, run failed or cancelled, store full or not writable)."""


#: The name before the error tree's ``…Error`` convention; scripts that catch it keep working.
PromotionRefused = PromotionRefusedError


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
