"""Redis goes away in the middle of a fit: training completes, and every epoch arrives once."""

from __future__ import annotations

import collections

import keras
import pytest
import redis

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.config import Settings
from tests.conftest import wait_for
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow


def _events_in_stream(url: str, stream: str) -> list[ev.Event]:
    client = redis.Redis.from_url(url)
    return [ev.decode(fields) for _id, fields in client.xrange(stream)]


def test_fit_survives_redis_outage_and_every_epoch_arrives_once(private_redis, tmp_path, stream_name):
    private_redis.start()
    settings = Settings(redis_url=private_redis.url, stream=stream_name, home=tmp_path / "home")
    epochs = 10
    down_at, up_at = 2, 6

    class Outage(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == down_at:
                private_redis.stop()
            if epoch == up_at:
                private_redis.start()

    (x, y), (x_val, y_val) = small_digits()
    publisher = EventPublisher(name="outage", settings=settings, batch_events_every=5, flush_timeout=30)
    history = small_model().fit(
        x, y, validation_data=(x_val, y_val), epochs=epochs, batch_size=32, verbose=0,
        callbacks=[publisher, Outage()],
    )
    assert len(history.history["loss"]) == epochs
    report = publisher.last_report
    assert report is not None and report.complete, report
    assert report.spooled_total > 0, "the outage should have sent events to the disk spool"
    assert not report.spool_path.exists(), "a drained spool is deleted"

    received = _events_in_stream(private_redis.url, stream_name)
    epoch_ends = [e for e in received if e.type == "epoch_end"]
    assert sorted(collections.Counter(e.epoch for e in epoch_ends).items()) == [(e, 1) for e in range(epochs)]
    assert [e.metrics["loss"] for e in sorted(epoch_ends, key=lambda e: e.epoch)] == [float(v) for v in history.history["loss"]]
    # Sent in order: stream order equals sequence order, with no gaps or repeats.
    assert [e.seq for e in received] == list(range(len(received)))
    assert received[0].type == "run_started" and received[-1].type == "run_finished"


def test_redis_down_for_the_whole_fit_spools_everything_for_later(tmp_path, stream_name, private_redis):
    # Nothing listens on the private port yet: the whole run goes to the spool.
    settings = Settings(redis_url=private_redis.url, stream=stream_name, home=tmp_path / "home")
    (x, y), _ = small_digits(200)
    publisher = EventPublisher(name="offline", settings=settings, flush_timeout=0.5)
    small_model().fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[publisher])
    report = publisher.last_report
    assert report is not None and not report.complete
    assert report.left_in_spool == 5  # run_started, 3 × epoch_end, run_finished
    assert report.spool_path.exists()

    private_redis.start()
    from tests.conftest import run_cli

    env = {"FITSTREAM_REDIS_URL": private_redis.url, "FITSTREAM_STREAM": stream_name, "FITSTREAM_HOME": str(settings.home)}
    result = run_cli("spool", "flush", env_extra=env)
    assert "sent 5 spooled events" in result.stderr
    received = wait_for(lambda: _events_in_stream(private_redis.url, stream_name), message="events after flush")
    assert [e.type for e in received] == ["run_started", "epoch_end", "epoch_end", "epoch_end", "run_finished"]
    assert not report.spool_path.exists()
