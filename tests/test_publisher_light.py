"""Light on the training thread: with batch events off (and no batch-level ModelCheckpoint) the
publisher hooks no training batch — Keras then treats its batch-end hook as the default one, which on
a thread-safe backend (JAX, PyTorch) keeps Keras' asynchronous batch dispatch; what it still needs per epoch — the learning rate, a stop request, where TerminateOnNaN stopped — comes from
elsewhere. Real fits of the small digits model, events read back from a real Redis stream."""

from __future__ import annotations

import threading
import time

import keras
import pytest
import redis
from keras.src.utils import is_default

from pipeline import EventPublisher
from pipeline import events as ev
from tests.training_helpers import small_digits, small_model


@pytest.fixture
def database_url(tmp_path):  # the publisher alone: no database involved
    return f"sqlite:///{tmp_path / 'history.db'}"


def _events(settings, run_id: str) -> list[ev.Event]:
    client = redis.Redis.from_url(settings.redis_url)
    return [e for e in (ev.decode(f) for _id, f in client.xrange(settings.stream)) if e.run_id == run_id]


class SlowBatches(keras.callbacks.Callback):
    """Sleeps before each batch (a begin hook: Keras may still dispatch batch ends asynchronously)."""

    def on_train_batch_begin(self, batch, logs=None):  # type: ignore[no-untyped-def]
        time.sleep(0.02)


def test_no_batch_hook_unless_batch_work_is_asked_for(settings, tmp_path):
    # Keras' own test (CallbackList._configure_async_dispatch): a callback whose batch-end hooks are
    # all the default ones does not make it dispatch batches synchronously.
    def hooks_batches(publisher: EventPublisher) -> bool:
        return not all(is_default(getattr(publisher, hook)) for hook in ("on_batch_end", "on_train_batch_end"))

    assert not hooks_batches(EventPublisher(name="quiet", settings=settings))
    assert hooks_batches(EventPublisher(name="batch-events", settings=settings, batch_events_every=10))
    assert hooks_batches(EventPublisher(name="batch-seconds", settings=settings, batch_events_seconds=1.0))
    # A batch-level ModelCheckpoint needs the hook too, also when watched after the publisher was made
    # (as a worker does); an epoch-level one does not.
    late = EventPublisher(name="late-watch", settings=settings)
    late.watch = [keras.callbacks.ModelCheckpoint(str(tmp_path / "b-{epoch}.keras"), save_freq=5)]
    assert hooks_batches(late)
    late.watch = [keras.callbacks.ModelCheckpoint(str(tmp_path / "e-{epoch}.keras"))]
    assert not hooks_batches(late)


def test_a_stop_request_from_another_thread_stops_at_the_next_batch_without_a_batch_hook(settings):
    (x, y), _ = small_digits(1280)  # 40 batches of 32
    publisher = EventPublisher(name="stopped", settings=settings)
    model = small_model()
    stopper = threading.Timer(0.3, publisher.request_cancel, kwargs={"reason": "stopped from outside"})
    stopper.start()
    history = model.fit(x, y, epochs=20, batch_size=32, verbose=0, callbacks=[SlowBatches(), publisher])
    stopper.join()
    steps = int(model.optimizer.iterations.numpy())
    assert len(history.epoch) == 1 and 1 <= steps < 40, (history.epoch, steps)  # mid-epoch, at a batch boundary
    finished = [e for e in _events(settings, publisher.run_id) if e.type == "run_finished"]
    assert [(e.status, e.reason) for e in finished] == [("cancelled", "stopped from outside")]


def test_the_epoch_learning_rate_is_the_scheduled_one_wherever_the_scheduler_stands(settings):
    (x, y), _ = small_digits(320)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    publisher = EventPublisher(name="scheduled", settings=settings)
    small_model().fit(x, y, epochs=3, batch_size=64, verbose=0, callbacks=[publisher, schedule])  # scheduler after it
    epochs = [e for e in _events(settings, publisher.run_id) if e.type == "epoch_end"]
    assert [round(e.learning_rate, 6) for e in epochs] == [0.1, 0.05, round(0.1 / 3, 6)]
    assert [e.steps for e in epochs] == [5, 5, 5]
