"""Faults 8 and 9: the webhook receiver fails for 30 s (500s, then 429 with Retry-After, then
answers that never come), and the alerter is SIGKILLed between recording an alert and sending it.

The ledger's columns count alerts here: published = alerts decided, recorded = delivered,
duplicated = requests the receiver took more than once for one Idempotency-Key.
"""

from __future__ import annotations

import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import redis
import sqlalchemy as sa
import yaml

from pipeline.bus import EventStream
from tests.conftest import REPO, settings_env, wait_for
from tests.faults.conftest import FaultRow
from tests.test_alerts_delivery import (
    WEBHOOK_SECRET,
    AlerterThreads,
    _alert_rows,
    _environ,
    _rules_data,
    _run_events,
)

pytestmark = pytest.mark.slow
KEY_HEADER = "X-Fitstream-Idempotency-Key"


def taken_per_key(server) -> collections.Counter:
    """How many times the receiver took (answered 200 to, or processed) each alert."""
    with server.lock:
        return collections.Counter(
            r["headers"].get(KEY_HEADER) for r in server.requests if r["status"] == 200
        )


def test_webhook_failing_for_30_seconds_delivers_every_alert_once_afterwards(
    settings, engine, slack, hook, database_url, ledger
):
    if database_url.startswith("postgresql"):
        pytest.skip("an HTTP failure does not depend on the database; run once, on SQLite")
    stream = EventStream(settings=settings)
    phases = [
        (500, {}, False),
        (429, {"Retry-After": "2"}, False),
        (200, {}, True),
    ]  # 10 s each; the last hangs 12 s
    slack.answer_all(*phases[0][:2])
    started = time.monotonic()
    with AlerterThreads(settings, engine, _environ(slack, hook), retry_max_s=3.0):
        for i in range(6):
            stream.publish(_run_events(f"fail{i}", f"digits-{i}", [0.9, 0.9, 0.1]))
        wait_for(lambda: len(_alert_rows(engine)) == 12, message="12 alerts decided while the receiver fails")
        for index, (status, headers, hang) in enumerate(phases[1:], start=1):
            time.sleep(max(0.0, started + 10 * index - time.monotonic()))
            slack.answer_all(status, headers, delay=12.0 if hang else 0.0, hang=hang)
        time.sleep(max(0.0, started + 30 - time.monotonic()))
        assert all(r.status == "pending" for r in _alert_rows(engine)), (
            "nothing is delivered or given up while it fails"
        )
        slack.answer_all(200)
        wait_for(
            lambda: all(r.status == "delivered" for r in _alert_rows(engine)),
            timeout=90,
            message="all delivered afterwards",
        )
    answers = collections.Counter(r["status"] for r in slack.requests)
    assert answers[500] and answers[429] and answers["hung"], answers
    texts = slack.texts()
    expected = [
        f"{icon} val-loss-high {state} — digits-{i}"
        for i in range(6)
        for icon, state in (("🚨", "FIRING"), ("✅", "RESOLVED"))
    ]
    assert [t.split(":")[0] for t in texts] == expected, "every alert once, in order"
    per_key = taken_per_key(slack)
    ledger.append(
        FaultRow(
            "8. webhook 500 → 429 → timeouts for 30 s",
            12,
            len(texts),
            12 - len(set(per_key)),
            sum(n - 1 for n in per_key.values()),
            stream.client.xlen(stream.dead_letter_stream),
            note=f"alerts; receiver answered {dict(answers)}",
        )
    )
    assert sorted(per_key.values()) == [1] * 12


def _start_alerter(env, name, log):
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "alerter", "--name", name],
        env=env,
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _alerter_env(settings, slack, hook, tmp_path):
    rules_path = tmp_path / "rules.yaml"
    rules_path.write_text(yaml.safe_dump(_rules_data()))
    return {
        **os.environ,
        **settings_env(settings),
        **_environ(slack, hook),
        "FITSTREAM_ALERT_RULES": str(rules_path),
    }


