"""The publisher fails fast on a missing monitor, warns on a training-metric monitor,
and records failures — against a real Redis and a real recorder (SQLite)."""

from __future__ import annotations

import keras
import pytest
import sqlalchemy as sa

from pipeline import EventPublisher
from pipeline.errors import MonitorNotFoundError
from tests.conftest import wait_for
from tests.training_helpers import small_digits, small_model

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite"])
def database_url(request, tmp_path):  # these behaviours do not depend on the backend
    return f"sqlite:///{tmp_path / 'history.db'}"


def _run_row(engine, run_id):
    with engine.connect() as conn:
        return (
            conn.execute(sa.text("SELECT * FROM runs WHERE run_id = :r"), {"r": run_id})
            .mappings()
            .one_or_none()
        )


def test_missing_monitor_stops_the_run_with_the_metrics_it_logs(settings, engine, recorder):
    (x, y), (x_val, y_val) = small_digits(200)
    stop = keras.callbacks.EarlyStopping(monitor="val_acc", patience=2)
    publisher = EventPublisher(name="typo", watch=[stop], settings=settings)
    with pytest.raises(MonitorNotFoundError) as info:
        small_model().fit(
            x, y, validation_data=(x_val, y_val), epochs=5, verbose=0, callbacks=[stop, publisher]
        )
    message = str(info.value)
    assert "monitors 'val_acc'" in message
    assert "accuracy, loss, val_accuracy, val_loss" in message
    run = wait_for(
        lambda: (r := _run_row(engine, publisher.run_id)) is not None and r["status"] == "failed" and r,
        message="failed run",
    )
    assert run["error_type"] == "MonitorNotFoundError" and "val_acc" in run["error_message"]


def test_monitoring_a_training_metric_with_validation_data_warns(settings, engine):
    (x, y), (x_val, y_val) = small_digits(200)
    stop = keras.callbacks.EarlyStopping(monitor="loss", patience=2)
    publisher = EventPublisher(name="train-metric", watch=[stop], settings=settings)
    with pytest.warns(UserWarning, match="did you mean 'val_loss'"):
        small_model().fit(
            x, y, validation_data=(x_val, y_val), epochs=1, verbose=0, callbacks=[stop, publisher]
        )


def test_an_exception_inside_fit_is_recorded_as_failed(settings, engine, recorder):
    (x, y), _ = small_digits(200)

    class Boom(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch == 1:
                raise RuntimeError("disk full while writing logs")

    with pytest.raises(RuntimeError):
        with EventPublisher(name="crash", settings=settings) as publisher:
            small_model().fit(x, y, epochs=4, verbose=0, callbacks=[publisher, Boom()])
    run = wait_for(
        lambda: (r := _run_row(engine, publisher.run_id)) is not None and r["status"] == "failed" and r,
        message="failed run",
    )
    assert run["error_type"] == "RuntimeError" and run["error_message"] == "disk full while writing logs"
    assert run["epochs_completed"] == 2  # epochs 0 and 1 ended before the exception


def test_batch_events_are_throttled(settings, engine, recorder):
    (x, y), _ = small_digits(320)  # 10 batches of 32 per epoch
    publisher = EventPublisher(name="batches", settings=settings, batch_events_every=3)
    small_model().fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[publisher])
    with engine.connect() as conn:

        def steps():
            return [
                tuple(row)
                for row in conn.execute(
                    sa.text(
                        "SELECT epoch, step FROM batch_metrics WHERE run_id = :r AND name = 'loss' ORDER BY step"
                    ),
                    {"r": publisher.run_id},
                )
            ]

        wait_for(lambda: len(steps()) == 6, message="6 batch events (batches 2, 5, 8 of each epoch)")
        # The step counts batches across epochs: epoch 1's batch 2 is the run's 13th batch.
        assert steps() == [(0, 2), (0, 5), (0, 8), (1, 12), (1, 15), (1, 18)]


def test_bad_arguments_are_refused_with_what_was_received(settings):
    with pytest.raises(ValueError, match="non-empty name"):
        EventPublisher(name="", settings=settings)
    with pytest.raises(ValueError, match="got 0"):
        EventPublisher(name="x", batch_events_every=0, settings=settings)
    with pytest.raises(ValueError, match="got TerminateOnNaN"):
        EventPublisher(name="x", watch=[keras.callbacks.TerminateOnNaN()], settings=settings)
    with pytest.raises(ValueError, match="must be a .keras path; got 'restored.h5'"):
        EventPublisher(name="x", save_restored_model="restored.h5", settings=settings)


def test_only_the_chief_of_a_distributed_cluster_publishes(settings, engine, monkeypatch):
    import json

    import redis

    from pipeline.callbacks.publisher import is_chief

    cluster = {"chief": ["h0:1"], "worker": ["h1:1", "h2:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert not is_chief()
    (x, y), _ = small_digits(100)
    publisher = EventPublisher(name="non-chief", settings=settings)
    small_model().fit(x, y, epochs=1, verbose=0, callbacks=[publisher])
    assert redis.Redis.from_url(settings.redis_url).xlen(settings.stream) == 0
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert is_chief()
    monkeypatch.setenv(
        "TF_CONFIG",
        json.dumps({"cluster": {"worker": ["h1:1", "h2:1"]}, "task": {"type": "worker", "index": 0}}),
    )
    assert is_chief()
    monkeypatch.delenv("TF_CONFIG")
    assert is_chief()


def test_cancel_stops_training_at_the_next_batch_boundary(settings, engine, recorder):
    (x, y), _ = small_digits(320)  # 10 batches of 32 per epoch
    batches_seen = []

    class CancelMidEpoch(keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            batches_seen.append((self.epoch, batch))
            if (self.epoch, batch) == (1, 3):
                publisher.request_cancel()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch

    publisher = EventPublisher(name="cancel-me", settings=settings)
    history = small_model().fit(
        x, y, epochs=5, batch_size=32, verbose=0, callbacks=[CancelMidEpoch(), publisher]
    )
    assert batches_seen[-1] == (1, 3), (
        "training stopped right after the batch during which cancel was requested"
    )
    assert len(history.history["loss"]) == 2
    run = wait_for(
        lambda: (r := _run_row(engine, publisher.run_id)) is not None and r["status"] == "cancelled" and r,
        message="cancelled run",
    )
    assert run["epochs_completed"] == 2
