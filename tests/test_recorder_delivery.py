"""The recorder's delivery guarantees against a real Redis and real databases:
SIGKILL mid-stream, replays, several recorders in one group, malformed payloads."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import redis
import sqlalchemy as sa

from pipeline import events as ev
from pipeline.bus import EventStream
from tests.conftest import REPO, RecorderThread, settings_env, wait_for
from tests.stream_helpers import RECORDED_EVENT_COUNT, epoch_events, publish_all


def _count(engine, table: str) -> int:
    """Rows of ``table``; ``"events"`` counts every event recorded (lifecycle rows and epochs rows)."""
    with engine.connect() as conn:
        if table == "events":
            return conn.execute(sa.text(RECORDED_EVENT_COUNT)).scalar()
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar()


def _start_recorder(settings, name: str, *extra: str) -> subprocess.Popen:
    env = {**os.environ, **settings_env(settings)}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "recorder", "--name", name, *extra],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_recorder_killed_mid_stream_then_restarted_records_everything_once(settings, engine):
    runs, epochs, metrics = 40, 100, 5
    items = epoch_events(runs, epochs, metrics)
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")
    publish_all(stream, items)
    expected_metric_rows = runs * epochs * metrics

    first = _start_recorder(settings, "doomed", "--batch-size", "200")
    wait_for(lambda: _count(engine, "events") > 0, timeout=60, interval=0.02, message="first rows")
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    recorded_before = _count(engine, "events")
    assert 0 < recorded_before < len(items), "the kill should land mid-stream"
    pending = stream.client.xpending(settings.stream, "recorder")["pending"]

    # A new recorder (another name) reclaims what the dead one held and finishes the stream.
    second = _start_recorder(settings, "survivor", "--claim-idle-ms", "500", "--exit-when-idle", "3")
    _out, err = second.communicate(timeout=180)
    assert second.returncode == 0, err
    assert _count(engine, "events") == len(items)
    assert _count(engine, "epoch_metrics") == expected_metric_rows
    assert _count(engine, "epochs") == runs * epochs
    with engine.connect() as conn:
        statuses = conn.execute(sa.text("SELECT status, count(*) FROM runs GROUP BY status")).all()
        assert statuses == [("completed", runs)]
        assert set(conn.execute(sa.text("SELECT epochs_completed FROM runs")).scalars()) == {epochs}
    assert stream.client.xpending(settings.stream, "recorder")["pending"] == 0
    reclaimed = re.search(r"(\d+) reclaimed", err)
    assert reclaimed is not None and int(reclaimed.group(1)) == pending, err  # exactly what the dead one held


def test_replaying_events_creates_no_duplicates_and_order_does_not_matter(settings, engine):
    items = epoch_events(3, 5, 3)
    stream = EventStream(settings=settings)
    # Newest first, then everything again in order: same result as a single in-order pass.
    publish_all(stream, list(reversed(items)) + items)
    with RecorderThread(settings, engine) as running:
        wait_for(
            lambda: stream.groups() and stream.groups()[0]["lag"] == 0 and stream.groups()[0]["pending"] == 0,
            message="stream drained",
        )
    assert running.loop.stats.batch_fallbacks == 0, "batches with several runs must commit in one transaction"
    assert _count(engine, "events") == len(items)
    assert _count(engine, "epoch_metrics") == 3 * 5 * 3
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT run_id, status, epochs_completed, name FROM runs ORDER BY run_id")
        ).all()
    assert [(r.status, r.epochs_completed) for r in rows] == [("completed", 5)] * 3
    assert all(r.name.startswith("synthetic-") for r in rows)


def test_a_large_replayed_batch_is_written_once_and_the_new_rows_beside_it_too(
    settings, engine, database_url, monkeypatch
):
    """Large batches go straight into the keyed tables (PostgreSQL: COPY). A batch that meets rows
    already there — a replay, a reclaimed batch — takes the slower, conflict-skipping path for that
    table, in the same transaction: every row once, the new ones included."""
    from pipeline.db import bulk

    copied: list[str] = []
    real_copy = bulk._copy
    monkeypatch.setattr(
        bulk,
        "_copy",
        lambda cursor, table, cols, rows: (copied.append(table), real_copy(cursor, table, cols, rows)),
    )
    first = epoch_events(30, 10, 4)  # 30 runs × 10 epochs × 4 metrics = 1,200 metric rows
    later = epoch_events(40, 10, 4)[len(first) :]  # 10 more runs
    stream = EventStream(settings=settings)
    with RecorderThread(settings, engine):
        publish_all(stream, first)
        wait_for(lambda: _count(engine, "epoch_metrics") == 1200, message="the first batch recorded")
    # The same events again, with new ones mixed in, waiting in the stream: one read, one transaction.
    mixed = [item for pair in zip(first, later) for item in pair] + first[len(later) :]
    publish_all(stream, mixed)
    running = RecorderThread(settings, engine)
    running.loop.batch_size = 10_000
    with running:
        wait_for(
            lambda: _count(engine, "epoch_metrics") == 1600, message="the new runs recorded beside the replay"
        )
        wait_for(
            lambda: stream.groups()[0]["pending"] == 0 and stream.groups()[0]["lag"] == 0,
            message="stream drained",
        )
    assert running.loop.stats.batches == 1
    assert running.loop.stats.batch_fallbacks == 0 and running.loop.stats.dead_lettered == 0
    assert _count(engine, "events") == len(first) + len(later)
    assert _count(engine, "epochs") == 400
    with engine.connect() as conn:
        assert (
            conn.execute(
                sa.text("SELECT count(DISTINCT run_id) FROM runs WHERE status = 'completed'")
            ).scalar()
            == 40
        )
    if database_url.startswith("postgresql"):
        # The replayed batch did meet its rows in epoch_metrics, and went through the staging table.
        assert "_fitstream_stage_epoch_metrics" in copied and copied.count("epoch_metrics") >= 2, copied


def test_several_recorders_in_one_group_share_the_work(settings, engine):
    items = epoch_events(20, 50, 2)
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")
    publish_all(stream, items)
    a, b = RecorderThread(settings, engine, "rec-a"), RecorderThread(settings, engine, "rec-b")
    a.loop.batch_size = b.loop.batch_size = 50
    with a, b:
        wait_for(lambda: _count(engine, "events") == len(items), timeout=60, message="all events recorded")
    assert a.loop.stats.processed > 0 and b.loop.stats.processed > 0
    assert a.loop.stats.processed + b.loop.stats.processed == len(items)
    assert _count(engine, "epoch_metrics") == 20 * 50 * 2


def test_malformed_payloads_are_dead_lettered_with_reasons(settings, engine):
    valid = epoch_events(10, 20, 2)  # 220 valid events
    stream = EventStream(settings=settings)
    client: redis.Redis = stream.client
    good = [ev.encode(e) for e in valid]
    bad_kinds = [
        {"event": "{not json"},
        {"v": "1", "event": '{"v": 99, "type": "epoch_end"}'},
        {"v": "1", "event": '{"v": 1, "type": "epoch_end", "id": "x", "run_id": "r", "seq": 1, "ts": 1}'},
        {"v": "1", "event": '{"v": 1, "type": "mystery", "id": "x", "run_id": "r", "seq": 1, "ts": 1}'},
        {"something": "else"},
        {"v": "1", "event": "[1, 2, 3]"},
    ]
    pipe = client.pipeline(transaction=False)
    bad_sent = 0
    for i in range(1000):
        pipe.xadd(settings.stream, bad_kinds[i % len(bad_kinds)])
        bad_sent += 1
        if i % 4 == 0 and i // 4 < len(good):
            pipe.xadd(settings.stream, good[i // 4])
    for item in good[250:]:
        pipe.xadd(settings.stream, item)
    pipe.execute()

    with RecorderThread(settings, engine) as rec:
        wait_for(
            lambda: rec.loop.stats.processed + rec.loop.stats.dead_lettered == len(good) + bad_sent,
            message="all messages handled",
        )
    assert _count(engine, "events") == len(valid)
    assert stream.dead_letter_count("recorder") == bad_sent
    dead = client.xrange(stream.dead_letter_stream)
    assert len(dead) == bad_sent
    reasons = [fields[b"reason"].decode() for _id, fields in dead]
    assert sum("not valid JSON" in r for r in reasons) == 167
    assert sum("unknown schema version 99" in r for r in reasons) == 167
    assert sum("invalid epoch_end event" in r and "epoch: Field required" in r for r in reasons) == 167
    assert sum("unknown event type 'mystery'" in r for r in reasons) == 167
    assert sum("no 'event' field" in r for r in reasons) == 166
    assert sum("must be a JSON object" in r for r in reasons) == 166
    # The original payload travels with the reason, so nothing is lost.
    assert all(any(k.startswith(b"orig.") for k in fields) for _id, fields in dead)
    assert stream.client.xpending(settings.stream, "recorder")["pending"] == 0


def test_consume_all_runs_the_recorder_and_stops_cleanly_on_sigterm(settings, engine):
    items = epoch_events(2, 5, 2)
    stream = EventStream(settings=settings)
    publish_all(stream, items)
    env = {**os.environ, **settings_env(settings)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli.main", "consume", "all"],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: _count(engine, "events") == len(items),
            timeout=60,
            message="events recorded by consume all",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "recorder" in err
