"""``ResumableBackup``: Keras' BackupAndRestore that also brings back what the monitoring
callbacks knew, so that a resumed run decides exactly as the uninterrupted one would.

Keras' own ``BackupAndRestore`` restores weights, optimizer and epoch, but EarlyStopping,
ModelCheckpoint and ReduceLROnPlateau start over (``best=inf``, ``wait=0``): a run killed after
its best epoch trains too long, calls a later, worse epoch its best, and lets
``ModelCheckpoint(save_best_only=True)`` overwrite the best file (keras-team/keras#17012).

This callback saves, for each finished epoch, one snapshot folder holding the weights (with the
optimizer), the epoch, and the state of the callbacks it keeps — EarlyStopping (``wait``,
``best``, ``best_epoch``, ``stopped_epoch`` and its best weights), ModelCheckpoint (``best``),
ReduceLROnPlateau (``wait``, ``best``, ``cooldown_counter``), Fitstream's publisher (its
best-so-far) — and switches to it with one atomic rename, so the weights and the callbacks'
state are always of the same epoch. On resume it restores both before the first resumed epoch.

Example:
    >>> stop = keras.callbacks.EarlyStopping(patience=8, restore_best_weights=True)  # doctest: +SKIP
    >>> ckpt = keras.callbacks.ModelCheckpoint("best.keras", save_best_only=True)  # doctest: +SKIP
    >>> backup = ResumableBackup("backup/", keep=[stop, ckpt, publisher])  # doctest: +SKIP
    >>> model.fit(x, y, validation_split=0.2, callbacks=[stop, ckpt, backup, publisher])  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import keras
import numpy as np

from pipeline.callbacks.keras_state import EARLY_STOPPING, MODEL_CHECKPOINT, REDUCE_LR
from pipeline.errors import ConfigurationError
from pipeline.store.copying import fsync_directory

log = logging.getLogger(__name__)

#: The file naming the current snapshot folder (replaced atomically).
CURRENT = "CURRENT"
SNAPSHOT_PREFIX = "epoch-"
WEIGHTS = "model.weights.h5"
METADATA = "training_metadata.json"
CALLBACKS = "callbacks.json"
#: How long a backup waits for the publisher's events of the epoch to be safe (sent or spooled).
EVENTS_PERSIST_TIMEOUT_S = 5.0

#: The attributes of Keras' monitoring callbacks that a resumed run needs back.
_KERAS_STATE: tuple[tuple[type, tuple[str, ...]], ...] = (
    (EARLY_STOPPING, ("wait", "best", "best_epoch", "stopped_epoch")),
    (MODEL_CHECKPOINT, ("best",)),
    (REDUCE_LR, ("wait", "best", "cooldown_counter")),
)


def _attributes(callback: Any) -> tuple[str, ...] | None:
    for kind, names in _KERAS_STATE:
        if isinstance(callback, kind):
            return names
    return None


def _plain(value: Any) -> Any:
    """A Keras state value (numpy scalar, 0-d tensor, ±inf) as JSON."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else {"float": repr(number)}


def _unplain(value: Any) -> Any:
    if isinstance(value, dict) and "float" in value:
        return float(value["float"])
    return value


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


