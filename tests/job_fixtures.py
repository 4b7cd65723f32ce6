"""Model and data functions for job tests (allowed with FITSTREAM_ALLOWED_MODULES=examples,tests)."""

from __future__ import annotations

import time

from examples import digits


def slow_data(n_train: int = 400, delay_s: float = 0.0):
    (x, y), (x_val, y_val) = digits.load_data()
    return (x[:n_train], y[:n_train]), (x_val[:200], y_val[:200])


def broken_data():
    raise RuntimeError("the data bucket is empty")


def small_model(hidden: int = 16, learning_rate: float = 0.01):
    return digits.build_model(hidden=hidden, learning_rate=learning_rate)


class SlowDown:
    """A Keras-compatible callback factory that sleeps per batch (makes runs long enough to interrupt)."""

    def __new__(cls, seconds: float = 0.01):
        import keras

        class _Sleep(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                time.sleep(seconds)

        return _Sleep()
