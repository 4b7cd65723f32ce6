"""Downsampling long curves for drawing: per bucket of consecutive points, the first, lowest,
highest and last point (in step order), so that spikes and the curve's shape survive.

Example:
    >>> points = [(i, float(i % 7)) for i in range(1000)]
    >>> len(downsample(points, 100)) <= 100
    True
    >>> downsample([(0, 1.0), (1, 2.0)], 100)
    [(0, 1.0), (1, 2.0)]
"""

from __future__ import annotations

from collections.abc import Sequence

Point = tuple[int, "float | None"]


def downsample(points: Sequence[Point], limit: int) -> list[Point]:
    """At most ``limit`` points (``limit`` ≥ 4) that keep every bucket's extremes."""
    if len(points) <= limit:
        return list(points)
    buckets = max(1, limit // 4)
    out: list[Point] = []
    for b in range(buckets):
        chunk = points[b * len(points) // buckets : (b + 1) * len(points) // buckets]
        if not chunk:
            continue
        finite = [p for p in chunk if p[1] is not None]
        keep = {chunk[0], chunk[-1]}
        if finite:
            keep.add(min(finite, key=lambda p: p[1]))  # type: ignore[arg-type,return-value]
            keep.add(max(finite, key=lambda p: p[1]))  # type: ignore[arg-type,return-value]
        out.extend(sorted(keep, key=lambda p: p[0]))
    return out
