"""Issue 10, fuzzing: 500 generated alert-rule files (``ci`` profile; see ``fuzzing.py``) through the
real rule loader (``load_rules`` for YAML and JSON files, ``parse_rules`` for parsed ones) and,
when accepted, the alerter's own pieces: its channels (``build_channels``) and every rule's state
machine (``evaluate``).

Each file is a valid one — channels, and rules of every kind — with a few keys changed, or raw
text (not YAML, not UTF-8, nested thousands deep, aliases that stand for billions of values). It
is accepted, or refused with a ``RulesError`` whose every problem names the rule (its place, and
its name when it has one), the channel or the key it is about; never another exception. Every
rule the loader accepts can fire — a rule that never could (a NaN threshold, a gap between a
metric and itself) is a rule the loader should have refused — and no event makes one raise.
"""

from __future__ import annotations

import copy
import json
import math
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

from alerts.engine import build_channels
from alerts.rules import (
    LIFECYCLE_EVENTS,
    Rule,
    RulesError,
    RuleState,
    evaluate,
    load_rules,
    parse_rules,
)
from pipeline import events as ev
from pipeline.errors import ConfigurationError
from tests.fuzz.fuzzing import examples, fuzz_settings
from tests.fuzz.stream_messages import long_texts, text

MONITORS = {"val_loss": "min", "loss": "min", "val_accuracy": "max", "accuracy": "max"}
METRICS = sorted(MONITORS) + ["lr", "val_f1"]
URL = "https://hooks.slack.example/fuzz"
#: Problems about the file as a whole, not about one of its keys.
WHOLE_FILE = ("is not valid YAML", "is not UTF-8 text", "is nested too deeply", "cannot read")
#: Feeding a rule more epochs than this to make it fire is not worth the time.
MAX_EPOCHS_FED = 50

finite = st.floats(allow_nan=False, allow_infinity=False)
channel_names = st.sampled_from(["team", "ops", "oncall"]) | text(12, 1)
channels = st.one_of(
    st.fixed_dictionaries(
        {"type": st.just("slack"), "url_env": st.just("FUZZ_URL")},
        optional={"rate_per_minute": st.integers(1, 600)},
    ),
    st.fixed_dictionaries(
        {"type": st.just("webhook"), "url_env": st.just("FUZZ_URL")},
        optional={"secret_env": st.just("FUZZ_SECRET")},
    ),
    st.fixed_dictionaries(
        {
            "type": st.sampled_from(["slack", "webhook"]),
            "url_file": st.just("/nonexistent/fitstream-fuzz-url"),
        }
    ),
)
conditions = st.one_of(
    st.builds(
        lambda m, side, v, n: {"metric": m, side: v, "for_epochs": n},
        st.sampled_from(METRICS),
        st.sampled_from(["above", "below"]),
        finite,
        st.integers(1, 5),
    ),
    st.builds(lambda m: {"nan": m}, st.sampled_from(METRICS)),
    st.sampled_from(sorted(MONITORS)).flatmap(
        lambda m: st.fixed_dictionaries(
            {"metric": st.just(m), "no_improvement_epochs": st.integers(1, 5)},
            optional={"mode": st.sampled_from(["auto", MONITORS[m]]), "min_delta": st.floats(0, 1)},
        )
    ),
    st.builds(
        lambda a, b, v: {"gap": {"metric": a, "minus": b, "above": v}},
        st.sampled_from(METRICS),
        st.sampled_from(METRICS),
        finite,
    ).filter(lambda c: c["gap"]["metric"] != c["gap"]["minus"]),
    st.builds(lambda s: {"stalled_seconds": s}, st.floats(1, 1e6)),
    st.builds(
        lambda on: {"on": on},
        st.lists(st.sampled_from(LIFECYCLE_EVENTS), min_size=1, max_size=3, unique=True),
    ),
)
extras = st.fixed_dictionaries(
    {},
    optional={
        "severity": st.sampled_from(["info", "warning", "critical"]),
        "repeat_seconds": st.floats(1, 3600),
        "match": st.fixed_dictionaries(
            {},
            optional={
                "job": st.sampled_from(["digits-*", "*", "[ab]?c"]),
                "tags": st.dictionaries(text(5, 1), text(5), max_size=2),
            },
        ),
    },
)


