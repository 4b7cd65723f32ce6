"""Model and data functions for job tests (allowed with FITSTREAM_ALLOWED_MODULES=examples,tests)."""

from __future__ import annotations

import time

from pipeline.examples import digits


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


class KillOnce:
    """A callback factory that SIGKILLs its own training process once (an OOM kill, a lost host):
    at batch ``batch`` of epoch ``epoch``, on the first attempt only (the marker file remembers)."""

    def __new__(cls, epoch: int, marker: str, batch: int = 2):
        import os
        import signal

        import keras

        class _Kill(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.current = None

            def on_epoch_begin(self, current, logs=None):
                self.current = current

            def on_train_batch_end(self, index, logs=None):
                if self.current == epoch and index == batch and not os.path.exists(marker):
                    with open(marker, "w") as handle:
                        handle.write(str(os.getpid()))
                    os.kill(os.getpid(), signal.SIGKILL)

        return _Kill()


def f1(y_true, y_pred):
    """Binary F1 of sigmoid outputs at 0.5: a custom metric whose name says nothing of its direction."""
    from keras import ops

    predicted = ops.cast(y_pred > 0.5, "float32")
    actual = ops.cast(ops.reshape(y_true, ops.shape(predicted)), "float32")
    true_positives = ops.sum(predicted * actual)
    return 2 * true_positives / (ops.sum(predicted) + ops.sum(actual) + 1e-7)


def f1_model(hidden: int = 8, learning_rate: float = 0.003):
    """Breast-cancer classifier that logs ``f1`` (so ``val_f1``), a metric Keras cannot give a direction."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((30,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="binary_crossentropy", metrics=[f1])
    return model


def xy_only(n_train: int = 400):
    """Data as ``(x, y)`` only: the job's ``fit.validation_split`` makes the validation set."""
    (x, y), _ = digits.load_data()
    return x[:n_train], y[:n_train]


def datasets(n_train: int = 400, batch_size: int = 32):
    """``(train_dataset, validation_dataset)``: the training set repeats (give steps_per_epoch)."""
    import tensorflow as tf

    (x, y), (x_val, y_val) = digits.load_data()
    train = tf.data.Dataset.from_tensor_slices((x[:n_train], y[:n_train])).batch(batch_size).repeat()
    return train, tf.data.Dataset.from_tensor_slices((x_val[:200], y_val[:200])).batch(batch_size)


def diverging_model(learning_rate: float = 1.0):
    """A linear regression under plain SGD with a far too large step: its loss overflows to
    infinity, then NaN, within the first epoch."""
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input(shape=(64,)), keras.layers.Dense(1)], name="diverging")
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=learning_rate), loss="mse")
    return model


def halve_after_one(epoch: int, lr: float) -> float:
    """A `lr_schedule: {kind: function}` schedule: from epoch 2 on, the rate halves every epoch."""
    return lr / 2 if epoch >= 2 else lr