def test_alerter_killed_between_deciding_and_sending_loses_and_repeats_nothing(
    settings, engine, slack, hook, tmp_path, ledger
):
    env = _alerter_env(settings, slack, hook, tmp_path)
    slack.stop()  # decided but not deliverable
    stream = EventStream(settings=settings)
    for i in range(3):
        stream.publish(_run_events(f"k{i}", f"digits-k{i}", [0.9, 0.9, 0.2]))
    log_path = tmp_path / "alerter.log"
    with open(log_path, "wb") as log:
        first = _start_alerter(env, "a1", log)
        wait_for(lambda: len(_alert_rows(engine)) == 6, timeout=60, message="6 alerts decided")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        slack.start()
        second = _start_alerter(env, "a2", log)
        try:
            wait_for(
                lambda: all(r.status == "delivered" for r in _alert_rows(engine)),
                timeout=90,
                message="delivered after restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    assert len(_alert_rows(engine)) == 6
    assert sorted(slack.texts()) == sorted(set(slack.texts())) and len(slack.texts()) == 6
    per_key = taken_per_key(slack)
    ledger.append(
        FaultRow(
            f"9a. alerter SIGKILLed before sending ({engine.dialect.name})",
            6,
            len(slack.texts()),
            6 - len(per_key),
            sum(n - 1 for n in per_key.values()),
            stream.client.xlen(stream.dead_letter_stream),
            note="alerts",
        )
    )
    assert sorted(per_key.values()) == [1] * 6

    # Secrets appear in no log line, event or row.
    secrets = [slack.url, "s3cr3t-token", hook.url, WEBHOOK_SECRET]
    logged = log_path.read_text(errors="replace")
    assert "alerter a1" in logged
    client = redis.Redis.from_url(settings.redis_url)
    stored = json.dumps([[str(f) for f in fields.values()] for _i, fields in client.xrange(settings.stream)])
    with engine.connect() as conn:
        dumped = json.dumps(
            [
                [str(v) for v in row]
                for table in ("alerts", "alert_state", "alert_runs")
                for row in conn.execute(sa.text(f"SELECT * FROM {table}"))
            ]
        )
    for secret in secrets:
        assert secret not in logged and secret not in stored and secret not in dumped


def test_alerter_killed_while_its_post_is_in_flight_repeats_it_once_with_the_same_key(
    settings, engine, slack, hook, tmp_path, ledger
):
    """The receiver took the POST but the answer never reached the alerter: on restart the alert is
    sent again — one repeat at most, carrying the same Idempotency-Key, so a receiver drops it."""
    env = _alerter_env(settings, slack, hook, tmp_path)
    slack.respond(200, delay=5.0)  # the first POST is taken, and answered only after the kill
    stream = EventStream(settings=settings)
    stream.publish(_run_events("inflight", "digits-inflight", [0.9, 0.9, 0.2]))
    with open(tmp_path / "alerter.log", "wb") as log:
        first = _start_alerter(env, "a1", log)
        wait_for(lambda: len(slack.requests) == 1, timeout=60, message="the first POST in flight")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        time.sleep(5.5)  # the receiver finishes processing it; nobody hears the answer
        second = _start_alerter(env, "a2", log)
        try:
            wait_for(
                lambda: (
                    all(r.status == "delivered" for r in _alert_rows(engine))
                    and len(_alert_rows(engine)) == 2
                ),
                timeout=90,
                message="delivered after restart",
            )
        finally:
            second.send_signal(signal.SIGTERM)
            second.wait(timeout=30)
    per_key = taken_per_key(slack)
    firing_key = slack.requests[0]["headers"][KEY_HEADER]
    assert per_key[firing_key] == 2, "the in-flight alert is sent once more, after the restart"
    assert len(per_key) == 2 and sum(per_key.values()) == 3, per_key
    assert [r["headers"][KEY_HEADER] for r in slack.requests].count(firing_key) == 2
    ledger.append(
        FaultRow(
            f"9b. alerter SIGKILLed, POST in flight ({engine.dialect.name})",
            2,
            2,
            0,
            sum(n - 1 for n in per_key.values()),
            stream.client.xlen(stream.dead_letter_stream),
            note="alerts; the repeat carries the same Idempotency-Key",
        )
    )
