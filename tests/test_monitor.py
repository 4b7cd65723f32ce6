"""The TensorFlow-free "better" rule agrees with Keras' own EarlyStopping."""

from __future__ import annotations

import random

import keras
import pytest

from pipeline.errors import ConfigurationError
from pipeline.monitor import Monitor, infer_mode


class _Model:
    stop_training = False


def _keras_best_epoch(values, mode, min_delta):
    stop = keras.callbacks.EarlyStopping(monitor="m", mode=mode, min_delta=min_delta, patience=10_000)
    stop.set_model(_Model())
    stop.on_train_begin()
    for epoch, value in enumerate(values):
        stop.on_epoch_end(epoch, {"m": value})
    return stop.best_epoch, stop.best


@pytest.mark.parametrize("mode", ["min", "max"])
@pytest.mark.parametrize("min_delta", [0.0, 0.01, 0.1])
def test_best_epoch_matches_early_stopping(mode, min_delta):
    rng = random.Random(f"{mode}-{min_delta}")
    for _ in range(50):
        values = [rng.uniform(0, 1) for _ in range(rng.randint(1, 30))]
        index, best = Monitor("m", mode=mode, min_delta=min_delta).best_of(values)
        assert (index, best) == _keras_best_epoch(values, mode, min_delta)


def test_is_improvement_edges():
    loss = Monitor("val_loss")
    assert loss.mode == "min"
    assert loss.is_improvement(1.0, None)
    assert not loss.is_improvement(float("nan"), None)
    assert not loss.is_improvement(1.0, 1.0)
    acc = Monitor(
        "val_accuracy", min_delta=-0.05
    )  # a negative min_delta means its absolute value, as in Keras
    assert acc.mode == "max" and acc.min_delta == 0.05
    assert not acc.is_improvement(0.54, 0.5) and acc.is_improvement(0.56, 0.5)


def test_modes_and_errors():
    assert infer_mode("val_auc") == "max" and infer_mode("mae") == "min"
    with pytest.raises(ConfigurationError, match="pass mode='min' or mode='max'"):
        Monitor("val_weirdness")
    with pytest.raises(ConfigurationError, match="got 'up'"):
        Monitor("loss", mode="up")
