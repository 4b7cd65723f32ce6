"""Logistic-regression-sized MLP on scikit-learn's bundled breast-cancer data (569 samples), tracked by AUC.

Example:
    >>> (x, y), (x_val, y_val) = load_data()   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from pipeline.examples import sklearn_datasets


def load_data(validation_fraction: float = 0.25, seed: int = 0):
    """((x_train, y_train), (x_val, y_val)), features standardised on the training split."""
    data = sklearn_datasets().load_breast_cancer()
    x = data.data.astype("float32")
    y = data.target.astype("float32")
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    split = int(len(x) * (1 - validation_fraction))
    mean, std = x[:split].mean(axis=0), x[:split].std(axis=0) + 1e-6
    x = (x - mean) / std
    return (x[:split], y[:split]), (x[split:], y[split:])


def build_model(hidden: int = 16, learning_rate: float = 1e-3, seed: int = 0):
    """A compiled binary classifier with AUC (``val_auc``) and accuracy."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(shape=(30,)),
            keras.layers.Dense(hidden, activation="relu"),
            keras.layers.Dense(1, activation="sigmoid"),
        ],
        name="breast_cancer_mlp",
    )
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
        loss="binary_crossentropy",
        metrics=[keras.metrics.AUC(name="auc"), "accuracy"],
    )
    return model
