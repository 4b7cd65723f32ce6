"""A small MLP on scikit-learn's bundled digits (1,797 8×8 images, 10 classes).

Example:
    >>> (x, y), (x_val, y_val) = load_data()        # doctest: +SKIP
    >>> model = build_model()                       # doctest: +SKIP
    >>> model.fit(x, y, validation_data=(x_val, y_val), epochs=5)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from pipeline.examples import sklearn_datasets


def load_data(
    validation_fraction: float = 0.2, seed: int = 0
) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """((x_train, y_train), (x_val, y_val)): pixels scaled to [0, 1], integer labels."""
    digits = sklearn_datasets().load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(len(x) * (1 - validation_fraction))
    return (x[:split], y[:split]), (x[split:], y[split:])


def build_model(hidden: int = 64, learning_rate: float = 1e-3, seed: int = 0):  # -> keras.Model
    """A compiled two-layer MLP with accuracy as its metric."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(64,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ],
        name="digits_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model
