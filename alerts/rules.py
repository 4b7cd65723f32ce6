"""Alert rules: the per-(rule, run) state machine (firing / resolved).

Evaluation is a pure function of (rule, state, event) so that it can be stored in SQL
and replayed: see :func:`evaluate`. "No improvement" uses :class:`pipeline.monitor.Monitor`,
the same rule as Keras' EarlyStopping. The rules file itself (its models, parsing and loading)
is in :mod:`alerts.rules_file`; its names are re-exported here, where callers have always found them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, replace
from typing import Any, Literal

from alerts.rules_file import (
    LIFECYCLE_EVENTS,
    MAX_PROBLEMS_SHOWN,
    MAX_RULES_FILE_VALUES,
    Channel,
    Gap,
    Match,
    Rule,
    RulesError,
    RulesFile,
    load_rules,
    parse_rules,
)
from pipeline import events as ev
from pipeline.monitor import Monitor

__all__ = [
    "LIFECYCLE_EVENTS",
    "MAX_PROBLEMS_SHOWN",
    "MAX_RULES_FILE_VALUES",
    "Channel",
    "Gap",
    "Match",
    "Rule",
    "RuleState",
    "RulesError",
    "RulesFile",
    "Transition",
    "evaluate",
    "load_rules",
    "parse_rules",
]


# -- the state machine --------------------------------------------------------------------------
@dataclass(frozen=True)
class RuleState:
    """What a rule remembers about one run (stored in SQL, table ``alert_state``)."""

    last_seq: int = -1
    streak: int = 0
    best: float | None = None
    since_best: int = 0
    firing: bool = False
    incident: int = 0
    fired_at: float = 0.0
    repeats: int = 0


@dataclass(frozen=True)
class Transition:
    state: Literal["firing", "resolved"]
    summary: str
    value: float | None = None
    threshold: float | None = None
    epoch: int | None = None
    repeat: int = 0  # >0: a reminder that the incident still holds
    #: Lifecycle rules fire once per event: the outbox keys their message by this id.
    event_id: str | None = None


def _bad(value: float | None) -> bool:
    return value is None or math.isnan(value) or math.isinf(value)


@functools.lru_cache(maxsize=256)
def _monitor(metric: str, mode: str, min_delta: float) -> Monitor:
    return Monitor(metric, mode=mode, min_delta=min_delta)


def _fire_or_resolve(
    rule: Rule,
    state: RuleState,
    holds: bool,
    seq: int,
    summary: str,
    *,
    ts: float = 0.0,
    for_epochs: int | None = None,
    **facts: Any,
) -> tuple[RuleState, Transition | None]:
    streak = state.streak + 1 if holds else 0
    firing_now = streak >= (rule.for_epochs if for_epochs is None else for_epochs) if holds else False
    new = replace(state, last_seq=seq, streak=streak)
    if firing_now and not state.firing:
        return replace(new, firing=True, incident=state.incident + 1, fired_at=ts, repeats=0), Transition(
            "firing", summary, **facts
        )
    if firing_now and state.firing and rule.repeat_seconds and ts - state.fired_at >= rule.repeat_seconds:
        # Still holding: a reminder every repeat_seconds, otherwise quiet.
        return replace(new, fired_at=ts, repeats=state.repeats + 1), Transition(
            "firing", f"still: {summary}", repeat=state.repeats + 1, **facts
        )
    if not holds and state.firing:
        return replace(new, firing=False), Transition("resolved", summary, **facts)
    return new, None


def evaluate(rule: Rule, state: RuleState, event: ev.Event) -> tuple[RuleState, Transition | None]:
    """Apply one event to a rule's state for its run. Metric rules ignore events at or below
    ``last_seq`` (redelivered or out of order), so replaying a stream changes nothing; lifecycle
    rules fire once per event id (the outbox keeps one message per id), whatever its origin."""
    kind = rule.kind
    if kind != "lifecycle" and event.seq <= state.last_seq:
        return state, None
    if kind == "lifecycle":
        assert rule.on is not None
        pruned = isinstance(event, ev.RunFinished) and event.status == "pruned"
        if event.type in rule.on or (pruned and "run_pruned" in rule.on):
            detail = {
                "early_stopped": lambda e: (
                    f"early stopping at epoch {e.stopped_epoch}: best {e.monitor}={e.best_value} at epoch {e.best_epoch}"
                ),
                "run_failed": lambda e: f"run failed: {e.error_type}: {e.message}",
                "run_finished": lambda e: (
                    f"run finished: {e.status} after {e.epochs_completed} epochs"
                    + (f" ({e.reason})" if e.reason else "")
                ),
                "run_started": lambda e: f"run started on {e.host}",
                "model_promoted": lambda e: (
                    f"promoted as {e.name} v{e.version}"
                    + (
                        " — the new champion"
                        if e.champion
                        else f" — champion stays v{e.previous_champion_version}"
                    )
                ),
                "promotion_skipped": lambda e: f"not promoted: {e.reason}",
            }.get(event.type, lambda e: event.type.replace("_", " "))(event)
            return replace(state, incident=state.incident + 1), Transition(
                "firing", detail, event_id=event.id
            )
        return state, None
    if not isinstance(event, ev.EpochEnd):
        return state, None
    metrics, epoch = event.metrics, event.epoch
    if kind == "threshold":
        value = metrics.get(rule.metric or "")
        if value is None:
            return state, None
        limit = rule.above if rule.above is not None else rule.below
        holds = (value > limit) if rule.above is not None else (value < limit)  # type: ignore[operator]
        word = "above" if rule.above is not None else "below"
        return _fire_or_resolve(
            rule,
            state,
            holds,
            event.seq,
            f"{rule.metric} = {value:.4g} {'is' if holds else 'is no longer'} {word} {limit:g}"
            + (f" for {rule.for_epochs} epochs" if holds and rule.for_epochs > 1 else ""),
            value=value,
            threshold=limit,
            epoch=epoch,
            ts=event.ts,
        )
    if kind == "nan":
        if rule.nan not in metrics:
            return state, None
        value = metrics.get(rule.nan or "")
        holds = _bad(value)
        return _fire_or_resolve(
            rule,
            state,
            holds,
            event.seq,
            f"{rule.nan} is {'not finite' if holds else 'finite again'} ({value})",
            value=None if holds else value,
            epoch=epoch,
            ts=event.ts,
        )
    if kind == "gap":
        assert rule.gap is not None
        a, b = metrics.get(rule.gap.metric), metrics.get(rule.gap.minus)
        if a is None or b is None:
            return state, None
        gap = a - b
        holds = gap > rule.gap.above
        return _fire_or_resolve(
            rule,
            state,
            holds,
            event.seq,
            f"{rule.gap.metric} - {rule.gap.minus} = {gap:.4g} {'is' if holds else 'is no longer'} above {rule.gap.above:g}",
            value=gap,
            threshold=rule.gap.above,
            epoch=epoch,
            ts=event.ts,
        )
    if kind == "no_improvement":
        value = metrics.get(rule.metric or "")
        if _bad(value):
            return state, None
        monitor = _monitor(rule.metric or "", rule.mode, rule.min_delta)
        if monitor.is_improvement(value, state.best):  # type: ignore[arg-type]
            best, since = value, 0
        else:
            best, since = state.best, state.since_best + 1
        limit = rule.no_improvement_epochs or 1
        holds = since >= limit
        base = replace(state, best=best, since_best=since)
        new, transition = _fire_or_resolve(
            rule,
            base,
            holds,
            event.seq,
            f"{rule.metric} has not improved for {since} epochs (best {best:.4g})"
            if holds
            else f"{rule.metric} improved to {value:.4g}",
            value=value,
            threshold=best,
            epoch=epoch,
            ts=event.ts,
            for_epochs=1,
        )
        return new, transition
    return state, None  # stalled: evaluated on a timer, see alerts.alerter
