"""Every promise of the README's "Get Slack alerts", checked against the real thing.

The alerter runs either as the real ``fitstream consume alerter`` process (the retry budget from
its environment variable, the stall watcher it starts) or as the same three parts in threads of
this process; events go through a real Redis stream, alerts through the real SQL outbox, and
messages to local HTTP servers that answer like Slack's incoming webhooks (``tests/slack_server.py``).
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading

import pytest
import sqlalchemy as sa
import yaml

from alerts.engine import Alerter, Deliverer, build_channels
from alerts.rules import parse_rules
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from pipeline.sparkline import sparkline
from tests.conftest import REPO, run_cli, settings_env, wait_for

WEBHOOK_SECRET = "whsec-promises-secret"
#: A run id longer than the 12 characters the Slack message shows of it.
RUN_ID = "3f2c0d1e4a5b9c8d7e6f00112233aabb"


def _channels(slack, hook=None, **slack_options):
    channels = {"team-slack": {"type": "slack", "url_env": "SLACK_WEBHOOK_URL", **slack_options}}
    if hook is not None:
        channels["ops"] = {
            "type": "webhook",
            "url_env": "OPS_WEBHOOK_URL",
            "secret_env": "OPS_WEBHOOK_SECRET",
        }
    return channels


def _environ(slack, hook=None):
    environ = {"SLACK_WEBHOOK_URL": slack.url}
    if hook is not None:
        environ |= {"OPS_WEBHOOK_URL": hook.url, "OPS_WEBHOOK_SECRET": WEBHOOK_SECRET}
    return environ


class AlerterThreads:
    """The alerter's consumer loop and deliverer, as ``fitstream consume alerter`` runs them."""

    def __init__(self, settings, engine, rules_data, environ, *, retry_budget_s=3600.0):
        rules = parse_rules(rules_data)
        stream = EventStream(settings=settings)
        self.loop = ConsumerLoop(Alerter(engine, rules), stream, consumer_name="promises")
        self.deliverer = Deliverer(engine, build_channels(rules, environ), retry_budget_s=retry_budget_s)
        self.threads = [threading.Thread(target=p.run, daemon=True) for p in (self.loop, self.deliverer)]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.loop.stop_event.set()
        self.deliverer.stop_event.set()
        for thread in self.threads:
            thread.join(timeout=30)


class AlerterProcess:
    """A real ``fitstream consume alerter`` process; stopped with SIGTERM, as a service manager does."""

    def __init__(self, env, log_path):
        self.env, self.log_path = env, log_path

    def __enter__(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.cli.main", "consume", "alerter", "--name", "promises"],
            env={**os.environ, **self.env},
            cwd=REPO,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def __exit__(self, *exc):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.log.close()

    def output(self):
        return self.log_path.read_text(errors="replace")


def _process_env(settings, rules_data, environ, tmp_path, **extra):
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules_data))
    return {**settings_env(settings), **environ, "FITSTREAM_ALERT_RULES": str(rules_path), **extra}


def _epochs(run_id, name, val_losses, losses=None, *, seq0=0):
    out = [ev.build(ev.RunStarted, run_id=run_id, seq=seq0, name=name)]
    for i, value in enumerate(val_losses):
        loss = losses[i] if losses else 0.1
        metrics = {"loss": loss, "val_loss": value}
        out.append(ev.build(ev.EpochEnd, run_id=run_id, seq=seq0 + 1 + i, epoch=i, metrics=metrics))
    return out


def _alerts(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT rule, run_id, state, channel, severity, status, attempts, last_error"
                " FROM alerts ORDER BY id"
            )
        ).all()


def _slack_message(request):
    """(header, fields by name, text) of one Slack Block Kit message."""
    blocks = request["json"]["blocks"]
    fields = {}
    for field in next(b for b in blocks if b["type"] == "section" and "fields" in b)["fields"]:
        name, _, value = field["text"].partition("\n")
        fields[name.strip("*")] = value
    return blocks[0]["text"]["text"], fields, request["json"]["text"]


def _run_name(text):
    """The run's name in a message's notification line ("🚨 rule FIRING — name: summary")."""
    return text.partition(" — ")[2].partition(":")[0]


def _gaps(requests):
    return [round(b["at"] - a["at"], 3) for a, b in zip(requests, requests[1:])]


# -- 1. severity and the Block Kit fields ----------------------------------------------------------


