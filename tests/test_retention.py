"""Stream retention never drops what a consumer group has not acknowledged (real Redis)."""

from __future__ import annotations

import logging

from pipeline.bus import EventStream
from pipeline.config import Settings
from tests.stream_helpers import epoch_events, publish_all


def test_trim_keeps_unacknowledged_events(redis_url, stream_name, tmp_path):
    settings = Settings(redis_url=redis_url, stream=stream_name, home=tmp_path, stream_retention_seconds=0)
    stream = EventStream(settings=settings)
    stream.ensure_group("fast")
    stream.ensure_group("slow")
    publish_all(stream, epoch_events(1, 98))  # 100 events
    fast = stream.read("fast", "f1", count=100, block_ms=None)
    stream.ack("fast", [m.message_id for m in fast])
    slow = stream.read("slow", "s1", count=40, block_ms=None)
    stream.ack("slow", [m.message_id for m in slow[:30]])  # 30 acked, 10 pending, 60 not yet delivered

    assert stream.trim() == 30
    assert stream.client.xlen(stream_name) == 70
    remaining = [m.message_id for m in stream.read("slow", "s1", count=100, block_ms=None, pending=True)]
    assert remaining == [m.message_id for m in slow[30:]]


def test_retention_window_keeps_recent_acknowledged_events(redis_url, stream_name, tmp_path):
    settings = Settings(redis_url=redis_url, stream=stream_name, home=tmp_path, stream_retention_seconds=3600)
    stream = EventStream(settings=settings)
    stream.ensure_group("g")
    publish_all(stream, epoch_events(1, 8))
    stream.ack("g", [m.message_id for m in stream.read("g", "c", count=100, block_ms=None)])
    assert stream.trim() == 0 and stream.client.xlen(stream_name) == 10


def test_memory_cap_trims_loudly_and_is_counted(redis_url, stream_name, tmp_path, caplog):
    settings = Settings(redis_url=redis_url, stream=stream_name, home=tmp_path, stream_max_events=1000)
    stream = EventStream(settings=settings)
    stream.ensure_group("stuck")
    publish_all(stream, epoch_events(3, 498))  # 1500 events, none acknowledged
    with caplog.at_level(logging.ERROR):
        assert stream.trim() == 500
    assert "dropped 500 events" in caplog.text and "FITSTREAM_STREAM_MAX_EVENTS=1000" in caplog.text
    assert stream.forced_trims()["events_dropped"] == 500 and stream.forced_trims()["times"] == 1


def test_running_consumers_trim_on_their_own_schedule_and_status_reports_forced_trims(
    redis_url, stream_name, tmp_path, caplog
):
    import json
    import threading

    from pipeline.consumers.base import ConsumerLoop
    from pipeline.consumers.recorder import Recorder
    from pipeline.db import migrate
    from pipeline.db.session import make_engine
    from tests.conftest import run_cli, settings_env, wait_for

    settings = Settings(
        redis_url=redis_url,
        stream=stream_name,
        home=tmp_path,
        database_url=f"sqlite:///{tmp_path / 'h.db'}",
        stream_retention_seconds=0,
        stream_max_events=1000,
        consumer_block_ms=100,
    )
    migrate.upgrade(settings.database_url)
    engine = make_engine(settings.database_url)
    stream = EventStream(settings=settings)
    stream.ensure_group("recorder")
    stream.ensure_group("stuck")  # a group that never reads: only a forced trim may drop its events
    loop = ConsumerLoop(
        Recorder(engine), EventStream(settings=settings), consumer_name="trimmer", trim_interval_s=0.5
    )
    thread = threading.Thread(target=loop.run, daemon=True)
    publish_all(stream, epoch_events(3, 498))  # 1500 events, before the consumer starts: one forced trim
    with caplog.at_level(logging.ERROR):
        thread.start()
        try:
            wait_for(
                lambda: stream.client.xlen(stream_name) <= 1000,
                timeout=30,
                message="the running recorder trims by itself",
            )
        finally:
            loop.stop_event.set()
            thread.join(timeout=30)
    engine.dispose()
    assert stream.client.xlen(stream_name) == 1000
    assert "dropped 500 events" in caplog.text
    status = json.loads(run_cli("status", "--json", env_extra=settings_env(settings)).stdout)
    assert status["forced_trims"]["events_dropped"] == 500 and status["forced_trims"]["times"] == 1, status[
        "forced_trims"
    ]
    human = run_cli("status", env_extra=settings_env(settings))
    assert "force-trimmed 1 time(s), dropping 500 events" in human.stderr