@st.composite
def valid_files(draw: st.DrawFn) -> dict[str, Any]:
    named = draw(st.dictionaries(channel_names, channels, min_size=1, max_size=3))
    rules = []
    for index, condition in enumerate(draw(st.lists(conditions, min_size=1, max_size=5))):
        on = draw(st.lists(st.sampled_from(sorted(named)), min_size=1, max_size=2, unique=True))
        rules.append({"name": f"{draw(text(20, 1))}-{index}", **condition, **draw(extras), "channels": on})
    return {"channels": named, "rules": rules}


values = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | text(30)
    | long_texts
    | st.sampled_from(["slack", "teams", "val_loss", "loss", "run_failed", "critical", "nope"])
    | st.lists(st.integers() | text(5), max_size=3)
    | st.dictionaries(text(6), st.integers() | text(5), max_size=3)
)
RULE_KEYS = [
    "name",
    "match",
    "channels",
    "severity",
    "repeat_seconds",
    "metric",
    "above",
    "below",
    "for_epochs",
    "nan",
    "no_improvement_epochs",
    "mode",
    "min_delta",
    "gap",
    "stalled_seconds",
    "on",
]
DELETE = object()
edits = st.lists(
    st.one_of(
        st.tuples(
            st.just("rule"),
            st.integers(0, 4),
            st.sampled_from(RULE_KEYS) | text(10, 1),
            values | st.just(DELETE),
        ),
        st.tuples(
            st.just("channel"),
            st.integers(0, 2),
            st.sampled_from(["type", "url_env", "url_file", "secret_env", "secret_file", "rate_per_minute"])
            | text(8, 1),
            values | st.just(DELETE),
        ),
        st.tuples(
            st.just("top"),
            st.sampled_from(["channels", "rules", "rule", "chanels"]) | text(8, 1),
            values | st.just(DELETE),
        ),
    ),
    max_size=3,
)
raw_texts = st.one_of(
    text(200),
    st.just("rules: " + "[" * 5000 + "]" * 5000),
    st.just(
        "x: {a0: &a0 [lol], a1: &a1 [*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0,*a0], a2: &a2 [*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1,*a1],"
        " a3: &a3 [*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2,*a2], a4: &a4 [*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3,*a3],"
        " a5: &a5 [*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4,*a4], a6: &a6 [*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5,*a5]}\nrules: []\n"
    ),
    st.just(
        'channels: {team: {type: slack, url_env: FUZZ_URL}}\nrules: [{name: "a\\0b", nan: loss, channels: [team]}]\n'
    ),
    st.just("rules: &r [*r]\n"),
    st.binary(min_size=1, max_size=30).map(lambda b: b"\xff" + b),
)


def _edit(data: dict[str, Any], edit: tuple) -> tuple[str, ...]:
    """Make one edit; returns the key path it touched (rules by index and name)."""
    kind, *rest = edit
    if kind == "top":
        key, value = rest
        data.pop(key, None) if value is DELETE else data.__setitem__(key, value)
        return (key,)
    index, key, value = rest
    section = data.get("rules" if kind == "rule" else "channels")
    if kind == "rule":
        if not isinstance(section, list) or not section:
            return ()
        target, where = section[index % len(section)], ("rules", str(index % len(section)))
    else:
        if not isinstance(section, dict) or not section:
            return ()
        name = sorted(section, key=str)[index % len(section)]
        target, where = section[name], ("channels", str(name))
    if not isinstance(target, dict):
        return where
    target.pop(key, None) if value is DELETE else target.__setitem__(key, value)
    return (*where, str(key))


def _rendered(key: str) -> str:
    """A key as errors write it: quoted when it is empty or holds a dot or something unprintable."""
    plain = key and key.isprintable() and "." not in key and key.strip() == key and len(key) <= 80
    return key if plain else repr(key)[:80]