class ResumableBackup(keras.callbacks.BackupAndRestore):
    """``BackupAndRestore`` that also keeps the state of the callbacks in ``keep``.

    Args:
        backup_dir: Folder for the snapshots (the run's own; a resumed run reads it back).
        keep: The callbacks whose state must survive a resume: ``EarlyStopping``,
            ``ModelCheckpoint``, ``ReduceLROnPlateau``, Fitstream's ``EventPublisher``, or any
            object with ``get_resume_state() -> dict`` and ``set_resume_state(dict)``.
        delete_checkpoint: Remove the backup when training ends (Keras' default, True).

    A snapshot is taken when the next epoch begins — after every callback has finished with
    the epoch, wherever this one stands in ``callbacks=`` — and, when an ``EventPublisher`` is
    kept, only once that epoch's events are in Redis or in the publisher's disk spool.
    """

    def __init__(
        self, backup_dir: str | os.PathLike[str], keep: Sequence[Any] = (), *, delete_checkpoint: bool = True
    ) -> None:
        super().__init__(os.fspath(backup_dir), save_freq="epoch", delete_checkpoint=delete_checkpoint)
        for callback in keep:
            if _attributes(callback) is None and not (
                callable(getattr(callback, "get_resume_state", None))
                and callable(getattr(callback, "set_resume_state", None))
            ):
                raise ConfigurationError(
                    "ResumableBackup keeps EarlyStopping, ModelCheckpoint, ReduceLROnPlateau, EventPublisher, or objects "
                    f"with get_resume_state()/set_resume_state(); got {type(callback).__name__}"
                )
        self.keep = tuple(keep)
        self.root = Path(self.backup_dir)
        self._restored_state: dict[str, Any] | None = None
        self._epochs_done: int | None = None  # epochs finished and not yet backed up
        self.resumed_from_epoch: int | None = None

    # -- Keras hooks ----------------------------------------------------------------------
    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._restored_state = None
        self._epochs_done = None
        self.resumed_from_epoch = None
        snapshot = self._current_snapshot()
        if snapshot is not None:
            self._load_snapshot(snapshot)
        elif os.path.exists(self._training_metadata_path):
            # A backup in Keras' own layout (written before Fitstream kept callback state): weights
            # and epoch come back, the callbacks start over as they did then.
            super().on_train_begin(logs)
            self.resumed_from_epoch = self.model._initial_epoch

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        if self._restored_state is not None:
            # Every callback's on_train_begin (which resets EarlyStopping and ReduceLROnPlateau)
            # has run by now, and no epoch has ended yet.
            self._apply_state(self._restored_state)
            self._restored_state = None
        elif self._epochs_done is not None:
            self._save_snapshot(self._epochs_done)
        self._epochs_done = None

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        # Taken when the next epoch begins: callbacks after this one have not finished with it yet.
        self._current_epoch = epoch + 1
        self._epochs_done = epoch + 1

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        pass  # epoch snapshots only

    # -- snapshots ---------------------------------------------------------------------------
    def _current_snapshot(self) -> Path | None:
        pointer = self.root / CURRENT
        try:
            name = pointer.read_text().strip()
        except FileNotFoundError:
            return None
        snapshot = self.root / name
        if not name.startswith(SNAPSHOT_PREFIX) or not (snapshot / METADATA).is_file():
            log.warning(
                "fitstream: backup pointer %s names no complete snapshot (%r); starting over", pointer, name
            )
            return None
        return snapshot

    def _load_snapshot(self, snapshot: Path) -> None:
        if not self.model.built:
            raise ValueError(
                "ResumableBackup needs a built model before fit(); call it on a batch of data first"
            )
        optimizer = self.model.optimizer
        if optimizer is not None and not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        self.model.load_weights(str(snapshot / WEIGHTS))
        metadata = json.loads((snapshot / METADATA).read_text())
        epoch = int(metadata["epoch"])
        self.model._initial_epoch = epoch
        self._current_epoch = epoch
        self.resumed_from_epoch = epoch
        state_path = snapshot / CALLBACKS
        self._restored_state = (
            {"folder": snapshot, **json.loads(state_path.read_text())} if state_path.exists() else None
        )
        log.info("fitstream: resuming at epoch %d from %s", epoch, snapshot)

    def _save_snapshot(self, epochs_done: int) -> None:
        """Write the snapshot of ``epochs_done`` finished epochs, then make it the one to resume from.

        Order matters for a SIGKILL at any point: the kept publisher publishes the epoch first (its
        state in the snapshot includes it); the snapshot is written complete under its final name;
        the epoch's events are made safe (in Redis or the spool); only then does ``CURRENT`` switch.
        Killed before the switch, the run resumes at the previous snapshot and trains the epoch again
        (its events then come twice only if the kill fell inside the last moments of the wait).
        """
        for callback in self.keep:
            if callable(getattr(callback, "finish_epoch", None)):
                callback.finish_epoch()
        self.root.mkdir(parents=True, exist_ok=True)
        name = f"{SNAPSHOT_PREFIX}{epochs_done:06d}"
        staging = self.root / f".{name}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir()
        self.model.save_weights(str(staging / WEIGHTS))
        state = self._collect_state(staging)
        (staging / CALLBACKS).write_text(json.dumps(state))
        (staging / METADATA).write_text(json.dumps({"epoch": epochs_done, "batch": 0}))
        for path in staging.iterdir():
            _fsync_file(path)
        fsync_directory(str(staging))
        final = self.root / name
        shutil.rmtree(final, ignore_errors=True)
        os.replace(staging, final)
        for callback in self.keep:
            persist = getattr(callback, "persist_events", None)
            if callable(persist) and not persist(EVENTS_PERSIST_TIMEOUT_S):
                log.warning(
                    "fitstream: the epoch's events were spooled to disk before the backup (Redis is slow or away)"
                )
        pointer = self.root / f".{CURRENT}.partial"
        pointer.write_text(name)
        _fsync_file(pointer)
        os.replace(pointer, self.root / CURRENT)  # the switch: weights and callback state together
        fsync_directory(str(self.root))
        for old in self.root.iterdir():
            if old.name.startswith(SNAPSHOT_PREFIX) and old.name != name:
                shutil.rmtree(old, ignore_errors=True)

    def _collect_state(self, folder: Path) -> dict[str, Any]:
        callbacks: list[dict[str, Any]] = []
        for index, callback in enumerate(self.keep):
            names = _attributes(callback)
            if names is None:
                callbacks.append({"kind": type(callback).__name__, "state": callback.get_resume_state()})
                continue
            entry: dict[str, Any] = {
                "kind": type(callback).__name__,
                "state": {n: _plain(getattr(callback, n, None)) for n in names},
            }
            best_weights = (
                getattr(callback, "best_weights", None) if isinstance(callback, EARLY_STOPPING) else None
            )
            if best_weights is not None:
                weights_file = f"best_weights_{index}.npz"
                np.savez(folder / weights_file, *best_weights)
                entry["best_weights"] = weights_file
            callbacks.append(entry)
        return {"callbacks": callbacks}

    def _apply_state(self, saved: dict[str, Any]) -> None:
        entries = saved.get("callbacks", [])
        if len(entries) != len(self.keep):
            log.warning(
                "fitstream: the backup kept %d callbacks, this fit keeps %d; their state is not restored",
                len(entries),
                len(self.keep),
            )
            return
        for callback, entry in zip(self.keep, entries):
            if entry.get("kind") != type(callback).__name__:
                log.warning(
                    "fitstream: backup holds %s state where this fit has %s; not restored",
                    entry.get("kind"),
                    type(callback).__name__,
                )
                continue
            names = _attributes(callback)
            if names is None:
                callback.set_resume_state(entry["state"])
                continue
            for name, value in entry["state"].items():
                setattr(callback, name, _unplain(value))
            if entry.get("best_weights"):
                with np.load(saved["folder"] / entry["best_weights"]) as arrays:
                    callback.best_weights = [arrays[f"arr_{i}"] for i in range(len(arrays.files))]
