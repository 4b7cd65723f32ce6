"""Batch curves in SQL: ``batch_metrics`` from ``batch_end`` events (Keras' own batch logs as the
oracle), and their retention — raw rows replaced by downsampled buckets — by the command and by a
running recorder, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
import math
import time

import keras
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.bus import EventStream
from pipeline.config import Settings
from pipeline.db.batch_retention import compact_batch_metrics
from tests.conftest import RecorderThread, run_cli, settings_env, wait_for
from tests.training_helpers import small_digits, small_model

DAY = 24 * 3600.0


class BatchLogs(keras.callbacks.Callback):
    """What Keras itself logged at every training batch (the oracle)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, int, dict[str, float]]] = []
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):  # type: ignore[no-untyped-def]
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
        self.seen.append((self.epoch, batch, {k: float(v) for k, v in (logs or {}).items()}))


def test_every_batch_of_a_real_fit_is_a_row_per_metric_with_its_step_across_epochs(
    settings, engine, recorder
):
    (x, y), (x_val, y_val) = small_digits(256)  # 8 batches of 32 per epoch
    oracle = BatchLogs()
    publisher = EventPublisher(name="batch-curve", settings=settings, batch_events_every=1, batch_size=32)
    small_model().fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=3,
        batch_size=32,
        verbose=0,
        callbacks=[publisher, oracle],
    )
    expected = {
        (step, name): (epoch, value)
        for step, (epoch, _batch, logs) in enumerate(oracle.seen)
        for name, value in logs.items()
    }
    assert len(oracle.seen) == 24 and {name for _, name in expected} == {"loss", "accuracy"}

    def rows() -> dict:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text("SELECT step, name, epoch, value FROM batch_metrics WHERE run_id = :r"),
                {"r": publisher.run_id},
            ).all()
        return {(step, name): (epoch, value) for step, name, epoch, value in found}

    wait_for(lambda: len(rows()) == len(expected), message="one batch_metrics row per batch and metric")
    found = rows()
    assert found.keys() == expected.keys()
    for key, (epoch, value) in expected.items():
        assert found[key][0] == epoch and math.isclose(found[key][1], value, rel_tol=1e-12), key
    # The curve is plain SQL, and its raw JSON is not stored a second time.
    wait_for(lambda: _status(engine, publisher.run_id) == "completed", message="the run recorded to its end")
    with engine.connect() as conn:
        last = conn.execute(
            sa.text(
                "SELECT value FROM batch_metrics WHERE run_id = :r AND name = 'loss' "
                "ORDER BY step DESC LIMIT 1"
            ),
            {"r": publisher.run_id},
        ).scalar()
        raw = conn.execute(
            sa.text("SELECT count(*) FROM events WHERE run_id = :r AND type IN ('batch_end', 'epoch_end')"),
            {"r": publisher.run_id},
        ).scalar()
        epochs = conn.execute(
            sa.text("SELECT count(event_id) FROM epochs WHERE run_id = :r"), {"r": publisher.run_id}
        ).scalar()
    assert math.isclose(last, oracle.seen[-1][2]["loss"], rel_tol=1e-12)
    assert raw == 0 and epochs == 3


def _status(engine, run_id: str) -> str | None:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT status FROM runs WHERE run_id = :r"), {"r": run_id}).scalar()


def _batch_events(run_id: str, ts: float, steps: int, per_epoch: int) -> list[ev.Event]:
    events: list[ev.Event] = [ev.build(ev.RunStarted, run_id=run_id, seq=0, ts=ts, name="old-run")]
    for step in range(steps):
        epoch, batch = divmod(step, per_epoch)
        events.append(
            ev.build(
                ev.BatchEnd,
                run_id=run_id,
                seq=step + 1,
                ts=ts + step,
                epoch=epoch,
                batch=batch,
                step=step,
                metrics={"loss": 10.0 - step * 0.01 + (0.5 if step % 7 == 0 else 0.0)},
            )
        )
    return events


def _expected_buckets(events: list[ev.Event], bucket: int) -> dict[int, tuple]:
    values = [(e.step, e.epoch, e.metrics["loss"]) for e in events if isinstance(e, ev.BatchEnd)]
    out: dict[int, tuple] = {}
    for first in range(0, len(values), bucket):
        chunk = values[first : first + bucket]
        out[chunk[0][0]] = (
            chunk[-1][0],
            chunk[0][1],
            len(chunk),
            min(v for *_, v in chunk),
            max(v for *_, v in chunk),
            chunk[-1][2],
        )
    return out


