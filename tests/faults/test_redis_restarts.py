"""Faults 4, 5 and 6: Redis goes away during a real fit.

4. Redis with its append-only file is SIGKILLed mid-fit and restarted: the fit finishes and every
   epoch is recorded in SQL once.
5. Redis without persistence restarts empty mid-fit: the recorder recreates its group and records
   everything published after it; the publisher reconnects.
6. Redis is down for the whole fit: every event waits in the disk spool and arrives, in order,
   after ``fitstream spool flush``.
"""

from __future__ import annotations

import collections

import keras
import pytest
import redis
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db import migrate
from pipeline.db.session import make_engine
from tests.conftest import REPO, PrivateRedis, RecorderThread, run_cli, wait_for
from tests.faults.conftest import count_recorded, wait_recorded
from tests.stream_helpers import RECORDED_EVENT_IDS
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow


def events_in_stream(url: str, stream: str) -> list[ev.Event]:
    client = redis.Redis.from_url(url)
    return [ev.decode(fields) for _id, fields in client.xrange(stream)]


def recorded_epochs(engine: sa.Engine, run_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT epoch FROM epochs WHERE run_id = :r ORDER BY epoch"), {"r": run_id}
            ).scalars()
        )


def batch_steps(engine: sa.Engine, run_id: str) -> list[int]:
    with engine.connect() as conn:
        return list(
            conn.execute(
                sa.text("SELECT step FROM batch_metrics WHERE run_id = :r AND name = 'loss' ORDER BY step"),
                {"r": run_id},
            ).scalars()
        )


def event_ids(engine: sa.Engine) -> list[str]:
    with engine.connect() as conn:
        return list(conn.execute(sa.text(RECORDED_EVENT_IDS)).scalars())


@pytest.fixture
def history_engine(database_url):
    migrate.upgrade(database_url)
    engine = make_engine(database_url)
    yield engine
    engine.dispose()


def fault_settings(server: PrivateRedis, database_url: str, stream_name: str, tmp_path) -> Settings:
    return Settings(
        redis_url=server.url,
        database_url=database_url,
        stream=stream_name,
        home=tmp_path / "home",
        claim_idle_ms=1000,
        consumer_block_ms=100,
    )


def test_redis_killed_and_restarted_from_its_aof_mid_fit_records_every_epoch_once(
    private_redis, tmp_path, stream_name, database_url, history_engine, ledger
):
    private_redis.start()
    settings = fault_settings(private_redis, database_url, stream_name, tmp_path)
    epochs, down_at, up_at = 10, 2, 6

    class Crash(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == down_at:
                private_redis.kill()
            if epoch == up_at:
                private_redis.start()

    (x, y), (x_val, y_val) = small_digits()
    publisher = EventPublisher(name="outage", settings=settings, batch_events_every=5, flush_timeout=30)
    with RecorderThread(settings, history_engine) as recorder:
        history = small_model().fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=32,
            verbose=0,
            callbacks=[publisher, Crash()],
        )
        report = publisher.last_report
        received = events_in_stream(private_redis.url, stream_name)
        # batch_end events are recorded as batch_metrics rows (one per metric and step), the rest by id.
        batches = [e for e in received if e.type == "batch_end"]
        by_id = [e for e in received if e.type != "batch_end"]
        wait_recorded(history_engine, len(by_id), timeout=60)
        wait_for(
            lambda: batch_steps(history_engine, publisher.run_id) == sorted(e.step for e in batches),
            timeout=60,
            message="every batch_end recorded",
        )
    assert len(history.history["loss"]) == epochs
    assert report is not None and report.complete, report
    assert report.spooled_total > 0, "the outage should have sent events to the disk spool"
    assert not report.spool_path.exists(), "a drained spool is deleted"

    epoch_ends = [e for e in received if e.type == "epoch_end"]
    assert sorted(collections.Counter(e.epoch for e in epoch_ends).items()) == [(e, 1) for e in range(epochs)]
    assert [e.metrics["loss"] for e in sorted(epoch_ends, key=lambda e: e.epoch)] == [
        float(v) for v in history.history["loss"]
    ]
    assert [e.seq for e in received] == list(range(len(received))), "sent in order, no gaps or repeats"
    assert recorded_epochs(history_engine, publisher.run_id) == list(range(epochs))

    stream = EventStream(settings=settings)
    row = count_recorded(
        history_engine,
        stream,
        f"4. Redis (AOF) SIGKILLed + restarted mid-fit ({history_engine.dialect.name})",
        (e.id for e in by_id),
        note=f"{report.spooled_total} events spooled while down; "
        f"{len(batches)} batch_end as batch_metrics rows",
    )
    ledger.append(row)
    assert len(received) == report.sent and batches
    assert (row.published, row.recorded, row.lost, row.duplicated, row.dead_lettered) == (
        len(by_id),
        len(by_id),
        0,
        0,
        0,
    )
    assert recorder.loop.stats.dead_lettered == 0


