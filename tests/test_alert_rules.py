"""Alert rules: validation and the firing/resolved state machine (pure, no services)."""

from __future__ import annotations

import math

import pytest

from alerts.rules import RulesError, RuleState, evaluate, parse_rules
from pipeline import events as ev

CHANNELS = {"team": {"type": "slack", "url_env": "SLACK_URL"}}


def _rules(*rules):
    return parse_rules({"channels": CHANNELS, "rules": list(rules)})


def _epochs(run_id, values, metric="val_loss", start_seq=1):
    return [
        ev.build(ev.EpochEnd, run_id=run_id, seq=start_seq + i, epoch=i, metrics={metric: v})
        for i, v in enumerate(values)
    ]


def _run(rule, events):
    state, transitions = RuleState(), []
    for event in events:
        state, transition = evaluate(rule, state, event)
        if transition:
            transitions.append((event.epoch if hasattr(event, "epoch") else None, transition.state))
    return state, transitions


def test_threshold_for_epochs_fires_once_and_resolves_once():
    rule = _rules(
        {"name": "high", "metric": "val_loss", "above": 0.5, "for_epochs": 2, "channels": ["team"]}
    ).rules[0]
    _state, transitions = _run(rule, _epochs("r", [0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.2]))
    assert transitions == [(2, "firing"), (5, "resolved")]


def test_nan_alerts_once_per_incident():
    rule = _rules({"name": "nan", "nan": "loss", "channels": ["team"]}).rules[0]
    _state, transitions = _run(rule, _epochs("r", [1.0, math.nan, math.nan, math.inf, 0.5], metric="loss"))
    assert transitions == [(1, "firing"), (4, "resolved")]


def test_no_improvement_uses_the_early_stopping_rule():
    rule = _rules(
        {
            "name": "plateau",
            "metric": "val_loss",
            "no_improvement_epochs": 2,
            "min_delta": 0.01,
            "channels": ["team"],
        }
    ).rules[0]
    _state, transitions = _run(
        rule, _epochs("r", [1.0, 0.995, 0.999, 0.992, 0.5])
    )  # 0.995 is within min_delta
    assert transitions == [(2, "firing"), (4, "resolved")]


def test_gap_and_redelivery_are_idempotent():
    rule = _rules(
        {
            "name": "overfit",
            "gap": {"metric": "val_loss", "minus": "loss", "above": 0.3},
            "for_epochs": 1,
            "channels": ["team"],
        }
    ).rules[0]
    events = [
        ev.build(ev.EpochEnd, run_id="r", seq=i + 1, epoch=i, metrics={"loss": 0.1, "val_loss": v})
        for i, v in enumerate([0.2, 0.5, 0.5])
    ]
    state, transitions = _run(rule, events)
    assert transitions == [(1, "firing")]
    # Redelivered (or older) events change nothing.
    for event in events:
        assert evaluate(rule, state, event) == (state, None)


def test_lifecycle_events():
    rule = _rules({"name": "life", "on": ["early_stopped", "run_failed"], "channels": ["team"]}).rules[0]
    stopped = ev.build(
        ev.EarlyStopped,
        run_id="r",
        seq=9,
        stopped_epoch=6,
        best_epoch=3,
        best_value=0.2,
        monitor="val_loss",
        mode="min",
    )
    state, transition = evaluate(rule, RuleState(), stopped)
    assert transition.state == "firing" and "early stopping at epoch 6" in transition.summary
    # A redelivery fires for the same event id again: the outbox keeps one message per id.
    assert evaluate(rule, state, stopped)[1].event_id == transition.event_id == stopped.id


def test_run_pruned_fires_for_a_pruned_trial_only():
    rule = _rules({"name": "pruned", "on": ["run_pruned"], "channels": ["team"]}).rules[0]
    reason = "pruned: val_loss 1.4 at epoch 3 is worse than the median 0.2 of 3 finished trials at that epoch"
    pruned = ev.build(
        ev.RunFinished, run_id="r", seq=1_000_009, status="pruned", epochs_completed=4, reason=reason
    )
    completed = ev.build(ev.RunFinished, run_id="q", seq=1_000_009, status="completed", epochs_completed=4)
    _state, transition = evaluate(rule, RuleState(), pruned)
    assert (
        transition.state == "firing"
        and transition.summary == f"run finished: pruned after 4 epochs ({reason})"
    )
    assert evaluate(rule, RuleState(), completed)[1] is None


def test_lifecycle_rules_fire_for_every_origin_whatever_the_sequence_watermark():
    """Issue 9, case 4: the promoter's events were numbered below the run's own and dropped as old."""
    rule = _rules({"name": "life", "on": ["early_stopped", "model_promoted"], "channels": ["team"]}).rules[0]
    stopped = ev.build(
        ev.EarlyStopped,
        run_id="r",
        seq=ev.attempt_first_seq(1) + 40,
        stopped_epoch=9,
        best_epoch=1,
        best_value=0.2,
        monitor="val_loss",
        mode="min",
    )
    promoted = ev.build(
        ev.ModelPromoted,
        run_id="r",
        seq=ev.promotion_seq(stopped.seq, "model_promoted"),
        name="m",
        version=1,
        champion=True,
    )
    legacy = ev.build(
        ev.ModelPromoted, run_id="r", seq=999_001, name="m", version=2, champion=False
    )  # an older promoter's numbering
    state = RuleState()
    fired = []
    for event in (stopped, promoted, legacy):
        state, transition = evaluate(rule, state, event)
        fired.append(transition.event_id if transition else None)
    assert fired == [stopped.id, promoted.id, legacy.id]
    assert promoted.seq > ev.attempt_first_seq(ev.MAX_ATTEMPTS) + ev.ATTEMPT_BLOCK > stopped.seq


