"""The README's "Get Slack alerts", word for word: what Slack shows, where a channel's URL may come
from, the defaults it states, and ``delivered_at`` in the outbox.

The message, the rules and the defaults are read from README.md itself, so a change to the README or
to the code that the other does not follow fails here. Messages are decided by the real alerter (a
consumer group on a real Redis stream, the SQL outbox) from the README's own rule, and posted by the
real deliverer to a local server that answers like Slack's incoming webhooks.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from datetime import datetime, timezone

import pytest
import sqlalchemy as sa
import yaml

from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import WebhookChannel
from alerts.engine import Alerter, Deliverer, build_channels
from alerts.rules import Rule, RulesError, load_rules, parse_rules
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from pipeline.sparkline import sparkline
from tests.conftest import REPO, wait_for
from tests.test_alert_promises import AlerterThreads

README = (REPO / "README.md").read_text(encoding="utf-8")
SECTION = README.split("## Get Slack alerts", 1)[1].split("\n## ", 1)[0]


def _fenced(text: str, language: str, after: str = "") -> str:
    """The first ```language block of ``text`` after the words ``after``."""
    return re.search(rf"```{language}\n(.*?)```", text[text.index(after) :], re.S).group(1)


#: The Block Kit message the README shows for a threshold alert.
README_MESSAGE = json.loads(_fenced(SECTION, "json", "What Slack shows for a threshold alert"))
#: The README's rules file.
README_RULES = yaml.safe_load(_fenced(SECTION, "yaml"))
#: The sample's run id is the Run field's 12 characters; the footer's "…" stands for the rest.
RUN_ID = "3f2c0d1e4a5b9c8d7e6f00112233aabb"
RULE = "val-loss-high"
URL = "https://hooks.slack.com/services/T0000/B0000/XXXXsecrettoken"


def _fields(message: dict) -> dict[str, str]:
    """The section fields of a Block Kit message, by name: {"Run": "digits-mlp (`…`)", …}."""
    section = next(b for b in message["blocks"] if b["type"] == "section" and "fields" in b)
    return dict(field["text"].removeprefix("*").split("*\n", 1) for field in section["fields"])


def _readme_rule_file() -> dict:
    """The README's rule for the sample message, with the one channel it sends to."""
    rule = next(r for r in README_RULES["rules"] if r["name"] == RULE)
    return {"channels": {c: README_RULES["channels"][c] for c in rule["channels"]}, "rules": [rule]}


def _environ(slack) -> dict[str, str]:
    return {README_RULES["channels"]["team-slack"]["url_env"]: slack.url}


def _run(name: str, val_losses: list[float]) -> list[ev.Event]:
    events = [ev.build(ev.RunStarted, run_id=RUN_ID, seq=0, name=name)]
    for epoch, value in enumerate(val_losses):
        metrics = {"loss": 0.1, "val_loss": value}
        events.append(ev.build(ev.EpochEnd, run_id=RUN_ID, seq=epoch + 1, epoch=epoch, metrics=metrics))
    return events


def _sent_to_slack(settings, engine, slack, val_losses: list[float], count: int) -> list[dict]:
    EventStream(settings=settings).publish(_run("digits-mlp", val_losses))
    with AlerterThreads(settings, engine, _readme_rule_file(), _environ(slack)):
        wait_for(lambda: len(slack.accepted) >= count, message=f"{count} Slack messages")
    return [request["json"] for request in slack.accepted]


#: What a message says does not depend on the database: checked on SQLite only.
sqlite_only = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


# -- the message ----------------------------------------------------------------------------------


@sqlite_only
def test_a_firing_alert_posts_exactly_the_block_kit_message_the_readme_shows(settings, engine, slack):
    # val_loss above 0.5 at epochs 1 and 2: the README's rule (for_epochs: 2) fires at epoch 2 on 0.7.
    [message] = _sent_to_slack(settings, engine, slack, [0.4, 0.6, 0.7], count=1)
    footer = f"{RUN_ID[:12]}…"
    assert footer in json.dumps(README_MESSAGE, ensure_ascii=False), (
        "the README's footer shows the run id cut short"
    )
    expected = json.loads(json.dumps(README_MESSAGE, ensure_ascii=False).replace(footer, RUN_ID))
    assert message == expected
    # Spelled out, so that a failure says which promise broke.
    assert (
        message["text"]
        == "🚨 val-loss-high FIRING — digits-mlp: val_loss = 0.7 is above 0.5 for 2 epochs  ▁▆█"
    )
    assert [b["type"] for b in message["blocks"]] == ["header", "section", "section", "context"]
    assert message["blocks"][0]["text"] == {"type": "plain_text", "text": "🚨 val-loss-high — firing"}
    assert _fields(message) == {
        "Run": "digits-mlp (`3f2c0d1e4a5b`)",
        "Severity": "warning",
        "Value": "0.7 (threshold 0.5)",
        "Epoch": "2",
    }
    assert (
        message["blocks"][2]["text"]["text"]
        == "val_loss = 0.7 is above 0.5 for 2 epochs\n`▁▆█` val_loss, epochs 0–2"
    )
    assert message["blocks"][3]["elements"][0]["text"] == f"`fitstream show {RUN_ID}`"


@sqlite_only
def test_the_resolved_message_says_resolved_with_the_value_that_cleared_it(settings, engine, slack):
    # Fires at epoch 2 on 0.7; val_loss 0.3 at epoch 3 clears it.
    firing, resolved = _sent_to_slack(settings, engine, slack, [0.4, 0.6, 0.7, 0.3], count=2)
    assert len(slack.accepted) == 2
    # The README: 'The resolved message has "✅ … — resolved" and the value that cleared it.'
    header = re.search(r'"(✅ … — resolved)"', SECTION).group(1).replace("…", RULE)
    assert resolved["blocks"][0]["text"] == {"type": "plain_text", "text": header}
    assert resolved["text"].startswith(f"✅ {RULE} RESOLVED — digits-mlp: ")
    # The same shape as the firing message, with the value and epoch that cleared it.
    assert [b["type"] for b in resolved["blocks"]] == [b["type"] for b in README_MESSAGE["blocks"]]
    assert _fields(resolved) == {**_fields(firing), "Value": "0.3 (threshold 0.5)", "Epoch": "3"}
    sentence, curve_line = resolved["blocks"][2]["text"]["text"].split("\n")
    assert "0.3" in sentence and "0.7" not in sentence
    curve = sparkline([0.4, 0.6, 0.7, 0.3], width=20)
    assert curve_line == f"`{curve}` val_loss, epochs 0–3"
    assert resolved["text"].endswith(f"{sentence}  {curve}")
    assert resolved["blocks"][3] == firing["blocks"][3]


@sqlite_only
def test_a_lifecycle_alert_shows_the_runs_monitored_metric_even_when_its_epochs_came_in_earlier_batches(
    settings, engine, slack
):
    stream = EventStream(settings=settings)
    rules = {
        "channels": {"team-slack": README_RULES["channels"]["team-slack"]},
        "rules": [{"name": "stopped", "on": ["early_stopped"], "channels": ["team-slack"]}],
    }
    values = [0.9, 0.5, 0.3, 0.35, 0.4]
    with AlerterThreads(settings, engine, rules, _environ(slack)):
        stream.publish(
            [ev.build(ev.RunStarted, run_id=RUN_ID, seq=0, name="digits-mlp", monitor="val_loss", mode="min")]
        )
        for epoch, value in enumerate(values):  # one batch each: the alerter must remember them
            stream.publish(
                [
                    ev.build(
                        ev.EpochEnd,
                        run_id=RUN_ID,
                        seq=epoch + 1,
                        epoch=epoch,
                        metrics={"val_loss": value, "loss": 0.1},
                    )
                ]
            )
            wait_for(
                lambda e=epoch: _alert_run_epochs(engine) == e + 1,
                message=f"epoch {epoch} seen by the alerter",
            )
        stream.publish(
            [
                ev.build(
                    ev.EarlyStopped,
                    run_id=RUN_ID,
                    seq=6,
                    stopped_epoch=4,
                    best_epoch=2,
                    best_value=0.3,
                    monitor="val_loss",
                    mode="min",
                )
            ]
        )
        wait_for(lambda: len(slack.accepted) >= 1, message="the lifecycle alert")
    message = slack.accepted[0]["json"]
    curve = sparkline(values, width=20)
    assert (
        message["text"].endswith(f"  {curve}")
        and f"`{curve}` val_loss, epochs 0–4" in message["blocks"][2]["text"]["text"]
    )


def _alert_run_epochs(engine) -> int:
    with engine.connect() as conn:
        raw = conn.execute(sa.text("SELECT recent_metrics FROM alert_runs")).scalar()
    return len(json.loads(raw)["metrics"].get("val_loss", [])) if raw else 0


# -- where a channel's URL comes from ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("channel", "named", "advice"),
    [
        ({"type": "slack", "url": URL}, "url", ("url_env", "url_file")),
        ({"type": "slack", "url_env": "SLACK_WEBHOOK_URL", "url": URL}, "url", ("url_env", "url_file")),
        ({"type": "slack", "url_env": URL}, "url_env", ("environment variable",)),
        ({"type": "slack", "url_file": URL}, "url_file", ("secrets file",)),
        (
            {"type": "webhook", "url_env": "OPS_WEBHOOK_URL", "secret": "whsec-XXXXsecrettoken"},
            "secret",
            ("secret_env", "secret_file"),
        ),
    ],
    ids=["url", "url-beside-url_env", "url-as-url_env", "url-as-url_file", "webhook-secret"],
)
def test_a_rules_file_that_holds_a_url_or_secret_itself_is_refused_saying_what_to_write(
    tmp_path, channel, named, advice
):
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump({"channels": {"team-slack": channel}, "rules": []}))
    with pytest.raises(RulesError) as refused:
        load_rules(path)
    message = str(refused.value)
    assert f"channels.team-slack: {named}" in message
    assert all(word in message for word in advice), message
    assert "XXXXsecrettoken" not in message and "hooks.slack.com" not in message, (
        "the error quotes the secret"
    )


def test_the_readmes_channels_read_their_urls_from_the_variable_or_the_file_they_name(tmp_path):
    rules = copy.deepcopy(README_RULES)
    secret_file = tmp_path / "oncall_slack_webhook"  # the README's /run/secrets/oncall_slack_webhook
    secret_file.write_text("https://hooks.slack.com/services/T1/B1/oncall\n")
    assert rules["channels"]["oncall"].pop("url_file") == "/run/secrets/oncall_slack_webhook"
    rules["channels"]["oncall"]["url_file"] = str(secret_file)
    environ = {
        "SLACK_WEBHOOK_URL": "https://hooks.slack.com/services/T1/B1/team",
        "OPS_WEBHOOK_URL": "https://ops.example/hook",
        "OPS_WEBHOOK_SECRET": "whsec-ops",
    }
    channels = build_channels(parse_rules(rules), environ)
    assert {name: (type(c).__name__, c._url) for name, c in channels.items()} == {
        "team-slack": ("SlackChannel", environ["SLACK_WEBHOOK_URL"]),
        "ops": ("WebhookChannel", environ["OPS_WEBHOOK_URL"]),
        "oncall": ("SlackChannel", "https://hooks.slack.com/services/T1/B1/oncall"),
    }
    assert channels["ops"]._secret == "whsec-ops"


# -- the defaults the README states -----------------------------------------------------------------


def test_a_rule_without_severity_is_a_warning_and_only_info_warning_critical_are_accepted():
    # "Optional per rule: `severity` (info/warning/critical)"; the sample's rule sets none and shows warning.
    allowed = re.search(r"Optional per rule: `severity` \(([\w/]+)\)", SECTION).group(1).split("/")
    default = _fields(README_MESSAGE)["Severity"]
    rule = next(r for r in README_RULES["rules"] if r["name"] == RULE)
    assert "severity" not in rule
    parsed = parse_rules(_readme_rule_file())
    assert parsed.rules[0].severity == default == Rule.model_fields["severity"].default == "warning"
    for severity in allowed:
        given = parse_rules({**_readme_rule_file(), "rules": [{**rule, "severity": severity}]})
        assert given.rules[0].severity == severity
    with pytest.raises(RulesError, match="severity"):
        parse_rules({**_readme_rule_file(), "rules": [{**rule, "severity": "fatal"}]})
    assert sorted(allowed) == ["critical", "info", "warning"]


def test_a_channel_without_rate_per_minute_sends_at_most_60_a_minute():
    documented = int(re.search(r"per channel: `rate_per_minute` \(default (\d+)\)", SECTION).group(1))
    assert documented == 60
    rules = parse_rules({"channels": {k: v for k, v in README_RULES["channels"].items() if k != "oncall"}})
    assert all("rate_per_minute" not in README_RULES["channels"][name] for name in rules.channels)
    assert {name: c.rate_per_minute for name, c in rules.channels.items()} == {"team-slack": 60, "ops": 60}
    channels = build_channels(
        rules, {"SLACK_WEBHOOK_URL": URL, "OPS_WEBHOOK_URL": URL, "OPS_WEBHOOK_SECRET": "s"}
    )
    # What the deliverer waits between two sends of a channel: 60 s / rate.
    intervals = {name: c._limit.interval for name, c in channels.items()}
    assert intervals == {"team-slack": 60 / documented, "ops": 60 / documented}
    assert (
        SlackChannel("a", url=URL)._limit.interval
        == WebhookChannel("b", url=URL)._limit.interval
        == 60 / documented
    )


# -- delivered_at ----------------------------------------------------------------------------------


def _alert_rows(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT status, attempts, created_at, delivered_at, last_error FROM alerts")
        ).all()


def _utc(value) -> datetime:
    """A timestamp as the database returns it (SQLite: naive, in UTC) made comparable."""
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def test_delivered_at_is_set_when_the_alert_is_delivered_and_not_before(settings, engine, slack):
    rules = parse_rules(_readme_rule_file())
    EventStream(settings=settings).publish(_run("digits-mlp", [0.6, 0.7]))
    loop = ConsumerLoop(Alerter(engine, rules), EventStream(settings=settings), consumer_name="delivered-at")
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        [decided] = wait_for(lambda: _alert_rows(engine), message="the alert written to the outbox")
    finally:
        loop.stop_event.set()
        thread.join(timeout=30)
    assert (decided.status, decided.attempts, decided.delivered_at) == ("pending", 0, None)

    deliverer = Deliverer(engine, build_channels(rules, _environ(slack)))
    slack.answer_all(400)  # refused: not retried by urllib3, so one attempt fails
    assert deliverer.deliver_once() == 0
    [failed] = _alert_rows(engine)
    assert (failed.status, failed.attempts, failed.delivered_at) == ("pending", 1, None)
    assert failed.last_error.startswith("HTTP 400")

    slack.answer_all(200)
    before = datetime.now(timezone.utc)
    wait_for(
        lambda: deliverer.deliver_once() == 1, message="the retry delivered"
    )  # after the deliverer's backoff
    after = datetime.now(timezone.utc)
    [delivered] = _alert_rows(engine)
    assert (delivered.status, delivered.attempts, delivered.last_error) == ("delivered", 2, None)
    assert delivered.delivered_at is not None
    assert _utc(decided.created_at) <= before <= _utc(delivered.delivered_at) <= after
    [sent] = slack.accepted
    assert sent["json"]["blocks"][0]["text"]["text"] == "🚨 val-loss-high — firing"
