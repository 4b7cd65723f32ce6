"""The recent curve of a run's metric, kept by the alerter so that each alert can show it.

The alerter remembers the last :data:`KEEP` epochs of every metric of a run (in ``alert_runs``,
next to what else it knows of the run) and draws the alert's metric up to the alert's epoch as a
sparkline: the threshold rule's metric, a gap's first metric, a NaN rule's metric, and for
lifecycle alerts the run's monitored metric.

Example:
    >>> curves = {"monitor": "val_loss", "metrics": {}}
    >>> for epoch, value in enumerate([0.9, 0.5, 0.4, 0.7]):
    ...     remember(curves, ev.build(ev.EpochEnd, run_id="r", seq=epoch + 1, epoch=epoch, metrics={"val_loss": value}))
    >>> recent_curve(curves, None, 2)
    Curve(metric='val_loss', curve='█▂▁', curve_epochs=(0, 2))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from alerts.rules import Rule
from pipeline import events as ev
from pipeline.sparkline import sparkline

#: Epochs of each metric the alerter keeps per run.
KEEP = 30
#: Bars in an alert's sparkline (older epochs are averaged together).
WIDTH = 20


@dataclass(frozen=True)
class Curve:
    """What an alert message shows of the metric (the fields of ``AlertMessage`` of the same names)."""

    metric: str
    curve: str
    curve_epochs: tuple[int, int]


def remember(curves: dict[str, Any], event: ev.Event) -> None:
    """Fold ``event`` into a run's recent curves (a re-delivered epoch replaces itself)."""
    if isinstance(event, ev.RunStarted):
        curves["monitor"] = event.monitor or curves.get("monitor")
        return
    if not isinstance(event, ev.EpochEnd):
        return
    for name, value in event.metrics.items():
        kept = value if isinstance(value, (int, float)) and math.isfinite(value) else None
        series = [point for point in curves["metrics"].get(name, []) if point[0] != event.epoch]
        series.append([event.epoch, kept])
        series.sort(key=lambda point: point[0])
        curves["metrics"][name] = series[-KEEP:]


def rule_metric(rule: Rule) -> str | None:
    """The metric an alert of ``rule`` is about (None: the run's monitored metric)."""
    if rule.gap is not None:
        return rule.gap.metric
    return rule.metric or rule.nan


def recent_curve(curves: dict[str, Any] | None, metric: str | None, epoch: int | None) -> Curve | None:
    """The sparkline of ``metric`` (or the monitored one) up to ``epoch``; None with under two points."""
    if not curves:
        return None
    name = metric or curves.get("monitor")
    points = [(e, v) for e, v in curves.get("metrics", {}).get(name or "", []) if epoch is None or e <= epoch]
    if name is None or len(points) < 2:
        return None
    return Curve(
        metric=name,
        curve=sparkline([v for _, v in points], width=WIDTH),
        curve_epochs=(points[0][0], points[-1][0]),
    )
