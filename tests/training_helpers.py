"""Small real models on scikit-learn's bundled digits, for integration tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

import keras

from pipeline.examples import digits


def small_digits(n_train: int = 600):
    (x, y), (x_val, y_val) = digits.load_data()
    return (x[:n_train], y[:n_train]), (x_val[:200], y_val[:200])


def small_model(learning_rate: float = 1e-2, seed: int = 0) -> keras.Model:
    return digits.build_model(hidden=16, learning_rate=learning_rate, seed=seed)


def sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
