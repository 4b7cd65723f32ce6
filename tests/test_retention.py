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
    assert stream.forced_trims()["events_dropped"] == "500"