def test_redis_restarted_empty_mid_fit_consumers_recreate_their_group_and_record_what_follows(
    tmp_path, stream_name, database_url, history_engine, ledger
):
    server = PrivateRedis(tmp_path / "redis", persistent=False)
    server.start()
    settings = fault_settings(server, database_url, stream_name, tmp_path)
    epochs, restart_at = 8, 3
    published_before: list[str] = []

    class RestartEmpty(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == restart_at:
                # Everything published so far was recorded; then Redis loses it all.
                before = [e.id for e in events_in_stream(server.url, stream_name)]
                wait_recorded(history_engine, len(before), timeout=60)
                published_before.extend(before)
                server.kill()
                server.start()

    (x, y), (x_val, y_val) = small_digits(400)
    publisher = EventPublisher(name="amnesia", settings=settings, flush_timeout=30)
    try:
        with RecorderThread(settings, history_engine) as recorder:
            small_model().fit(
                x,
                y,
                validation_data=(x_val, y_val),
                epochs=epochs,
                batch_size=64,
                verbose=0,
                callbacks=[RestartEmpty(), publisher],
            )
            after = [e.id for e in events_in_stream(server.url, stream_name)]
            wait_for(
                lambda: set(after) <= set(event_ids(history_engine)),
                timeout=60,
                message="what followed the restart recorded",
            )
        report = publisher.last_report
        assert report is not None and report.complete, report
        assert recorder.loop.stats.groups_recreated >= 1, "the recorder met NOGROUP and recreated its group"
        assert recorded_epochs(history_engine, publisher.run_id) == list(range(epochs))
        with history_engine.connect() as conn:
            status = conn.execute(
                sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": publisher.run_id}
            ).scalar()
        assert status == "completed"
        stream = EventStream(settings=settings)
        row = count_recorded(
            history_engine,
            stream,
            f"5. Redis restarted empty mid-fit ({history_engine.dialect.name})",
            published_before + after,
            note=f"group recreated {recorder.loop.stats.groups_recreated}×",
        )
        ledger.append(row)
        assert (row.recorded, row.lost, row.duplicated, row.dead_lettered) == (report.sent, 0, 0, 0)
        assert recorder.loop.stats.dead_lettered == 0
    finally:
        server.stop()


def test_redis_down_for_the_whole_fit_spools_everything_for_later(
    tmp_path, stream_name, private_redis, database_url, history_engine, ledger
):
    # Nothing listens on the private port yet: the whole run goes to the spool.
    settings = fault_settings(private_redis, database_url, stream_name, tmp_path)
    (x, y), _ = small_digits(200)
    publisher = EventPublisher(name="offline", settings=settings, flush_timeout=0.5)
    small_model().fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[publisher])
    report = publisher.last_report
    assert report is not None and not report.complete
    assert report.left_in_spool == 5  # run_started, 3 × epoch_end, run_finished
    assert report.spool_path.exists()

    private_redis.start()
    env = {
        "FITSTREAM_REDIS_URL": private_redis.url,
        "FITSTREAM_STREAM": stream_name,
        "FITSTREAM_HOME": str(settings.home),
    }
    result = run_cli("spool", "flush", env_extra=env)
    assert "sent 5 spooled events" in result.stderr
    received = wait_for(
        lambda: events_in_stream(private_redis.url, stream_name), message="events after flush"
    )
    assert [e.type for e in received] == [
        "run_started",
        "epoch_end",
        "epoch_end",
        "epoch_end",
        "run_finished",
    ]
    assert not report.spool_path.exists()
    with RecorderThread(settings, history_engine):
        wait_recorded(history_engine, 5, timeout=60)
    row = count_recorded(
        history_engine,
        EventStream(settings=settings),
        f"6. Redis down for a whole fit ({history_engine.dialect.name})",
        (e.id for e in received),
        note="spooled on disk, flushed after",
    )
    ledger.append(row)
    assert (row.published, row.recorded, row.lost, row.duplicated, row.dead_lettered) == (5, 5, 0, 0, 0)
    assert recorded_epochs(history_engine, received[0].run_id) == [0, 1, 2]


def test_a_worker_takes_jobs_again_after_redis_restarts_empty(
    tmp_path, stream_name, database_url, history_engine, queue_name, ledger
):
    if database_url.startswith("postgresql"):
        pytest.skip("the broker's reconnection does not depend on the database; checked once, on SQLite")
    from tests.conftest import WorkerProcess, settings_env
    from tests.test_workers import _spec, _submit

    server = PrivateRedis(tmp_path / "redis", persistent=False)
    server.start()
    settings = fault_settings(server, database_url, stream_name, tmp_path)
    env = {
        **settings_env(settings),
        "FITSTREAM_ALLOWED_MODULES": "tests",
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    worker = WorkerProcess(env, queue_name, "w1", tmp_path / "worker.log").start()
    try:
        with RecorderThread(settings, history_engine) as recorder:
            before = _submit(
                _spec(tmp_path, "before-restart", epochs=2), queue_name, env, "--wait", "--timeout", "180"
            )
            assert before["status"] == "completed"
            wait_for(
                lambda: recorded_epochs(history_engine, before["run_id"]) == [0, 1],
                timeout=60,
                message="the first run recorded",
            )
            server.kill()
            server.start()  # empty: no queue, no stream, no consumer group, no job records
            after = _submit(
                _spec(tmp_path, "after-restart", epochs=3), queue_name, env, "--wait", "--timeout", "180"
            )
            assert after["status"] == "completed", worker.output()[-3000:]
            published = [e.id for e in events_in_stream(server.url, stream_name)]
            wait_for(
                lambda: set(published) <= set(event_ids(history_engine)),
                timeout=60,
                message="the second run recorded",
            )
        assert recorded_epochs(history_engine, after["run_id"]) == [0, 1, 2]
        assert recorder.loop.stats.groups_recreated >= 1
        row = count_recorded(
            history_engine,
            EventStream(settings=settings),
            "5b. Redis restarted empty between two queued jobs",
            published,
            note="worker reconnected to the broker; next job ran and was recorded",
        )
        ledger.append(row)
        assert (row.recorded, row.lost, row.duplicated, row.dead_lettered) == (len(published), 0, 0, 0)
    finally:
        worker.stop()
        server.stop()