def test_a_rule_without_mode_on_a_metric_whose_name_says_nothing_is_refused_by_name():
    with pytest.raises(
        RulesError, match=r"rule 'f1-plateau': cannot tell whether 'val_f1' .* add mode: min or mode: max"
    ):
        _rules({"name": "f1-plateau", "metric": "val_f1", "no_improvement_epochs": 3, "channels": ["team"]})
    assert (
        _rules(
            {
                "name": "f1-plateau",
                "metric": "val_f1",
                "mode": "max",
                "no_improvement_epochs": 3,
                "channels": ["team"],
            }
        )
        .rules[0]
        .mode
        == "max"
    )


def test_promotion_outcomes_can_be_alerted_on():
    rule = _rules(
        {"name": "models", "on": ["model_promoted", "promotion_skipped"], "channels": ["team"]}
    ).rules[0]
    promoted = ev.build(
        ev.ModelPromoted,
        run_id="a",
        seq=999_001,
        name="digits",
        version=4,
        champion=False,
        aliases=["latest"],
        previous_champion_version=2,
    )
    skipped = ev.build(
        ev.PromotionSkipped,
        run_id="b",
        seq=999_000,
        reason="the model store /m is full (No space left on device)",
    )
    assert evaluate(rule, RuleState(), promoted)[1].summary == "promoted as digits v4 — champion stays v2"
    assert (
        evaluate(rule, RuleState(), skipped)[1].summary
        == "not promoted: the model store /m is full (No space left on device)"
    )


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ({"name": "x", "metric": "val_loss", "above": 1, "channels": ["nope"]}, "unknown channel(s) nope"),
        (
            {"name": "x", "metric": "val_loss", "above": 1, "nan": "loss", "channels": ["team"]},
            "exactly one condition",
        ),
        ({"name": "x", "channels": ["team"]}, "exactly one condition"),
        ({"name": "x", "stalled_seconds": -5, "channels": ["team"]}, "greater than 0"),
        (
            {"name": "x", "metric": "val_loss", "above": 1, "below": 0, "channels": ["team"]},
            "either above or below",
        ),
        ({"name": "x", "above": 1, "channels": ["team"]}, "needs metric"),
        (
            {"name": "x", "metric": "val_weird", "no_improvement_epochs": 3, "channels": ["team"]},
            "rule 'x': cannot tell whether 'val_weird'",
        ),
        (
            {"name": "x", "metric": "val_loss", "above": 1, "channels": ["team"], "colour": "red"},
            "Extra inputs are not permitted",
        ),
        ({"name": "x", "on": ["exploded"], "channels": ["team"]}, "on.0"),
    ],
)
def test_invalid_rules_are_refused_with_a_reason(rule, expected):
    with pytest.raises(RulesError) as info:
        _rules(rule)
    assert expected in str(info.value)
    assert isinstance(info.value, ValueError)


def test_match_by_job_glob_and_tags():
    rule = _rules(
        {
            "name": "x",
            "match": {"job": "digits-*", "tags": {"team": "vision"}},
            "nan": "loss",
            "channels": ["team"],
        }
    ).rules[0]
    assert rule.matches("digits-mlp", {"team": "vision"})
    assert not rule.matches("digits-mlp", {"team": "nlp"}) and not rule.matches("cifar", {"team": "vision"})


def test_the_bundled_rules_file_is_valid():
    from alerts.rules import load_rules
    from tests.conftest import REPO

    rules = load_rules(REPO / "examples" / "alerts.yaml")
    assert {r.kind for r in rules.rules} == {
        "threshold",
        "nan",
        "no_improvement",
        "gap",
        "stalled",
        "lifecycle",
    }


def test_repeat_interval_reminds_while_the_incident_holds():
    rule = _rules(
        {"name": "high", "metric": "val_loss", "above": 0.5, "repeat_seconds": 10, "channels": ["team"]}
    ).rules[0]
    events = [
        ev.build(ev.EpochEnd, run_id="r", seq=i + 1, ts=1000.0 + 4 * i, epoch=i, metrics={"val_loss": v})
        for i, v in enumerate([0.9, 0.9, 0.9, 0.9, 0.9, 0.9, 0.1])
    ]  # t = 1000, 1004, …, 1024
    state, out = RuleState(), []
    for event in events:
        state, transition = evaluate(rule, state, event)
        if transition:
            out.append((event.epoch, transition.state, transition.repeat))
    assert out == [(0, "firing", 0), (3, "firing", 1), (6, "resolved", 0)]
