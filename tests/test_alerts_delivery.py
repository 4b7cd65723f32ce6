"""The alerter against real services: Redis stream, SQL outbox, a Slack-like HTTP server."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import threading

import pytest
import sqlalchemy as sa
import yaml

from alerts.engine import Alerter, Deliverer, build_channels
from alerts.rules import parse_rules
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.consumers.base import ConsumerLoop
from tests.conftest import settings_env, wait_for

WEBHOOK_SECRET = "whsec-very-secret-value"


def _rules_data():
    return {
        "channels": {
            # Faster than Slack's one a second: these tests are about what is delivered, not when.
            "team-slack": {"type": "slack", "url_env": "SLACK_WEBHOOK_URL", "rate_per_minute": 6000},
            "ops": {
                "type": "webhook",
                "url_env": "OPS_WEBHOOK_URL",
                "secret_env": "OPS_WEBHOOK_SECRET",
                "rate_per_minute": 6000,
            },
        },
        "rules": [
            {
                "name": "val-loss-high",
                "match": {"job": "digits-*"},
                "metric": "val_loss",
                "above": 0.5,
                "for_epochs": 2,
                "channels": ["team-slack"],
            },
            {"name": "diverged", "nan": "loss", "channels": ["team-slack"]},
            {"name": "lifecycle", "on": ["early_stopped", "run_failed"], "channels": ["ops"]},
        ],
    }


def _environ(slack, hook):
    return {"SLACK_WEBHOOK_URL": slack.url, "OPS_WEBHOOK_URL": hook.url, "OPS_WEBHOOK_SECRET": WEBHOOK_SECRET}


class AlerterThreads:
    def __init__(self, settings, engine, environ, retry_max_s=30.0):
        rules = parse_rules(_rules_data())
        self.loop = ConsumerLoop(
            Alerter(engine, rules), EventStream(settings=settings), consumer_name="alerter-test"
        )
        self.deliverer = Deliverer(engine, build_channels(rules, environ), retry_max_s=retry_max_s)
        self.threads = [
            threading.Thread(target=self.loop.run, daemon=True),
            threading.Thread(target=self.deliverer.run, daemon=True),
        ]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.loop.stop_event.set()
        self.deliverer.stop_event.set()
        for t in self.threads:
            t.join(timeout=30)


def _run_events(run_id, name, val_losses, losses=None, *, seq0=0):
    out = [ev.build(ev.RunStarted, run_id=run_id, seq=seq0, name=name)]
    for i, v in enumerate(val_losses):
        loss = losses[i] if losses else 0.1
        out.append(
            ev.build(
                ev.EpochEnd, run_id=run_id, seq=seq0 + 1 + i, epoch=i, metrics={"loss": loss, "val_loss": v}
            )
        )
    return out


def _alert_rows(engine):
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT rule, run_id, state, channel, status, attempts, message, last_error FROM alerts ORDER BY id"
            )
        ).all()


def test_threshold_gives_one_firing_and_one_resolved_message(settings, engine, slack, hook):
    stream = EventStream(settings=settings)
    # Crosses 0.5 for two epochs (fires once), stays above (quiet), recovers (resolves once).
    stream.publish(_run_events("r1", "digits-mlp", [0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.2]))
    stream.publish(_run_events("r2", "cifar-net", [0.9, 0.9, 0.9]))  # not matched by digits-*
    with AlerterThreads(settings, engine, _environ(slack, hook)) as running:
        wait_for(lambda: len(slack.accepted) >= 2, message="two Slack messages")
        stream.publish(
            _run_events("r1", "digits-mlp", [0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.2])
        )  # replay: nothing new
        wait_for(lambda: EventStream(settings=settings).groups()[0]["lag"] == 0, message="replay consumed")
    assert running.loop.stats.batch_fallbacks == 0, "batches with several runs must commit in one transaction"
    texts = slack.texts()
    assert len(texts) == 2
    assert (
        texts[0].startswith("🚨 val-loss-high FIRING — digits-mlp")
        and "val_loss = 0.7 is above 0.5 for 2 epochs" in texts[0]
    )
    assert texts[1].startswith("✅ val-loss-high RESOLVED — digits-mlp")
    blocks = slack.accepted[0]["json"]["blocks"]
    assert blocks[0]["type"] == "header" and any(
        "fitstream show r1" in e["text"] for e in blocks[-1]["elements"]
    )
    rows = _alert_rows(engine)
    assert [(r.rule, r.run_id, r.state, r.status, r.attempts) for r in rows] == [
        ("val-loss-high", "r1", "firing", "delivered", 1),
        ("val-loss-high", "r1", "resolved", "delivered", 1),
    ]


def test_nan_alerts_once_and_lifecycle_goes_to_the_signed_webhook(settings, engine, slack, hook):
    stream = EventStream(settings=settings)
    stream.publish(
        _run_events("r3", "exploding", [0.3, 0.3, 0.3, 0.3], losses=[1.0, math.nan, math.nan, math.nan])
    )
    stopped = ev.build(
        ev.EarlyStopped,
        run_id="r3",
        seq=10,
        stopped_epoch=3,
        best_epoch=0,
        best_value=0.3,
        monitor="val_loss",
        mode="min",
    )
    stream.publish([stopped])
    with AlerterThreads(settings, engine, _environ(slack, hook)):
        wait_for(
            lambda: len(slack.accepted) >= 1 and len(hook.accepted) >= 1, message="NaN and lifecycle alerts"
        )
    assert len(slack.accepted) == 1 and "diverged FIRING" in slack.texts()[0]
    request = hook.accepted[0]
    body, headers = request["body"], request["headers"]
    expected = hmac.new(
        WEBHOOK_SECRET.encode(), headers["X-Fitstream-Timestamp"].encode() + b"." + body, hashlib.sha256
    ).hexdigest()
    assert headers["X-Fitstream-Signature"] == "sha256=" + expected
    assert headers["Idempotency-Key"] == f"lifecycle:r3:event-{stopped.id}:firing:ops"
    assert request["json"]["summary"].startswith("early stopping at epoch 3")


def test_429_with_retry_after_is_honoured_and_delivers_once(settings, engine, slack, hook):
    slack.respond(429, {"Retry-After": "1"})
    slack.respond(500)
    EventStream(settings=settings).publish(_run_events("r4", "digits-429", [0.9, 0.9]))
    with AlerterThreads(settings, engine, _environ(slack, hook)):
        wait_for(lambda: len(slack.accepted) == 1, timeout=30, message="delivery after 429 and 500")
    statuses = [r["status"] for r in slack.requests]
    assert statuses == [429, 500, 200]
    assert slack.requests[1]["at"] - slack.requests[0]["at"] >= 0.9  # waited for Retry-After
    assert [r.status for r in _alert_rows(engine)] == ["delivered"]


OUTAGE_S = 20.0


@pytest.mark.slow
def test_receiver_outage_ends_with_every_alert_delivered_once_in_order(
    settings, engine, slack, hook, database_url
):
    if database_url.startswith("postgresql"):
        pytest.skip("an HTTP outage does not depend on the database; run once, on SQLite")
    import time as _time

    stream = EventStream(settings=settings)
    slack.stop()  # connection refused from now on, for OUTAGE_S seconds
    down_at = _time.monotonic()
    with AlerterThreads(settings, engine, _environ(slack, hook), retry_max_s=5.0):
        for i in range(6):
            stream.publish(_run_events(f"out{i}", f"digits-{i}", [0.9, 0.9, 0.1]))
        wait_for(lambda: len(_alert_rows(engine)) == 12, message="12 alerts decided while Slack is down")
        wait_for(
            lambda: any(r.attempts >= 2 for r in _alert_rows(engine)), timeout=60, message="failed attempts"
        )
        rows = _alert_rows(engine)
        assert all(r.status == "pending" for r in rows)
        failed = [r for r in rows if r.attempts]
        assert failed and all("s3cr3t" not in (r.last_error or "") for r in rows)
        assert any("ConnectionError" in (r.last_error or "") for r in failed), [r.last_error for r in failed]
        _time.sleep(max(0.0, OUTAGE_S - (_time.monotonic() - down_at)))
        assert all(r.status == "pending" for r in _alert_rows(engine)), (
            "nothing is given up during the outage"
        )
        slack.start()  # back on the same port
        wait_for(
            lambda: all(r.status == "delivered" for r in _alert_rows(engine)),
            timeout=90,
            message="all delivered after the outage",
        )
    texts = slack.texts()
    assert len(texts) == 12 and len(set(texts)) == 12
    expected = [
        f"{icon} val-loss-high {state} — digits-{i}"
        for i in range(6)
        for icon, state in (("🚨", "FIRING"), ("✅", "RESOLVED"))
    ]
    assert [t.split(":")[0] for t in texts] == expected
    assert all(r.last_error is None for r in _alert_rows(engine))  # cleared when delivered


def test_stalled_run_fires_once_and_resolves_when_events_flow_again(settings, engine, slack, hook):
    data = _rules_data()
    data["rules"] = [{"name": "stalled", "stalled_seconds": 1, "channels": ["team-slack"]}]
    rules = parse_rules(data)
    alerter = Alerter(engine, rules)
    stream = EventStream(settings=settings)
    stream.publish(_run_events("s1", "quiet", [0.3]))
    stream.publish(
        _run_events("s2", "finished", [0.3])
        + [ev.build(ev.RunFinished, run_id="s2", seq=5, status="completed", epochs_completed=1)]
    )
    loop = ConsumerLoop(alerter, stream, consumer_name="stall-test")
    loop.stream.ensure_group("alerter")
    loop.run_once()
    import time as _time

    now = _time.time()
    assert alerter.check_stalled(now) == 0  # not silent long enough yet
    assert alerter.check_stalled(now + 5) == 1  # s1 is silent; s2 has finished
    assert alerter.check_stalled(now + 10) == 0  # still the same incident: no repeat
    stream.publish([ev.build(ev.EpochEnd, run_id="s1", seq=9, epoch=1, metrics={"loss": 0.1})])
    loop.run_once()
    deliverer = Deliverer(engine, build_channels(rules, _environ(slack, hook)))
    wait_for(
        lambda: deliverer.deliver_once() == 0 and len(slack.accepted) == 2,
        message="stalled + resolved delivered",
    )
    texts = slack.texts()
    assert texts[0].startswith("🚨 stalled FIRING — quiet") and "no event from this run" in texts[0]
    assert texts[1].startswith("✅ stalled RESOLVED — quiet")


def test_rules_attached_to_a_job_spec_apply_to_its_runs_only(
    settings, engine, slack, hook, tmp_path, redis_url, stream_name
):
    from pipeline.jobs import load_spec_text
    from workers.submit import check_job_alerts

    job_rule = {"name": "job-acc-low", "metric": "val_accuracy", "below": 0.9, "channels": ["team-slack"]}
    spec = {"name": "attached", "queue": "gpu"}
    stream = EventStream(settings=settings)
    stream.publish(
        [
            ev.build(
                ev.RunQueued,
                run_id="j1",
                seq=0,
                name="attached",
                queue="gpu",
                spec={**spec, "alerts": [job_rule]},
            )
        ]
    )
    for run_id in ("j1", "j2"):  # j2 has no such rule
        stream.publish(
            [
                ev.build(
                    ev.EpochEnd,
                    run_id=run_id,
                    seq=1,
                    epoch=0,
                    metrics={"loss": 0.1, "val_loss": 0.1, "val_accuracy": 0.5},
                )
            ]
        )
    with AlerterThreads(settings, engine, _environ(slack, hook)):
        wait_for(lambda: len(slack.accepted) == 1, message="the job's own rule fired")
    assert slack.texts()[0].startswith("🚨 job-acc-low FIRING — attached")
    assert [r.run_id for r in _alert_rows(engine)] == ["j1"]

    # `fitstream submit` checks a job's rules before anything is queued.
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(_rules_data()))
    base = "name: x\nmodel: examples.digits:build_model\ndata: examples.digits:load_data\n"
    good = load_spec_text(base + "alerts: [{name: mine, nan: loss, channels: [team-slack]}]\n")
    check_job_alerts(good, settings.model_copy(update={"alert_rules": rules_path}))
    from pipeline.jobs import JobSpecError

    for text, expected in [
        ("alerts: [{name: mine, nan: loss, channels: [pager]}]\n", "unknown channel(s) pager"),
        ("alerts: [{name: diverged, nan: loss, channels: [team-slack]}]\n", "already used"),
        ("alerts: [{name: mine, channels: [team-slack]}]\n", "exactly one condition"),
    ]:
        with pytest.raises(JobSpecError, match=None) as info:
            check_job_alerts(
                load_spec_text(base + text), settings.model_copy(update={"alert_rules": rules_path})
            )
        assert expected in str(info.value)
    with pytest.raises(JobSpecError, match="FITSTREAM_ALERT_RULES is not set"):
        check_job_alerts(good, settings.model_copy(update={"alert_rules": None}))


def test_alerts_test_and_list_commands(settings, engine, slack, hook, tmp_path):
    from tests.conftest import run_cli

    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(_rules_data()))
    env = {**settings_env(settings), **_environ(slack, hook), "FITSTREAM_ALERT_RULES": str(rules_path)}
    result = run_cli("alerts", "test", "team-slack", env_extra=env)
    assert "sent a test message to team-slack" in result.stderr
    assert len(slack.accepted) == 1 and "(test)" in slack.accepted[0]["json"]["blocks"][0]["text"]["text"]
    unknown = run_cli("alerts", "test", "pager", env_extra=env, check=False)
    assert unknown.returncode == 1 and "unknown channel 'pager'" in unknown.stderr
    slack.stop()
    down = run_cli("alerts", "test", "team-slack", env_extra=env, check=False)
    assert down.returncode == 1 and "delivery failed" in down.stderr and "s3cr3t" not in down.stderr
    missing = run_cli(
        "alerts", "test", "team-slack", env_extra={**env, "FITSTREAM_ALERT_RULES": ""}, check=False
    )
    assert missing.returncode == 1 and "FITSTREAM_ALERT_RULES" in missing.stderr

    EventStream(settings=settings).publish(_run_events("l1", "digits-list", [0.9, 0.9]))
    slack.start()
    with AlerterThreads(settings, engine, _environ(slack, hook)):
        wait_for(lambda: len(slack.accepted) == 2, message="one alert delivered")
    listed = json.loads(run_cli("alerts", "list", "--state", "firing", "--json", env_extra=env).stdout)
    assert [(a["rule"], a["run_id"], a["state"], a["status"], a["attempts"]) for a in listed] == [
        ("val-loss-high", "l1", "firing", "delivered", 1)
    ]


def test_channels_read_their_url_and_secret_from_secrets_files(settings, hook, tmp_path):
    # Docker / Kubernetes secrets: one file each, mounted read-only; the rules file names the files only.
    from tests.conftest import run_cli

    (tmp_path / "ops_url").write_text(hook.url + "\n")
    (tmp_path / "ops_secret").write_text(WEBHOOK_SECRET + "\n")
    rules = {
        "channels": {
            "ops": {
                "type": "webhook",
                "url_file": str(tmp_path / "ops_url"),
                "secret_file": str(tmp_path / "ops_secret"),
            }
        },
        "rules": [{"name": "life", "on": ["run_failed"], "channels": ["ops"]}],
    }
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(rules))
    env = {**settings_env(settings), "FITSTREAM_ALERT_RULES": str(rules_path)}
    result = run_cli("alerts", "test", "ops", env_extra=env)
    assert "sent a test message to ops" in result.stderr and len(hook.accepted) == 1
    request = hook.accepted[0]
    headers = request["headers"]
    expected = hmac.new(
        WEBHOOK_SECRET.encode(),
        headers["X-Fitstream-Timestamp"].encode() + b"." + request["body"],
        hashlib.sha256,
    ).hexdigest()
    assert headers["X-Fitstream-Signature"] == "sha256=" + expected
    assert (
        WEBHOOK_SECRET not in result.stderr + result.stdout and hook.url not in result.stderr + result.stdout
    )

    (tmp_path / "ops_secret").unlink()
    missing = run_cli("alerts", "test", "ops", env_extra=env, check=False)
    said = " ".join(missing.stderr.split())  # the error printer wraps long lines
    assert (
        missing.returncode == 1
        and f"channel 'ops': cannot read its secret from {tmp_path / 'ops_secret'}: No such file" in said
    )
    rules["channels"]["ops"]["url_env"] = "OPS_WEBHOOK_URL"  # two sources for one URL
    rules_path.write_text(yaml.safe_dump(rules))
    both = run_cli("alerts", "test", "ops", env_extra=env, check=False)
    assert both.returncode == 1 and "exactly one of url_env (a variable) or url_file" in " ".join(
        both.stderr.split()
    )


class DyingAlerter(Alerter):
    """Dies (the thread ends, as a killed process would) in its third batch, before committing it."""

    calls = 0

    def handle(self, batch):
        self.calls += 1
        if self.calls == 3:
            raise SystemExit("killed mid-batch")
        super().handle(batch)


def test_two_alerters_in_one_group_alert_each_incident_once_in_order(settings, engine):
    # Events of one run must meet the rule state machine in order; two alerters reading one group
    # must not split a run's events between them: one leads, the other stands by, and takes over
    # the dead leader's unfinished batch before anything newer.
    stream = EventStream(settings=settings)
    stream.ensure_group("alerter")
    runs = [f"pair-{i:02d}" for i in range(20)]
    values = [0.4, 0.6, 0.7, 0.8, 0.9, 0.3, 0.2]  # fires at epoch 2 (2 epochs above 0.5), resolves at epoch 5
    by_run = {run_id: _run_events(run_id, f"digits-{run_id}", values) for run_id in runs}
    for step in range(len(values) + 1):  # interleaved, as concurrent trainings publish
        stream.publish([by_run[run_id][step] for run_id in runs])
    rules = parse_rules(_rules_data())
    left = ConsumerLoop(
        DyingAlerter(engine, rules), EventStream(settings=settings), consumer_name="left", batch_size=7
    )
    right = ConsumerLoop(
        Alerter(engine, rules), EventStream(settings=settings), consumer_name="right", batch_size=7
    )

    def run_until_killed(loop):
        try:
            loop.run()
        except SystemExit:
            pass  # what a SIGKILL leaves: the batch read, not acknowledged

    threads = {
        loop.consumer_name: threading.Thread(target=run_until_killed, args=(loop,), daemon=True)
        for loop in (left, right)
    }
    threads["left"].start()
    wait_for(lambda: left.handler.calls >= 1, message="left leads")  # right starts as a standby
    threads["right"].start()
    try:
        wait_for(
            lambda: (g := stream.groups()[0])["lag"] == 0 and g["pending"] == 0,
            timeout=60,
            message="all events consumed",
        )
    finally:
        for loop in (left, right):
            loop.stop_event.set()
        for thread in threads.values():
            thread.join(timeout=30)
    assert left.handler.calls == 3 and left.stats.batches == 2, "left died in its third batch"
    assert right.stats.reclaimed >= 1, "right took over left's unfinished batch"
    rows = [r for r in _alert_rows(engine) if r.rule == "val-loss-high"]
    for run_id in runs:
        mine = [(r.state, json.loads(r.message)["epoch"]) for r in rows if r.run_id == run_id]
        assert mine == [("firing", 2), ("resolved", 5)], f"{run_id}: {mine}"
