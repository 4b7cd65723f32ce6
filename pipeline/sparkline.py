"""Unicode sparklines: a metric's curve in one line of text (terminal tables, Slack messages).

Example:
    >>> sparkline([1.0, 0.8, 0.5, 0.4, 0.35, 0.3])
    '█▆▃▂▁▁'
    >>> sparkline([0.1, float("nan"), 0.3], width=3)
    '▁ █'
    >>> len(sparkline(range(1000), width=12))
    12
"""

from __future__ import annotations

import math
from collections.abc import Iterable

BARS = "▁▂▃▄▅▆▇█"


def _buckets(values: list[float], width: int) -> list[float]:
    """``values`` averaged into ``width`` buckets of consecutive points (NaN where a bucket has none)."""
    out = []
    for b in range(width):
        chunk = [
            v for v in values[b * len(values) // width : (b + 1) * len(values) // width] if math.isfinite(v)
        ]
        out.append(sum(chunk) / len(chunk) if chunk else math.nan)
    return out


def sparkline(values: Iterable[float | None], *, width: int | None = None) -> str:
    """One bar per value (or per bucket of values, to fit ``width``), scaled between the lowest and
    the highest; a missing or non-finite value is a space. Empty for no values."""
    points = [math.nan if v is None else float(v) for v in values]
    if width is not None and len(points) > width:
        points = _buckets(points, width)
    finite = [v for v in points if math.isfinite(v)]
    if not finite:
        return " " * len(points) if points else ""
    low, high = min(finite), max(finite)
    span = high - low
    return "".join(
        " "
        if not math.isfinite(v)
        else BARS[0 if span == 0 else min(len(BARS) - 1, int((v - low) / span * len(BARS)))]
        for v in points
    )