def _buckets(engine, run_id: str) -> dict[int, tuple]:
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT first_step, last_step, epoch, count, min_value, max_value, last_value FROM batch_metric_buckets "
                "WHERE run_id = :r AND name = 'loss'"
            ),
            {"r": run_id},
        ).all()
    return {row[0]: tuple(row[1:]) for row in rows}


def _raw_count(engine, run_id: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT count(*) FROM batch_metrics WHERE run_id = :r"), {"r": run_id}
        ).scalar()


def test_the_command_downsamples_quiet_runs_only_and_twice_is_once(settings, engine, recorder):
    now = time.time()
    old = _batch_events("old-run", now - 40 * DAY, steps=250, per_epoch=60)
    fresh = _batch_events("fresh-run", now - 60, steps=30, per_epoch=60)
    EventStream(settings=settings).publish(old + fresh)
    wait_for(
        lambda: _raw_count(engine, "old-run") == 250 and _raw_count(engine, "fresh-run") == 30,
        message="raw rows",
    )

    env = settings_env(settings)
    report = json.loads(
        run_cli("db", "compact-batch-metrics", "--bucket-steps", "100", "--json", env_extra=env).stdout
    )
    assert report == {"runs": 1, "raw_rows_removed": 250, "buckets_written": 3}
    assert _raw_count(engine, "old-run") == 0 and _raw_count(engine, "fresh-run") == 30
    assert _buckets(engine, "old-run") == _expected_buckets(old, 100)
    assert _buckets(engine, "fresh-run") == {}

    again = json.loads(run_cli("db", "compact-batch-metrics", "--json", env_extra=env).stdout)
    assert again == {"runs": 0, "raw_rows_removed": 0, "buckets_written": 0}
    everything = json.loads(
        run_cli(
            "db",
            "compact-batch-metrics",
            "--older-than-days",
            "0",
            "--bucket-steps",
            "10",
            "--json",
            env_extra=env,
        ).stdout
    )
    assert everything == {"runs": 1, "raw_rows_removed": 30, "buckets_written": 3}
    assert _buckets(engine, "fresh-run") == _expected_buckets(fresh, 10)


def test_a_replayed_batch_after_compaction_adds_no_second_bucket(engine, settings):
    # Killed between writing the buckets and deleting the raw rows, or a replay afterwards: the same result.
    events = _batch_events("replayed", time.time() - 40 * DAY, steps=20, per_epoch=10)
    with RecorderThread(settings, engine):
        EventStream(settings=settings).publish(events)
        wait_for(lambda: _raw_count(engine, "replayed") == 20, message="raw rows")
    first = compact_batch_metrics(engine, retention_days=30, bucket_steps=8)
    with RecorderThread(settings, engine, name="second"):
        EventStream(settings=settings).publish(events[5:])  # the stream delivers some again
        wait_for(lambda: _raw_count(engine, "replayed") == 16, message="replayed raw rows (steps 4 to 19)")
    second = compact_batch_metrics(engine, retention_days=30, bucket_steps=8)
    assert (first.buckets_written, second.buckets_written, second.raw_rows_removed) == (3, 0, 16)
    assert _buckets(engine, "replayed") == _expected_buckets(events, 8)


def test_a_running_recorder_applies_the_retention_itself(
    tmp_path, redis_url, stream_name, database_url, engine
):
    settings = Settings(
        redis_url=redis_url,
        database_url=database_url,
        home=tmp_path / "home",
        stream=stream_name,
        consumer_block_ms=100,
        batch_metrics_compact_every_seconds=0.5,
        batch_metrics_retention_days=7,
        batch_metrics_bucket_steps=50,
    )
    old = _batch_events("quiet", time.time() - 8 * DAY, steps=120, per_epoch=40)
    with RecorderThread(settings, engine):
        stream = EventStream(settings=settings)
        stream.publish(old)
        wait_for(lambda: _buckets(engine, "quiet") != {}, timeout=30, message="the recorder's own compaction")
        # It looks again after each batch once due: a second quiet run is compacted without a command.
        later = _batch_events("quiet-too", time.time() - 9 * DAY, steps=10, per_epoch=40)
        time.sleep(0.6)
        stream.publish(later)
        wait_for(lambda: _buckets(engine, "quiet-too") != {}, timeout=30, message="the second compaction")
    assert _raw_count(engine, "quiet") == 0 and _raw_count(engine, "quiet-too") == 0
    assert _buckets(engine, "quiet") == _expected_buckets(old, 50)
