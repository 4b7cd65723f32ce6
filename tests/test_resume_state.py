"""ResumableBackup: a fit interrupted after its best epoch and resumed decides exactly as the
uninterrupted fit (EarlyStopping, ModelCheckpoint and ReduceLROnPlateau keep what they knew)."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from pipeline.callbacks.resume import CURRENT, ResumableBackup
from pipeline.errors import ConfigurationError
from tests.training_helpers import small_digits

pytestmark = pytest.mark.slow


class Interrupt(Exception):
    pass


class InterruptAt(keras.callbacks.Callback):
    """Stands for a killed process: stops fit in the middle of an epoch (nothing after it runs)."""

    def __init__(self, epoch: int, batch: int = 2):
        super().__init__()
        self.at = (epoch, batch)
        self.epoch = None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        if (self.epoch, batch) == self.at:
            raise Interrupt()


def _fit(tmp_path, backup_dir, *, interrupt_at=None, keep_state=True, epochs=40):
    """A fresh, seeded model and fresh callbacks (as a new process has), trained with shuffle=False."""
    keras.utils.set_random_seed(11)
    tf.config.experimental.enable_op_determinism()
    (x, y), (x_val, y_val) = small_digits(n_train=400)
    model = keras.Sequential(
        [
            keras.Input((64,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dense(10, activation="softmax"),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(0.02), loss="sparse_categorical_crossentropy", metrics=["accuracy"]
    )
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=4, restore_best_weights=True)
    checkpoint = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "best.keras"), monitor="val_accuracy", save_best_only=True
    )
    reduce_lr = keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=2)
    history = keras.callbacks.History()
    backup = ResumableBackup(backup_dir, keep=[stop, checkpoint, reduce_lr] if keep_state else [])
    callbacks = [history, stop, checkpoint, reduce_lr, backup]
    if interrupt_at is not None:
        callbacks.append(InterruptAt(interrupt_at))
    try:
        model.fit(
            x,
            y,
            validation_data=(x_val, y_val),
            epochs=epochs,
            batch_size=32,
            shuffle=False,
            verbose=0,
            callbacks=callbacks,
        )
    except Interrupt:
        return None
    epochs_run = history.epoch
    return {
        "history": {k: dict(zip(epochs_run, v)) for k, v in history.history.items()},
        "stopped_epoch": stop.stopped_epoch,
        "best_epoch": stop.best_epoch,
        "best": stop.best,
        "weights": model.get_weights(),
        "resumed_from": backup.resumed_from_epoch,
        "best_file": keras.saving.load_model(str(tmp_path / "best.keras")).get_weights(),
    }


def test_an_interrupted_fit_resumes_into_the_uninterrupted_twin(tmp_path):
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir(), resumed_dir.mkdir()
    straight = _fit(straight_dir, straight_dir / "backup")
    assert straight["stopped_epoch"] > straight["best_epoch"] + 1
    kill_epoch = straight["best_epoch"] + 1  # after the best epoch, mid-epoch
    assert _fit(resumed_dir, resumed_dir / "backup", interrupt_at=kill_epoch) is None
    assert (
        json.loads(
            (
                resumed_dir
                / "backup"
                / (resumed_dir / "backup" / CURRENT).read_text()
                / "training_metadata.json"
            ).read_text()
        )["epoch"]
        == kill_epoch
    )
    resumed = _fit(resumed_dir, resumed_dir / "backup")
    assert resumed["resumed_from"] == kill_epoch
    # The resumed part of the history is the twin's, epoch by epoch.
    for name, values in resumed["history"].items():
        assert min(values) == kill_epoch
        for epoch, value in values.items():
            assert value == pytest.approx(straight["history"][name][epoch], rel=1e-5, abs=1e-7), (name, epoch)
    assert (resumed["stopped_epoch"], resumed["best_epoch"]) == (
        straight["stopped_epoch"],
        straight["best_epoch"],
    )
    assert resumed["best"] == pytest.approx(straight["best"], rel=1e-6)
    for got, expected in zip(resumed["weights"], straight["weights"]):  # restored best weights
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    for got, expected in zip(
        resumed["best_file"], straight["best_file"]
    ):  # ModelCheckpoint kept the same best
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-7)
    assert not (resumed_dir / "backup").exists(), "the backup is removed when training ends"


def test_without_the_callbacks_state_the_resumed_fit_goes_wrong(tmp_path):
    """Keras' own behaviour (keras-team/keras#17012), shown so that the test above cannot pass by luck."""
    straight_dir, resumed_dir = tmp_path / "straight", tmp_path / "resumed"
    straight_dir.mkdir(), resumed_dir.mkdir()
    straight = _fit(straight_dir, straight_dir / "backup", keep_state=False)
    kill_epoch = straight["best_epoch"] + 1
    assert _fit(resumed_dir, resumed_dir / "backup", interrupt_at=kill_epoch, keep_state=False) is None
    resumed = _fit(resumed_dir, resumed_dir / "backup", keep_state=False)
    assert (resumed["stopped_epoch"], resumed["best_epoch"]) != (
        straight["stopped_epoch"],
        straight["best_epoch"],
    )


def test_resumable_backup_refuses_what_it_cannot_keep(tmp_path):
    with pytest.raises(ConfigurationError, match="got TerminateOnNaN"):
        ResumableBackup(tmp_path, keep=[keras.callbacks.TerminateOnNaN()])


def test_a_backup_in_keras_own_layout_still_resumes(tmp_path):
    """A run interrupted under Keras' BackupAndRestore (an older Fitstream) resumes its weights and epoch."""
    keras.utils.set_random_seed(3)
    (x, y), _validation = small_digits(n_train=200)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(10, activation="softmax")])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    with pytest.raises(Interrupt):
        model.fit(
            x,
            y,
            epochs=5,
            verbose=0,
            callbacks=[keras.callbacks.BackupAndRestore(str(tmp_path)), InterruptAt(3)],
        )
    history = keras.callbacks.History()
    backup = ResumableBackup(tmp_path)
    model.fit(x, y, epochs=5, verbose=0, callbacks=[history, backup])
    assert backup.resumed_from_epoch == 3 and history.epoch == [3, 4]