def _names_what_changed(problem: str, touched: list[tuple[str, ...]], data: Any) -> bool:
    """A problem line names the rule, channel or key it is about: its path starts where an edit was
    (a rule written as ``rules.N (its name)``), or, about the file as a whole, it names an edited
    rule or channel."""
    where, _, message = problem.partition(": ")
    if where == "(top level)":
        names = {str(p[1]) for p in touched if len(p) >= 2 and p[0] == "channels"}
        rules = data.get("rules") if isinstance(data, dict) else None
        for path in touched:
            if (
                len(path) >= 2
                and path[0] == "rules"
                and isinstance(rules, list)
                and isinstance(rules[int(path[1])], dict)
            ):
                names.add(str(rules[int(path[1])].get("name")))
        return any(name in message for name in names) or any(len(p) == 1 for p in touched)
    touched = [tuple(_rendered(p) for p in path) for path in touched]
    for path in touched:
        if path and path[0] == "rules" and len(path) >= 2:
            head = f"rules.{path[1]}"
            if where == "rules" or where == head or where.startswith((head + ".", head + " (")):
                return True
        elif path:
            joined = ".".join(path)
            if where == joined or where.startswith(joined + ".") or joined.startswith(where + "."):
                return True
    return False


def _as_read(key: str, how: str) -> str:
    """``key`` as the loader sees it. (PyYAML writes some line breaks, U+0085, raw and reads them back
    as a space: a PyYAML quirk, not Fitstream's.)"""
    if how != "yaml":
        return key
    return str(next(iter(yaml.safe_load(yaml.safe_dump({key: 0}, allow_unicode=True)))))


def _load(source: dict | str | bytes, how: str, tmp_path) -> Any:  # type: ignore[no-untyped-def]
    if how == "dict" and isinstance(source, dict):
        return parse_rules(source, source="rules")
    path = tmp_path / "rules.yaml"
    if isinstance(source, bytes):
        path.write_bytes(source)
    elif isinstance(source, str):
        path.write_text(source, encoding="utf-8", errors="surrogatepass")
    elif how == "json":
        path.write_text(json.dumps(source, default=str))
    else:
        path.write_text(yaml.safe_dump(source, allow_unicode=True, sort_keys=False))
    return load_rules(path)


# -- every accepted rule can fire, and nothing makes one raise ----------------------------------------
def _epochs(run: str, metrics: list[dict[str, float | None]]) -> list[ev.Event]:
    return [
        ev.build(ev.EpochEnd, run_id=run, seq=i + 1, ts=1000.0 + i, epoch=i, metrics=m)
        for i, m in enumerate(metrics)
    ]


LIFECYCLE_SAMPLES = {
    "run_started": dict(cls=ev.RunStarted, name="job"),
    "run_failed": dict(cls=ev.RunFailed, error_type="E", message="m"),
    "early_stopped": dict(
        cls=ev.EarlyStopped, stopped_epoch=3, best_epoch=1, best_value=0.5, monitor="val_loss", mode="min"
    ),
    "run_finished": dict(cls=ev.RunFinished, status="completed", epochs_completed=3),
    "run_pruned": dict(
        cls=ev.RunFinished, status="pruned", epochs_completed=2, reason="pruned: behind the median"
    ),
    "model_promoted": dict(cls=ev.ModelPromoted, name="m", version=1),
    "promotion_skipped": dict(cls=ev.PromotionSkipped, reason="r"),
}


