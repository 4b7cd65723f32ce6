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
        return not all(
            is_default(getattr(publisher, hook)) for hook in ("on_batch_end", "on_train_batch_end")
        )

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
    assert len(history.epoch) == 1 and 1 <= steps < 40, (
        history.epoch,
        steps,
    )  # mid-epoch, at a batch boundary
    finished = [e for e in _events(settings, publisher.run_id) if e.type == "run_finished"]
    assert [(e.status, e.reason) for e in finished] == [("cancelled", "stopped from outside")]


def test_the_epoch_learning_rate_is_the_scheduled_one_wherever_the_scheduler_stands(settings):
    (x, y), _ = small_digits(320)
    schedule = keras.callbacks.LearningRateScheduler(lambda epoch, lr: 0.1 / (epoch + 1))
    publisher = EventPublisher(name="scheduled", settings=settings)
    small_model().fit(
        x, y, epochs=3, batch_size=64, verbose=0, callbacks=[publisher, schedule]
    )  # scheduler after it
    epochs = [e for e in _events(settings, publisher.run_id) if e.type == "epoch_end"]
    assert [round(e.learning_rate, 6) for e in epochs] == [0.1, 0.05, round(0.1 / 3, 6)]
    assert [e.steps for e in epochs] == [5, 5, 5]


# -- batch events off the training thread (Keras' async dispatch) -------------------------------------------


def test_batch_events_alone_are_async_safe_and_a_batch_level_checkpoint_is_not(settings, tmp_path):
    # Keras (CallbackList._configure_async_dispatch) reads `async_safe` when fit() builds its callbacks.
    assert EventPublisher(name="events", settings=settings, batch_events_every=1).async_safe is True
    assert EventPublisher(name="quiet", settings=settings).async_safe is False  # no batch hook at all
    watched = EventPublisher(name="ckpt", settings=settings, batch_events_every=1)
    watched.watch = [keras.callbacks.ModelCheckpoint(str(tmp_path / "b-{epoch}.keras"), save_freq=5)]
    assert watched.async_safe is False  # its checkpoint file is read right after Keras wrote it
    watched.watch = []
    assert watched.async_safe is True


class JitteryBatchEnds(keras.callbacks.Callback):
    """Async-safe itself; sleeps a random while in every batch end so Keras' pool threads overtake
    one another, as a slow device-to-host copy does."""

    async_safe = True

    def __init__(self, seed: int) -> None:
        super().__init__()
        import random

        self._random = random.Random(seed)

    def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
        time.sleep(self._random.random() * 0.004)


def test_batch_events_on_keras_thread_pool_arrive_in_order_one_per_batch(settings, monkeypatch):
    # The TensorFlow backend has no batch-end thread pool (IS_THREAD_SAFE is False); JAX and PyTorch
    # have one. Turning it on here runs Keras' own async dispatch path with real threads.
    from keras.src.callbacks import callback_list

    monkeypatch.setattr(callback_list.backend, "IS_THREAD_SAFE", True)
    pool_threads: set[str] = set()
    publisher = EventPublisher(name="pooled", settings=settings, batch_events_every=1, batch_size=16)
    real_ended = publisher._batch_ended

    def ended(batch, logs):  # type: ignore[no-untyped-def]
        pool_threads.add(threading.current_thread().name)
        real_ended(batch, logs)

    publisher._batch_ended = ended
    (x, y), _ = small_digits(320)  # 20 batches of 16
    # The jittery callback runs first in each pool call, so the publisher's calls start late and overlap.
    small_model().fit(
        x, y, epochs=3, batch_size=16, verbose=0, callbacks=[JitteryBatchEnds(seed=7), publisher]
    )

    assert threading.main_thread().name not in pool_threads and pool_threads, (
        pool_threads
    )  # really off-thread
    events = _events(settings, publisher.run_id)
    batches = [e for e in events if e.type == "batch_end"]
    assert [(e.epoch, e.batch) for e in batches] == [(epoch, b) for epoch in range(3) for b in range(20)]
    assert [e.step for e in batches] == list(range(60))
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # one sequence, in stream order
    # Every epoch's batch events precede its epoch_end (Keras waits for its pool before on_epoch_end).
    order = [(e.type, e.epoch) for e in events if e.type in ("batch_end", "epoch_end")]
    for epoch in range(3):
        assert order.index(("epoch_end", epoch)) > max(
            i for i, o in enumerate(order) if o == ("batch_end", epoch)
        )
    assert [e.steps for e in events if e.type == "epoch_end"] == [20, 20, 20]


def test_the_batch_order_gate_orders_ends_from_many_threads(settings):
    import random

    from pipeline.callbacks.batch_events import BatchOrder

    order, delivered = BatchOrder(), []
    begins = list(range(0, 400, 4))  # steps_per_execution=4: a batch end names the last step of its execution
    for b in begins:
        order.began(b)
    ends = [b + 3 for b in begins]
    random.Random(3).shuffle(ends)
    barrier = threading.Barrier(8)

    def worker(chunk):  # type: ignore[no-untyped-def]
        barrier.wait()
        for end in chunk:
            order.ended(end, {"loss": end}, lambda batch, logs: delivered.append((batch, logs["loss"])))

    threads = [threading.Thread(target=worker, args=(ends[i::8],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert delivered == [(b + 3, b + 3) for b in begins] and order.pending() == 0
    # A new epoch restarts the count; anything held back from an epoch that ended early is dropped.
    order.began(0)
    order.began(1)
    order.ended(1, {}, lambda batch, logs: delivered.append(batch))
    order.began(0)
    assert order.pending() == 1
