"""The publisher's README promises through real fits (issue 11): batch events throttled by time,
``lr_changed`` events equal to what ReduceLROnPlateau did, and the "still spooled" message that
tells the user what to run when Redis never came back."""

from __future__ import annotations

import logging

import keras
import pytest
import redis
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline import events as ev
from pipeline.config import Settings
from tests.conftest import wait_for
from tests.job_fixtures import SlowDown
from tests.training_helpers import small_digits, small_model


def stream_events(settings, run_id: str) -> list[ev.Event]:
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _i, f in client.xrange(settings.stream)) if e.run_id == run_id]


def test_batch_events_every_t_seconds_are_at_least_t_apart(settings, engine, recorder, database_url):
    if database_url.startswith("postgresql"):
        pytest.skip("throttling happens in the publisher; checked once, on SQLite")
    (x, y), _ = small_digits(640)  # 20 batches of 32 per epoch, each slowed to ≥ 30 ms
    publisher = EventPublisher(name="timed-batches", settings=settings, batch_events_seconds=0.2)
    small_model().fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[SlowDown(0.03), publisher])
    batches = [e for e in stream_events(settings, publisher.run_id) if e.type == "batch_end"]
    # 40 batches over ≥ 1.2 s: throttled to one per 0.2 s, so well below one per batch, but some.
    assert 2 <= len(batches) < 40
    gaps = [b.ts - a.ts for a, b in zip(batches, batches[1:])]
    assert min(gaps) >= 0.2 - 0.01, gaps
    with engine.connect() as conn:

        def steps():
            return list(
                conn.execute(
                    sa.text(
                        "SELECT step FROM batch_metrics WHERE run_id = :r AND name = 'loss' ORDER BY step"
                    ),
                    {"r": publisher.run_id},
                ).scalars()
            )

        wait_for(lambda: len(steps()) == len(batches), message="the batch events recorded")
        assert steps() == [b.step for b in batches] == [b.epoch * 20 + b.batch for b in batches]


def test_lr_changed_events_are_what_reduce_lr_on_plateau_did(settings, engine, recorder):
    (x, y), (x_val, y_val) = small_digits(300)
    # min_delta above any real improvement: after epoch 0 (the first value is always "better"),
    # the learning rate is halved after every epoch.
    reduce = keras.callbacks.ReduceLROnPlateau(
        monitor="val_loss", factor=0.5, patience=0, min_delta=10.0, min_lr=1e-4
    )
    seen: list[float] = []
    model = small_model(learning_rate=1e-2)
    record = keras.callbacks.LambdaCallback(
        on_epoch_end=lambda epoch, logs: seen.append(float(model.optimizer.learning_rate.numpy()))
    )
    publisher = EventPublisher(name="plateau", watch=[reduce], settings=settings)
    initial = float(model.optimizer.learning_rate.numpy())
    model.fit(
        x,
        y,
        validation_data=(x_val, y_val),
        epochs=4,
        batch_size=64,
        verbose=0,
        callbacks=[reduce, record, publisher],
    )
    changes = [e for e in stream_events(settings, publisher.run_id) if e.type == "lr_changed"]
    lrs = [initial, *seen]  # lrs[e] trained epoch e; lrs[e + 1] is what ReduceLROnPlateau left after it
    expected = [(epoch, lrs[epoch], lrs[epoch + 1]) for epoch in range(4) if lrs[epoch + 1] != lrs[epoch]]
    assert [epoch for epoch, _old, _new in expected] == [1, 2, 3]  # 1e-2 → 5e-3 → 2.5e-3 → 1.25e-3
    assert [(e.epoch, e.old, e.new) for e in changes] == [
        (epoch, pytest.approx(o), pytest.approx(n)) for epoch, o, n in expected
    ]
    assert {(e.monitor, e.mode, e.reason) for e in changes} == {
        ("val_loss", "min", "ReduceLROnPlateau on val_loss")
    }
    with engine.connect() as conn:
        wait_for(
            lambda: (
                conn.execute(
                    sa.text("SELECT count(*) FROM events WHERE type = 'lr_changed' AND run_id = :r"),
                    {"r": publisher.run_id},
                ).scalar()
                == 3
            ),
            message="lr_changed recorded",
        )
        in_effect = conn.execute(
            sa.text("SELECT epoch, learning_rate FROM epochs WHERE run_id = :r ORDER BY epoch"),
            {"r": publisher.run_id},
        ).all()
    assert [lr for _epoch, lr in in_effect] == pytest.approx(lrs[:4]), (
        "each epoch records the rate it trained with"
    )


def test_events_left_in_the_spool_say_where_and_what_to_run(tmp_path, stream_name, private_redis, caplog):
    # Nothing listens on the private port: Redis never comes back during this fit.
    settings = Settings(redis_url=private_redis.url, stream=stream_name, home=tmp_path / "home")
    (x, y), _ = small_digits(128)
    publisher = EventPublisher(name="offline", settings=settings, flush_timeout=0.5)
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        small_model().fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[publisher])
    report = publisher.last_report
    said = [r.getMessage() for r in caplog.records if "remain spooled" in r.getMessage()]
    assert said == [
        f"fitstream: run {publisher.run_id}: 4 events could not reach Redis within 0.5s and remain spooled in "
        f"{report.spool_path}; send them with: fitstream spool flush"
    ]
    assert report.spool_path.exists() and report.left_in_spool == 4