def _firing_events(rule: Rule) -> list[ev.Event] | None:
    """Events that must make ``rule`` fire (None: not by events, or not in a reasonable number)."""
    kind = rule.kind
    if kind == "threshold":
        limit = rule.above if rule.above is not None else rule.below
        value = math.nextafter(limit, math.inf if rule.above is not None else -math.inf)
        return (
            None
            if rule.for_epochs > MAX_EPOCHS_FED
            else _epochs("r", [{rule.metric: value}] * rule.for_epochs)
        )
    if kind == "nan":
        return _epochs("r", [{rule.nan: math.nan}])
    if kind == "no_improvement":
        n = rule.no_improvement_epochs or 1
        return None if n >= MAX_EPOCHS_FED else _epochs("r", [{rule.metric: 1.0}] * (n + 1))
    if kind == "gap":
        assert rule.gap is not None
        value = math.nextafter(rule.gap.above, math.inf)
        return (
            None
            if rule.for_epochs > MAX_EPOCHS_FED
            else _epochs("r", [{rule.gap.metric: value, rule.gap.minus: 0.0}] * rule.for_epochs)
        )
    if kind == "lifecycle":
        assert rule.on
        fields = dict(LIFECYCLE_SAMPLES[rule.on[0]])
        return [ev.build(fields.pop("cls"), run_id="r", seq=1, **fields)]
    return None  # stalled: fired by a timer, from the database


ODD_VALUES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324, None]


def _check_rule(rule: Rule) -> None:
    firing = _firing_events(rule)
    if firing is not None:
        state, fired = RuleState(), []
        for event in firing:
            state, transition = evaluate(rule, state, event)
            fired += [transition] if transition is not None and transition.state == "firing" else []
        assert fired, f"accepted rule {rule.name!r} ({rule.kind}) cannot fire: {rule!r}"
    metric_names = {rule.metric, rule.nan, *((rule.gap.metric, rule.gap.minus) if rule.gap else ())} - {None}
    state = RuleState()
    for event in _epochs("odd", [dict.fromkeys(metric_names, value) for value in ODD_VALUES]):
        state, _transition = evaluate(rule, state, event)  # never raises, whatever Keras logged


def test_generated_rule_files_are_accepted_or_refused_naming_the_rule(tmp_path):
    outcomes = {"accepted": 0, "refused": 0}
    environ = {"FUZZ_URL": URL, "FUZZ_SECRET": "fuzz-secret"}

    @fuzz_settings(examples("alert_rules"))
    @given(
        st.integers(0, 9).flatmap(
            lambda i: (
                raw_texts
                if i == 9
                else st.tuples(valid_files(), edits, st.sampled_from(["dict", "yaml", "json"]))
            )
        )
    )
    def check(case):  # type: ignore[no-untyped-def]
        if isinstance(case, (str, bytes)):
            data, touched, how = case, None, "yaml"
        else:
            data, changes, how = case
            data = copy.deepcopy(data)
            touched = [
                tuple(_as_read(key, how) for key in path)
                for change in changes
                if (path := _edit(data, change))
            ]
        try:
            rules = _load(data, how, tmp_path)
        except RulesError as exc:
            outcomes["refused"] += 1
            message = str(exc)
            assert "Traceback" not in message and len(message) < 20_000, message[:2000]
            lines = message.splitlines()
            if not lines[0].endswith("is invalid:"):
                assert any(w in lines[0] for w in WHOLE_FILE), lines[0][:500]
                return
            problems = [line.removeprefix("  - ") for line in lines[1:] if not line.startswith("  - … and ")]
            assert problems and all(len(p) <= 600 for p in problems), message[:2000]
            if touched is not None:
                bad = [
                    p
                    for p in problems
                    if not p.startswith(("stands for more than", "nested more than", "contains itself"))
                    and not _names_what_changed(p, touched, data)
                ]
                assert not bad, f"{bad[0][:300]!r} names nothing that was changed ({touched})"
                assert touched, f"an unchanged valid rules file was refused: {message[:1000]}"
            return
        outcomes["accepted"] += 1
        for rule in rules.rules:
            _check_rule(rule)
        try:
            built = build_channels(rules, environ)
        except ConfigurationError as exc:  # a secrets file that is not there: the channel is named
            assert str(exc).startswith("channel ") and "Traceback" not in str(exc), str(exc)
        else:
            assert set(built) == set(rules.channels)

    check()
    print(f"alert rule files: {outcomes}")
    assert sum(outcomes.values()) == examples("alert_rules")
    assert min(outcomes.values()) >= examples("alert_rules") // 10, outcomes