def test_slack_and_webhook_messages_carry_the_rule_severity_and_the_values_that_decided(
    settings, engine, slack, hook, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("what a message says does not depend on the database; checked once, on SQLite")
    rules = {
        "channels": _channels(slack, hook, rate_per_minute=600),
        "rules": [
            {
                "name": "val-loss-high",
                "metric": "val_loss",
                "above": 0.5,
                "for_epochs": 2,
                "severity": "critical",
                "channels": ["team-slack", "ops"],
            },
            {"name": "diverged", "nan": "loss", "severity": "info", "channels": ["team-slack"]},
        ],
    }
    # val_loss above 0.5 at epochs 1, 2, 3: fires at epoch 2 (0.7), resolves at epoch 4 (0.3);
    # loss is NaN at epoch 2 only: "diverged" fires at epoch 2 and resolves at epoch 3 (0.25).
    EventStream(settings=settings).publish(
        _epochs(RUN_ID, "digits-mlp", [0.4, 0.6, 0.7, 0.8, 0.3], losses=[0.1, 0.1, math.nan, 0.25, 0.1])
    )
    with AlerterThreads(settings, engine, rules, _environ(slack, hook)):
        wait_for(lambda: (len(slack.accepted), len(hook.accepted)) == (4, 2), message="6 messages")

    run = "digits-mlp (`3f2c0d1e4a5b`)"
    slack_messages = {header: (fields, text) for header, fields, text in map(_slack_message, slack.accepted)}
    assert slack_messages == {
        "🚨 val-loss-high — firing": (
            {"Run": run, "Severity": "critical", "Value": "0.7 (threshold 0.5)", "Epoch": "2"},
            "🚨 val-loss-high FIRING — digits-mlp: val_loss = 0.7 is above 0.5 for 2 epochs  "
            + sparkline([0.4, 0.6, 0.7]),
        ),
        "✅ val-loss-high — resolved": (
            {"Run": run, "Severity": "critical", "Value": "0.3 (threshold 0.5)", "Epoch": "4"},
            "✅ val-loss-high RESOLVED — digits-mlp: val_loss = 0.3 is no longer above 0.5  "
            + sparkline([0.4, 0.6, 0.7, 0.8, 0.3]),
        ),
        "🚨 diverged — firing": (
            {"Run": run, "Severity": "info", "Epoch": "2"},
            "🚨 diverged FIRING — digits-mlp: loss is not finite (nan)  " + sparkline([0.1, 0.1, None]),
        ),
        "✅ diverged — resolved": (
            {"Run": run, "Severity": "info", "Value": "0.25", "Epoch": "3"},
            "✅ diverged RESOLVED — digits-mlp: loss is finite again (0.25)  "
            + sparkline([0.1, 0.1, None, 0.25]),
        ),
    }
    facts = ("rule", "run_id", "run_name", "state", "severity", "value", "threshold", "epoch")
    same = {
        "rule": "val-loss-high",
        "run_id": RUN_ID,
        "run_name": "digits-mlp",
        "severity": "critical",
        "threshold": 0.5,
    }
    assert [{k: r["json"][k] for k in facts} for r in hook.accepted] == [
        {**same, "state": "firing", "value": 0.7, "epoch": 2},
        {**same, "state": "resolved", "value": 0.3, "epoch": 4},
    ]
    # The webhook gets the curve as facts too: the metric, its sparkline, the epochs it covers.
    assert [(r["json"]["metric"], r["json"]["curve"], r["json"]["curve_epochs"]) for r in hook.accepted] == [
        ("val_loss", sparkline([0.4, 0.6, 0.7]), [0, 2]),
        ("val_loss", sparkline([0.4, 0.6, 0.7, 0.8, 0.3]), [0, 4]),
    ]
    severities = sorted({(r.rule, r.severity) for r in _alerts(engine)})
    assert severities == [("diverged", "info"), ("val-loss-high", "critical")]


# -- 2. rate_per_minute ---------------------------------------------------------------------------


def test_a_channel_never_sends_faster_than_its_rate_per_minute(settings, engine, slack, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("a channel's send rate does not depend on the database; checked once, on SQLite")
    rate = 30  # one message every 2 s
    rules = {
        "channels": _channels(slack, rate_per_minute=rate),
        "rules": [{"name": "loss-high", "metric": "val_loss", "above": 0.5, "channels": ["team-slack"]}],
    }
    stream = EventStream(settings=settings)
    for i in range(4):
        stream.publish(_epochs(f"rate-{i}", f"burst-{i}", [0.9]))
    with AlerterThreads(settings, engine, rules, _environ(slack)):
        wait_for(lambda: len(slack.accepted) == 4, timeout=40, message="4 alerts delivered")
    # All decided at once; sent no faster than the rate, none dropped, each once, in order.
    gaps = _gaps(slack.requests)
    assert all(gap >= 60 / rate - 0.1 for gap in gaps), f"gaps between deliveries: {gaps} (rate {rate}/min)"
    assert [t.split(":")[0] for t in slack.texts()] == [f"🚨 loss-high FIRING — burst-{i}" for i in range(4)]
    assert [r.status for r in _alerts(engine)] == ["delivered"] * 4


# -- 3. 503 with Retry-After ----------------------------------------------------------------------


def test_503_with_retry_after_is_honoured_by_every_attempt_and_delivers_once(
    settings, engine, slack, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("HTTP retries do not depend on the database; checked once, on SQLite")
    retry_after = 2
    # More 503s than one send's HTTP retries: the deliverer's own next attempt must wait too.
    slack.respond(503, {"Retry-After": str(retry_after)}, times=5)
    rules = {
        "channels": _channels(slack),
        "rules": [{"name": "loss-high", "metric": "val_loss", "above": 0.5, "channels": ["team-slack"]}],
    }
    EventStream(settings=settings).publish(_epochs("busy", "digits-503", [0.9]))
    with AlerterThreads(settings, engine, rules, _environ(slack)):
        wait_for(lambda: len(slack.accepted) == 1, timeout=40, message="delivery after five 503s")
    assert [r["status"] for r in slack.requests] == [503] * 5 + [200]
    gaps = _gaps(slack.requests)
    assert all(gap >= retry_after - 0.05 for gap in gaps), f"gaps between attempts: {gaps}"
    keys = {r["headers"]["X-Fitstream-Idempotency-Key"] for r in slack.requests}
    assert len(keys) == 1  # one alert, retried
    [row] = _alerts(engine)
    assert (row.status, row.last_error) == ("delivered", None) and row.attempts >= 2


# -- 4. retry budget → undelivered → fitstream status → alerts list --------------------------------


def test_an_alert_past_its_retry_budget_is_undelivered_and_status_and_alerts_list_say_so(
    settings, engine, slack, tmp_path
):
    budget_s = 5  # one failed send (urllib3's retries included) takes ~7 s: the second failure gives up
    rules = {
        "channels": _channels(slack),
        "rules": [{"name": "loss-high", "metric": "val_loss", "above": 0.5, "channels": ["team-slack"]}],
    }
    env = _process_env(
        settings, rules, _environ(slack), tmp_path, FITSTREAM_ALERT_RETRY_BUDGET_SECONDS=str(budget_s)
    )
    stream = EventStream(settings=settings)
    slack.stop()  # connection refused
    with AlerterProcess(env, tmp_path / "alerter.log") as alerter:
        stream.publish(_epochs("lost", "digits-lost", [0.9]))
        [first] = wait_for(lambda: [r for r in _alerts(engine) if r.attempts], message="a failed attempt")
        assert first.status == "pending", "a failure within the retry budget is retried"
        report = json.loads(run_cli("status", "--json", env_extra=env).stdout)
        assert report["alerts"] == {"pending": 1}

        [lost] = wait_for(
            lambda: [r for r in _alerts(engine) if r.status == "undelivered"],
            timeout=40,
            message="the alert given up",
        )
        assert (lost.rule, lost.run_id, lost.state) == ("loss-high", "lost", "firing") and lost.attempts >= 2
        assert "ConnectionError" in lost.last_error and "s3cr3t" not in lost.last_error

        report = json.loads(run_cli("status", "--json", env_extra=env).stdout)
        assert report["alerts"] == {"undelivered": 1}
        human = run_cli("status", env_extra=env)
        assert "alerts: 0 pending, 1 undelivered" in human.stdout
        assert (
            "WARNING: some alerts could not be delivered; see: fitstream alerts list --status undelivered"
            in human.stderr
        )

        listed = json.loads(
            run_cli("alerts", "list", "--status", "undelivered", "--json", env_extra=env).stdout
        )
        assert [(a["rule"], a["run_id"], a["state"], a["channel"], a["status"]) for a in listed] == [
            ("loss-high", "lost", "firing", "team-slack", "undelivered")
        ]
        assert "ConnectionError" in listed[0]["last_error"] and "s3cr3t" not in listed[0]["last_error"]

        # Undelivered is final: the receiver back, a newer alert goes out and the lost one stays lost.
        slack.start()
        stream.publish(_epochs("later", "digits-later", [0.9]))
        wait_for(lambda: len(slack.accepted) == 1, timeout=30, message="the newer alert delivered")
    assert slack.texts()[0].startswith("🚨 loss-high FIRING — digits-later")
    statuses = [(r.run_id, r.status) for r in _alerts(engine)]
    assert statuses == [("lost", "undelivered"), ("later", "delivered")]
    assert "s3cr3t" not in alerter.output()


# -- 5. stalled runs, through the running stall watcher -------------------------------------------


def test_the_alerter_process_fires_stalled_once_for_a_silent_run_and_resolves_when_events_flow(
    settings, engine, slack, tmp_path
):
    stalled_s = 1.0
    rules = {
        "channels": _channels(slack),
        "rules": [
            {
                "name": "stalled",
                "match": {"job": "watched-*"},
                "stalled_seconds": stalled_s,
                "severity": "critical",
                "channels": ["team-slack"],
            }
        ],
    }
    job_rule = {"name": "job-stalled", "stalled_seconds": stalled_s, "channels": ["team-slack"]}
    env = _process_env(settings, rules, _environ(slack), tmp_path)
    stream = EventStream(settings=settings)
    quiet = _epochs("quiet", "watched-quiet", [0.3])
    stream.publish(quiet)
    stream.publish(
        _epochs("done", "watched-done", [0.3])
        + [ev.build(ev.RunFinished, run_id="done", seq=2, status="completed", epochs_completed=1)]
    )
    # Queued, not started: waiting for a worker is not stalling.
    stream.publish([ev.build(ev.RunQueued, run_id="waiting", seq=0, name="watched-waiting", queue="gpu")])
    # A job's own stalled rule (a spec's `alerts:`) is watched like the file's.
    own_queued = ev.build(
        ev.RunQueued, run_id="own", seq=0, name="own-rules", queue="gpu", spec={"alerts": [job_rule]}
    )
    stream.publish([own_queued, *_epochs("own", "own-rules", [0.3], seq0=1)])
    with AlerterProcess(env, tmp_path / "alerter.log"):
        wait_for(
            lambda: {"watched-quiet", "own-rules"} <= {_run_name(t) for t in slack.texts()},
            timeout=20,
            message="stalled alerts for the silent run and for the job with its own stalled rule",
        )
        # A run that goes silent later fires at a later check of the watcher; by then "quiet" has
        # been checked again, still silent, and must not have been alerted twice.
        late = _epochs("late", "watched-late", [0.3])
        stream.publish(late)
        wait_for(lambda: "watched-late" in map(_run_name, slack.texts()), message="the later run stalled")
        stream.publish(
            [
                ev.build(ev.EpochEnd, run_id="quiet", seq=2, epoch=1, metrics={"loss": 0.1}),
                ev.build(ev.RunFinished, run_id="quiet", seq=3, status="completed", epochs_completed=2),
            ]
        )
        wait_for(lambda: any("RESOLVED" in t for t in slack.texts()), timeout=30, message="stalled resolved")

    texts = [t.split(":")[0] for t in slack.texts()]
    assert "watched-waiting" not in " ".join(texts), f"a queued run, not started, is not stalled: {texts}"
    assert "watched-done" not in " ".join(texts), f"a finished run is not stalled: {texts}"
    assert sorted(texts[:2]) == ["🚨 job-stalled FIRING — own-rules", "🚨 stalled FIRING — watched-quiet"]
    assert texts[2:] == ["🚨 stalled FIRING — watched-late", "✅ stalled RESOLVED — watched-quiet"], texts
    [fired] = [r for r in slack.accepted if r["json"]["text"].startswith("🚨 stalled FIRING — watched-quiet")]
    assert fired["at"] - quiet[-1].ts >= stalled_s  # not before the run has been silent that long
    _, fields, text = _slack_message(fired)
    assert fields == {"Run": "watched-quiet (`quiet`)", "Severity": "critical"}
    assert "no event from this run for" in text
    rows = sorted((r.rule, r.run_id, r.state) for r in _alerts(engine))
    assert rows == [
        ("job-stalled", "own", "firing"),
        ("stalled", "late", "firing"),
        ("stalled", "quiet", "firing"),
        ("stalled", "quiet", "resolved"),
    ]
